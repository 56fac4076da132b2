"""One active version across server processes: activations go through the event store and
every app sharing it follows (``create_app(follow_s=...)``, what ``wager serve --workers N``
builds in each worker). Two apps on one real SQLite file stand for two workers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.tiny_runs import train_registry
from wager.serving.activation import (
    ACTIVE_KEY,
    WORKER_PREFIX,
    ActivationFollower,
    ActivationSupersededError,
    ActivationTimeoutError,
    stale_after_s,
)
from wager.serving.app import create_app
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("act"), ("v1", "v2"))


def _eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return check()


def _active(client: TestClient) -> str:
    return str(client.get("/v1/models").json()["active"])


def test_an_activation_reaches_every_app_sharing_the_store(
    two_versions: Path, tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'events.db'}"
    with EventStore(db) as sa_, EventStore(db) as sb:
        a = create_app(ModelRegistry(two_versions), sa_, None, follow_s=0.05)
        b = create_app(ModelRegistry(two_versions), sb, None, follow_s=0.05)
        with TestClient(a) as ca, TestClient(b) as cb:
            assert _active(ca) == _active(cb) == "v2"  # the newest; nothing stored yet
            r = ca.post("/v1/models/v1/activate")
            assert r.status_code == 200 and r.json() == {"active": "v1", "previous": "v2"}
            assert sb.get_state(ACTIVE_KEY) == "v1"
            assert _eventually(lambda: _active(cb) == "v1")
            body = {"user_id": "u1", "k": 2}
            assert cb.post("/v1/recommend", json=body).json()["model_version"] == "v1"
            # a third process starting now serves the stored version from its first request
            with EventStore(db) as sc:
                c = create_app(ModelRegistry(two_versions), sc, None, follow_s=60.0)
                with TestClient(c) as cc:
                    assert _active(cc) == "v1"


def test_a_stored_version_that_cannot_be_served_is_logged_once_and_ignored(
    two_versions: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        registry = ModelRegistry(two_versions)

        def activate(version: str) -> None:
            registry.activate(version)

        follower = ActivationFollower(store, lambda: registry.active, activate)
        store.set_state(ACTIVE_KEY, "v9")
        with caplog.at_level("ERROR", logger="wager.serving"):
            assert follower.sync() is False and follower.sync() is False
        assert registry.active == "v2"
        errors = [r for r in caplog.records if "cannot follow" in r.getMessage()]
        assert len(errors) == 1 and "v9" in errors[0].getMessage()
        store.set_state(ACTIVE_KEY, "v1")
        assert follower.sync() is True and registry.active == "v1"
        assert follower.sync() is False  # already there
    with pytest.raises(ValueError, match="every_s must be > 0"):
        ActivationFollower(store, lambda: "v1", lambda v: None, every_s=0)


class _FailingWrites(EventStore):
    """A real SQLite store whose state writes fail (a database gone read-only)."""

    def set_state(self, key: str, value: str) -> None:
        raise OSError("disk I/O error")


def test_a_failed_store_write_answers_503_and_the_process_returns_to_the_stored_version(
    two_versions: Path, tmp_path: Path
) -> None:
    db = tmp_path / "events.db"
    with EventStore(f"sqlite:///{db}") as store:
        store.set_state(ACTIVE_KEY, "v2")
    with _FailingWrites(f"sqlite:///{db}") as failing:
        app = create_app(ModelRegistry(two_versions), failing, None, follow_s=0.05)
        with TestClient(app) as client:
            r = client.post("/v1/models/v1/activate")
            assert r.status_code == 503 and "storing the active model version" in r.text
            assert _eventually(lambda: _active(client) == "v2")


def test_without_follow_s_an_activation_stays_in_its_process(
    two_versions: Path, tmp_path: Path
) -> None:
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        with TestClient(create_app(ModelRegistry(two_versions), store, None)) as client:
            assert client.post("/v1/models/v1/activate").status_code == 200
        assert store.get_state(ACTIVE_KEY) is None


# -- atomic across processes: the route answers once every live process serves the version --


def _beats(store: EventStore) -> dict[str, str]:
    return {k: json.loads(v)["version"] for k, v in store.states(WORKER_PREFIX).items()}


def test_the_activation_answers_once_every_app_serves_it(
    two_versions: Path, tmp_path: Path
) -> None:
    """b reads the store only every 0.4 s, yet right after a's activation answers, b serves
    the new version: the route waited for b's heartbeat. Each app's heartbeat names what it
    serves, and an app that stops removes its own."""
    db = f"sqlite:///{tmp_path / 'events.db'}"
    with EventStore(db) as sa_, EventStore(db) as sb:
        a = create_app(ModelRegistry(two_versions), sa_, None, follow_s=0.05)
        b = create_app(ModelRegistry(two_versions), sb, None, follow_s=0.4)
        with TestClient(a) as ca:
            with TestClient(b) as cb:
                assert sorted(_beats(sa_).values()) == ["v2", "v2"]
                start = time.monotonic()
                r = ca.post("/v1/models/v1/activate")
                waited = time.monotonic() - start
                assert r.status_code == 200 and r.json() == {"active": "v1", "previous": "v2"}
                assert _active(cb) == "v1"  # no waiting here: it already serves v1
                body = {"user_id": "u1", "k": 2}
                assert cb.post("/v1/recommend", json=body).json()["model_version"] == "v1"
                assert sorted(_beats(sa_).values()) == ["v1", "v1"]
                assert waited > 0.05  # it did wait for b (up to one of b's reads)
            assert len(_beats(sa_)) == 1  # b stopped: its heartbeat is gone
            assert ca.post("/v1/models/v2/activate").status_code == 200  # a alone: at once


def test_a_process_that_cannot_follow_undoes_the_activation(
    two_versions: Path, tmp_path: Path
) -> None:
    """A live process that cannot load the version (its heartbeat keeps naming v2): the
    route gives up after its timeout, answers 503 naming that process, and the previous
    version is stored and served again."""
    db = f"sqlite:///{tmp_path / 'events.db'}"
    with EventStore(db) as sa_, EventStore(db) as sb:

        def cannot_load(version: str) -> None:
            raise OSError(f"{version}: weights unreadable")

        stuck = ActivationFollower(sb, lambda: "v2", cannot_load, every_s=0.05, worker="h:9")
        stuck.start()
        assert _eventually(lambda: "worker/h:9" in sb.states(WORKER_PREFIX))
        try:
            a = create_app(ModelRegistry(two_versions), sa_, None, follow_s=0.05)
            with TestClient(a) as ca:
                a.state.service.follower.timeout_s = 0.5
                r = ca.post("/v1/models/v1/activate")
                assert r.status_code == 503
                assert "h:9 (serving v2)" in r.json()["detail"]
                assert "within 0.5 s" in r.json()["detail"] and "undone" in r.json()["detail"]
                assert _active(ca) == "v2" and sa_.get_state(ACTIVE_KEY) == "v2"
                body = {"user_id": "u1", "k": 2}
                assert ca.post("/v1/recommend", json=body).json()["model_version"] == "v2"
        finally:
            stuck.stop()
        assert _beats(sa_) == {}


def test_stale_and_foreign_heartbeats_do_not_hold_an_activation(
    two_versions: Path, tmp_path: Path
) -> None:
    """A process that died leaves a heartbeat that goes stale (older than three reads plus
    a second); a value that is no heartbeat is ignored."""
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        old = time.time() - stale_after_s(0.5) - 1.0
        store.set_state(WORKER_PREFIX + "gone:1",
                        json.dumps({"version": "v2", "ts": old, "every_s": 0.5}))  # fmt: skip
        store.set_state(WORKER_PREFIX + "odd:2", "not json")
        app = create_app(ModelRegistry(two_versions), store, None, follow_s=0.05)
        with TestClient(app) as client:
            app.state.service.follower.timeout_s = 5.0
            start = time.monotonic()
            assert client.post("/v1/models/v1/activate").status_code == 200
            assert time.monotonic() - start < 2.0


def test_an_activation_superseded_while_it_waits_says_so(tmp_path: Path) -> None:
    """While one process waits for a lagging one, another activation is stored: the wait
    ends with ActivationSupersededError naming what the service now serves (the route: 409)."""
    with EventStore(f"sqlite:///{tmp_path / 'events.db'}") as store:
        fresh = {"version": "v2", "ts": time.time() + 60.0, "every_s": 0.5}
        store.set_state(WORKER_PREFIX + "slow:3", json.dumps(fresh))
        store.set_state(ACTIVE_KEY, "v3")  # stored by another process meanwhile
        follower = ActivationFollower(store, lambda: "v1", lambda v: None, worker="me:1")
        assert follower.lagging("v1") == {"slow:3": "v2"}
        superseded = r"superseded by another one \(of v3\)"
        with pytest.raises(ActivationSupersededError, match=superseded):
            follower.wait_for("v1")
        store.set_state(ACTIVE_KEY, "v1")
        follower.timeout_s = 0.2
        with pytest.raises(ActivationTimeoutError, match="slow:3 \\(serving v2\\)"):
            follower.wait_for("v1")


class _CountingWrites(EventStore):
    """A real SQLite store that counts its state writes."""

    writes = 0

    def set_state(self, key: str, value: str) -> None:
        type(self).writes += 1
        super().set_state(key, value)


def test_heartbeats_are_written_on_a_change_and_at_most_once_a_second_otherwise(
    tmp_path: Path,
) -> None:
    with _CountingWrites(f"sqlite:///{tmp_path / 'events.db'}") as store:
        serving = ["v1"]
        follower = ActivationFollower(
            store, lambda: serving[0], lambda v: serving.__setitem__(0, v), every_s=0.01
        )
        for _ in range(20):  # 20 reads within well under a second: one heartbeat
            follower.sync()
        assert _CountingWrites.writes == 1
        store.set_state(ACTIVE_KEY, "v2")  # the 2nd write
        assert follower.sync() is True  # followed: its heartbeat is written at once
        assert _CountingWrites.writes == 3 and _beats(store) == {
            WORKER_PREFIX + follower.worker: "v2"
        }
        assert stale_after_s(0.01) == 4.0 and stale_after_s(2.0) == 7.0
