"""Epsilon-greedy: propensities equal the closed form worked by hand, the exact marginal
equals a brute-force enumeration of every slate, and the empirical frequencies agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wager.policies import EpsilonGreedy, Greedy, PolicyState, rank_marginals
from wager.prediction import Prediction

MEANS = [0.1, 0.3, 0.2, 0.0]  # ranks: column 1, 2, 0, 3


def _hand_propensities(items: list[int], eps: float) -> list[float]:
    """By hand: with R candidates left, the best remaining gets (1 - eps) + eps / R, any
    other eps / R."""
    order = [1, 2, 0, 3]  # columns by decreasing mean
    shown: list[int] = []
    out = []
    for item in items:
        left = [c for c in order if c not in shown]
        out.append((1 - eps) + eps / len(left) if item == left[0] else eps / len(left))
        shown.append(item)
    return out


def test_propensities_equal_the_closed_form():
    eps = 0.2
    p = Prediction(torch.tensor([MEANS] * 400))
    slate = EpsilonGreedy(eps).select(p, 3, PolicyState.seeded(3))
    assert slate.policy == "epsilon_greedy(epsilon=0.2)" and slate.draws is None
    for items, props in zip(slate.items.tolist(), slate.propensities.tolist(), strict=True):
        assert len(set(items)) == 3
        np.testing.assert_allclose(props, _hand_propensities(items, eps), rtol=1e-12)
    # position 1: 0.8 + 0.2 / 4 = 0.85 on column 1, 0.2 / 4 = 0.05 elsewhere
    dist = slate.distribution
    assert dist is not None
    np.testing.assert_allclose(dist[0, 0].numpy(), [0.05, 0.85, 0.05, 0.05])
    # every slate type shows up: explorations happen
    assert (slate.items[:, 0] != 1).any()


def _brute_marginals(c: int, k: int, eps: float) -> np.ndarray:
    """(k, C) by rank, summing the probability of every partial slate (independent of the
    frontier chain the policy uses)."""
    out = np.zeros((k, c))

    def visit(shown: list[int], prob: float) -> None:
        if len(shown) == k:
            return
        left = [r for r in range(c) if r not in shown]
        for r in left:
            q = eps / len(left) + (1 - eps) * (r == left[0])
            out[len(shown), r] += prob * q
            visit([*shown, r], prob * q)

    visit([], 1.0)
    return out


@pytest.mark.parametrize(("c", "k", "eps"), [(5, 3, 0.3), (6, 6, 0.7), (4, 1, 0.5), (7, 4, 0.05)])
def test_action_distribution_equals_the_enumeration_of_every_slate(c, k, eps):
    np.testing.assert_allclose(
        rank_marginals(c, k, eps).numpy(), _brute_marginals(c, k, eps), atol=1e-12
    )
    rng = np.random.default_rng(c)
    mean = rng.normal(size=(3, c))
    marg = EpsilonGreedy(eps).action_distribution(Prediction(torch.tensor(mean)), k, PolicyState())
    order = np.argsort(-mean, axis=1, kind="stable")
    for b in range(3):  # rank r of row b is column order[b, r]
        np.testing.assert_allclose(
            marg[b][:, order[b]].numpy(), _brute_marginals(c, k, eps), atol=1e-12
        )


def test_the_sampled_slates_follow_the_action_distribution():
    n, eps = 20000, 0.3
    p = Prediction(torch.tensor([MEANS] * n))
    slate = EpsilonGreedy(eps).select(p, 3, PolicyState.seeded(0))
    marg = EpsilonGreedy(eps).action_distribution(p[:1], 3, PolicyState())[0]
    freq = torch.nn.functional.one_hot(slate.items, 4).double().mean(0)
    se = (marg * (1 - marg) / n).sqrt()
    assert bool(((freq - marg).abs() <= 4 * se + 1e-12).all()), (freq, marg)


def test_epsilon_zero_is_greedy_and_one_is_uniform():
    rng = np.random.default_rng(2)
    p = Prediction(torch.tensor(rng.normal(size=(4, 6))))
    torch.testing.assert_close(
        EpsilonGreedy(0.0).select(p, 3, PolicyState.seeded(1)).items,
        Greedy().select(p, 3, PolicyState()).items,
    )
    marg = EpsilonGreedy(1.0).action_distribution(p, 3, PolicyState())
    torch.testing.assert_close(marg, torch.full((4, 3, 6), 1 / 6, dtype=torch.float64))


def test_seeded_states_give_identical_slates():
    p = Prediction(torch.tensor([MEANS] * 50))
    a = EpsilonGreedy(0.5).select(p, 4, PolicyState.seeded(7))
    b = EpsilonGreedy(0.5).select(p, 4, PolicyState.seeded(7))
    assert torch.equal(a.items, b.items) and torch.equal(a.propensities, b.propensities)


def test_the_floor_applies_and_is_recorded():
    p = Prediction(torch.tensor([MEANS] * 200))
    slate = EpsilonGreedy(0.01, propensity_floor=0.01).select(p, 2, PolicyState.seeded(0))
    assert slate.propensity_floor == 0.01
    assert float(slate.propensities.min()) == pytest.approx(0.01)  # 0.01 / 4 floored


@pytest.mark.parametrize("eps", [-0.1, 1.5, float("nan"), None])
def test_a_bad_epsilon_is_named(eps):
    with pytest.raises(ValueError, match=r"epsilon must be a finite number in \[0, 1\]"):
        EpsilonGreedy(eps)
