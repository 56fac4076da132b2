"""Online recalibration in the service (``wager serve --recalibrate``): refits from the event
store, prequential logging of the model's own mean, metrics, and the settings' checks."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from wager.data.synthetic import PopularityPolicy, SyntheticWorld, WorldConfig
from wager.pipeline import RecommenderSimulationModel, simulation_run_config
from wager.recommender import Recommender
from wager.serving.app import create_app
from wager.serving.recalibration import (
    MIN_CHANGE,
    RecalibrationSettings,
    Recalibrator,
    model_means,
    recalibrates,
)
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore
from wager.uncertainty.recalibration import OnlineRecalibration

N_USERS, N_ITEMS = 60, 10


@pytest.fixture(scope="module")
def click_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A click model (the simulator's) trained on a logged day, saved as version v1."""
    world = SyntheticWorld(
        WorldConfig(n_users=N_USERS, n_items=N_ITEMS, n_days=1, new_items_per_day=0, seed=5)
    )
    model = RecommenderSimulationModel(replace(simulation_run_config(), seed=5), world)
    model.fit(
        world.sample_log(4000, PopularityPolicy(), day=0, seed=5),
        world.items.iloc[world.available_items(0)].reset_index(drop=True),
    )
    assert model.recommender_ is not None
    folder = tmp_path_factory.mktemp("recal") / "registry"
    model.recommender_.save(folder / "v1")
    return folder


def _serve_day(client: TestClient, requests: int, click_rank1: float, seed: int) -> list[Any]:
    """``requests`` greedy requests at position 1; the rank-1 item is clicked with
    probability ``click_rank1`` (whatever the model predicts), the others never."""
    rng = np.random.default_rng(seed)
    out = []
    for n in range(requests):
        body = {"user_id": str(n % N_USERS), "k": 3, "context": {"position": 1},
                "exclude_seen": False}  # fmt: skip
        answer = client.post("/v1/recommend", json=body).json()
        events = [
            {"event_id": f"{answer['request_id']}-{i['rank']}",
             "request_id": answer["request_id"], "item_id": i["item_id"],
             "click": int(i["rank"] == 1 and rng.random() < click_rank1)}
            for i in answer["items"]
        ]  # fmt: skip
        assert client.post("/v1/feedback", json={"events": events}).status_code == 200
        out.append(answer)
    return out


def test_the_service_refits_from_its_logs_and_logs_the_models_own_mean(click_registry, tmp_path):
    settings = RecalibrationSettings(every_s=3600.0, delay_s=0.0, prior=20.0)  # refit by hand
    db = f"sqlite:///{tmp_path / 'events.db'}"
    with EventStore(db) as store:
        app = create_app(ModelRegistry(click_registry), store, None, recalibration=settings,
                         seed=1)  # fmt: skip
        with TestClient(app) as client:  # the lifespan's first refresh: no rows, identity
            service = app.state.service
            assert service.online("v1", "") is None
            _serve_day(client, 120, click_rank1=0.9, seed=0)
            frame = store.served_with_feedback()
            # before any refit the served mean is the model's own
            assert np.allclose(frame["model_mean"], frame["mean"])
            fitted = service.recalibrator.refresh()[("v1", "")]
            top = frame[frame["position"] == 1]
            expected = OnlineRecalibration.fit(top["model_mean"], top["click"].fillna(0), prior=20)
            assert (fitted.slope, fitted.intercept) == pytest.approx(
                (expected.slope, expected.intercept), abs=1e-9
            )
            assert service.online("v1", "") is fitted and fitted.intercept > 0  # clicked more
            assert service.online("v1", "exp/other") is None  # maps are per arm
            after = _serve_day(client, 30, click_rank1=0.9, seed=1)
            metrics = client.get("/metrics").text
    frame = EventStore(db, create=False).served_with_feedback()
    later = frame[frame["request_id"].isin([a["request_id"] for a in after])]
    raw = Recommender.load(click_registry / "v1")  # the model with no online map
    own = raw.predict(later["user_id"].tolist(), later["item_id"].tolist(), {"position": 1})
    assert np.allclose(later["model_mean"], own.mean.numpy(), atol=1e-5)
    assert np.allclose(later["mean"], fitted.transform_mean(later["model_mean"]), atol=1e-6)
    assert (later["mean"] > later["model_mean"]).all()
    slope = re.search(
        r'wager_online_recalibration\{arm="",parameter="slope",version="v1"\} (\S+)', metrics
    )
    assert slope is not None and float(slope[1]) == pytest.approx(fitted.slope)
    model_ctr = re.search(r'wager_calibration_model_predicted_ctr\{arm="",slot="top"\} (\S+)',
                          metrics)  # fmt: skip
    top = frame[frame["position"] == 1]
    assert model_ctr is not None
    assert float(model_ctr[1]) == pytest.approx(top["model_mean"].mean(), rel=1e-6)


class _Outcomes:
    """An in-memory ServedOutcomes."""

    def __init__(self, means: list[float], clicks: list[float]) -> None:
        self.means, self.clicks = means, clicks
        self.asked: list[tuple[str, int | None, float]] = []

    def served_outcomes(self, version: str, arm: str, position: int | None, before: float) -> Any:
        self.asked.append((version, arm, position, before))
        return np.asarray(self.means), np.asarray(self.clicks)


