"""Split-conformal intervals and variance scaling: finite-sample coverage and closed forms."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from wager.errors import NotFittedError
from wager.prediction import Prediction
from wager.uncertainty.conformal import SplitConformal, VarianceScaling, conformal_rank


def _hetero(n: int, rng: np.random.Generator) -> tuple[Prediction, torch.Tensor]:
    """Exchangeable heteroscedastic data; the model's std is right in shape but 2x too small."""
    x = rng.uniform(0.0, 1.0, n)
    mean = np.sin(6.0 * x)
    sigma = 0.1 + x
    y = mean + sigma * rng.standard_normal(n)
    pred = Prediction(mean=torch.from_numpy(mean), std=torch.from_numpy(sigma / 2.0))
    return pred, torch.from_numpy(y)


@pytest.mark.parametrize("normalized", [True, False])
def test_average_coverage_within_finite_sample_bounds(normalized):
    level, n_cal, n_test, reps = 0.9, 50, 100, 400
    rng = np.random.default_rng(0)
    coverages = np.empty(reps)
    for r in range(reps):
        cal, y_cal = _hetero(n_cal, rng)
        test, y_test = _hetero(n_test, rng)
        iv = SplitConformal(normalized=normalized).fit(cal, y_cal).interval(test, level)
        coverages[r] = iv.contains(y_test).double().mean().item()
    # Split-conformal theory: for exchangeable data with continuous scores, the coverage of a
    # fresh point, averaged over calibration draws, is exactly k / (n + 1) with
    # k = ceil((n + 1) level) = 46 here, i.e. 0.9020, inside [level, level + 1 / (n + 1)].
    # The Monte Carlo average of `reps` independent per-split coverages has standard error
    # se = sd(coverages) / sqrt(reps) (~0.0026: Beta(46, 5) spread of the conditional
    # coverage plus binomial noise of 100 test points); 3 se leaves a ~0.3% false-alarm
    # rate on each side.
    se = coverages.std(ddof=1) / math.sqrt(reps)
    assert level - 3 * se <= coverages.mean() <= level + 1.0 / (n_cal + 1) + 3 * se
    assert 0.001 < se < 0.005  # the bound is informative: much tighter than 1 / (n + 1)


def test_finite_sample_quantile_index_hand_case():
    # scores |y - 0| / 1 = 1..9 (given in shuffled order); n = 9:
    # level 0.9 -> ceil(10 * 0.9) = 9 -> 9th smallest = 9
    # level 0.5 -> ceil(10 * 0.5) = 5 -> 5;  level 0.8 -> ceil(8) = 8 -> 8
    y = torch.tensor([5.0, -2.0, 9.0, 1.0, -7.0, 3.0, 8.0, -4.0, 6.0])
    cal = Prediction(mean=torch.zeros(9), std=torch.ones(9))
    cp = SplitConformal().fit(cal, y, confidence_levels=(0.5, 0.8, 0.9))
    assert cp.quantiles_ == {0.5: 5.0, 0.8: 8.0, 0.9: 9.0}
    np.testing.assert_array_equal(cp.scores_, np.arange(1.0, 10.0))
    # any level works from the stored scores: ceil(10 * 0.3) = 3 -> 3
    assert cp.score_quantile(0.3) == 3.0


def test_infinite_quantile_when_rank_exceeds_n():
    cal = Prediction(mean=torch.zeros(9), std=torch.ones(9))
    cp = SplitConformal().fit(cal, torch.arange(1.0, 10.0))
    # ceil(10 * 0.95) = 10 > 9: no finite interval has the guarantee
    assert conformal_rank(9, 0.95) == 10
    assert cp.score_quantile(0.95) == math.inf
    assert cp.quantiles_[0.95] == math.inf
    new = Prediction(mean=torch.tensor([3.0]), std=torch.tensor([0.0]), support=(1.0, 5.0))
    iv = cp.interval(new, 0.95)
    assert iv.low.item() == 1.0 and iv.high.item() == 5.0  # the whole support
    iv = cp.interval(Prediction(mean=torch.tensor([3.0]), std=torch.tensor([1.0])), 0.95)
    assert iv.low.item() == -math.inf and iv.high.item() == math.inf


def test_rank_is_robust_to_float_error():
    # (n + 1) * level is mathematically an integer in each case
    assert conformal_rank(9, 0.9) == 9
    assert conformal_rank(99, 0.9) == 90
    assert conformal_rank(19, 0.95) == 19
    assert conformal_rank(999, 0.7) == 700


