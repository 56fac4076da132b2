"""Greedy: the argsort order of the means, propensity 1, ties to the lowest column, and the
named errors every policy shares (k > C, NaN means, a prediction that is not (B, C))."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wager.policies import Greedy, Policy, PolicyState
from wager.prediction import Prediction


def test_greedy_picks_the_argsort_order_of_the_means():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(7, 12))
    slate = Greedy().select(Prediction(torch.tensor(mean)), 5, PolicyState())
    expected = np.argsort(-mean, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(slate.items.numpy(), expected)
    assert slate.items.dtype == torch.int64
    np.testing.assert_array_equal(slate.propensities.numpy(), np.ones((7, 5)))
    # each position's distribution is one-hot on its item
    dist = slate.distribution
    assert dist is not None and dist.shape == (7, 5, 12)
    np.testing.assert_array_equal(dist.argmax(-1).numpy(), expected)
    np.testing.assert_array_equal(dist.sum(-1).numpy(), np.ones((7, 5)))
    marg = Greedy().action_distribution(Prediction(torch.tensor(mean)), 5, PolicyState())
    torch.testing.assert_close(marg, dist)
    assert slate.policy == "greedy" and slate.draws is None


def test_ties_go_to_the_lowest_column_and_deterministic_predictions_work():
    p = Prediction(torch.tensor([[1.0, 3.0, 3.0, 1.0, 3.0]]))  # std None
    assert Greedy().select(p, 5, PolicyState()).items.tolist() == [[1, 2, 4, 0, 3]]


def test_greedy_is_a_policy_and_records_its_floor():
    assert isinstance(Greedy(), Policy)
    slate = Greedy(propensity_floor=0.01).select(Prediction(torch.zeros(1, 2)), 1, PolicyState())
    assert slate.propensity_floor == 0.01


@pytest.mark.parametrize(
    ("mean", "k", "message"),
    [
        (torch.zeros(2, 3), 4, "greedy: k = 4 positions but only C = 3 candidates per request"),
        (torch.zeros(2, 3), 0, "greedy: k must be an integer >= 1, got 0"),
        (torch.zeros(3), 1, r"greedy: the prediction must be \(B, C\).*got shape \(3,\)"),
        (
            torch.tensor([[0.0, 1.0], [float("nan"), 0.0]]),
            1,
            "greedy: the prediction's mean is nan at request row 1, candidate column 0",
        ),
        (
            torch.tensor([[0.0, float("inf")]]),
            1,
            "mean is inf at request row 0, candidate column 1",
        ),
    ],
)
def test_bad_inputs_are_named(mean, k, message):
    with pytest.raises(ValueError, match=message):
        Greedy().select(Prediction(mean), k, PolicyState())


@pytest.mark.parametrize("floor", [1.0, -0.1, float("nan"), "0.1", True])
def test_a_bad_floor_is_named(floor):
    with pytest.raises(ValueError, match=r"propensity_floor must be a number in \[0, 1\)"):
        Greedy(propensity_floor=floor)
