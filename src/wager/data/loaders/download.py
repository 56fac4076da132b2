"""Download official dataset archives, verify their SHA-256, unpack them. Only when asked.

Nothing here runs at import time. :func:`download` fetches one archive from its official URL
into a cache directory, checks it against the SHA-256 pinned in :data:`ARCHIVES` (a mismatch
deletes the file and raises), unzips it and returns the extracted directory, ready for
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
import shutil
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
            error (saying how to pass a local directory instead); SHA-256 mismatch (the file is
            deleted); an archive that is not a valid zip or that would write outside its
            directory.
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
    marker = target / _MARKER
    if marker.is_file() and marker.read_text().strip() == archive.sha256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    zip_path = cache / archive.filename
    if not (zip_path.is_file() and _sha256(zip_path) == archive.sha256):
        _fetch(name, archive, zip_path)
    _extract(zip_path, cache, archive)
    marker.write_text(archive.sha256 + "\n")
    return target


def _fetch(name: str, archive: Archive, dest: Path) -> None:
    """Stream ``archive.url`` to ``dest`` while hashing; verify; never leave a partial file."""
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with (
            urllib.request.urlopen(archive.url, timeout=TIMEOUT_S) as response,
            open(part, "wb") as out,
        ):
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise data_error(
            "download_failed",
            f"cannot download {name}: the server answered HTTP {exc.code} ({exc.reason})",
            source=archive.url,
            fix=_offline_fix(archive),
        ) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        part.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        raise data_error(
            "offline",
            f"cannot download {name}: no connection to the server ({reason})",
            source=archive.url,
            fix=_offline_fix(archive),
        ) from None
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    got = digest.hexdigest()
    if got != archive.sha256:
        part.unlink(missing_ok=True)
        raise data_error(
            "checksum_mismatch",
            f"SHA-256 of the downloaded {archive.filename} is {got}, expected {archive.sha256}; "
            "the file was deleted",
            source=archive.url,
            fix="Try again (the download may have been cut or altered on the way); if it keeps "
            "failing, the archive on the server changed: " + _offline_fix(archive),
        )
    part.replace(dest)


def _extract(zip_path: Path, cache: Path, archive: Archive) -> None:
    """Unzip into a temporary directory next to the target, then move it into place."""
    target = cache / archive.directory
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                member = PurePosixPath(info.filename)
                if member.is_absolute() or ".." in member.parts:
                    raise data_error(
                        "unsafe_archive",
                        f"archive member '{info.filename}' would be written outside the cache",
                        source=str(zip_path),
                        fix="Delete the file; do not use this archive.",
                    )
            with tempfile.TemporaryDirectory(dir=cache, prefix=".extract-") as tmp:
                zf.extractall(tmp)
                unpacked = Path(tmp) / archive.directory
                if not unpacked.is_dir():
                    raise data_error(
                        "unexpected_archive",
                        f"archive holds no top-level directory '{archive.directory}'",
                        source=str(zip_path),
                        fix="Delete the file and download again.",
                    )
                if target.exists():
                    shutil.rmtree(target)
                unpacked.replace(target)
    except zipfile.BadZipFile:
        zip_path.unlink(missing_ok=True)
        raise data_error(
            "bad_archive",
            "file is not a valid zip archive; it was deleted",
            source=str(zip_path),
            fix="Download again.",
        ) from None


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
