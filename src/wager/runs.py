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
        _remove_listed(old, [*old_files, MANIFEST])


def _remove_listed(folder: Path, names: list[str]) -> None:
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
