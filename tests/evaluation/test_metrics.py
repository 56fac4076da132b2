"""Metrics against sklearn references and hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from wager.evaluation.metrics import (
    auc,
    expected_calibration_error,
    interval_coverage,
    log_loss,
    mean_interval_width,
)


def test_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500), 1)  # many ties
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_hand_case_and_single_class_nan():
    # positives scored 0.8, 0.4; negatives 0.5, 0.1: pairs won 1+1 and 1+0 -> 3/4
    assert auc([1, 1, 0, 0], [0.8, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    assert np.isnan(auc([1, 1], [0.2, 0.3]))


def test_log_loss_matches_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    p = rng.uniform(0.01, 0.99, 300)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)


def test_ece_hand_worked_equal_width():
    # 2 bins on [0,1]. bin 0: preds 0.2, 0.4 (mean 0.3), labels 0, 1 (mean 0.5) -> |0.3-0.5|=0.2
    # bin 1: preds 0.6, 0.8 (mean 0.7), labels 1, 1 (mean 1.0) -> 0.3. ECE = 0.5*0.2 + 0.5*0.3
    p = np.array([0.2, 0.4, 0.6, 0.8])
    y = np.array([0, 1, 1, 1])
    assert expected_calibration_error(p, y, n_bins=2, binning="equal_width") == pytest.approx(0.25)


def test_ece_equal_mass_hand_worked_and_true_probability_targets():
    # equal mass, 2 bins of 2 sorted preds: (0.1, 0.3) vs targets (0.2, 0.2): |0.2-0.2| = 0;
    # (0.5, 0.9) vs (0.6, 0.6): |0.7-0.6| = 0.1 -> ECE = 0.5 * 0.1
    p = np.array([0.9, 0.1, 0.5, 0.3])
    t = np.array([0.6, 0.2, 0.6, 0.2])
    assert expected_calibration_error(p, t, n_bins=2) == pytest.approx(0.05)


def test_ece_numpy_reference():
    rng = np.random.default_rng(2)
    p = rng.random(1000)
    y = (rng.random(1000) < p).astype(float)
    # ~10-line reference: equal-width bins
    edges = np.linspace(0, 1, 11)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, 9)
    ref = sum(
        abs(p[idx == b].mean() - y[idx == b].mean()) * (idx == b).mean()
        for b in range(10)
        if (idx == b).any()
    )
    assert expected_calibration_error(p, y, 10, "equal_width") == pytest.approx(ref, rel=1e-9)


def test_coverage_and_width():
    low, high = np.array([0, 1, 2.0]), np.array([1, 2, 3.0])
    assert interval_coverage(low, high, np.array([0.5, 3.0, 2.0])) == pytest.approx(2 / 3)
    assert mean_interval_width(low, high) == pytest.approx(1.0)


def test_nan_inputs_rejected():
    with pytest.raises(ValueError, match="probs contains NaN"):
        log_loss([1], [np.nan])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0, 1)), min_size=2, max_size=60))
def test_auc_and_ece_in_unit_interval(pairs):
    y = np.array([a for a, _ in pairs])
    s = np.array([b for _, b in pairs])
    a = auc(y, s)
    assert np.isnan(a) or 0.0 <= a <= 1.0
    assert 0.0 <= expected_calibration_error(s, y) <= 1.0
