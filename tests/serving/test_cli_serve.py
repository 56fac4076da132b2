"""``wager serve``: every check that fails before anything is served (flags, keys, the
loopback rule, the folder, the database URL), each paired with its message; the wiring up
to ``uvicorn.run`` with the server call and the event store replaced; the JSON log lines."""

from __future__ import annotations

import json
import logging
import re
import socket
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from serving.tiny_runs import train_registry
from wager.cli import app
from wager.cli.serve import JsonLines, default_db, is_loopback, redact


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("cli_serve"), ("v1",))


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAGER_API_KEYS", raising=False)


def _serve(*args: str | Path) -> Result:
    return CliRunner().invoke(app, ["serve", *[str(a) for a in args]])


def _message(result: Result) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).split())


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--host", "0.0.0.0"], "error: --host 0.0.0.0 is reachable from other machines and "
         "no API key is configured: set WAGER_API_KEYS or --keys FILE (see `wager serve "
         "--help`), serve on 127.0.0.1, or pass --insecure to serve without keys anyway"),
        (["--host", "bad host!"], "error: --host 'bad host!' is not an IP address or host "
         "name"),
        (["--port", "0"], "error: --port must be in 1..65535, got 0"),
        (["--port", "70000"], "error: --port must be in 1..65535, got 70000"),
        (["--workers", "0"], "error: --workers must be in 1..64 server processes, got 0"),
        (["--workers", "65"], "error: --workers must be in 1..64 server processes, got 65"),
        (["--db", "mysql://u:pw@h/db"], "error: --db mysql://u:***@h/db: not a database URL "
         "wager stores events in"),
        (["--recalibrate-prior", "50"], "error: --recalibrate-prior is a setting of "
         "--recalibrate; add --recalibrate to recalibrate online, or drop it"),
        (["--recalibrate", "--recalibrate-every", "0"], "error: --recalibrate-every must be a "
         "number > 0, got 0.0"),
        (["--recalibrate", "--recalibrate-delay", "-1"], "error: --recalibrate-delay must be a "
         "number >= 0, got -1.0"),
        (["--recalibrate", "--recalibrate-rank", "-2"], "error: --recalibrate-rank must be >= "
         "0, got -2"),
        (["--recalibrate", "--precomputed", "top.parquet"], "error: --recalibrate cannot be "
         "combined with --precomputed"),
    ],
)  # fmt: skip
def test_bad_flags_are_refused_before_serving(registry_dir, flags, message):
    result = _serve(registry_dir, *flags)
    assert result.exit_code == 2
    assert _message(result).startswith(message)


