"""The closed loop on a scaled-down simulated day (benchmarks/closed_loop.py is the full
version over many seeds): serve with an experiment (UCB with an epsilon floor vs greedy),
clicks from the world's truth posted as feedback, ``wager export-logs``, ``wager ope``
estimating greedy's rank-1 CTR from the UCB arm's logs, and online calibration in
``/metrics`` and ``wager abtest report`` checked against the exported impressions."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from wager.cli import app
from wager.data.loaders.event_log import load_event_log
from wager.data.synthetic import PopularityPolicy, SyntheticWorld, WorldConfig
from wager.evaluation.abtest import wilson_interval
from wager.pipeline import (
    RecommenderSimulationModel,
    simulation_run_config,
    wager_policy_distribution,
)
from wager.policies import Greedy
from wager.recommender import Recommender
from wager.serving.app import create_app
from wager.serving.experiments import Experiment
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore

N_ITEMS, K, EPSILON, REQUESTS = 12, 3, 0.3, 300
EXPERIMENT = f"""
[experiment]
name = "loop"
salt = "day1"
[[experiment.arms]]
name = "ucb"
share = 0.5
policy = "ucb"
beta = 1.0
epsilon = {EPSILON}
[[experiment.arms]]
name = "greedy"
share = 0.5
policy = "greedy"
"""


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train on a logged day, serve a simulated day, export the logs."""
    folder = tmp_path_factory.mktemp("loop")
    world = SyntheticWorld(
        WorldConfig(n_users=80, n_items=N_ITEMS, n_days=1, new_items_per_day=0, seed=3)
    )
    model = RecommenderSimulationModel(replace(simulation_run_config(), seed=3), world)
    model.fit(
        world.sample_log(6000, PopularityPolicy(), day=0, seed=3),
        world.items.iloc[world.available_items(0)].reset_index(drop=True),
    )
    assert model.recommender_ is not None
    registry = folder / "registry"
    model.recommender_.save(registry / "v1")
    exp_file = folder / "loop.toml"
    exp_file.write_text(EXPERIMENT)
    db = f"sqlite:///{folder / 'events.db'}"
    rng = np.random.default_rng(11)
    with EventStore(db) as store:
        client = TestClient(
            create_app(
                ModelRegistry(registry), store, None, experiment=Experiment.load(exp_file), seed=3
            )
        )
        for user in rng.integers(0, 80, REQUESTS):
            body = {"user_id": str(user), "k": K, "context": {"position": 1},
                    "exclude_seen": False}  # fmt: skip
            out = client.post("/v1/recommend", json=body).json()
            items = np.array([int(i["item_id"]) for i in out["items"]])
            ranks = np.array([i["rank"] for i in out["items"]])
            p = world.true_ctr_matrix(np.array([user]), items)[0] * world.position_bias[ranks - 1]
            events = [
                {"event_id": f"{out['request_id']}-{n}", "request_id": out["request_id"],
                 "item_id": str(item), "click": int(u < q)}
                for n, (item, u, q) in enumerate(zip(items, rng.random(K), p, strict=True))
            ]  # fmt: skip
            assert client.post("/v1/feedback", json={"events": events}).status_code == 200
        metrics = client.get("/metrics").text
    logs = folder / "logs.parquet"
    assert _invoke("export-logs", "--db", db, "--out", logs).exit_code == 0
    return {"world": world, "registry": registry, "db": db, "logs": logs, "metrics": metrics}


def test_the_ucb_arm_logs_its_exact_epsilon_floor_propensities(loop):
    import pandas as pd

    frame = pd.read_parquet(loop["logs"])
    ucb = frame[frame["arm"] == "loop/ucb"]
    assert set(ucb["policy"]) == {f"ucb(beta=1.0, epsilon={EPSILON})"}
    for rank, prop in zip(ucb["position"], ucb["propensity"], strict=True):
        left = N_ITEMS - (rank - 1)  # candidates remaining at this rank
        assert prop == pytest.approx(1 - EPSILON + EPSILON / left) or prop == pytest.approx(
            EPSILON / left
        )
    assert set(frame.loc[frame["arm"] == "loop/greedy", "propensity"]) == {1.0}


def test_ope_of_greedy_from_the_ucb_arm_covers_its_true_ctr(loop):
    result = _invoke(
        "ope", "--logs", loop["logs"], "--format", "wager", "--arm", "ucb", "--positions", "1",
        "--policy", "greedy", "--run", loop["registry"] / "v1", "--members", "2", "--folds",
        "2", "--bootstrap", "200", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    world = loop["world"]
    data = load_event_log(loop["logs"], arm="ucb", positions=1)
    assert data.n_positions == 1 and got["n_rounds"] == data.n_rounds
    pi = wager_policy_distribution(Recommender.load(loop["registry"] / "v1"), data, Greedy())
    users = np.asarray(data.user_ids).astype(np.int64)
    items = np.asarray(data.item_ids).astype(np.int64)
    true = world.true_ctr_matrix(None, items)[users] * world.position_bias[0]
    truth = float(np.mean(np.sum(pi[:, :, 0] * true, axis=1)))  # per rank-1 impression
    # IPS by hand: w = pi_greedy(a) / propensity, mean of w * click
    w = pi[np.arange(data.n_rounds), data.action, 0] / data.propensity
    assert got["estimates"]["ips"]["value"] == pytest.approx(np.mean(w * data.reward), rel=1e-9)
    for name in ("ips", "dr"):
        e = got["estimates"][name]
        assert e["low"] <= truth <= e["high"], (name, e, truth)


def _gauges(text: str) -> dict[tuple[str, str, str], float]:
    pattern = re.compile(r'^wager_calibration_(\w+)\{arm="([^"]*)",slot="(\w+)"\} (\S+)$')
    return {
        (m[2], m[3], m[1]): float(m[4])
        for m in map(pattern.match, text.splitlines())
        if m is not None
    }


def test_online_calibration_in_metrics_and_abtest_report(loop):
    import pandas as pd

    frame = pd.read_parquet(loop["logs"])
    result = _invoke("abtest", "report", "--db", loop["db"], "--experiment", "loop", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    gauges = _gauges(loop["metrics"])
    for arm in ("ucb", "greedy"):
        rows = frame[frame["arm"] == f"loop/{arm}"]
        for slot, part in (("all", rows), ("top", rows[rows["position"] == 1])):
            clicks, n = int(part["label"].sum()), len(part)
            low, high = wilson_interval(clicks, n, 0.95)
            expected = {
                "impressions": n,
                "predicted_ctr": float(part["mean"].mean()),
                "observed_ctr": clicks / n,
                "low": low,
                "high": high,
            }
            got = report["arms"][arm]["calibration"][slot]
            for key, value in expected.items():
                assert got[key] == pytest.approx(value, rel=1e-9), (arm, slot, key)
                name = {"low": "observed_ctr_low", "high": "observed_ctr_high"}.get(key, key)
                assert gauges[(f"loop/{arm}", slot, name)] == pytest.approx(value, rel=1e-9)
        # whether they agree (within) is reported, not asserted: the default simulate model
        # is miscalibrated (see the report of benchmarks/closed_loop.py)
        assert report["arms"][arm]["calibration"][slot]["within"] == (
            low <= expected["predicted_ctr"] <= high
        )
