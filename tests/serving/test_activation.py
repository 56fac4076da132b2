"""One active version across server processes: activations go through the event store and
every app sharing it follows (``create_app(follow_s=...)``, what ``wager serve --workers N``
builds in each worker). Two apps on one real SQLite file stand for two workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.tiny_runs import train_registry
from wager.serving.activation import ACTIVE_KEY, ActivationFollower
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
