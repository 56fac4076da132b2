"""SoftmaxPolicy: the exact Plackett-Luce conditionals, against scipy.special.softmax and an
enumeration of every slate."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.special import softmax

from wager.policies import PolicyState, SoftmaxPolicy
from wager.prediction import Prediction


def test_position_one_propensities_equal_scipy_softmax():
    rng = np.random.default_rng(0)
    mean, t = rng.normal(size=(6, 5)), 0.7
    slate = SoftmaxPolicy(t).select(Prediction(torch.tensor(mean)), 3, PolicyState.seeded(0))
    ref = softmax(mean / t, axis=1)
    items = slate.items.numpy()
    rows = np.arange(6)
    np.testing.assert_allclose(slate.propensities[:, 0].numpy(), ref[rows, items[:, 0]])
    dist = slate.distribution
    assert dist is not None
    np.testing.assert_allclose(dist[:, 0].numpy(), ref, rtol=1e-12)
    # position 2: the softmax over the candidates left after position 1
    masked = np.where(np.arange(5) == items[:, :1], -np.inf, mean / t)
    ref2 = softmax(masked, axis=1)
    np.testing.assert_allclose(slate.propensities[:, 1].numpy(), ref2[rows, items[:, 1]])
    np.testing.assert_allclose(dist[:, 1].numpy(), ref2, atol=1e-15)
    assert slate.policy == "softmax(temperature=0.7)"


def _pl_marginals(mean: np.ndarray, t: float, k: int) -> np.ndarray:
    """(k, C) by enumerating every ordered k-slate and its Plackett-Luce probability."""
    w = np.exp(mean / t)
    out = np.zeros((k, len(mean)))
    for slate in itertools.permutations(range(len(mean)), k):
        prob, left = 1.0, w.sum()
        for c in slate:
            prob *= w[c] / left
            left -= w[c]
        for j, c in enumerate(slate):
            out[j, c] += prob
    return out


def test_action_distribution_is_exact_at_position_one_and_close_after():
    mean, t = np.array([0.3, -0.2, 0.8, 0.0]), 0.5
    p = Prediction(torch.tensor(mean[None]))
    marg = SoftmaxPolicy(t).action_distribution(p, 3, PolicyState.seeded(0), draws=20000)[0]
    ref = _pl_marginals(mean, t, 3)
    np.testing.assert_allclose(marg[0].numpy(), softmax(mean / t), rtol=1e-12)
    np.testing.assert_allclose(marg.numpy(), ref, atol=0.01)  # Monte Carlo: se < 0.0025
    np.testing.assert_allclose(marg.sum(-1).numpy(), np.ones(3), rtol=1e-12)


def test_sampled_first_items_follow_the_softmax():
    n, t = 20000, 0.5
    mean = np.array([0.3, -0.2, 0.8, 0.0])
    slate = SoftmaxPolicy(t).select(
        Prediction(torch.tensor(np.tile(mean, (n, 1)))), 1, PolicyState.seeded(1)
    )
    freq = np.bincount(slate.items[:, 0].numpy(), minlength=4) / n
    ref = softmax(mean / t)
    assert np.all(np.abs(freq - ref) <= 4 * np.sqrt(ref * (1 - ref) / n))


def test_seeded_states_give_identical_slates():
    p = Prediction(torch.randn(20, 8, generator=torch.Generator().manual_seed(0)))
    a = SoftmaxPolicy(0.3).select(p, 5, PolicyState.seeded(4))
    b = SoftmaxPolicy(0.3).select(p, 5, PolicyState.seeded(4))
    assert torch.equal(a.items, b.items) and torch.equal(a.propensities, b.propensities)


@pytest.mark.parametrize("t", [0.0, -1.0, float("inf"), float("nan")])
def test_a_bad_temperature_is_named(t):
    with pytest.raises(ValueError, match=r"temperature must be a finite number > 0"):
        SoftmaxPolicy(t)


def test_a_temperature_too_small_for_the_means_is_named():
    p = Prediction(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="overflows float64; raise the temperature"):
        SoftmaxPolicy(1e-310).select(p, 1, PolicyState())
