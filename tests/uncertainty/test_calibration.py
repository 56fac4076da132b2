"""Probability calibrators: reference fits (sklearn, scipy), ECE reduction, Prediction mapping."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from wager.errors import NotFittedError
from wager.evaluation.metrics import expected_calibration_error
from wager.prediction import Prediction
from wager.uncertainty.calibration import (
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)

CALIBRATORS = [PlattScaling, IsotonicCalibration, TemperatureScaling]


def _miscalibrated(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Under-confident model: true click probability sigmoid(2 z), predicted sigmoid(z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 1.0, n)
    true_p = expit(2.0 * z)
    labels = (rng.random(n) < true_p).astype(np.float64)
    return expit(z), labels, true_p


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_calibrator_reduces_ece_on_held_out_half(cls):
    probs, labels, _ = _miscalibrated()
    fit_half, test_half = slice(0, 10000), slice(10000, 20000)
    before = expected_calibration_error(probs[test_half], labels[test_half])
    cal = cls().fit(torch.from_numpy(probs[fit_half]), torch.from_numpy(labels[fit_half]))
    after = expected_calibration_error(cal.transform(probs[test_half]).numpy(), labels[test_half])
    # before ~ 0.10 (the gap |sigmoid(z) - sigmoid(2z)| averaged over z ~ N(0, 1)). After a
    # good fit only label noise is left: 15 equal-mass bins of ~667 labels, each bin mean
    # off by ~N(0, sqrt(0.25 / 667) = 0.019), E|.| <= 0.8 * 0.019 = 0.015 < before / 3 = 0.033.
    assert before > 0.08
    assert after < before / 3


def test_platt_matches_sklearn_unregularised_logistic_regression():
    probs, labels, _ = _miscalibrated(n=5000, seed=1)
    platt = PlattScaling().fit(probs, labels)
    x = logit(probs).reshape(-1, 1)
    ref = LogisticRegression(C=1e10, tol=1e-12, max_iter=10000).fit(x, labels)
    assert platt.slope_ == pytest.approx(float(ref.coef_[0, 0]), abs=1e-3)
    assert platt.intercept_ == pytest.approx(float(ref.intercept_[0]), abs=1e-3)
    # and the map itself: sigmoid(a logit(p) + b) equals sklearn's predict_proba
    np.testing.assert_allclose(
        platt.transform(probs).numpy(), ref.predict_proba(x)[:, 1], rtol=0, atol=1e-4
    )


def test_platt_recovers_the_true_map():
    probs, labels, _ = _miscalibrated(n=20000, seed=2)
    platt = PlattScaling().fit(probs, labels)
    # the true map is slope 2, intercept 0; the MLE's standard error at n = 20000 is ~0.03
    assert platt.slope_ == pytest.approx(2.0, abs=0.15)
    assert platt.intercept_ == pytest.approx(0.0, abs=0.1)


def test_temperature_matches_minimize_scalar():
    probs, labels, _ = _miscalibrated(n=5000, seed=3)
    ts = TemperatureScaling().fit(probs, labels)
    x = logit(probs)

    def nll(t: float) -> float:
        z = x / t
        return float(np.mean(np.logaddexp(0.0, z) - labels * z))

    ref = minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-10})
    assert ts.temperature_ == pytest.approx(ref.x, rel=1e-6)
    assert ts.temperature_ == pytest.approx(0.5, abs=0.05)  # the true temperature is 1/2


def test_temperature_above_one_for_overconfident_probs():
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 2.0, 8000)
    labels = (rng.random(z.size) < expit(z)).astype(float)
    ts = TemperatureScaling().fit(expit(3.0 * z), labels)  # logits 3x too large
    assert ts.temperature_ == pytest.approx(3.0, rel=0.1)


def test_isotonic_matches_sklearn_predict():
    probs, labels, _ = _miscalibrated(n=3000, seed=5)
    iso = IsotonicCalibration().fit(probs, labels)
    ref = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(probs, labels)
    grid = np.concatenate([np.linspace(0.0, 1.0, 501), probs[:200]])
    np.testing.assert_allclose(iso.transform(grid).numpy(), ref.predict(grid), atol=1e-12)


def test_isotonic_hand_case():
    # PAVA on labels (0, 1, 0, 1) sorted by prob: the violating pair (1, 0) pools to 0.5;
    # thresholds (0.1, 0), (0.2, 0.5), (0.6, 0.5), (0.9, 1); 0.75 lies halfway from 0.6 to 0.9
    iso = IsotonicCalibration().fit([0.1, 0.2, 0.6, 0.9], [0, 1, 0, 1])
    out = iso.transform(torch.tensor([0.0, 0.15, 0.4, 0.75, 1.0], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1.0), st.booleans()),
        min_size=1,
        max_size=60,
    ),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40),
)
def test_isotonic_output_is_monotone_and_in_unit_interval(rows, queries):
    probs = np.array([r[0] for r in rows])
    labels = np.array([float(r[1]) for r in rows])
    iso = IsotonicCalibration().fit(probs, labels)
    q = torch.tensor(sorted(queries), dtype=torch.float64)
    out = iso.transform(q)
    assert bool((out[1:] >= out[:-1] - 1e-12).all())
    assert bool((out >= 0).all()) and bool((out <= 1).all())


@pytest.mark.parametrize("cls", [PlattScaling, TemperatureScaling])
@settings(max_examples=25, deadline=None)
@given(queries=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=30))
def test_parametric_maps_are_monotone(cls, queries):
    probs, labels, _ = _miscalibrated(n=500, seed=6)
    cal = cls().fit(probs, labels)
    out = cal.transform(torch.tensor(sorted(queries), dtype=torch.float64))
    assert bool((out[1:] >= out[:-1]).all())


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_transform_keeps_shape_dtype(cls):
    probs, labels, _ = _miscalibrated(n=400, seed=7)
    cal = cls().fit(probs, labels)
    x = torch.rand(3, 4, 5)
    out = cal.transform(x)
    assert out.shape == (3, 4, 5) and out.dtype == torch.float32
    assert cal.transform(np.array([0.2, 0.7])).dtype == torch.float64


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_calibrate_maps_mean_and_samples_and_recomputes_std(cls):
    probs, labels, _ = _miscalibrated(n=2000, seed=8)
    cal = cls().fit(probs, labels)
    g = torch.Generator().manual_seed(0)
    members = torch.sigmoid(torch.randn(5, 3, 4, generator=g))  # (S=5, 3, 4)
    pred = Prediction.from_members(members, method="ensemble(members=5)", support=(0.0, 1.0))
    out = cal.calibrate(pred)
    assert out.mean.shape == (3, 4) and out.samples is not None
    assert out.samples.shape == (5, 3, 4)
    torch.testing.assert_close(out.mean, cal.transform(pred.mean))
    torch.testing.assert_close(out.samples, cal.transform(members))
    # population std of the mapped members (law of total variance, no aleatoric part)
    ref_std = torch.from_numpy(np.std(cal.transform(members).numpy(), axis=0))
    torch.testing.assert_close(out.std, ref_std, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.epistemic_std, ref_std, rtol=1e-5, atol=1e-6)
    assert out.aleatoric_std is None
    assert out.support == (0.0, 1.0)
    assert out.method == f"ensemble(members=5)+{cls._suffix}"


def test_calibrate_deterministic_prediction_stays_deterministic():
    probs, labels, _ = _miscalibrated(n=500, seed=9)
    cal = PlattScaling().fit(probs, labels)
    out = cal.calibrate(Prediction(mean=torch.tensor([0.2, 0.9]), method="mf"))
    assert out.std is None and out.samples is None and out.method == "mf+platt"


def test_calibrate_rejects_predictions_it_cannot_map():
    probs, labels, _ = _miscalibrated(n=500, seed=9)
    cal = TemperatureScaling().fit(probs, labels)
    m = torch.tensor([0.2, 0.9])
    with pytest.raises(ValueError, match="support"):
        cal.calibrate(Prediction(mean=m + 3, std=m, support=(1.0, 5.0)))
    with pytest.raises(ValueError, match="no samples"):
        cal.calibrate(Prediction(mean=m, std=m, support=(0.0, 1.0)))
    with pytest.raises(ValueError, match="aleatoric_std"):
        cal.calibrate(Prediction(mean=m, std=m, aleatoric_std=m, support=(0.0, 1.0)))


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_state_round_trip_is_json_ready(cls):
    probs, labels, _ = _miscalibrated(n=1000, seed=10)
    cal = cls().fit(probs, labels)
    state = json.loads(json.dumps(cal.state_dict(), allow_nan=False))
    loaded = cls().load_state_dict(state)
    x = torch.linspace(0, 1, 101, dtype=torch.float64)
    torch.testing.assert_close(loaded.transform(x), cal.transform(x), rtol=0, atol=0)


def test_load_state_dict_rejects_other_kind():
    state = PlattScaling().fit(*_miscalibrated(n=500)[:2]).state_dict()
    with pytest.raises(ValueError, match="kind"):
        TemperatureScaling().load_state_dict(state)


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_errors_before_fit(cls):
    cal = cls()
    with pytest.raises(NotFittedError, match=r"call fit\(probs, labels\)"):
        cal.transform(torch.tensor([0.5]))
    with pytest.raises(NotFittedError, match="fit"):
        cal.state_dict()
    with pytest.raises(NotFittedError, match="fit"):
        cal.calibrate(Prediction(mean=torch.tensor([0.5])))


@pytest.mark.parametrize("cls", CALIBRATORS)
@pytest.mark.parametrize(
    ("probs", "labels", "message"),
    [
        ([0.1, 0.2], [0, 1, 1], "labels has 3 entries but probs has 2"),
        ([0.1, 1.5], [0, 1], r"probs must be probabilities in \[0, 1\]"),
        ([[0.1, 0.2]], [0, 1], "probs must be 1-D"),
        ([0.1, 0.2], [0, 2], "labels must be 0/1"),
        ([0.1, float("nan")], [0, 1], "probs contains NaN"),
        ([], [], "probs is empty"),
    ],
)
def test_bad_input_messages(cls, probs, labels, message):
    with pytest.raises(ValueError, match=message):
        cls().fit(probs, labels)


@pytest.mark.parametrize("cls", [PlattScaling, TemperatureScaling])
def test_single_class_labels_rejected(cls):
    with pytest.raises(ValueError, match="both clicks"):
        cls().fit([0.1, 0.4, 0.8], [1, 1, 1])


def test_temperature_rejects_uninformative_probs():
    # probs anti-correlated with labels: the NLL decreases all the way to T = inf
    with pytest.raises(ValueError, match="no better than chance"):
        TemperatureScaling().fit([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])


def test_transform_rejects_out_of_range():
    cal = IsotonicCalibration().fit([0.1, 0.9], [0, 1])
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\]"):
        cal.transform(torch.tensor([2.0]))


def test_temperature_rejects_perfectly_separated_labels():
    # every click above every non-click: the NLL decreases all the way to T = 0
    with pytest.raises(ValueError, match="perfectly separated"):
        TemperatureScaling().fit([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
