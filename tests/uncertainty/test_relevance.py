"""Relevance confidence: Gaussian tail probabilities, list summaries, isotonic recalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from scipy.stats import t as student_t

from wager.errors import NotFittedError
from wager.evaluation.metrics import expected_calibration_error
from wager.prediction import Prediction
from wager.uncertainty.calibration import IsotonicCalibration, PlattScaling
from wager.uncertainty.relevance import (
    RelevanceCalibrator,
    expected_hits,
    prob_at_least_one,
    relevance_probability,
)


def test_relevance_probability_is_gaussian_tail():
    # N(3.5, 0.5): P(rating >= 4) = P(Z >= (4 - 3.5) / 0.5 = 1) = 1 - Phi(1) = 0.158655...
    pred = Prediction(
        mean=torch.tensor([3.5], dtype=torch.float64), std=torch.tensor([0.5]).double()
    )
    p = relevance_probability(pred, 4.0)
    assert p.item() == pytest.approx(1.0 - norm.cdf(1.0), rel=1e-12)


def test_relevance_probability_matches_scipy_on_a_grid():
    g = torch.Generator().manual_seed(0)
    mean = 1.0 + 4.0 * torch.rand(6, 7, generator=g, dtype=torch.float64)
    std = 0.05 + torch.rand(6, 7, generator=g, dtype=torch.float64)
    p = relevance_probability(Prediction(mean=mean, std=std), 3.7)
    ref = norm.sf(3.7, loc=mean.numpy(), scale=std.numpy())
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-10, atol=1e-15)
    assert p.shape == (6, 7)


def test_relevance_probability_edge_cases():
    mean = torch.tensor([4.0, 3.9, 4.2])
    std = torch.tensor([0.0, 0.0, 0.3])
    # std 0 is a point mass: 4.0 >= 4 -> 1, 3.9 < 4 -> 0
    p = relevance_probability(Prediction(mean=mean, std=std), 4.0)
    torch.testing.assert_close(p[:2], torch.tensor([1.0, 0.0]))
    # with a 1..5 support the rating is clipped: threshold <= 1 is certain, > 5 impossible
    bounded = Prediction(mean=mean, std=std + 0.1, support=(1.0, 5.0))
    torch.testing.assert_close(relevance_probability(bounded, 1.0), torch.ones(3))
    torch.testing.assert_close(relevance_probability(bounded, 5.5), torch.zeros(3))


def test_relevance_probability_needs_a_std():
    with pytest.raises(ValueError, match="deterministic"):
        relevance_probability(Prediction(mean=torch.tensor([4.0]), method="mf"), 4.0)
    with pytest.raises(ValueError, match="threshold must be a finite rating"):
        relevance_probability(Prediction(mean=torch.zeros(1), std=torch.ones(1)), float("nan"))


@settings(max_examples=40, deadline=None)
@given(
    mean=st.floats(-5, 5),
    std=st.floats(0.01, 3),
    t1=st.floats(-6, 6),
    t2=st.floats(-6, 6),
)
def test_relevance_probability_decreases_with_threshold(mean, std, t1, t2):
    pred = Prediction(
        mean=torch.tensor([mean], dtype=torch.float64), std=torch.tensor([std]).double()
    )
    lo, hi = sorted((t1, t2))
    assert relevance_probability(pred, lo).item() >= relevance_probability(pred, hi).item()


def test_expected_hits_and_prob_at_least_one_hand_cases():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.5, 1.0], [0.1, 0.1, 0.1]], dtype=torch.float64)
    # sums: 1.0, 1.7, 0.3
    torch.testing.assert_close(expected_hits(p), torch.tensor([1.0, 1.7, 0.3]).double())
    # 1 - (0.5 * 0.5 * 1) = 0.75;  a certain hit -> 1;  1 - 0.9^3 = 0.271
    torch.testing.assert_close(prob_at_least_one(p), torch.tensor([0.75, 1.0, 0.271]).double())
    assert expected_hits(p).shape == (3,)


def test_prob_at_least_one_accurate_for_tiny_probabilities():
    # 1 - (1 - 1e-12)^2 = 2e-12 - 1e-24; the naive 1 - prod(1 - p) would lose most digits
    p = torch.tensor([1e-12, 1e-12], dtype=torch.float64)
    assert prob_at_least_one(p).item() == pytest.approx(2e-12, rel=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=20))
def test_prob_at_least_one_bounds(values):
    p = torch.tensor(values, dtype=torch.float64)
    q = prob_at_least_one(p).item()
    # union bound above, most likely single item below
    assert max(values) - 1e-12 <= q <= min(1.0, sum(values)) + 1e-12


def test_list_helpers_reject_non_probabilities():
    with pytest.raises(ValueError, match=r"p must hold probabilities in \[0, 1\]"):
        expected_hits(torch.tensor([[0.5, 1.2]]))
    with pytest.raises(ValueError, match="p must have a last dimension"):
        prob_at_least_one(torch.tensor(0.5))


def _overconfident(n: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Ratings ~ N(mu, 1) but the model claims std 0.4: raw P(rating >= 4) is overconfident."""
    rng = np.random.default_rng(seed)
    mu = rng.uniform(2.0, 5.0, n)
    ratings = mu + rng.standard_normal(n)
    pred = Prediction(mean=torch.from_numpy(mu), std=torch.full((n,), 0.4, dtype=torch.float64))
    raw = relevance_probability(pred, 4.0).numpy()
    return raw, (ratings >= 4.0).astype(np.float64)