def test_a_refit_replaces_the_map_only_when_it_moved(click_registry):
    rec = Recommender.load(click_registry / "v1")
    assert recalibrates(rec)
    rng = np.random.default_rng(0)
    means = rng.uniform(0.05, 0.3, 2000)
    outcomes = _Outcomes(means.tolist(), (rng.random(2000) < 0.5 * means).tolist())
    published: list[tuple[str, str, OnlineRecalibration]] = []
    settings = RecalibrationSettings(delay_s=5.0, position=None)
    served = [("v1", "e/a", rec), ("v1", "e/a", rec)]
    fix = Recalibrator(
        outcomes, lambda: served, settings, lambda *got: published.append(got), clock=lambda: 100
    )
    first = fix.refresh()[("v1", "e/a")]
    assert fix.map_for("v1", "e/a") is first and first.intercept < 0 and len(published) == 1
    assert outcomes.asked == [("v1", "e/a", None, 95.0)]  # each pair once; delay applied
    outcomes.means.append(0.2)  # one more row: the map moves far less than MIN_CHANGE
    outcomes.clicks.append(0.0)
    assert fix.refresh()[("v1", "e/a")] is first and len(published) == 1
    refit = OnlineRecalibration.fit(outcomes.means, outcomes.clicks, prior=settings.prior)
    assert abs(refit.intercept - first.intercept) < MIN_CHANGE


def test_the_logged_model_mean_inverts_the_map_the_slate_was_served_with():
    a = OnlineRecalibration(1.2, 0.3)
    assert model_means(None, [0.2, None]) == [0.2, None]
    undone = model_means(a, [float(a.transform_mean(0.1)), None])
    assert undone[0] == pytest.approx(0.1) and undone[1] is None


@pytest.fixture(scope="module")
def fast_click_run(tmp_path_factory: pytest.TempPathFactory) -> Recommender:
    """A 3-member biased-MF click ensemble without context fields (the fast path takes it)."""
    folder = tmp_path_factory.mktemp("fastclick")
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 40, 1500), rng.integers(0, 15, 1500)
    clicks = (rng.random(1500) < 0.1 + 0.03 * (items % 5)).astype(int)
    frame = pd.DataFrame({"user_id": users.astype(str), "item_id": items.astype(str),
                          "click": clicks})  # fmt: skip
    frame.to_csv(folder / "clicks.csv", index=False)
    (folder / "run.toml").write_text(
        f"""seed = 0
[schema]
user = "user_id"
item = "item_id"
label = "click"
label_kind = "click"
[data]
path = "{folder / "clicks.csv"}"
format = "table"
split = "random"
test_fraction = 0.1
valid_fraction = 0.2
[model]
type = "biased_mf"
dim = 4
[training]
epochs = 3
batch_size = 128
[ensemble]
members = 3
"""
    )
    from wager.config import RunConfig

    return Recommender(RunConfig.load(folder / "run.toml")).fit(frame)


def test_the_fast_path_and_the_model_apply_a_map_alike(fast_click_run):
    from wager.policies import UCB, PolicyState
    from wager.recommender.fastpath import FastPath

    rec, online = fast_click_run, OnlineRecalibration(1.3, -0.6)
    fast = FastPath.build(rec)
    assert fast is not None
    for user in ("3", "17", "unknown-user"):
        kwargs = {"policy": UCB(1.0), "candidates": 12, "exclude_seen": False}
        plain = rec.recommend([user], 4, state=PolicyState.seeded(0), **kwargs)
        frame = rec.recommend([user], 4, state=PolicyState.seeded(0), online=online, **kwargs)
        scored = fast.score(user, 12, exclude_seen=False)
        assert scored is not None
        slate = fast.select(scored, 4, UCB(1.0), PolicyState.seeded(0), online=online)
        assert len(frame) == 4 and slate.items.tolist() == frame["item"].tolist()
        np.testing.assert_allclose(slate.mean, frame["mean"].to_numpy(float), atol=1e-5)
        np.testing.assert_allclose(slate.std, frame["std"].to_numpy(float), atol=1e-5)
        np.testing.assert_allclose(slate.propensity, frame["propensity"].to_numpy(float), atol=1e-6)
        # the map lowered every served probability (intercept < 0 at these CTRs)
        own = rec.predict([user] * 4, frame["item"].tolist()).mean.numpy()
        np.testing.assert_allclose(
            frame["mean"].to_numpy(float), online.transform_mean(own), atol=1e-5
        )
        assert (frame["mean"].to_numpy() < own).all()
        assert plain["mean"].tolist() != frame["mean"].tolist()


def test_settings_are_checked():
    for bad in ({"every_s": 0}, {"prior": -1}, {"delay_s": float("nan")}, {"position": 0}):
        with pytest.raises(ValueError, match="recalibration"):
            RecalibrationSettings(**bad)


def test_create_app_refuses_recalibration_with_a_precomputed_table(click_registry, tmp_path):
    with (
        EventStore.sqlite(tmp_path / "e.db") as store,
        pytest.raises(ValueError, match="precomputed"),
    ):
        create_app(ModelRegistry(click_registry), store, None, precomputed=pd.DataFrame(),  # type: ignore[arg-type]
                   recalibration=RecalibrationSettings())  # fmt: skip


def test_a_failing_first_refit_does_not_stop_the_service(click_registry, tmp_path, caplog):
    class Flaky(EventStore):
        def served_outcomes(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("database restarting")

    with Flaky(f"sqlite:///{tmp_path / 'e.db'}") as store:
        app = create_app(ModelRegistry(click_registry), store, None,
                         recalibration=RecalibrationSettings(every_s=3600.0))  # fmt: skip
        with caplog.at_level("WARNING", logger="wager.serving"), TestClient(app) as client:
            assert client.get("/readyz").status_code == 200
    assert "the first refit failed: database restarting" in caplog.text
