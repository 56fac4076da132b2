"""fit_item_effects / ItemEffects: posteriors and predictive moments against scipy quadrature,
the empirical-Bayes spread against the marginal likelihood integrated by scipy, recovery and
calibration on simulated items, properties, and named errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, optimize
from scipy.special import expit
from scipy.stats import norm

from wager.uncertainty.item_effects import ItemEffects, fit_item_effects

_GRID = np.linspace(-15.0, 15.0, 60_001)  # dense grid of delta for the reference integrals


def _log_joint(o: np.ndarray, y: np.ndarray, tau: float) -> np.ndarray:
    """log of prod_rows Bernoulli(y | sigmoid(o + d)) Normal(d; 0, tau**2) on ``_GRID``."""
    z = o[None, :] + _GRID[:, None]
    ll = (y[None, :] * np.log(expit(z)) + (1 - y[None, :]) * np.log(expit(-z))).sum(axis=1)
    return ll + norm.logpdf(_GRID, 0.0, tau)


def _item_marginal(o: np.ndarray, y: np.ndarray, tau: float) -> float:
    """log of the item's marginal likelihood (Simpson's rule on the dense grid)."""
    lj = _log_joint(o, y, tau)
    top = lj.max()
    return float(top + math.log(integrate.simpson(np.exp(lj - top), x=_GRID)))


def _posterior_moments(o: np.ndarray, y: np.ndarray, tau: float, base: float) -> tuple[float, ...]:
    """Posterior mean / std of delta and predictive mean / std of sigmoid(base + delta)."""
    lj = _log_joint(o, y, tau)
    w = np.exp(lj - lj.max())
    z = integrate.simpson(w, x=_GRID)

    def expect(f: np.ndarray) -> float:
        return float(integrate.simpson(f * w, x=_GRID) / z)

    m1, m2 = expect(_GRID), expect(_GRID**2)
    p = expit(base + _GRID)
    p1, p2 = expect(p), expect(p**2)
    return m1, math.sqrt(m2 - m1 * m1), p1, math.sqrt(p2 - p1 * p1)


def _rows() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three items: 3 rows (1 click), 40 rows (9 clicks), 400 rows (30 clicks)."""
    rng = np.random.default_rng(3)
    items = np.repeat([10, 20, 30], [3, 40, 400])
    o = rng.normal(-1.5, 0.4, len(items))
    y = np.zeros(len(items))
    for item, clicks in ((10, 1), (20, 9), (30, 30)):
        rows = np.flatnonzero(items == item)
        y[rng.choice(rows, clicks, replace=False)] = 1
    return o, items, y


def test_posteriors_and_predictions_match_scipy_quadrature() -> None:
    o, items, y = _rows()
    effects = fit_item_effects(o, items, y, tau=0.8)
    mean, std = effects.effect_moments([10, 20, 30])
    pred = effects.predict(np.full((1, 3), -1.0), [10, 20, 30])
    assert pred.std is not None
    for col, item in enumerate((10, 20, 30)):
        rows = items == item
        ref = _posterior_moments(o[rows], y[rows], 0.8, -1.0)
        assert mean[col] == pytest.approx(ref[0], abs=2e-3)
        assert std[col] == pytest.approx(ref[1], rel=5e-3)
        assert pred.mean[0, col].item() == pytest.approx(ref[2], abs=5e-4)
        assert pred.std[0, col].item() == pytest.approx(ref[3], rel=5e-3)
    # the well-shown item is the most certain, the item shown 3 times the least
    assert std[2] < std[1] < std[0] < 0.8


def test_tau_maximises_the_marginal_likelihood_integrated_by_scipy() -> None:
    o, items, y = _rows()
    rng = np.random.default_rng(4)
    # 30 more items so that the spread is identified: effects with std 0.7
    extra = np.repeat(np.arange(100, 130), 25)
    delta = rng.normal(0, 0.7, 30)
    o2 = rng.normal(-1.5, 0.4, len(extra))
    y2 = (rng.random(len(extra)) < expit(o2 + delta[extra - 100])).astype(float)
    o, items, y = np.concatenate([o, o2]), np.concatenate([items, extra]), np.concatenate([y, y2])

    def neg_marginal(log_tau: float) -> float:
        tau = math.exp(log_tau)
        return -sum(_item_marginal(o[items == i], y[items == i], tau) for i in np.unique(items))

    ref = optimize.minimize_scalar(neg_marginal, bounds=(-4, 2), method="bounded")
    effects = fit_item_effects(o, items, y)
    assert effects.tau == pytest.approx(math.exp(ref.x), rel=0.02)
    assert effects.log_marginal == pytest.approx(-ref.fun, abs=0.05)


def test_spread_recovered_and_posteriors_calibrated_on_simulated_items() -> None:
    rng = np.random.default_rng(0)
    n_items, per_item, tau = 400, 30, 1.0
    items = np.repeat(np.arange(n_items), per_item)
    delta = rng.normal(0.0, tau, n_items)
    o = rng.normal(-2.0, 0.5, len(items))
    y = (rng.random(len(items)) < expit(o + delta[items])).astype(int)
    effects = fit_item_effects(o, items, y)
    assert effects.tau == pytest.approx(tau, abs=0.15)
    mean, std = effects.effect_moments(np.arange(n_items))
    z = (delta - mean) / std
    assert abs(z.mean()) < 0.15
    assert 0.85 < z.std() < 1.15  # the posterior std is the error's std
    # 90% posterior intervals cover about 90% of the true effects
    assert 0.85 < np.mean(np.abs(z) < 1.645) < 0.95


