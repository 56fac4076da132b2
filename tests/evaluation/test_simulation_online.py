"""The simulator's within-day online updates (``SimulationConfig.online_updates``): off, every
figure is as before; on, each batch's prediction is the Beta posterior of the model's given
the clicks since the fit (effective impressions weighted by the position bias), cleared at
each fit, with batch-aware UCB's pending counts cleared per batch; named errors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import TINY_SIMULATION_MODEL
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.simulation import SimulationConfig, WorldModel, catalogue, simulate
from wager.policies import UCB, EpsilonGreedy, PolicyState, Slate
from wager.policies.ucb import PENDING
from wager.prediction import Prediction


class FixedPrior:
    """Predicts 0.2 +- 0.1 for every (user, item) (the prior Beta(3, 12)), optionally with
    ``samples`` members; counts its fits."""

    def __init__(self, samples: int = 0) -> None:
        self.samples = samples
        self.fits = 0

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        self.fits += 1

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        shape = (len(user_ids), len(item_ids))
        mean = torch.full(shape, 0.2, dtype=torch.float64)
        std = torch.full(shape, 0.1, dtype=torch.float64)
        draws = mean.expand(self.samples, *shape).clone() if self.samples else None
        return Prediction(mean, std=std, samples=draws)

    def add_items(self, items: pd.DataFrame) -> None:
        pass

    def retire_items(self, item_ids: np.ndarray) -> None:
        pass


@dataclass
class Recording:
    """Delegates to ``inner`` and records each call's prediction and pending count total."""

    inner: UCB | EpsilonGreedy
    predictions: list[Prediction] = field(default_factory=list)
    pending: list[float] = field(default_factory=list)

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        self.predictions.append(prediction)
        counts = state.counts.get(PENDING)
        self.pending.append(0.0 if counts is None else float(counts.sum()))
        return self.inner.select(prediction, k, state)

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> torch.Tensor:
        return self.inner.action_distribution(prediction, k, state, draws)


def _world() -> SyntheticWorld:
    return SyntheticWorld(
        WorldConfig(n_users=40, n_items=12, new_items_per_day=3, n_days=3, seed=7)
    )


def test_off_by_default_and_every_figure_as_before() -> None:
    assert SimulationConfig().online_updates is False
    world = _world()
    cfg = SimulationConfig(days=3, requests_per_day=120, warmup_rows=0, batch_requests=50, seed=3)
    r = simulate(world, EpsilonGreedy(0.2), WorldModel(world, "log_popularity"), cfg)
    # pinned from the simulator before online updates existed (commit 2ce3768)
    assert r.total["regret"] == 71.87739983925432
    assert r.total["clicks"] == 29
    assert r.log["item_id"].to_numpy()[:12].tolist() == [10, 5, 11, 5, 11, 1, 5, 1, 11, 7, 5, 11]
    assert float(r.log["propensity"].sum()) == 719.7454545454545


def test_each_batch_sees_the_beta_posterior_of_the_clicks_since_the_fit() -> None:
    world = _world()
    policy = Recording(EpsilonGreedy(1.0))  # uniform slates: many items get impressions
    cfg = SimulationConfig(
        days=2, requests_per_day=30, warmup_rows=0, batch_requests=10, online_updates=True
    )
    model = FixedPrior()
    result = simulate(world, policy, model, cfg)
    assert len(policy.predictions) == 6 and model.fits == 1
    items = catalogue(world, 0)
    bias = world.position_bias[:3]
    log = result.log
    for batch in range(3):
        seen = log[(log["day"] == 0) & (log["request"] < 10 * batch)]
        clicks = seen.groupby("item_id")["click"].sum().reindex(items, fill_value=0).to_numpy()
        weight = np.where(seen["click"] == 1, 1.0, bias[seen["position"].to_numpy() - 1])
        effective = (pd.Series(weight, index=seen["item_id"]).groupby(level=0).sum()).reindex(
            items, fill_value=0.0
        )
        # Beta(3, 12) + clicks, + effective non-clicks
        expected = (3.0 + clicks) / (15.0 + effective.to_numpy())
        got = policy.predictions[batch].mean.numpy()
        np.testing.assert_allclose(got, np.broadcast_to(expected, got.shape), rtol=1e-12)
    assert np.ptp(policy.predictions[2].mean.numpy()) > 0  # the feedback moved something
    # the evening fit clears the counts: day 1's first batch is the prior again
    np.testing.assert_allclose(policy.predictions[3].mean.numpy(), 0.2, rtol=1e-12)


def test_pending_counts_cover_the_current_batch_only_when_online() -> None:
    world = _world()
    for online, pending in ((False, [0.0, 30.0, 60.0]), (True, [0.0, 0.0, 0.0])):
        policy = Recording(UCB(1.0, batch_aware=True))
        cfg = SimulationConfig(
            days=1, requests_per_day=30, warmup_rows=0, batch_requests=10, online_updates=online
        )
        simulate(world, policy, FixedPrior(), cfg)
        assert policy.pending == pending


def test_thompson_gets_beta_draws_as_many_as_the_models_samples() -> None:
    world = _world()
    policy = Recording(EpsilonGreedy(0.1))
    cfg = SimulationConfig(
        days=1, requests_per_day=20, warmup_rows=0, batch_requests=10, online_updates=True
    )
    simulate(world, policy, FixedPrior(samples=4), cfg)
    samples = policy.predictions[1].samples
    assert samples is not None and tuple(samples.shape) == (4, 10, 12)
    assert bool(((samples > 0) & (samples < 1)).all())
    assert policy.predictions[1].method == "+beta_posterior"


def test_online_updates_errors_are_named() -> None:
    world = _world()
    cfg = SimulationConfig(days=1, requests_per_day=10, warmup_rows=0, online_updates=True)
    with pytest.raises(ValueError, match=r"online_updates: beta_posterior needs the pred.*False"):
        simulate(world, EpsilonGreedy(0.1), WorldModel(world, "true_ctr"), cfg)
    with pytest.raises(ValueError, match=r"SimulationConfig\.online_updates must be true or false"):
        SimulationConfig(online_updates="yes")  # type: ignore[arg-type]


def test_cli_simulate_online(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from wager.cli import app

    config = tmp_path / "model.toml"
    config.write_text(TINY_SIMULATION_MODEL)
    args = [
        *("simulate", "--policy", "thompson", "--draws", "20", "--days", "2"),
        *("--requests", "40", "--users", "30", "--items", "12", "--new-items", "2"),
        *("--warmup", "300", "--seed", "0", "--online", "--batch-requests", "10", "--json"),
        *("--config", str(config)),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["config"]["online_updates"] is True
    assert payload["config"]["batch_requests"] == 10
    assert sum(d["impressions"] for d in payload["days"]) == 240
    bad = CliRunner().invoke(app, ["simulate", "--batch-requests", "0"])
    assert bad.exit_code == 2
    assert "--batch-requests: SimulationConfig.batch_requests must be an integer" in bad.output
