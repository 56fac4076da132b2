"""Pure loss functions against NumPy / SciPy references and hand arithmetic."""

from __future__ import annotations

import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from wager.models.losses import (
    bce_with_negatives,
    gaussian_nll,
    sampled_softmax_loss,
    weighted_mean,
)


def test_weighted_mean_hand_worked():
    # (1*3 + 3*1) / (3 + 1) = 1.5 ; unweighted: (1 + 3) / 2 = 2
    v = torch.tensor([1.0, 3.0])
    assert weighted_mean(v, torch.tensor([3.0, 1.0])).item() == 1.5
    assert weighted_mean(v).item() == 2.0
    # all-zero weights: 0, not NaN
    assert weighted_mean(v, torch.zeros(2)).item() == 0.0


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-100, 100), st.integers(0, 4)), min_size=1, max_size=8).filter(
        lambda rows: sum(c for _, c in rows) > 0
    )
)
def test_weighted_mean_equals_mean_of_repeated_rows(rows):
    # integer weights = each value repeated that many times
    values = torch.tensor([v for v, _ in rows], dtype=torch.float64)
    counts = torch.tensor([c for _, c in rows], dtype=torch.float64)
    repeated = np.repeat([v for v, _ in rows], [c for _, c in rows])
    np.testing.assert_allclose(weighted_mean(values, counts).item(), repeated.mean(), atol=1e-9)


def test_gaussian_nll_matches_scipy_logpdf():
    rng = np.random.default_rng(0)
    mean, std, y = rng.normal(size=20), rng.uniform(0.1, 3.0, 20), rng.normal(size=20) * 2
    got = gaussian_nll(torch.tensor(mean), torch.tensor(std), torch.tensor(y)).numpy()
    np.testing.assert_allclose(got, -norm.logpdf(y, loc=mean, scale=std), rtol=1e-12)


def _np_softmax_ce(logits, positive, logq=None, invalid=None):
    z = logits.astype(np.float64).copy()
    if logq is not None:
        z = z - logq
    if invalid is not None:
        z[invalid] = -np.inf
    lse = np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) + z.max(1)
    return lse - z[np.arange(len(z)), positive]


def test_sampled_softmax_loss_matches_numpy_reference():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5))
    positive = np.array([0, 3, 4])
    logq = np.log(rng.dirichlet(np.ones(5)))
    invalid = np.zeros((3, 5), dtype=bool)
    invalid[0, 2] = invalid[2, 0] = True
    got = sampled_softmax_loss(
        torch.tensor(logits),
        torch.tensor(positive),
        torch.tensor(logq),
        torch.tensor(invalid),
    ).numpy()
    np.testing.assert_allclose(got, _np_softmax_ce(logits, positive, logq, invalid), rtol=1e-10)


def test_sampled_softmax_uniform_logits_is_log_of_candidates():
    # 4 equal logits, 1 masked: -log(1/3)
    invalid = torch.tensor([[False, True, False, False]])
    got = sampled_softmax_loss(torch.zeros(1, 4), torch.tensor([0]), invalid=invalid)
    assert math.isclose(got.item(), math.log(3), rel_tol=1e-6)


def test_bce_with_negatives_hand_worked():
    # pos logit 0 -> -log(0.5); neg logits 0, log(3) -> -log(0.5), -log(1/4)
    # mean over the 3 examples: (2 log 2 + log 4) / 3 = 4 log 2 / 3
    got = bce_with_negatives(torch.tensor([0.0]), torch.tensor([[0.0, math.log(3.0)]]))
    assert math.isclose(got.item(), 4 * math.log(2) / 3, rel_tol=1e-6)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.floats(-20, 20), min_size=6, max_size=6),
    st.floats(-50, 50),
    st.integers(0, 2),
)
def test_sampled_softmax_is_shift_invariant_and_non_negative(values, shift, pos):
    logits = torch.tensor(values, dtype=torch.float64).reshape(2, 3)
    positive = torch.tensor([pos, 2 - pos])
    base = sampled_softmax_loss(logits, positive)
    assert (base >= -1e-12).all()
    torch.testing.assert_close(sampled_softmax_loss(logits + shift, positive), base)
