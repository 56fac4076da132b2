"""rmse and mae against hand-worked cases, a NumPy reference and sklearn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error

from wager.evaluation.metrics import mae, rmse


def test_hand_worked():
    # errors 1, -2, 0, 1: squares 1, 4, 0, 1 -> mean 1.5 -> rmse sqrt(1.5); abs mean 4/4 = 1
    p = np.array([2.0, 1.0, 3.0, 5.0])
    t = np.array([1.0, 3.0, 3.0, 4.0])
    assert rmse(p, t) == pytest.approx(np.sqrt(1.5), rel=1e-12)
    assert mae(p, t) == pytest.approx(1.0, rel=1e-12)
    # weights 1, 0, 0, 3: rmse sqrt((1*1 + 3*1) / 4) = 1; mae (1*1 + 3*1) / 4 = 1
    w = np.array([1.0, 0.0, 0.0, 3.0])
    assert rmse(p, t, w) == pytest.approx(1.0, rel=1e-12)
    assert mae(p, t, w) == pytest.approx(1.0, rel=1e-12)


def test_weighted_matches_numpy_reference_and_sklearn():
    rng = np.random.default_rng(0)
    p, t, w = rng.normal(size=200), rng.normal(size=200), rng.random(200)
    ref_rmse = np.sqrt(
        sum(wi * (pi - ti) ** 2 for pi, ti, wi in zip(p, t, w, strict=True)) / w.sum()
    )
    ref_mae = sum(wi * abs(pi - ti) for pi, ti, wi in zip(p, t, w, strict=True)) / w.sum()
    assert rmse(p, t, w) == pytest.approx(ref_rmse, rel=1e-10)
    assert mae(p, t, w) == pytest.approx(ref_mae, rel=1e-10)
    sk_mse = mean_squared_error(t, p, sample_weight=w)
    assert rmse(p, t, w) == pytest.approx(np.sqrt(sk_mse), rel=1e-10)
    assert mae(p, t, w) == pytest.approx(mean_absolute_error(t, p, sample_weight=w), rel=1e-10)
    assert rmse(p, t) == pytest.approx(np.sqrt(mean_squared_error(t, p)), rel=1e-10)


def test_torch_tensors_match_numpy():
    rng = np.random.default_rng(1)
    p, t = rng.normal(size=50), rng.normal(size=50)
    pt = torch.tensor(p, requires_grad=True)
    assert rmse(pt, torch.tensor(t)) == pytest.approx(rmse(p, t), rel=1e-12)
    assert mae(torch.tensor(p, dtype=torch.float32), t) == pytest.approx(mae(p, t), rel=1e-6)


@pytest.mark.parametrize("fn", [rmse, mae])
@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.ones(3), np.ones(4)), "targets has 4 entries but predictions has 3"),
        ((np.ones(3), np.ones(3), np.ones(2)), "weights has 2 entries"),
        ((np.ones(0), np.ones(0)), "predictions is empty"),
        ((np.ones((3, 1)), np.ones(3)), r"predictions must be a 1-D array.*\(3, 1\)"),
        ((np.ones(2), np.array([1.0, np.nan])), "targets contains NaN"),
        ((np.ones(2), np.ones(2), np.array([1.0, -1.0])), "weights must be >= 0"),
        ((np.ones(2), np.ones(2), np.zeros(2)), "weights sum to 0"),
    ],
)
def test_errors_name_the_argument(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)
