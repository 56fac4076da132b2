"""Downloader: offline failure, checksum verification, unpacking, caching. No real network."""

from __future__ import annotations

import hashlib
import io
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from wager.data.loaders import download as dl
from wager.data.loaders.download import ARCHIVES, Archive, default_cache_dir, download
from wager.errors import DataError

U_DATA = b"1\t10\t5\t881250949\n2\t10\t3\t881250950\n"


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, payload: bytes, sha256: str) -> Path:
    """Put ``payload`` at a file:// URL and register it as the archive 'tiny'."""
    served = tmp_path / "server" / "ml-tiny.zip"
    served.parent.mkdir()
    served.write_bytes(payload)
    monkeypatch.setitem(ARCHIVES, "tiny", Archive(served.as_uri(), sha256, len(payload), "ml-tiny"))
    return served


def _offline(*args: object, **kwargs: object) -> None:
    raise urllib.error.URLError(OSError(-3, "Temporary failure in name resolution"))


def test_known_archives_are_pinned() -> None:
    assert set(ARCHIVES) == {"movielens-100k", "movielens-1m", "movielens-latest-small"}
    for archive in ARCHIVES.values():
        assert archive.url.startswith("https://files.grouplens.org/datasets/movielens/")
        assert archive.url.endswith(f"/{archive.directory}.zip")
        assert re.fullmatch(r"[0-9a-f]{64}", archive.sha256)


