"""RunDirectory: the folder a run is saved in, written whole or not at all, verified on load.

A run folder holds the files a :class:`~wager.recommender.Recommender` writes (config TOML,
safetensors weights, encoders, catalogue, post-hoc chain, metrics, plots) and a
``manifest.json``: the run format version, the wager version that wrote it and the SHA-256
and size of every file. Saving writes every file into a temporary sibling folder, writes the
manifest last and renames the folder into place, so an interrupted save leaves either the
previous run or nothing: never a run that loads without part of its state. Loading checks
the manifest first and names what is missing or corrupt.

Rules that keep user files safe:

- a target that exists must be an empty folder or a previous wager run (it has a manifest);
  replacing a previous run needs ``overwrite=True``; any other folder, a file or a symbolic
  link is refused;
- replacing a run deletes only the files its manifest lists (and the folders left empty);
  nothing else is ever deleted, and nothing is written outside the target's parent folder.

While a run trains, :class:`CheckpointDirectory` keeps its last finished epoch in the hidden
sibling ``.NAME.checkpoint`` of the run folder (``wager train --resume`` continues from it);
wager removes it once the run folder is saved.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> run = RunDirectory(root / "run")
    >>> run.write({"a.txt": lambda p: p.write_text("hello")})
    >>> sorted(run.verify())
    ['a.txt']
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wager.errors import WagerError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
Writer = Callable[[Path], None]


class RunError(WagerError, ValueError):
    """A run folder cannot be written or read: the message names the path and the fix.

    Attributes:
        path: the run folder (or file) concerned, or None.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


