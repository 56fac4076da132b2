"""Real database servers for the serving tests: a SQLite file per test, one throwaway
PostgreSQL server per test session (started from the OS package's binaries; a fresh database
per test) and throwaway Redis servers (``redis-server`` from the OS package, a free loopback
port, no persistence). No mocks: CI must test PostgreSQL for real, so missing binaries fail
the tests with the package to install instead of skipping them; a missing ``redis-server``
skips the Redis tests (naming the package) only outside CI (the variable ``CI`` unset)."""

from __future__ import annotations

import itertools
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serving.tiny_runs import train_fast_registry
from wager.recommender import Recommender
from wager.serving.store import EventStore

_PG_USER = "wager"  # the server's superuser, which the tests connect as (trust auth, loopback)
_OS_USER = "postgres"  # initdb refuses to run as root: the server runs as this OS user then
_database_numbers = itertools.count()


def _postgres_bindir() -> Path | None:
    """The folder holding initdb / pg_ctl: ``pg_config --bindir``, else the highest
    /usr/lib/postgresql/<version>/bin."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path.parent.name))

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


def _as_server_user(args: list[str]) -> list[str]:
    """``args`` run as the ``postgres`` OS user when the tests run as root."""
    if os.geteuid() != 0:
        return args
    if shutil.which("runuser"):
        return ["runuser", "-u", _OS_USER, "--", *args]
    return ["su", _OS_USER, "-s", "/bin/sh", "-c", shlex.join(args)]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(args: list[str], what: str, log: Path | None = None) -> None:
    done = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        log_text = log.read_text(errors="replace") if log is not None and log.exists() else ""
        pytest.fail(
            f"PostgreSQL test server: {what} failed (exit {done.returncode}): {shlex.join(args)}"
            f"\n{done.stdout}\n{done.stderr}\n{log_text}"
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """The URL of a database on a throwaway PostgreSQL server (127.0.0.1, a free port),
    started once per session and removed at its end."""
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl) not found by `pg_config --bindir` nor "
            "under /usr/lib/postgresql/*/bin: install the OS package `postgresql` "
            "(apt-get install -y postgresql); the serving tests run against a real server"
        )
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(_OS_USER)
        except KeyError:
            pytest.fail(
                f"the tests run as root and initdb refuses root, but there is no OS user "
                f"'{_OS_USER}' to run PostgreSQL as: install the OS package `postgresql` "
                "(it creates that user) or run the tests as another user"
            )
    # tempfile, not tmp_path: pytest's base folder is private to the test user
    root = Path(tempfile.mkdtemp(prefix="wager-pg-"))
    data, sockets, log = root / "data", root / "sock", root / "server.log"
    sockets.mkdir()
    if os.geteuid() == 0:
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()
    started = False
    try:
        _run(
            [str(bindir / "initdb"), "-D", str(data), "-U", _PG_USER, "-A", "trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            "initdb",
        )  # fmt: skip
        # fsync off: the tests never crash the machine, and a session creates ~40 databases
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w",
             "-t", "60", "start"],
            "pg_ctl start",
            log,
        )  # fmt: skip
        started = True
        _run(
            [str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", _PG_USER,
             "wager_test"],
            "createdb",
        )  # fmt: skip
        yield f"postgresql+psycopg://{_PG_USER}@127.0.0.1:{port}/wager_test"
    finally:
        if started:
            subprocess.run(
                _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                capture_output=True,
                timeout=120,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url: str) -> str:
    """The URL of a new, empty database on the session's PostgreSQL server."""
    import psycopg

    name = f"wager_t{next(_database_numbers)}"
    admin = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[EventStore]:
    """An event store in a new SQLite file."""
    with EventStore.sqlite(tmp_path / "events.db") as store:
        yield store


@pytest.fixture
def postgres_store(fresh_postgres_url: str) -> Iterator[EventStore]:
    """An event store in a new database on the session's PostgreSQL server."""
    with EventStore(fresh_postgres_url) as store:
        yield store


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of a new, empty event-store database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'events.db'}"
    return str(request.getfixturevalue("fresh_postgres_url"))


@pytest.fixture
def store(store_url: str) -> Iterator[EventStore]:
    """An event store on each backend (SQLite file, PostgreSQL database)."""
    with EventStore(store_url) as opened:
        yield opened


# ----------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    """A ``redis-server`` process of one test (or session): its URL and how to stop it."""

    process: subprocess.Popen[bytes]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """Stop the server (the port then refuses connections) and remove its folder."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def _under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def start_redis() -> RedisServer:
    """Start a throwaway ``redis-server`` on a free 127.0.0.1 port (no RDB / AOF files) and
    wait until it answers PING; skips the test when the binary is missing outside CI."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = (
            "redis-server not found on PATH: install the OS package `redis-server` "
            "(apt-get install -y redis-server); the cache tests run against a real server"
        )
        if _under_ci():
            pytest.fail(message)
        pytest.skip(message)
    root = Path(tempfile.mkdtemp(prefix="wager-redis-"))
    port = _free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(root),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning",
            "--logfile", str(root / "server.log")]  # fmt: skip
    server = RedisServer(subprocess.Popen(args), port, root)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return server
        except OSError:
            pass
        if server.process.poll() is not None:
            break
        time.sleep(0.05)
    log = (
        (root / "server.log").read_text(errors="replace") if (root / "server.log").exists() else ""
    )
    server.stop()
    pytest.fail(f"redis-server did not answer PING on 127.0.0.1:{port}: {shlex.join(args)}\n{log}")


@pytest.fixture(scope="session")
def redis_session_server() -> Iterator[RedisServer]:
    """One throwaway Redis server for the test session."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_session_server: RedisServer) -> str:
    """The URL of the session's Redis server, emptied (FLUSHALL) for this test."""
    with socket.create_connection(("127.0.0.1", redis_session_server.port), timeout=5) as sock:
        sock.sendall(b"FLUSHALL\r\n")
        assert sock.recv(64).startswith(b"+OK")
    return redis_session_server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis server of this test alone (which the test may stop)."""
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def fast_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry whose model the serving fast path takes (``tiny_runs.FAST_EXTRA``)."""
    return train_fast_registry(tmp_path_factory.mktemp("fast"))


@pytest.fixture(scope="session")
def rec(fast_registry: Path) -> Recommender:
    """The recommender of :func:`fast_registry` (shared: tests must not change it)."""
    return Recommender.load(fast_registry / "v1")
