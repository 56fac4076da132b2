"""UCB: ranks by mean + beta * std; beta large picks the uncertain candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wager.policies import UCB, PolicyState
from wager.prediction import Prediction


def _pred(mean, std):
    return Prediction(torch.tensor(mean), std=torch.tensor(std))


def test_ucb_trades_mean_for_std_as_beta_grows():
    p = _pred([[0.5, 0.4, 0.3]], [[0.0, 0.05, 0.5]])
    # beta 0: the means; beta 1: 0.5, 0.45, 0.8 -> 2, 0, 1
    assert UCB(0.0).select(p, 3, PolicyState()).items.tolist() == [[0, 1, 2]]
    slate = UCB(1.0).select(p, 3, PolicyState())
    assert slate.items.tolist() == [[2, 0, 1]]
    assert slate.propensities.tolist() == [[1.0, 1.0, 1.0]]
    assert slate.policy == "ucb(beta=1.0)"


def test_ucb_equals_the_argsort_of_mean_plus_beta_std():
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=(5, 9)), rng.uniform(0.0, 1.0, size=(5, 9))
    p = _pred(mean, std)
    expected = np.argsort(-(mean + 2.5 * std), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(UCB(2.5).select(p, 4, PolicyState()).items.numpy(), expected)
    marg = UCB(2.5).action_distribution(p, 4, PolicyState())
    np.testing.assert_array_equal(marg.argmax(-1).numpy(), expected)
    np.testing.assert_array_equal(marg.sum(-1).numpy(), np.ones((5, 4)))


def test_ucb_on_a_deterministic_prediction_says_use_greedy():
    p = Prediction(torch.zeros(1, 3), method="mf")
    with pytest.raises(ValueError, match=r"ucb\(beta=1.0\) needs an uncertainty.*use Greedy\(\)"):
        UCB(1.0).select(p, 1, PolicyState())


@pytest.mark.parametrize("beta", [-0.5, float("nan"), float("inf"), True, "1"])
def test_a_bad_beta_is_named(beta):
    with pytest.raises(ValueError, match=r"beta must be a finite number >= 0"):
        UCB(beta)