def test_relevance_calibrator_reduces_ece():
    raw, relevant = _overconfident()
    fit_half, test_half = slice(0, 10000), slice(10000, None)
    before = expected_calibration_error(raw[test_half], relevant[test_half])
    rc = RelevanceCalibrator().fit(raw[fit_half], relevant[fit_half])
    after = expected_calibration_error(rc.transform(raw[test_half]).numpy(), relevant[test_half])
    # before ~ 0.13 (the std is 2.5x too small); after, label noise of 15 bins x 667 rows
    # leaves ~0.015-0.02, well under before / 3
    assert before > 0.1
    assert after < before / 3


def test_relevance_calibrator_shape_state_and_errors():
    rc = RelevanceCalibrator()
    with pytest.raises(NotFittedError, match=r"call fit\(raw_probs, relevant\)"):
        rc.transform(torch.tensor([0.5]))
    with pytest.raises(NotFittedError, match="fit"):
        rc.state_dict()
    with pytest.raises(ValueError, match="relevant has 2 entries but raw_probs has 3"):
        rc.fit([0.1, 0.5, 0.9], [0, 1])
    with pytest.raises(ValueError, match="raw_probs must be probabilities"):
        rc.fit([0.1, 5.0], [0, 1])
    raw, relevant = _overconfident(n=2000, seed=1)
    rc.fit(torch.from_numpy(raw), torch.from_numpy(relevant))
    p = torch.rand(4, 10, dtype=torch.float64)
    assert rc.transform(p).shape == (4, 10)
    state = json.loads(json.dumps(rc.state_dict(), allow_nan=False))
    loaded = RelevanceCalibrator().load_state_dict(state)
    torch.testing.assert_close(loaded.transform(p), rc.transform(p), rtol=0, atol=0)
    with pytest.raises(ValueError, match="relevance_isotonic"):
        RelevanceCalibrator().load_state_dict({"kind": "platt"})


def test_relevance_of_a_sample_only_prediction_uses_its_student_t():
    # 4 draws, no noise head: P(rating >= 4) = F_t3((mean - 4) / scale), scale = std sqrt(5/3)
    draws = torch.tensor([[3.0, 4.5], [4.0, 4.0], [5.0, 3.5], [4.0, 4.4]], dtype=torch.float64)
    pred = Prediction.from_members(draws)
    mean, std = pred.mean.numpy(), pred.std.numpy()
    expected = student_t.cdf((mean - 4.0) / (std * np.sqrt(5 / 3)), 3)
    np.testing.assert_allclose(relevance_probability(pred, 4.0).numpy(), expected, rtol=1e-10)
    gaussian = norm.cdf((mean - 4.0) / std)
    assert not np.allclose(expected, gaussian)


def test_relevance_calibrator_platt_default_fallback_and_old_state():
    raw, relevant = _overconfident(n=4000, seed=2)
    rc = RelevanceCalibrator().fit(raw, relevant)
    assert rc.method == "platt" and isinstance(rc.map_, PlattScaling)
    ref = PlattScaling().fit(raw, relevant)
    p = torch.tensor([0.05, 0.3, 0.5, 0.9, 0.99], dtype=torch.float64)
    torch.testing.assert_close(rc.transform(p), ref.transform(p))
    # overconfident raw probabilities: the slope of the logit map is below 1 (softened)
    assert 0 < rc.map_.slope_ < 1
    # strictly increasing: distinct raw probabilities keep distinct confidences
    assert bool((rc.transform(p).diff() > 0).all())
    back = RelevanceCalibrator("isotonic").load_state_dict(json.loads(json.dumps(rc.state_dict())))
    assert back.method == "platt" and isinstance(back.map_, PlattScaling)
    torch.testing.assert_close(back.transform(p), rc.transform(p))
    # a map that would reverse the order (slope <= 0) falls back to the isotonic one
    rev = RelevanceCalibrator().fit(raw, 1.0 - relevant)
    assert isinstance(rev.map_, IsotonicCalibration)
    # runs saved before the Platt default hold {"kind": "relevance_isotonic", "isotonic": ...}
    iso = RelevanceCalibrator("isotonic").fit(raw, relevant)
    old = {"kind": "relevance_isotonic", "isotonic": iso.map_.state_dict()}
    torch.testing.assert_close(
        RelevanceCalibrator().load_state_dict(old).transform(p), iso.transform(p)
    )
    with pytest.raises(ValueError, match="method must be 'platt' or 'isotonic'"):
        RelevanceCalibrator("beta")