def test_normalized_width_follows_std():
    rng = np.random.default_rng(1)
    cal, y = _hetero(200, rng)
    cp = SplitConformal().fit(cal, y)
    std = torch.tensor([0.1, 0.2, 0.5, 2.0], dtype=torch.float64)
    iv = cp.interval(Prediction(mean=torch.zeros(4, dtype=torch.float64), std=std), 0.8)
    width = iv.width
    torch.testing.assert_close(width / width[0], std / std[0])
    torch.testing.assert_close(width, 2 * cp.score_quantile(0.8) * std)
    torch.testing.assert_close((iv.low + iv.high) / 2, torch.zeros(4, dtype=torch.float64))


def test_homoscedastic_gives_constant_width_and_works_without_std():
    rng = np.random.default_rng(2)
    cal, y = _hetero(200, rng)
    point_cal = Prediction(mean=cal.mean)  # deterministic: std None
    cp = SplitConformal(normalized=False).fit(point_cal, y)
    # q is the ceil(201 * 0.9) = 181st smallest |y - mean|
    assert cp.score_quantile(0.9) == pytest.approx(np.sort((y - cal.mean).abs().numpy())[180])
    new = Prediction(mean=torch.tensor([0.0, 1.0, -3.0]), std=torch.tensor([0.1, 1.0, 5.0]))
    width = cp.interval(new, 0.9).width
    torch.testing.assert_close(width, torch.full((3,), 2 * cp.score_quantile(0.9)))


def test_interval_clipped_to_support():
    cal = Prediction(mean=torch.zeros(9), std=torch.ones(9))
    cp = SplitConformal().fit(cal, torch.arange(1.0, 10.0))
    # q(0.5) = 5: 4.5 ± 5 * 0.2 = [3.5, 5.5] -> [3.5, 5.0] on a 1..5 scale
    new = Prediction(mean=torch.tensor([4.5]), std=torch.tensor([0.2]), support=(1.0, 5.0))
    iv = cp.interval(new, 0.5)
    torch.testing.assert_close(iv.low, torch.tensor([3.5]))
    torch.testing.assert_close(iv.high, torch.tensor([5.0]))
    assert iv.confidence_level == 0.5


@settings(max_examples=40, deadline=None)
@given(
    scores=st.lists(st.floats(0.0, 100.0), min_size=1, max_size=50),
    levels=st.lists(st.floats(0.01, 0.99), min_size=2, max_size=5),
)
def test_intervals_nested_across_levels(scores, levels):
    n = len(scores)
    cal = Prediction(
        mean=torch.zeros(n, dtype=torch.float64), std=torch.ones(n, dtype=torch.float64)
    )
    cp = SplitConformal().fit(cal, torch.tensor(scores, dtype=torch.float64))
    new = Prediction(mean=torch.tensor([1.0]), std=torch.tensor([0.5]))
    ivs = [cp.interval(new, c) for c in sorted(levels)]
    for a, b in itertools.pairwise(ivs):
        assert bool((b.low <= a.low).all()) and bool((b.high >= a.high).all())


def test_variance_scaling_closed_form_matches_scipy():
    rng = np.random.default_rng(3)
    cal, y = _hetero(500, rng)
    vs = VarianceScaling().fit(cal, y)
    mu, sd, yy = cal.mean.numpy(), cal.std.numpy(), y.numpy()

    def nll(s: float) -> float:
        return float(np.sum(np.log(s * sd) + (yy - mu) ** 2 / (2 * (s * sd) ** 2)))

    ref = minimize_scalar(nll, bounds=(0.1, 10.0), method="bounded", options={"xatol": 1e-10})
    assert vs.scale_ == pytest.approx(ref.x, rel=1e-6)
    assert vs.scale_ == pytest.approx(2.0, rel=0.1)  # the fixture's std is 2x too small


def test_variance_scaling_transform_scales_every_std_part():
    vs = VarianceScaling().load_state_dict({"kind": "variance_scaling", "scale": 2.0})
    members = torch.tensor([[1.0, 4.0], [3.0, 4.5]])  # (S=2, 2); averages (2, 4.25)
    pred = Prediction.from_members(
        members, torch.full((2, 2), 0.3), method="ensemble(members=2)", support=(1.0, 5.0)
    )
    out = vs.transform(pred)
    torch.testing.assert_close(out.mean, pred.mean)
    torch.testing.assert_close(out.std, 2 * pred.std)
    torch.testing.assert_close(out.aleatoric_std, 2 * pred.aleatoric_std)
    torch.testing.assert_close(out.epistemic_std, 2 * pred.epistemic_std)
    # samples spread twice as far from their average, then clipped to (1, 5):
    # 2 + 2 * (1 - 2) = 0, clipped to 1; 4.25 + 2 * 0.25 = 4.75
    torch.testing.assert_close(out.samples, torch.tensor([[1.0, 3.75], [4.0, 4.75]]))
    assert out.method == "ensemble(members=2)+variance_scaling"


