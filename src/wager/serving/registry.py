"""The model registry of the service: versioned run folders and the one active model.

A registry path is either one run folder (written by ``wager train``; its version is the
folder's name) or a folder of run folders (each subfolder holding a wager manifest is a
version named after it; anything else there, e.g. the event database, hidden checkpoint
folders or a run still being written, is not a version). The folder is listed afresh on every
:meth:`ModelRegistry.versions`, so a run trained into it while the service runs can be
activated without a restart.

Activation is hot and atomic: :meth:`ModelRegistry.activate` loads and verifies the new
run completely before it replaces the single ``(version, recommender)`` reference under a
lock; a request that already took the old one with :meth:`ModelRegistry.current` finishes on
it, and no request ever sees a half-loaded model. Requests call the recommender concurrently
(no lock around predictions: a :class:`Recommender` is safe to call from several threads).

Runs are read with :meth:`Recommender.load`, which never unpickles: weights come from
``weights.safetensors`` (``safetensors.torch.load_file``), the catalogue from ``np.load(...,
allow_pickle=False)``, the rest from JSON / TOML / Parquet, each file checked against the
manifest's SHA-256 first.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from pathlib import Path
from typing import NamedTuple

from wager.recommender import Recommender
from wager.recommender.fastpath import FastPath
from wager.runs import RunDirectory

log = logging.getLogger("wager.serving")


class UnknownVersionError(ValueError):
    """A version name that is not one of the registry's versions (or is not a plain name)."""


class ActiveModel(NamedTuple):
    """What a request serves from: the version's name and its loaded recommender (which
    any number of requests call at once)."""

    version: str
    recommender: Recommender


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Sort key comparing digit runs as numbers ("v10" after "v9")."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


class ModelRegistry:
    """The versions a service may serve and the one it serves now.

    Args:
        path: one run folder, or a folder whose subfolders are run folders.
        active: the version to serve first (default: the newest name, comparing digit runs
            as numbers, so "v10" is newer than "v9" and "2024-06-02" than "2024-06-01").

    Raises:
        ValueError: ``path`` is missing, a file, or a folder holding no run (named, with the
            fix); ``active`` is not one of the versions.
        RunError: the run to serve first cannot be read.
    """

    def __init__(self, path: str | Path, active: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            what = "does not exist" if not self.path.exists() else "is not a folder"
            raise ValueError(
                f"{self.path} {what}: give a run folder written by `wager train` or a folder "
                "of such run folders (one per version)"
            )
        self.single = RunDirectory(self.path).is_run()
        names = self.versions()
        if not names:
            raise ValueError(
                f"{self.path} holds no wager run: give a run folder written by `wager train` "
                "(it has a manifest.json) or a folder whose subfolders are run folders"
            )
        self._lock = threading.Lock()  # guards the swap of _active
        self._loading = threading.Lock()  # one activation at a time
        self._pinned: dict[str, Recommender] = {}  # versions an experiment arm serves
        # each loaded recommender's fast path, built before the recommender is served
        self._fast: weakref.WeakKeyDictionary[Recommender, FastPath | None] = (
            weakref.WeakKeyDictionary()
        )
        first = names[-1] if active is None else active
        self._active = ActiveModel(first, self._load(first))

    def versions(self) -> list[str]:
        """The version names, oldest first (digit runs compared as numbers)."""
        if self.single:
            return [self.path.name]
        found = [
            d.name
            for d in self.path.iterdir()
            if not d.name.startswith(".") and d.is_dir() and RunDirectory(d).is_run()
        ]
        return sorted(found, key=_natural_key)

    @property
    def active(self) -> str:
        """The name of the version served now."""
        return self._active.version

    def current(self) -> ActiveModel:
        """The (version, recommender) to serve one request from, read atomically: keep it
        for the whole request so that every prediction of it comes from one version."""
        with self._lock:
            return self._active

    def get(self, version: str | None) -> ActiveModel:
        """The (version, recommender) of ``version``, or the active pair for None: what an
        experiment arm pinned to a version serves. A pinned version is loaded once and kept
        (it stays served when another version is activated).

        Raises:
            UnknownVersionError: ``version`` is not one of :meth:`versions`.
        """
        current = self.current()
        if version is None or version == current.version:
            return current
        rec = self._pinned.get(version)  # the hot path: no lock once loaded
        if rec is None:
            with self._loading:
                rec = self._pinned.get(version)
                if rec is None:
                    rec = self._pinned[version] = self._load(version)
        return ActiveModel(version, rec)

    def _folder(self, version: str) -> Path:
        """The run folder of ``version``, after checking it is a listed, plain name."""
        available = self.versions()
        plain = (
            version not in ("", ".", "..")
            and "/" not in version
            and "\\" not in version
            and "\x00" not in version
        )
        if not plain or version not in available:
            why = "is not a plain version name" if not plain else "is not a version"
            raise UnknownVersionError(
                f"model version {version!r} {why} of the registry; available: "
                f"{', '.join(available)}"
            )
        return self.path if self.single else self.path / version

    def _load(self, version: str) -> Recommender:
        """Load ``version`` and build its fast path (before anything can serve it)."""
        rec = Recommender.load(self._folder(version))
        why = FastPath.unsupported(rec)
        self._fast[rec] = None if why is not None else FastPath(rec)
        if why is not None:
            log.info("model version %s is served by the generic path: %s", version, why)
        return rec

    def fast_path(self, rec: Recommender) -> FastPath | None:
        """The fast path of a recommender this registry loaded (built once per version,
        with the version, so an activation swaps both at once), or None when the model
        needs the generic ``Recommender.recommend``."""
        return self._fast.get(rec)

    def activate(self, version: str) -> ActiveModel:
        """Serve ``version`` from now on (re-reading it when it is already active).

        The run is loaded and verified in full first; only then is the active pair replaced,
        so requests in flight finish on the old version and a failed load changes nothing.

        Returns:
            the new active pair.

        Raises:
            UnknownVersionError: ``version`` is not one of :meth:`versions` (path-like names
                such as "../x" or "/abs" never are), naming it and listing the available ones.
            RunError: the version's run folder cannot be read (the old version stays active).
        """
        with self._loading:
            loaded = ActiveModel(version, self._load(version))
            with self._lock:
                self._active = loaded
        return loaded
