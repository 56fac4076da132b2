"""UCB with an epsilon floor: at each position a uniform pick among the remaining candidates
with probability epsilon, else the UCB pick; propensities checked against hand arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wager.policies import UCB, EpsilonGreedy, PolicyState, policy_from_name
from wager.prediction import Prediction


def _pred(mean, std):
    return Prediction(torch.tensor(mean, dtype=torch.float64), std=torch.tensor(std))


# UCB(beta=1) scores: 0.5 + 0, 0.4 + 0.2, 0.1 + 0, 0.2 + 0.05 = 0.5, 0.6, 0.1, 0.25
# -> ranking by UCB: column 1, 0, 3, 2
P = _pred([[0.5, 0.4, 0.1, 0.2]], [[0.0, 0.2, 0.0, 0.05]])


def test_position_propensities_by_hand():
    policy = UCB(beta=1.0, epsilon=0.3)
    slate = policy.select(P, 2, PolicyState.seeded(0))
    d = slate.distribution[0].numpy()
    # position 1: UCB pick (column 1) 0.7 + 0.3 / 4 = 0.775, every other column 0.3 / 4
    np.testing.assert_allclose(d[0], [0.075, 0.775, 0.075, 0.075], rtol=1e-12)
    first = int(slate.items[0, 0])
    # position 2, given the first pick: best remaining by UCB gets 0.7 + 0.3 / 3 = 0.8,
    # the other two remaining 0.1, the taken column 0
    best_left = next(c for c in (1, 0, 3, 2) if c != first)
    expected = np.full(4, 0.1)
    expected[first] = 0.0
    expected[best_left] = 0.8
    np.testing.assert_allclose(d[1], expected, rtol=1e-12)
    rows = [d[j, int(slate.items[0, j])] for j in range(2)]
    np.testing.assert_allclose(slate.propensities[0].numpy(), rows, rtol=1e-12)
    np.testing.assert_allclose(d.sum(axis=1), [1.0, 1.0], rtol=1e-12)
    assert slate.policy == "ucb(beta=1.0, epsilon=0.3)"


def test_marginal_by_hand():
    marg = UCB(beta=1.0, epsilon=0.3).action_distribution(P, 2, PolicyState())[0].numpy()
    # position 2, column 0 (UCB rank 2): after column 1 first (0.775) it is the best left
    # (0.8); after column 2 or 3 first (0.075 each) column 1 is best, column 0 gets 0.1:
    # 0.775 * 0.8 + 2 * 0.075 * 0.1 = 0.635. Column 1: 0.075 * 0.8 * 3 = 0.18.
    # Columns 2 and 3: (1 - 0.635 - 0.18) / 2 = 0.0925.
    np.testing.assert_allclose(marg[0], [0.075, 0.775, 0.075, 0.075], rtol=1e-12)
    np.testing.assert_allclose(marg[1], [0.635, 0.18, 0.0925, 0.0925], rtol=1e-12)


def test_marginal_matches_the_frequencies_of_many_slates():
    rng = np.random.default_rng(3)
    mean, std = rng.uniform(size=(1, 6)), rng.uniform(0, 0.3, size=(1, 6))
    p = _pred(mean.repeat(20_000, axis=0), std.repeat(20_000, axis=0))
    policy = UCB(beta=0.5, epsilon=0.4)
    items = policy.select(p, 3, PolicyState.seeded(1)).items.numpy()
    freq = np.stack([np.bincount(items[:, j], minlength=6) / len(items) for j in range(3)])
    marg = policy.action_distribution(_pred(mean, std), 3, PolicyState())
    # binomial standard error at n = 20000 is at most 0.0036: 5 SE
    np.testing.assert_allclose(freq, marg[0].numpy(), atol=0.018)


def test_is_epsilon_greedy_over_the_ucb_scores():
    rng = np.random.default_rng(0)
    mean, std = rng.uniform(size=(4, 7)), rng.uniform(0, 0.5, size=(4, 7))
    ucb = UCB(beta=2.0, epsilon=0.2)
    eg = EpsilonGreedy(0.2)
    on_scores = Prediction(torch.tensor(mean + 2.0 * std))
    a = ucb.select(_pred(mean, std), 3, PolicyState.seeded(5))
    b = eg.select(on_scores, 3, PolicyState.seeded(5))
    np.testing.assert_array_equal(a.items.numpy(), b.items.numpy())
    np.testing.assert_allclose(a.propensities.numpy(), b.propensities.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        ucb.action_distribution(_pred(mean, std), 3, PolicyState()).numpy(),
        eg.action_distribution(on_scores, 3, PolicyState()).numpy(),
        rtol=1e-12,
    )


def test_epsilon_zero_is_plain_deterministic_ucb():
    slate = UCB(beta=1.0, epsilon=0.0).select(P, 2, PolicyState())
    assert slate.items.tolist() == [[1, 0]]
    assert slate.propensities.tolist() == [[1.0, 1.0]]
    assert UCB(beta=1.0, epsilon=0.0) == UCB(beta=1.0)


def test_policy_from_name_takes_epsilon_for_ucb():
    assert policy_from_name("ucb", beta=1.0, epsilon=0.1) == UCB(beta=1.0, epsilon=0.1)
    assert policy_from_name("ucb", beta=1.0) == UCB(beta=1.0)
    with pytest.raises(ValueError, match=r"policy 'ucb' needs beta"):
        policy_from_name("ucb", epsilon=0.1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epsilon": 1.5}, r"epsilon must be a finite number in \[0, 1\].*got 1.5"),
        ({"epsilon": -0.1}, r"epsilon must be a finite number in \[0, 1\].*got -0.1"),
        ({"epsilon": float("nan")}, r"epsilon must be a finite number in \[0, 1\]"),
        (
            {"epsilon": 0.1, "batch_aware": True},
            r"batch_aware and epsilon = 0.1 do not combine; drop one",
        ),
    ],
)
def test_bad_epsilon_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UCB(beta=1.0, **kwargs)