def test_serves_verifies_unpacks_and_caches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _zip_bytes({"ml-tiny/u.data": U_DATA, "ml-tiny/README": b"tiny\n"})
    _serve(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    cache = tmp_path / "cache"
    target = download("tiny", cache_dir=cache)
    assert target == cache / "ml-tiny"
    assert (target / "u.data").read_bytes() == U_DATA
    assert (cache / "ml-tiny.zip").read_bytes() == payload
    assert sorted(c.name for c in cache.iterdir()) == ["ml-tiny", "ml-tiny.zip"]  # no temp left
    assert (target / ".wager-sha256").read_text().splitlines() == [
        hashlib.sha256(payload).hexdigest(),
        "README",
        "u.data",
    ]
    # second call: verified directory found, the network is never touched
    monkeypatch.setattr(urllib.request, "urlopen", _offline)
    assert download("tiny", cache_dir=cache) == target


def test_cache_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _zip_bytes({"ml-tiny/u.data": U_DATA})
    _serve(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    monkeypatch.setenv("WAGER_CACHE", str(tmp_path / "env-cache"))
    assert default_cache_dir() == tmp_path / "env-cache"
    assert download("tiny") == tmp_path / "env-cache" / "ml-tiny"
    monkeypatch.delenv("WAGER_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "wager"


def test_checksum_mismatch_deletes_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _zip_bytes({"ml-tiny/u.data": U_DATA})
    _serve(tmp_path, monkeypatch, payload, "0" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        download("tiny", cache_dir=cache)
    (f,) = err.value.findings
    assert f.code == "checksum_mismatch"
    assert hashlib.sha256(payload).hexdigest() in f.message and "0" * 64 in f.message
    assert list(cache.iterdir()) == []  # neither the archive nor a partial file is kept
    assert not (cache / "ml-tiny").exists()


def test_offline_fails_at_once_with_local_directory_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []

    def offline_once(*args: object, **kwargs: object) -> object:
        calls.append(args)
        return _offline(*args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", offline_once)
    with pytest.raises(DataError) as err:
        download("movielens-100k", cache_dir=tmp_path)
    assert len(calls) == 1  # fails at once: no retry loop
    (f,) = err.value.findings
    assert f.code == "offline"
    assert "ml-100k.zip" in f.message
    assert "wager data info /path/to/ml-100k" in f.message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "exc",
    [TimeoutError("timed out"), ConnectionResetError(104, "Connection reset by peer")],
)
def test_timeout_and_reset_are_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        assert kwargs.get("timeout") == dl.TIMEOUT_S  # never waits forever
        raise exc

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    with pytest.raises(DataError) as err:
        download("movielens-1m", cache_dir=tmp_path)
    assert err.value.findings[0].code == "offline"
    assert "wager data info /path/to/ml-1m" in str(err.value)


def test_http_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)  # type: ignore[arg-type]

    monkeypatch.setattr(urllib.request, "urlopen", not_found)
    with pytest.raises(DataError, match="HTTP 404") as err:
        download("movielens-latest-small", cache_dir=tmp_path)
    assert "/path/to/ml-latest-small" in str(err.value)


def test_unknown_name_lists_names(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        download("movielens_100k", cache_dir=tmp_path)
    msg = str(err.value)
    assert "Did you mean 'movielens-100k'" in msg
    assert "movielens-100k, movielens-1m, movielens-latest-small" in msg


def test_unsafe_archive_member_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _zip_bytes({"ml-tiny/u.data": U_DATA, "../evil.txt": b"x"})
    _serve(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    with pytest.raises(DataError, match="outside the cache"):
        download("tiny", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "evil.txt").exists()


def test_archive_without_expected_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _zip_bytes({"other/u.data": U_DATA})
    _serve(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    with pytest.raises(DataError, match="no top-level directory 'ml-tiny'"):
        download("tiny", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- what is not ours
# Before (issue 13, defect 11): a target folder that wager did not create was deleted with
# everything in it (shutil.rmtree) and replaced by the download.


def _tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readme: bytes = b"tiny\n") -> str:
    payload = _zip_bytes({"ml-tiny/u.data": U_DATA, "ml-tiny/README": readme})
    _serve(tmp_path, monkeypatch, payload, hashlib.sha256(payload).hexdigest())
    return hashlib.sha256(payload).hexdigest()


def _user_folder(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")


def _user_file(target: Path) -> None:
    target.parent.mkdir(parents=True)
    target.write_text("mine")


def _old_download_plus_user_file(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "u.data").write_text("old")
    (target / ".wager-sha256").write_text("0" * 64 + "\nu.data\n")
    (target / "sub").mkdir()
    (target / "sub" / "notes.txt").write_text("mine")


def _legacy_marker_other_sha(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "u.data").write_text("old")
    (target / ".wager-sha256").write_text("0" * 64 + "\n")


@pytest.mark.parametrize(
    ("make", "code", "expected"),
    [
        (_user_folder, "target_exists", "was not written by wager data download"),
        (_user_file, "target_exists", "this is not a folder"),
        (
            _old_download_plus_user_file,
            "foreign_files",
            "files that wager did not write: sub/notes.txt",
        ),
        (_legacy_marker_other_sha, "target_exists", "does not list the files it wrote"),
    ],
)
def test_refuses_to_replace_what_wager_did_not_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make, code: str, expected: str
) -> None:
    _tiny(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    target = cache / "ml-tiny"
    make(target)
    before = {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}
    with pytest.raises(DataError) as err:
        download("tiny", cache_dir=cache)
    (f,) = err.value.findings
    assert f.code == code and expected in f.message
    assert f.message.startswith(str(target)) and "--cache-dir" in f.message
    after = {p: p.read_bytes() for p in sorted(cache.rglob("*")) if p.is_file()}
    assert after == before  # nothing deleted, nothing overwritten, no temp folder left


def test_empty_folder_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny(tmp_path, monkeypatch)
    (tmp_path / "cache" / "ml-tiny").mkdir(parents=True)
    target = download("tiny", cache_dir=tmp_path / "cache")
    assert (target / "u.data").read_bytes() == U_DATA


def test_previous_download_is_replaced_when_all_its_files_are_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    _tiny(tmp_path, monkeypatch, readme=b"v1\n")
    target = download("tiny", cache_dir=cache)
    (cache / "ml-tiny.zip").unlink()
    (tmp_path / "v2").mkdir()
    _tiny(tmp_path / "v2", monkeypatch, readme=b"v2\n")  # the pinned archive changed
    assert download("tiny", cache_dir=cache) == target
    assert (target / "README").read_bytes() == b"v2\n"
    assert sorted(c.name for c in cache.iterdir()) == ["ml-tiny", "ml-tiny.zip"]


def test_foreign_archive_of_the_same_name_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _tiny(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-tiny.zip").write_bytes(b"the user's own zip")
    (cache / "ml-tiny.zip.part").write_bytes(b"the user's own file")
    target = download("tiny", cache_dir=cache)
    assert (target / "u.data").read_bytes() == U_DATA
    assert (cache / "ml-tiny.zip").read_bytes() == b"the user's own zip"  # before: overwritten
    assert (cache / "ml-tiny.zip.part").read_bytes() == b"the user's own file"  # before: deleted


def test_interrupted_download_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Cut:
        def __enter__(self) -> Cut:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def read(self, n: int) -> bytes:
            raise KeyboardInterrupt

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: Cut())
    (tmp_path / "cache").mkdir()
    with pytest.raises(KeyboardInterrupt):
        download("movielens-100k", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
