"""Off-policy evaluation in the simulator: estimates against the world's true policy value."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from wager.config import EnsembleConfig
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.ope.simulated import (
    marginal_propensity_feedback,
    simulated_ope,
    true_policy_value,
)
from wager.evaluation.simulation import SimulationConfig, WorldModel, simulate
from wager.pipeline import (
    RecommenderSimulationModel,
    simulation_reward_draws,
    simulation_run_config,
)
from wager.policies import UCB, EpsilonGreedy, SoftmaxPolicy


def _world(seed: int) -> SyntheticWorld:
    return SyntheticWorld(
        WorldConfig(n_users=60, n_items=8, n_days=1, new_items_per_day=0, seed=seed)
    )


def _config(seed: int, requests: int = 400, warmup: int = 0) -> SimulationConfig:
    return SimulationConfig(
        days=1,
        requests_per_day=requests,
        k=3,
        warmup_rows=warmup,
        log_action_distribution=True,
        seed=seed,
    )


def _true_draws(world: SyntheticWorld):  # type: ignore[no-untyped-def]
    """A perfect reward model: the world's true CTR of every (row, action, position)."""

    def draws(feedback):  # type: ignore[no-untyped-def]
        ctr = world.true_ctr_matrix(feedback.user_ids, np.asarray(feedback.item_ids))
        return (ctr[:, :, None] * world.position_bias[None, None, : feedback.n_positions])[None]

    return draws


def test_true_value_and_marginal_propensities_by_hand() -> None:
    world = _world(0)
    sim = simulate(world, EpsilonGreedy(epsilon=0.5), WorldModel(world, "popularity"), _config(0))
    fb = marginal_propensity_feedback(sim.feedback)
    d = fb.action_distribution
    assert d is not None
    i = 7  # row 7: its propensity is the marginal of its own action at its own position
    assert fb.propensity[i] == d[i, fb.action[i], fb.position[i]]
    # epsilon-greedy over a context-free score at position 1: 1 - eps + eps / C for the top
    # item, eps / C for the others (C = 8)
    first = np.flatnonzero(fb.position == 0)[0]
    assert sorted(np.round(d[first, :, 0], 12))[-2:] == [0.0625, 0.5625]
    # the logging policy's own value: mean over rows of sum_a d(a) ctr(u, a) bias(p), a loop
    users, items = fb.user_ids, np.asarray(fb.item_ids)
    assert users is not None
    expected = np.mean(
        [
            sum(
                d[r, a, fb.position[r]]
                * world.true_ctr_matrix(users[r : r + 1], items[a : a + 1])[0, 0]
                * world.position_bias[fb.position[r]]
                for a in range(fb.n_actions)
            )
            for r in range(fb.n_rounds)
        ]
    )
    assert true_policy_value(world, fb, d) == pytest.approx(expected, rel=1e-12)
    # ... which the impressions' own true click probabilities estimate (1200 rows)
    assert expected == pytest.approx(sim.log["true_ctr"].mean(), rel=0.1)


def test_estimates_land_near_the_truth_with_a_perfect_reward_model() -> None:
    errors: dict[str, list[float]] = {"ips": [], "snips": [], "dr": []}
    for seed in range(4):
        world = _world(seed)
        out = simulated_ope(
            world,
            WorldModel(world, "popularity"),
            EpsilonGreedy(epsilon=0.5),
            SoftmaxPolicy(temperature=0.5),
            _config(seed),
            reward_draws=_true_draws(world),
            n_bootstrap=200,
        )
        est, truth = out["estimates"], out["on_policy"]
        # DM with the true reward function is the true value, exactly
        assert est["dm"]["value"] == pytest.approx(truth, rel=1e-9)
        for key in errors:
            errors[key].append(est[key]["value"] - truth)
            assert abs(est[key]["value"] - truth) <= 4 * est[key]["std_error"]
    for key, errs in errors.items():  # unbiased: mean error within 3 standard errors
        e = np.array(errs)
        assert abs(e.mean()) <= 3 * e.std(ddof=1) / np.sqrt(len(e)) + 1e-12, key


def test_recommender_reward_model_in_simulation() -> None:
    torch.manual_seed(0)
    for seed in range(2):
        world = _world(seed)
        cfg = replace(
            simulation_run_config(), ensemble=EnsembleConfig(members=2, bootstrap=True), seed=seed
        )
        model = RecommenderSimulationModel(cfg, world)
        out = simulated_ope(
            world,
            model,
            EpsilonGreedy(epsilon=0.5),
            UCB(beta=1.0),
            _config(seed, requests=1200, warmup=600),
            reward_draws=lambda fb, m=model: simulation_reward_draws(m, fb),  # type: ignore[misc]
            n_bootstrap=200,
        )
        assert out["reward_draws"] == 2
        truth = out["on_policy"]
        for key in ("ips", "dr"):
            e = out["estimates"][key]
            assert abs(e["value"] - truth) <= 4 * e["std_error"], (seed, key, e, truth)


def test_simulated_ope_needs_the_logged_distribution() -> None:
    world = _world(0)
    with pytest.raises(ValueError, match=r"log_action_distribution=True"):
        simulated_ope(
            world,
            WorldModel(world, "popularity"),
            EpsilonGreedy(epsilon=0.5),
            SoftmaxPolicy(temperature=0.5),
            replace(_config(0), log_action_distribution=False),
        )
    sim = simulate(
        world,
        EpsilonGreedy(epsilon=0.5),
        WorldModel(world, "popularity"),
        replace(_config(0), log_action_distribution=False),
    )
    with pytest.raises(ValueError, match=r"has no action_distribution: simulate with"):
        marginal_propensity_feedback(sim.feedback)