def wager_version() -> str:
    """The installed wager version ("unknown" when not installed as a package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("wager")
    except PackageNotFoundError:
        return "unknown"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files_under(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root`` (links are refused)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                raise RunError(f"{p}: a symbolic link inside a run folder; wager writes none")
        out += [(Path(dirpath) / f).relative_to(root).as_posix() for f in filenames]
    return sorted(out)


class RunDirectory:
    """One run folder (see the module docstring).

    Args:
        path: the run folder.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        """Where the manifest lives."""
        return self.path / MANIFEST

    def is_run(self) -> bool:
        """The folder holds a wager manifest."""
        return self.manifest_path.is_file() and not self.path.is_symlink()

    def check_target(self, overwrite: bool = False) -> None:
        """Refuse a save target that would lose or expose files; run before any work.

        Args:
            overwrite: allow replacing a previous wager run at the path.

        Raises:
            RunError: the path is a file, a link, a folder that is not a wager run (and not
                empty), a previous run without ``overwrite``, or its parent is not writable.
        """
        p = self.path
        if p.is_symlink():
            raise RunError(
                f"{p}: is a symbolic link; give the real folder to write the run", path=self.path
            )
        if p.exists() and not p.is_dir():
            raise RunError(f"{p}: is a file, not a folder; choose another --out", path=self.path)
        if p.is_dir() and any(p.iterdir()):
            if not self.is_run():
                raise RunError(
                    f"{p}: the folder exists and is not a wager run (no {MANIFEST}); wager "
                    "never writes into or deletes a folder it did not write: choose a new "
                    "--out, or empty the folder yourself",
                    path=self.path,
                )
            if not overwrite:
                raise RunError(
                    f"{p}: a wager run is already there; pass --overwrite (Python: "
                    "overwrite=True) to replace it, or choose another --out",
                    path=self.path,
                )
        parent = p.parent if p.parent != Path("") else Path(".")
        anchor = parent
        while not anchor.exists():
            anchor = anchor.parent
        if not anchor.is_dir() or not os.access(anchor, os.W_OK | os.X_OK):
            raise RunError(
                f"{anchor}: not a writable folder, so {p} cannot be written", path=self.path
            )

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, checked for its format version.

        Raises:
            RunError: the folder is missing, has no manifest (not a run, or a run written by
                an older wager), an unreadable manifest or another format version.
        """
        p = self.path
        if not p.is_dir():
            raise RunError(
                f"{p}: run folder not found; pass a folder written by `wager train`, "
                "`wager quickstart` or Recommender.save()",
                path=self.path,
            )
        if not self.manifest_path.is_file():
            raise RunError(
                f"{p}: no {MANIFEST}: not a wager run, or a run saved by wager < 0.2 before "
                "run folders carried a manifest; retrain it with `wager train`",
                path=self.path,
            )
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
            files = manifest["files"]
            version = manifest["format_version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(
                f"{self.manifest_path}: unreadable manifest ({exc}); retrain the run",
                path=self.path,
            ) from exc
        if version != FORMAT_VERSION:
            raise RunError(
                f"{self.manifest_path}: run format version {version!r}, this wager reads "
                f"version {FORMAT_VERSION}; retrain the run with this wager",
                path=self.path,
            )
        if not isinstance(files, dict):
            raise RunError(
                f"{self.manifest_path}: 'files' is not a table; retrain the run", path=self.path
            )
        return manifest

    def verify(self) -> dict[str, dict[str, Any]]:
        """Check every file of the manifest (present, size, SHA-256); returns the file table.

        Raises:
            RunError: naming every missing or corrupt file.
        """
        files = self.read_manifest()["files"]
        missing, corrupt = [], []
        for name, entry in files.items():
            f = self.path / name
            if f.is_symlink() or not f.is_file():
                missing.append(name)
            elif f.stat().st_size != entry.get("bytes") or _sha256(f) != entry.get("sha256"):
                corrupt.append(name)
        if missing or corrupt:
            what = "; ".join(
                part
                for part in (
                    f"missing: {', '.join(missing)}" if missing else "",
                    f"corrupt (checksum differs): {', '.join(corrupt)}" if corrupt else "",
                )
                if part
            )
            raise RunError(
                f"{self.path}: incomplete run ({what}); retrain or restore the run", path=self.path
            )
        return files

    def file(self, name: str) -> Path:
        """Path of a manifest file (RunError if the manifest does not list it)."""
        if name not in self.read_manifest()["files"]:
            raise RunError(f"{self.path}: the run has no {name}; retrain the run", path=self.path)
        return self.path / name

    def write(
        self,
        writers: Mapping[str, Writer],
        overwrite: bool = False,
        prepare: Writer | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Write a whole run: each writer fills one file of a temporary folder, the manifest
        is written last and the folder renamed into place.

        Args:
            writers: {relative file name: function writing that file at the given path}.
            overwrite: replace a previous wager run at the path.
            prepare: called first with the temporary folder, to write more files into it
                (e.g. the plots of the evaluation); the writers run after it.
            extra: more manifest fields (e.g. what the run holds).

        Raises:
            RunError: see :meth:`check_target`; any writer's exception propagates after the
                temporary folder is removed (the target is left as it was).
        """
        self.check_target(overwrite)
        parent = self.path.parent
        parent.mkdir(parents=True, exist_ok=True)
        tmp = parent / f".{self.path.name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)  # our own leftover from an earlier interrupted save
        tmp.mkdir()
        try:
            if prepare is not None:
                prepare(tmp)
            for name, write in writers.items():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                write(tmp / name)
            self._write_manifest(tmp, extra or {})
            self._swap(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def subfolder(self, name: str) -> Path:
        """A folder of the run for files written after the save (e.g. the plots of a later
        evaluation); it must be new or hold only files of the manifest. Call :meth:`record`
        once its files are written."""
        manifest = self.read_manifest()
        root = self.path / name
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            raise RunError(f"{root}: not a folder wager wrote; move it away", path=self.path)
        if root.is_dir():
            listed = set(manifest["files"])
            foreign = [r for r in _files_under(root) if f"{name}/{r}" not in listed]
            if foreign:
                raise RunError(
                    f"{root}: holds files wager did not write ({', '.join(foreign[:3])}); "
                    "move them away first",
                    path=self.path,
                )
        root.mkdir(exist_ok=True)
        return root

    def record(self, folder: str) -> None:
        """Add the files of ``folder`` (relative to the run, written by wager after the save,
        e.g. evaluation plots) to the manifest; the manifest is replaced atomically."""
        manifest = self.read_manifest()
        root = self.path / folder
        for rel in _files_under(root):
            f = root / rel
            name = (Path(folder) / rel).as_posix()
            manifest["files"][name] = {"sha256": _sha256(f), "bytes": f.stat().st_size}
        tmp = self.path / f".{MANIFEST}.partial"
        tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    def _write_manifest(self, folder: Path, extra: Mapping[str, Any]) -> None:
        files = {
            rel: {"sha256": _sha256(folder / rel), "bytes": (folder / rel).stat().st_size}
            for rel in _files_under(folder)
        }
        manifest = {
            "format_version": FORMAT_VERSION,
            "wager_version": wager_version(),
            **extra,
            "files": files,
        }
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    def _swap(self, tmp: Path) -> None:
        """Rename ``tmp`` into place; a previous run is moved aside first and then only its
        manifest's files are deleted."""
        p = self.path
        if not p.exists():
            os.replace(tmp, p)
            return
        if not any(p.iterdir()):
            p.rmdir()
            os.replace(tmp, p)
            return
        old = p.parent / f".{p.name}.old-{os.getpid()}"
        old_files = list(RunDirectory(p).read_manifest()["files"])
        os.replace(p, old)
        os.replace(tmp, p)
        remove_listed(old, [*old_files, MANIFEST])


def remove_listed(folder: Path, names: list[str]) -> None:
    """Delete the listed files of ``folder`` and the folders they leave empty; anything
    else stays (the folder is then kept and named in a warning)."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    for dirpath, _dirs, _files in sorted(os.walk(folder), key=lambda t: -len(t[0])):
        with contextlib.suppress(OSError):
            Path(dirpath).rmdir()
    if folder.exists():
        import warnings

        warnings.warn(
            f"{folder}: files wager did not write were in the replaced run; they were kept there",
            stacklevel=3,
        )


CHECKPOINT_MARKER = "checkpoint.json"
CHECKPOINT_STATE = "state.pt"
_CHECKPOINT_KIND = "wager training checkpoint"


class CheckpointDirectory:
    """The checkpoint of an unfinished run: the hidden sibling ``.NAME.checkpoint`` of the
    run folder ``NAME`` (the run folder itself is written whole at the end, so the state of
    the epochs in between lives beside it, in the same parent folder).

    The folder holds ``checkpoint.json`` (the marker: what wrote it, the wager version, the
    last finished epoch, and the identity of the run: its config and a fingerprint of its
    training data) and ``state.pt`` (the training loop's state, ``torch.save``). Each save
    writes a temporary file in the folder and renames it over the old one, so a crash keeps
    the previous epoch's state. :meth:`remove` deletes the folder once the run is saved,
    and only when its marker says wager wrote it; nothing else is ever deleted.

    It is a :class:`~wager.training.checkpoint.Checkpoint`: pass it to ``Recommender.fit``.

    Args:
        run: the run folder (``--out``) whose checkpoint this is.
        identity: JSON-ready facts that must not change between a stop and its resume (e.g.
            {"config": {section: {key: value}}, "training data": ...}); written into the
            marker, compared by :meth:`check_identity`.

    Example:
        >>> import tempfile, pathlib
        >>> ck = CheckpointDirectory(pathlib.Path(tempfile.mkdtemp()) / "run", {"seed": 0})
        >>> ck.path.name, ck.load()
        ('.run.checkpoint', None)
    """

    def __init__(self, run: str | Path, identity: Mapping[str, Any] | None = None) -> None:
        self.run = Path(run)
        self.path = self.run.parent / f".{self.run.name}.checkpoint"
        self.identity: dict[str, Any] = json.loads(json.dumps(dict(identity or {})))

    @property
    def marker_path(self) -> Path:
        """The marker file."""
        return self.path / CHECKPOINT_MARKER

    @property
    def state_path(self) -> Path:
        """The saved loop state."""
        return self.path / CHECKPOINT_STATE

    def read_marker(self) -> dict[str, Any] | None:
        """The marker, or None when the folder is not a checkpoint wager wrote."""
        if self.path.is_symlink() or not self.path.is_dir() or self.marker_path.is_symlink():
            return None
        try:
            marker = json.loads(self.marker_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        ok = isinstance(marker, dict) and marker.get("written_by") == _CHECKPOINT_KIND
        return marker if ok else None

    def has_state(self) -> bool:
        """A checkpoint that wager wrote, with a saved state: a run to resume."""
        return self.read_marker() is not None and self.state_path.is_file()

    def last_epoch(self) -> int:
        """The last finished epoch saved (0 when none)."""
        marker = self.read_marker() or {}
        return int(marker.get("epoch") or 0)

    def progress(self) -> str:
        """What the saved state holds, in words: the loop's own ``state["progress"]``
        (e.g. "2 of 5 members finished") or "the last finished epoch (N)"."""
        marker = self.read_marker() or {}
        return str(marker.get("progress") or f"the last finished epoch ({self.last_epoch()})")

    def check_start(self, resume: bool) -> None:
        """Refuse to start when the checkpoint folder is in the way; run before any work.

        Args:
            resume: the run continues from the checkpoint (``--resume``).

        Raises:
            RunError: the folder exists and wager did not write it; ``resume`` without a
                checkpoint; a checkpoint of a stopped run without ``resume``.
        """
        p = self.path
        empty = p.is_dir() and not p.is_symlink() and not any(p.iterdir())
        if (p.exists() or p.is_symlink()) and not empty and self.read_marker() is None:
            raise RunError(
                f"{p}: exists and was not written by wager (no {CHECKPOINT_MARKER} of "
                f"wager's); wager keeps the checkpoint of --out {self.run} there and never "
                "writes into or deletes what it did not write: move it away",
                path=p,
            )
        if resume and not self.has_state():
            raise RunError(
                f"--resume: there is no checkpoint of an unfinished run to {self.run} (wager "
                f"keeps it in {p}); run without --resume to start fresh",
                path=p,
            )
        if not resume and self.has_state():
            raise RunError(
                f"{p}: holds the checkpoint of an unfinished run to {self.run} (epoch "
                f"{self.last_epoch()} finished); pass --resume to continue it, or delete {p} "
                "to start fresh",
                path=p,
            )

    def check_identity(self) -> None:
        """Refuse to resume a checkpoint written for another config, data or wager version.

        Raises:
            RunError: naming every difference and how to fix it.
        """
        marker = self.read_marker() or {}
        saved = marker.get("identity", {})
        found = _differences(saved, self.identity)
        if marker.get("wager_version") != wager_version():
            found.append(
                f"it was written by wager {marker.get('wager_version')}, this is wager "
                f"{wager_version()} (resume with that version)"
            )
        if found:
            raise RunError(
                f"--resume: the checkpoint {self.path} was written for another run: "
                + "; ".join(found)
                + f". Restore what it was started with, or delete {self.path} and run "
                "without --resume to start fresh",
                path=self.path,
            )

    def load(self) -> dict[str, Any] | None:
        """The state last saved, or None when there is none."""
        if not self.has_state():
            return None
        import torch

        state: dict[str, Any] = torch.load(self.state_path, map_location="cpu", weights_only=True)
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (atomically: temporary file, then renamed over the old one) and
        the marker with the epoch it holds (``state["epoch"]``)."""
        import torch

        if self.read_marker() is None:
            self.check_start(resume=False)  # an empty folder, or none: ours from now on
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_marker(0)
        tmp = self.path / f"{CHECKPOINT_STATE}.partial-{os.getpid()}"
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.state_path)
        finally:
            tmp.unlink(missing_ok=True)
        self._write_marker(int(state.get("epoch", 0)), state.get("progress"))

    def remove(self) -> None:
        """Delete the checkpoint (its marker, state and wager's temporary files) when wager
        wrote it; anything else stays (the folder is then kept and named in a warning)."""
        if self.read_marker() is None:
            return
        ours = {CHECKPOINT_STATE, CHECKPOINT_MARKER}
        names = [
            f.name
            for f in self.path.iterdir()
            if f.name in ours or f.name.startswith(tuple(f"{n}.partial-" for n in ours))
        ]
        self.marker_path.unlink()  # first: a half-removed folder is no longer "ours"
        remove_listed(self.path, [n for n in names if n != CHECKPOINT_MARKER])

    def _write_marker(self, epoch: int, progress: str | None = None) -> None:
        marker = {
            "written_by": _CHECKPOINT_KIND,
            "wager_version": wager_version(),
            "run": str(self.run),
            "epoch": epoch,
            "identity": self.identity,
        }
        if progress:
            marker["progress"] = progress
        tmp = self.path / f"{CHECKPOINT_MARKER}.partial-{os.getpid()}"
        tmp.write_text(json.dumps(marker, indent=1), encoding="utf-8")
        os.replace(tmp, self.marker_path)


def _differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """What differs between two run identities, one phrase each: the config key by key
    (``[section] key``, or ``seed``; its digest "config_sha256" is not repeated), any other
    fact (e.g. "training data") as a whole."""
    out = []
    cs, cn = saved.get("config") or {}, now.get("config") or {}
    for key in sorted(set(cs) | set(cn)):
        a, b = cs.get(key), cn.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            out += [
                _changed(f"[{key}] {k}", a.get(k), b.get(k))
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k)
            ]
        elif a != b:
            out.append(_changed(key, a, b))
    for key in sorted((set(saved) | set(now)) - {"config", "config_sha256"}):
        if saved.get(key) != now.get(key):
            out.append(_changed(key, saved.get(key), now.get(key)))
    return out


def _changed(name: str, saved: Any, now: Any) -> str:
    def show(v: Any) -> str:
        return "unset" if v is None else json.dumps(v)

    return f"{name} is {show(saved)} in the checkpoint, {show(now)} now"