def test_a_port_in_use_is_named_before_any_model_is_loaded(tmp_path):
    """The folder does not even exist: the port is checked first, as a flag."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(tmp_path / "no-such-registry", "--port", port)
    assert result.exit_code == 2
    assert _message(result).startswith(
        f"error: --port {port}: cannot listen on 127.0.0.1:{port} (Address already in use); "
        "another process may be serving there: pick another --port or stop that process"
    )


def test_an_unresolvable_host_is_named(tmp_path):
    result = _serve(tmp_path, "--host", "no-such-host.invalid")
    assert result.exit_code == 2
    assert _message(result).startswith("error: --host 'no-such-host.invalid' does not resolve")


def test_a_missing_folder_is_named(tmp_path):
    result = _serve(tmp_path / "nope")
    assert result.exit_code == 2
    assert _message(result).startswith(f"error: {tmp_path / 'nope'}: no such run or registry")


def test_a_folder_without_runs_is_named(tmp_path):
    result = _serve(tmp_path)
    assert result.exit_code == 2
    assert _message(result).startswith(f"error: {tmp_path} holds no wager run")


def test_a_bad_keys_file_names_the_line(registry_dir, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# keys\nk1:recommend\nk2:recomend\n")
    result = _serve(registry_dir, "--keys", keys)
    assert result.exit_code == 2
    assert _message(result) == (
        f"error: {keys}:3: unknown scope 'recomend'; use one of recommend, feedback, admin"
    )


def test_a_bad_env_key_names_the_entry(registry_dir, monkeypatch):
    monkeypatch.setenv("WAGER_API_KEYS", "k1:admin;k2")
    result = _serve(registry_dir)
    assert result.exit_code == 2
    assert _message(result).startswith("error: WAGER_API_KEYS entry 2: an API key entry is")


def test_keys_from_both_file_and_env_are_refused(registry_dir, tmp_path, monkeypatch):
    keys = tmp_path / "keys.txt"
    keys.write_text("k1:admin\n")
    monkeypatch.setenv("WAGER_API_KEYS", "k2:admin")
    result = _serve(registry_dir, "--keys", keys)
    assert result.exit_code == 2
    assert "both --keys" in _message(result) and "keep one" in _message(result)


def _fake_serving(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the URL the real event store opens and replace uvicorn.run by a recorder."""
    seen: dict[str, Any] = {}
    from wager.serving import store

    real = store.EventStore

    class Store(real):  # type: ignore[misc,valid-type]
        def __init__(self, url: str) -> None:
            super().__init__(url)
            seen["db"] = url

    monkeypatch.setattr(store, "EventStore", Store)
    import uvicorn

    def run(service: Any, **kwargs: Any) -> None:
        seen["app"], seen["run"] = service, kwargs

    monkeypatch.setattr(uvicorn, "run", run)
    return seen


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.1"])
def test_checked_flags_reach_uvicorn(registry_dir, tmp_path, monkeypatch, host):
    seen = _fake_serving(monkeypatch)
    keys = tmp_path / "keys.txt"
    keys.write_text("k1:recommend\n")
    result = _serve(registry_dir, "--host", host, "--port", "8123", "--keys", keys)
    assert result.exit_code == 0, result.output
    assert seen["db"] == f"sqlite:///{registry_dir.resolve() / 'events.db'}"
    assert (seen["run"]["host"], seen["run"]["port"]) == (host, 8123)
    assert seen["run"]["access_log"] is True  # on unless --no-access-log
    client = TestClient(seen["app"])
    assert client.post("/v1/recommend", json={"user_id": "u1"}).status_code == 401
    r = client.post("/v1/recommend", json={"user_id": "u1"}, headers={"x-api-key": "k1"})
    assert r.status_code == 200 and r.json()["model_version"] == "v1"


def test_insecure_serves_without_keys_anywhere(registry_dir, monkeypatch, fresh_postgres_url):
    seen = _fake_serving(monkeypatch)
    # the real PostgreSQL test server (trust authentication: the password is not checked,
    # only kept out of the log line)
    user, rest = fresh_postgres_url.removeprefix("postgresql+psycopg://").split("@", 1)
    db = f"postgresql://{user}:secret@{rest}"
    result = _serve(registry_dir / "v1", "--host", "0.0.0.0", "--insecure", "--db", db,
                    "--no-access-log")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen["run"]["access_log"] is False
    assert f"events: postgresql://{user}:***@{rest}; no API keys" in _message(result)
    assert "secret" not in result.output
    assert TestClient(seen["app"]).post("/v1/recommend", json={"user_id": "u1"}).status_code == 200


def test_default_db_is_beside_a_run_and_inside_a_registry(registry_dir):
    assert default_db(registry_dir) == f"sqlite:///{registry_dir.resolve()}/events.db"
    assert default_db(registry_dir / "v1") == f"sqlite:///{registry_dir.resolve()}/events.db"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.3.2.1", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.5", False), ("example.com", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_redact_hides_passwords_only():
    assert redact("postgresql://user:p@ss:w@host:5432/db") == "postgresql://user:***@host:5432/db"
    assert redact("sqlite:////tmp/events.db") == "sqlite:////tmp/events.db"


def test_access_lines_are_json_objects():
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/v1/recommend", "1.1", 200), None,
    )  # fmt: skip
    line = json.loads(JsonLines().format(record))
    assert {k: line[k] for k in ("level", "logger", "client", "method", "path", "status")} == {
        "level": "info", "logger": "uvicorn.access", "client": "127.0.0.1:5000",
        "method": "POST", "path": "/v1/recommend", "status": 200,
    }  # fmt: skip
    other = logging.LogRecord("wager.serving", logging.WARNING, __file__, 1, "x %s", ("y",), None)
    assert json.loads(JsonLines().format(other))["msg"] == "x y"
