"""Download official dataset archives, verify their SHA-256, unpack them. Only when asked.

Nothing here runs at import time. :func:`download` fetches one archive from its official URL
into a temporary folder in the cache directory, checks it against the SHA-256 pinned in
:data:`ARCHIVES` (a mismatch deletes the download and raises), unzips it there, moves the
extracted directory into place and returns it, ready for
:func:`wager.data.loaders.load_dataset`. A second call finds the verified directory and does
not touch the network. Without network access it fails at once, saying how to use a local
copy instead.

Example:
    >>> from wager.data.loaders.download import download
    >>> path = download("movielens-100k")  # doctest: +SKIP
    >>> path.name  # doctest: +SKIP
    'ml-100k'
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wager.errors import data_error, suggest

TIMEOUT_S = 10.0
"""Seconds to wait for the server before declaring the network unreachable."""

_CHUNK = 1 << 20
_MARKER = ".wager-sha256"


@dataclass(frozen=True)
class Archive:
    """One downloadable archive.

    Attributes:
        url: official download URL.
        sha256: expected SHA-256 of the archive (64 lower-case hex digits).
        size: expected size in bytes (informational; the hash decides).
        directory: the top-level directory the archive unzips to.
    """

    url: str
    sha256: str
    size: int
    directory: str

    @property
    def filename(self) -> str:
        """File name of the archive, taken from the URL."""
        return self.url.rsplit("/", 1)[-1]


# SHA-256 values as published in TensorFlow Datasets' url_checksums/movielens.txt and
# independently pinned by several other projects; sizes from the same list. The MD5 values
# that GroupLens publishes (ml-100k 0e33842e24a9c977be4e0107933c0723, ml-1m
# c4d9eecfca2ab87c1945afe126590906) refer to the same archives.
ARCHIVES: dict[str, Archive] = {
    "movielens-100k": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        size=4_924_029,
        directory="ml-100k",
    ),
    "movielens-1m": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        size=5_917_549,
        directory="ml-1m",
    ),
    "movielens-latest-small": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-latest-small.zip",
        sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
        size=978_202,
        directory="ml-latest-small",
    ),
}
"""Known archives by name. ml-latest-small is a rolling release: this is the 2018-09 build."""


def default_cache_dir() -> Path:
    """``$WAGER_CACHE`` if set, else ``~/.cache/wager``."""
    env = os.environ.get("WAGER_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "wager"


def download(name: str, cache_dir: str | Path | None = None) -> Path:
    """Fetch, verify and unpack a known dataset archive; return the extracted directory.

    Everything is written into a fresh temporary folder inside ``cache_dir`` first: the
    archive is streamed there and its SHA-256 checked, then unpacked there, and only then
    moved into place. The target folder ``cache_dir / archive.directory`` is written only
    when it is absent, empty, or a previous download by wager (it holds the marker file
    ``.wager-sha256`` listing the files wager wrote); a previous download is replaced only
    when it holds nothing but those files. Nothing that wager did not write is deleted or
    overwritten: an archive file of the same name with other bytes is left as it is.

    Args:
        name: one of :data:`ARCHIVES` ("movielens-100k", "movielens-1m",
            "movielens-latest-small").
        cache_dir: where the archive and its extracted directory go; default
            :func:`default_cache_dir`.

    Returns:
        ``cache_dir / archive.directory`` (e.g. ``~/.cache/wager/ml-100k``), holding the
        unpacked files.

    Raises:
        DataError: unknown name (listing the known ones); no network, a timeout or an HTTP
            error (saying how to pass a local directory instead); SHA-256 mismatch (the
            download is deleted); an archive that is not a valid zip or that would write
            outside its directory; a target that is a file, or a folder that wager did not
            write ("target_exists", naming the folder and how to fix it), or a previous
            download holding files that wager did not write ("foreign_files", naming them).
    """
    if name not in ARCHIVES:
        raise data_error(
            "unknown_dataset",
            f"no downloadable dataset is called '{name}'.{suggest(name, ARCHIVES)}",
            source=name,
            fix=f"Use one of: {', '.join(ARCHIVES)}.",
        )
    archive = ARCHIVES[name]
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / archive.directory
    written = _previous_download(target)
    if (
        written is not None
        and written[0] == archive.sha256
        and all((target / f).is_file() for f in written[1])
    ):
        return target
    _check_target(target, written)
    cache.mkdir(parents=True, exist_ok=True)
    zip_path = cache / archive.filename
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        work = Path(tmp)
        if zip_path.is_file() and _sha256(zip_path) == archive.sha256:
            fetched = zip_path
        else:
            fetched = work / archive.filename
            _fetch(name, archive, fetched)
        unpacked, files = _extract(fetched, work, archive, reported=zip_path)
        (unpacked / _MARKER).write_text("\n".join([archive.sha256, *files]) + "\n")
        _move_into_place(unpacked, target, work)
        if fetched != zip_path and not zip_path.exists():
            fetched.replace(zip_path)  # keep the verified archive; never over another file
    return target


def _previous_download(target: Path) -> tuple[str, list[str]] | None:
    """(sha256, files wager wrote) from the marker of a previous download, or None."""
    marker = target / _MARKER
    if target.is_symlink() or not target.is_dir() or not marker.is_file():
        return None
    lines = [ln.strip() for ln in marker.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not lines:
        return None
    return lines[0], lines[1:]


def _foreign_files(target: Path, written: list[str]) -> list[str]:
    """Files under ``target`` that wager's marker does not list (the user's own)."""
    known = {*written, _MARKER}
    found = []
    for path in sorted(target.rglob("*")):
        rel = path.relative_to(target).as_posix()
        if path.is_dir() and not path.is_symlink():
            continue
        if path.is_symlink() or not path.is_file() or rel not in known:
            found.append(rel)
    return found


def _check_target(target: Path, written: tuple[str, list[str]] | None) -> None:
    """Refuse a target that wager may not replace: a file, a foreign folder, foreign files."""
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise data_error(
            "target_exists",
            "the download would go here, but this is not a folder (a file or a link)",
            source=str(target),
            fix="Move it away, or pass another --cache-dir",
        )
    if not target.is_dir() or not any(target.iterdir()):
        return
    if written is None:
        raise data_error(
            "target_exists",
            f"this folder is not empty and was not written by wager data download (it has "
            f"no {_MARKER} marker); wager does not replace or delete files it did not write",
            source=str(target),
            fix="Move or rename the folder (or delete it yourself), or pass another "
            "--cache-dir; to use the data already there, pass the folder to --data-dir",
        )
    if not written[1]:
        raise data_error(
            "target_exists",
            f"this folder is an older wager download whose {_MARKER} marker does not list "
            "the files it wrote, so wager cannot tell them from yours",
            source=str(target),
            fix="Delete the folder yourself and download again, or pass another --cache-dir",
        )
    foreign = _foreign_files(target, written[1])
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" (and {len(foreign) - 5} more)" if len(foreign) > 5 else ""
        )
        raise data_error(
            "foreign_files",
            f"this earlier download holds files that wager did not write: {shown}; replacing "
            "it would delete them",
            source=str(target),
            fix="Move those files elsewhere and run the download again, or pass another "
            "--cache-dir",
        )


def _move_into_place(unpacked: Path, target: Path, work: Path) -> None:
    """Rename the verified folder to ``target``; an old download is moved aside first.

    ``target`` was checked by :func:`_check_target`: absent, empty, or a previous download
    holding only files that wager wrote, which alone are removed (with the temporary
    folder ``work``).
    """
    previous = work / "previous"
    if target.is_dir():
        if any(target.iterdir()):
            target.replace(previous)
        else:
            target.rmdir()
    try:
        unpacked.replace(target)
    except OSError:
        if previous.exists() and not target.exists():
            previous.replace(target)  # put the earlier download back
        raise


def _fetch(name: str, archive: Archive, dest: Path) -> None:
    """Stream ``archive.url`` to ``dest`` (in a temporary folder) while hashing; verify."""
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(archive.url, timeout=TIMEOUT_S) as response,
            open(dest, "wb") as out,
        ):
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        raise data_error(
            "download_failed",
            f"cannot download {name}: the server answered HTTP {exc.code} ({exc.reason})",
            source=archive.url,
            fix=_offline_fix(archive),
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise data_error(
            "offline",
            f"cannot download {name}: no connection to the server ({reason})",
            source=archive.url,
            fix=_offline_fix(archive),
        ) from None
    got = digest.hexdigest()
    if got != archive.sha256:
        raise data_error(
            "checksum_mismatch",
            f"SHA-256 of the downloaded {archive.filename} is {got}, expected {archive.sha256}; "
            "the file was deleted",
            source=archive.url,
            fix="Try again (the download may have been cut or altered on the way); if it keeps "
            "failing, the archive on the server changed: " + _offline_fix(archive),
        )


def _extract(
    zip_path: Path, work: Path, archive: Archive, *, reported: Path
) -> tuple[Path, list[str]]:
    """Unzip into ``work``; return (the unpacked top-level folder, the files it holds)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                member = PurePosixPath(info.filename)
                if member.is_absolute() or ".." in member.parts:
                    raise data_error(
                        "unsafe_archive",
                        f"archive member '{info.filename}' would be written outside the cache",
                        source=str(reported),
                        fix="Delete the file; do not use this archive.",
                    )
            out = work / "unpacked"
            zf.extractall(out)
    except zipfile.BadZipFile:
        raise data_error(
            "bad_archive",
            "file is not a valid zip archive (it matched the pinned SHA-256, so the pin "
            "itself is wrong)",
            source=str(reported),
            fix="Report this; meanwhile download and unzip the archive yourself and pass the "
            "folder to --data-dir.",
        ) from None
    unpacked = out / archive.directory
    if not unpacked.is_dir():
        raise data_error(
            "unexpected_archive",
            f"archive holds no top-level directory '{archive.directory}'",
            source=str(reported),
            fix="Report this; meanwhile download and unzip the archive yourself and pass the "
            "folder to --data-dir.",
        )
    files = sorted(f.relative_to(unpacked).as_posix() for f in unpacked.rglob("*") if f.is_file())
    return unpacked, files


def _offline_fix(archive: Archive) -> str:
    return (
        f"Download {archive.filename} elsewhere ({archive.url}), unzip it and pass the "
        f"directory: wager data info /path/to/{archive.directory}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
