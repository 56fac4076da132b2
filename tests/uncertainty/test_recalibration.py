"""Online recalibration (wager.uncertainty.recalibration) and PlattScaling's weights / prior."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import expit, logit

from wager.prediction import Prediction
from wager.uncertainty.calibration import PlattScaling
from wager.uncertainty.recalibration import MIN_SLOPE, OnlineRecalibration


def _rows(n: int, seed: int, slope: float = 1.5, intercept: float = -0.4):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.4, n)
    y = (rng.random(n) < expit(slope * logit(p) + intercept)).astype(float)
    return p, y


def test_weights_count_as_repeated_rows() -> None:
    p, y = _rows(300, 0)
    reps = np.random.default_rng(1).integers(0, 4, p.size)
    weighted = PlattScaling().fit(p, y, weights=reps)
    repeated = PlattScaling().fit(np.repeat(p, reps), np.repeat(y, reps))
    assert weighted.slope_ == pytest.approx(repeated.slope_, abs=1e-6)
    assert weighted.intercept_ == pytest.approx(repeated.intercept_, abs=1e-6)


def test_prior_minimises_the_stated_objective() -> None:
    p, y = _rows(200, 2)
    x = logit(p)

    def objective(theta: np.ndarray) -> float:  # independent: Nelder-Mead, no gradient
        z = theta[0] * x + theta[1]
        return float(
            np.sum(np.logaddexp(0, z) - y * z) + 25.0 * ((theta[0] - 1) ** 2 + theta[1] ** 2)
        )

    ref = minimize(
        objective, [1.0, 0.0], method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12}
    )
    fit = PlattScaling().fit(p, y, prior=50.0)
    assert fit.slope_ == pytest.approx(ref.x[0], abs=1e-4)
    assert fit.intercept_ == pytest.approx(ref.x[1], abs=1e-4)


def test_a_precision_matrix_prior_minimises_its_quadratic_form() -> None:
    p, y = _rows(200, 5)
    x = logit(p)
    precision = np.array([[40.0, 10.0], [10.0, 20.0]])

    def objective(theta: np.ndarray) -> float:
        z = theta[0] * x + theta[1]
        d = theta - np.array([1.0, 0.0])
        return float(np.sum(np.logaddexp(0, z) - y * z) + d @ precision @ d / 2)

    options = {"xatol": 1e-9, "fatol": 1e-12}
    ref = minimize(objective, [1.0, 0.0], method="Nelder-Mead", options=options)
    fit = PlattScaling().fit(p, y, prior=precision)
    assert (fit.slope_, fit.intercept_) == pytest.approx(tuple(ref.x), abs=1e-4)
    for bad in (np.eye(3), np.array([[1.0, 2.0], [0.0, 1.0]]), -np.eye(2)):
        with pytest.raises(ValueError, match="prior"):
            PlattScaling().fit(p, y, prior=bad)


def test_the_online_prior_weighs_as_many_impressions_of_the_same_means() -> None:
    """The g-prior: ``prior`` times one impression's Fisher information at the identity,
    E[p (1 - p) [[x^2, x], [x, 1]]], computed here by hand."""
    p, y = _rows(400, 6)
    fix = OnlineRecalibration.fit(p, y, prior=150.0)
    x = np.round(logit(p), 4)  # the fit rounds logits to 1e-4
    q = expit(x)
    v = q * (1 - q)
    info = np.array([[np.mean(v * x * x), np.mean(v * x)], [np.mean(v * x), np.mean(v)]])
    ref = PlattScaling().fit(q, y, prior=150.0 * info)
    assert (fix.slope, fix.intercept) == pytest.approx((ref.slope_, ref.intercept_), abs=1e-6)
    # the correction's share grows with the evidence: n / (n + prior) for the mean
    few = OnlineRecalibration.fit(p[:50], y[:50], prior=150.0)
    assert abs(few.intercept) < abs(fix.intercept) or abs(few.slope - 1) < abs(fix.slope - 1)


def test_prior_allows_one_class_and_zero_prior_refuses_it() -> None:
    p = np.full(10, 0.1)
    fit = PlattScaling().fit(p, np.zeros(10), prior=100.0)
    assert fit.intercept_ < 0 and abs(fit.slope_ - 1.0) < 0.5  # pulled down, near identity
    with pytest.raises(ValueError, match="both clicks"):
        PlattScaling().fit(p, np.zeros(10))
    with pytest.raises(ValueError, match="prior"):
        PlattScaling().fit(p, np.zeros(10), prior=-1.0)
    with pytest.raises(ValueError, match="weights"):
        PlattScaling().fit(p, np.zeros(10), weights=np.ones(3), prior=1.0)


def test_fit_recovers_a_known_map_and_no_rows_is_the_identity() -> None:
    p, y = _rows(60_000, 3)
    fix = OnlineRecalibration.fit(p, y, prior=100.0)
    assert fix.slope == pytest.approx(1.5, abs=0.1)
    assert fix.intercept == pytest.approx(-0.4, abs=0.25)
    assert (fix.impressions, fix.clicks) == (60_000, int(y.sum()))
    assert OnlineRecalibration.fit([], []).identity
    with pytest.raises(ValueError, match="one 0/1 outcome"):
        OnlineRecalibration.fit([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="prior"):
        OnlineRecalibration.fit([0.1], [1], prior=0.0)


def test_mean_matching_closes_the_gap() -> None:
    """The module docstring's example: a model over-predicting by 1/0.7 is brought to the
    observed CTR (the intercept's estimating equation: sum of fitted = sum of clicks)."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0.02, 0.3, 20_000)
    clicks = rng.random(20_000) < 0.7 * p
    fix = OnlineRecalibration.fit(p, clicks, prior=100.0)
    assert fix.transform_mean(p).mean() / clicks.mean() == pytest.approx(1.0, abs=0.01)
    assert p.mean() / clicks.mean() > 1.35


def test_a_flat_or_reversed_map_is_floored() -> None:
    rng = np.random.default_rng(4)
    p = rng.uniform(0.05, 0.5, 5000)
    y = (rng.random(5000) < 0.2).astype(float)  # outcomes unrelated to p: slope ~ 0
    assert OnlineRecalibration.fit(p, y, prior=1.0).slope == MIN_SLOPE
    with pytest.raises(ValueError, match="slope"):
        OnlineRecalibration(slope=0.0)


@settings(max_examples=60, deadline=None)
@given(
    slope=st.floats(MIN_SLOPE, 5.0),
    intercept=st.floats(-3.0, 3.0),
    p=st.floats(1e-4, 1 - 1e-4),
)
def test_model_mean_inverts_the_map(slope: float, intercept: float, p: float) -> None:
    fix = OnlineRecalibration(slope, intercept)
    assume(1e-5 < fix.transform_mean(p) < 1 - 1e-5)  # the documented clipping aside
    assert fix.model_mean(fix.transform_mean(p)) == pytest.approx(p, rel=1e-6, abs=1e-9)


def test_apply_maps_samples_like_platt_and_the_mean_without_samples() -> None:
    fix = OnlineRecalibration(1.3, -0.5)
    samples = torch.tensor([[0.1, 0.3], [0.2, 0.25], [0.15, 0.35]], dtype=torch.float64)
    pred = Prediction(samples.mean(0), std=samples.std(0, unbiased=False), samples=samples,
                      method="ensemble", support=(0.0, 1.0))  # fmt: skip
    out = fix.apply(pred)
    mapped = torch.as_tensor(fix.transform_mean(samples.numpy()))
    assert torch.allclose(out.samples, mapped)
    assert torch.allclose(out.std, mapped.std(0, unbiased=False))
    assert torch.allclose(out.mean, torch.as_tensor(fix.transform_mean(pred.mean.numpy())))
    assert out.method == "ensemble+online"
    # no samples: the delta method, checked against a central difference
    plain = Prediction(torch.tensor([0.2]), std=torch.tensor([0.01]), method="m")
    got = fix.apply(plain)
    h = 1e-6
    slope = (fix.transform_mean(0.2 + h) - fix.transform_mean(0.2 - h)) / (2 * h)
    assert float(got.std[0]) == pytest.approx(0.01 * slope, rel=1e-4)
    assert OnlineRecalibration().apply(plain) is plain