def test_an_unseen_item_takes_the_prior() -> None:
    o, items, y = _rows()
    effects = fit_item_effects(o, items, y, tau=1.3)
    mean, std = effects.effect_moments([999])
    assert mean[0] == pytest.approx(0.0, abs=1e-12)
    assert std[0] == pytest.approx(1.3, rel=1e-9)  # Gauss-Hermite nodes hold the 2nd moment
    pred = effects.predict(np.array([[-1.0]]), [999])
    ref = integrate.quad(lambda d: expit(-1.0 + d) * norm.pdf(d, 0, 1.3), -20, 20)[0]
    assert pred.mean[0, 0].item() == pytest.approx(ref, abs=1e-3)
    # the new item is less certain than each known one
    known = effects.predict(np.full((1, 3), -1.0), [10, 20, 30])
    assert pred.std is not None and known.std is not None
    assert pred.std[0, 0].item() > known.std.max().item()


def test_no_item_effect_gives_a_small_spread() -> None:
    rng = np.random.default_rng(1)
    items = np.repeat(np.arange(300), 40)
    o = rng.normal(-1.0, 0.5, len(items))
    y = (rng.random(len(items)) < expit(o)).astype(int)
    assert fit_item_effects(o, items, y).tau < 0.25


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_items=st.integers(1, 8),
    tau=st.one_of(st.none(), st.floats(0.05, 4.0)),
)
def test_properties(seed: int, n_items: int, tau: float | None) -> None:
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, 60)
    o = rng.normal(-1.0, 2.0, 60)
    y = rng.integers(0, 2, 60)
    effects = fit_item_effects(o, items, y, tau=tau)
    assert isinstance(effects, ItemEffects)
    assert effects.tau > 0 and effects.n_rows == 60
    np.testing.assert_allclose(effects.weights.sum(axis=1), 1.0, rtol=1e-12)
    pred = effects.predict(rng.normal(0, 3, (4, n_items + 1)), np.arange(n_items + 1))
    assert pred.std is not None
    mean, std = pred.mean.numpy(), pred.std.numpy()
    assert np.all((mean > 0) & (mean < 1)) and np.all(std >= 0)
    assert np.all(std <= np.sqrt(mean * (1 - mean)) + 1e-12)  # at most a Bernoulli's spread


def test_errors_name_the_row_or_argument() -> None:
    with pytest.raises(ValueError, match="one value per row"):
        fit_item_effects([0.0, 0.0], [1], [0, 1])
    with pytest.raises(ValueError, match="clicks must be 0 or 1, got 2 at row 1"):
        fit_item_effects([0.0, 0.0], [1, 1], [0, 2])
    with pytest.raises(ValueError, match="not finite at row 0"):
        fit_item_effects([np.nan], [1], [0])
    with pytest.raises(ValueError, match="item_ids must be integers"):
        fit_item_effects([0.0], [1.5], [0])
    with pytest.raises(ValueError, match="nodes must be an integer >= 3"):
        fit_item_effects([0.0], [1], [0], nodes=2)
    with pytest.raises(ValueError, match="tau must be a number > 0"):
        fit_item_effects([0.0], [1], [0], tau=0.0)
    effects = fit_item_effects([0.0], [1], [0], tau=1.0)
    with pytest.raises(ValueError, match=r"base_logit must be \(B, C\) or \(M, B, C\)"):
        effects.predict(np.zeros(3), [1, 2, 3])
    with pytest.raises(ValueError, match="2 item ids for 3 columns"):
        effects.predict(np.zeros((1, 3)), [1, 2])


def test_member_logits_give_the_mixture_over_members() -> None:
    o, items, y = _rows()
    effects = fit_item_effects(o, items, y, tau=0.8)
    members = np.array([[[-1.0, -2.0, 0.5]], [[-0.5, -2.5, 0.0]]])  # (M=2, B=1, C=3)
    ids = [10, 20, 999]
    pred = effects.predict(members, ids)
    assert pred.std is not None
    for col, item in enumerate(ids):
        nodes, weights = effects.posterior([item])
        per_member = [expit(members[m, 0, col] + nodes[0]) for m in range(2)]
        mean = np.mean([(p * weights[0]).sum() for p in per_member])
        second = np.mean([(p * p * weights[0]).sum() for p in per_member])
        assert pred.mean[0, col].item() == pytest.approx(mean, rel=1e-12)
        assert pred.std[0, col].item() == pytest.approx(math.sqrt(second - mean**2), rel=1e-9)
        # wider than either member alone: their disagreement adds to the item effect's
        alone = [effects.predict(members[m], ids).std for m in range(2)]
        assert pred.std[0, col].item() > max(float(a[0, col]) for a in alone if a is not None)
