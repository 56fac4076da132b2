"""Batch-aware UCB (GP-BUCB pending impressions): the std shrinkage worked by hand, requests
of a batch served one after the other, counts carried in the state and cleared by the
simulator each day, and named errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.simulation import SimulationConfig, catalogue, simulate
from wager.policies import UCB, PolicyState, policy_from_name
from wager.policies.ucb import PENDING
from wager.prediction import Prediction


def _rows(n: int) -> Prediction:
    # two candidates: a known 0.55 and an uncertain 0.4 +- 0.2
    return Prediction(
        torch.tensor([[0.55, 0.4]] * n, dtype=torch.float64),
        std=torch.tensor([[0.0, 0.2]] * n, dtype=torch.float64),
    )


def test_pending_impressions_shrink_the_std_as_worked_by_hand() -> None:
    # after n pending impressions of column 1 its std is 1 / sqrt(1 / 0.2**2 + n / (0.4 * 0.6))
    # = 1 / sqrt(25 + n / 0.24); 0.4 + that beats 0.55 while it exceeds 0.15, i.e. for
    # n <= 4 (n = 4: 0.1549) and not at n = 5 (0.1477)
    for n, above in ((4, True), (5, False)):
        shrunk = 1.0 / math.sqrt(25.0 + n / 0.24)
        assert (0.4 + shrunk > 0.55) is above
    slate = UCB(1.0, batch_aware=True).select(_rows(7), 1, PolicyState())
    assert slate.items[:, 0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert slate.propensities.tolist() == [[1.0]] * 7
    assert slate.policy == "ucb(beta=1.0, batch_aware)"
    # plain UCB shows the uncertain one to every request of the batch
    assert UCB(1.0).select(_rows(7), 1, PolicyState()).items[:, 0].tolist() == [1] * 7


def test_pending_counts_carry_over_between_calls_and_feed_action_distribution() -> None:
    policy, state = UCB(1.0, batch_aware=True), PolicyState()
    first = policy.select(_rows(3), 1, state)
    assert state.counts[PENDING].tolist() == [0.0, 3.0]
    second = policy.select(_rows(4), 1, state)  # continues at n = 3
    assert torch.cat([first.items, second.items])[:, 0].tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert state.counts[PENDING].tolist() == [2.0, 5.0]
    # the same counts give the same slates, as a distribution
    dist = policy.action_distribution(_rows(7), 1, PolicyState())
    assert dist[:, 0, :].argmax(dim=1).tolist() == [1, 1, 1, 1, 1, 0, 0]
    assert torch.equal(dist.sum(dim=2), torch.ones(7, 1, dtype=torch.float64))


def test_a_known_candidate_stays_known_and_a_slate_has_no_repeats() -> None:
    rng = np.random.default_rng(0)
    mean = rng.uniform(0.01, 0.3, (50, 8))
    std = rng.uniform(0.0, 0.1, (50, 8))
    std[:, 2] = 0.0
    p = Prediction(torch.from_numpy(mean), std=torch.from_numpy(std))
    state = PolicyState()
    items = UCB(2.0, batch_aware=True).select(p, 3, state).items
    assert all(len(set(row)) == 3 for row in items.tolist())
    assert state.counts[PENDING].sum().item() == 150.0  # 50 requests x 3 positions
    # beta 0 ignores the std: plain greedy whatever is pending
    greedy = UCB(0.0, batch_aware=True).select(p, 3, PolicyState()).items
    assert torch.equal(greedy, UCB(0.0).select(p, 3, PolicyState()).items)


def test_batch_aware_errors_name_the_problem() -> None:
    state = PolicyState()
    state.counts[PENDING] = torch.zeros(3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pending.*3,.*2 candidate columns.*clear state.counts"):
        UCB(1.0, batch_aware=True).select(_rows(1), 1, state)
    ratings = Prediction(torch.tensor([[3.5, 4.0]]), std=torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match=r"click probabilities.*batch_aware=False"):
        UCB(1.0, batch_aware=True).select(ratings, 1, PolicyState())
    with pytest.raises(ValueError, match="batch_aware must be True or False"):
        UCB(1.0, batch_aware=1)  # type: ignore[arg-type]
    assert policy_from_name("ucb", beta=1.0, batch_aware=True) == UCB(1.0, batch_aware=True)
    with pytest.raises(ValueError, match="batch_aware does not apply"):
        policy_from_name("greedy", batch_aware=True)


class FlatModel:
    """Every item 0.1 +- 0.05: batch-aware UCB then spreads a day's impressions evenly."""

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        pass

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        shape = (len(user_ids), len(item_ids))
        return Prediction(
            torch.full(shape, 0.1, dtype=torch.float64),
            std=torch.full(shape, 0.05, dtype=torch.float64),
        )

    def add_items(self, items: pd.DataFrame) -> None:
        pass

    def retire_items(self, item_ids: np.ndarray) -> None:
        pass


def test_the_simulator_clears_pending_counts_each_day() -> None:
    world = SyntheticWorld(
        WorldConfig(n_users=50, n_items=12, n_days=3, new_items_per_day=2, seed=3)
    )
    cfg = SimulationConfig(
        days=3, requests_per_day=40, k=3, warmup_rows=0, batch_requests=16, seed=0
    )
    res = simulate(world, UCB(1.0, batch_aware=True), FlatModel(), cfg)
    log = res.log
    for day in range(3):
        items = catalogue(world, day)
        shown = log[log["day"] == day]
        # fresh counts: all scores tie, so the first request gets the first three columns
        assert shown["item_id"].iloc[:3].tolist() == items[:3].tolist()
        # 120 impressions spread evenly over the 12 items: 10 each
        assert shown["item_id"].value_counts().tolist() == [10] * 12
    plain = simulate(world, UCB(1.0), FlatModel(), cfg).log
    assert plain.groupby("day")["item_id"].nunique().tolist() == [3, 3, 3]