def test_state_round_trips_are_json_ready():
    rng = np.random.default_rng(4)
    cal, y = _hetero(60, rng)
    cp = SplitConformal(normalized=False).fit(cal, y, confidence_levels=(0.9, 0.99))
    state = json.loads(json.dumps(cp.state_dict(), allow_nan=False))  # q(0.99) = inf not saved
    loaded = SplitConformal().load_state_dict(state)
    assert loaded.normalized is False
    assert loaded.quantiles_ == cp.quantiles_
    assert loaded.quantiles_[0.99] == math.inf  # ceil(61 * 0.99) = 61 > 60
    vs = VarianceScaling().fit(cal, y)
    state = json.loads(json.dumps(vs.state_dict(), allow_nan=False))
    assert VarianceScaling().load_state_dict(state).scale_ == vs.scale_


def test_errors_before_fit():
    pred = Prediction(mean=torch.zeros(2), std=torch.ones(2))
    with pytest.raises(NotFittedError, match=r"call fit\(prediction, targets\)"):
        SplitConformal().interval(pred, 0.9)
    with pytest.raises(NotFittedError, match="fit"):
        SplitConformal().state_dict()
    with pytest.raises(NotFittedError, match=r"call fit\(prediction, targets\)"):
        VarianceScaling().transform(pred)
    with pytest.raises(NotFittedError, match="fit"):
        VarianceScaling().state_dict()


_GOOD = Prediction(mean=torch.zeros(3), std=torch.ones(3))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: SplitConformal().fit(_GOOD, torch.zeros(4)), "targets has shape"),
        (
            lambda: SplitConformal().fit(_GOOD, torch.zeros(3), confidence_levels=(0.9, 1.0)),
            r"confidence_levels entry must be in \(0, 1\)",
        ),
        (
            lambda: SplitConformal().fit(
                Prediction(mean=torch.zeros(3), std=torch.tensor([1.0, 0.0, 1.0])), torch.zeros(3)
            ),
            "prediction.std has 1 entries <= 0",
        ),
        (
            lambda: SplitConformal().fit(Prediction(mean=torch.zeros(3)), torch.zeros(3)),
            r"normalized=False",
        ),
        (
            lambda: SplitConformal().fit(_GOOD, torch.tensor([0.0, float("nan"), 0.0])),
            "targets contains NaN",
        ),
        (
            lambda: SplitConformal().fit(_GOOD, torch.ones(3)).interval(_GOOD, 0.0),
            r"confidence_level must be in \(0, 1\)",
        ),
        (
            lambda: (
                SplitConformal()
                .fit(_GOOD, torch.ones(3))
                .interval(Prediction(mean=torch.zeros(1)), 0.5)
            ),
            "prediction.std is None",
        ),
        (lambda: VarianceScaling().fit(_GOOD, torch.zeros(2)), "targets has shape"),
        (lambda: VarianceScaling().fit(_GOOD, torch.zeros(3)), "fitted scale is 0"),
        (
            lambda: VarianceScaling().fit(Prediction(mean=torch.zeros(3)), torch.ones(3)),
            "prediction.std is None",
        ),
        (
            lambda: VarianceScaling().load_state_dict({"kind": "variance_scaling", "scale": -1}),
            r"state\['scale'\] must be a finite number > 0",
        ),
        (
            lambda: SplitConformal().load_state_dict({"kind": "variance_scaling", "scale": 1}),
            "expected 'split_conformal'",
        ),
    ],
)
def test_bad_input_messages(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_std_floor_keeps_zero_std_predictions_usable():
    # scores divide by max(std, floor): a zero std behaves like the floor, in fit and interval
    cal = Prediction(mean=torch.zeros(4), std=torch.tensor([0.0, 1.0, 1.0, 2.0]))
    y = torch.tensor([0.1, 0.5, 1.0, 1.0])
    cp = SplitConformal(std_floor=0.5).fit(cal, y, confidence_levels=(0.5,))
    # scores 0.1/0.5=0.2, 0.5, 1.0, 0.5 -> sorted [0.2, 0.5, 0.5, 1.0]; rank ceil(5*0.5)=3
    assert cp.score_quantile(0.5) == pytest.approx(0.5)
    iv = cp.interval(Prediction(mean=torch.tensor([2.0]), std=torch.tensor([0.0])), 0.5)
    assert iv.high.item() == pytest.approx(2.25)
    back = SplitConformal().load_state_dict(cp.state_dict())
    assert back.std_floor == 0.5
    with pytest.raises(ValueError, match="entries <= 0"):
        SplitConformal().fit(cal, y)
    with pytest.raises(ValueError, match="std_floor"):
        SplitConformal(std_floor=-1.0)
