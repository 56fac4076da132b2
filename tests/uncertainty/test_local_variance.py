"""Local variance scaling and support covariates: closed forms, scipy optima and hand tables."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize

from wager.errors import NotFittedError
from wager.prediction import Prediction
from wager.uncertainty.conformal import SplitConformal, VarianceScaling
from wager.uncertainty.local_variance import LocalVarianceScaling, SupportCovariates


def _constant(n: int, std: float = 1.0, **kw) -> Prediction:
    """Zero-mean prediction with the same std on every row."""
    return Prediction(
        mean=torch.zeros(n, dtype=torch.float64),
        std=torch.full((n,), std, dtype=torch.float64),
        **kw,
    )


def _recovery_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ U(0, 1), y ~ N(0, exp(-1 + 2 x)): a log-linear variance the model can represent."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, n)
    y = rng.normal(0.0, np.exp(0.5 * (-1.0 + 2.0 * x)))
    return x, y


def _objective(lv: LocalVarianceScaling, phi: np.ndarray, e: np.ndarray):
    """The fit's objective and gradient, rebuilt from the fitted standardisation."""
    x = np.column_stack([np.ones(e.size), (phi - lv.centre_) / lv.scale_])
    pen = np.full(x.shape[1], lv.ridge)
    pen[0] = 0.0

    def f(w: np.ndarray) -> float:
        eta = x @ w
        return float(np.mean(eta + e * np.exp(-eta)) + np.sum(pen * w**2))

    def grad(w: np.ndarray) -> np.ndarray:
        r = e * np.exp(-(x @ w))
        return x.T @ (1.0 - r) / e.size + 2.0 * pen * w

    return f, grad


def _gaussian_nll(y: np.ndarray, mu: np.ndarray, var: np.ndarray) -> float:
    return float(np.mean(0.5 * np.log(2.0 * math.pi * var) + (y - mu) ** 2 / (2.0 * var)))


@pytest.mark.parametrize("ridge", [0.0, 1e-3])
def test_constant_std_reduces_to_mean_squared_residual(ridge):
    rng = np.random.default_rng(1)
    n = 500
    y = rng.normal(0.3, 1.7, n)
    pred = _constant(n, std=0.8)
    lv = LocalVarianceScaling(ridge=ridge).fit(pred, y)
    # the only feature, log std^2, is constant: its standardised column is 0, so only the
    # intercept is free and d/dw0 mean(w0 + e exp(-w0)) = 0 gives exp(w0) = mean(e)
    expected = np.mean(y**2)
    var = lv.variance(pred).numpy()
    np.testing.assert_allclose(var, np.full(n, expected), rtol=1e-6)
    assert lv.features_ == ["log_var"]
    # VarianceScaling: s^2 = mean(y^2 / 0.8^2), so s * 0.8 = sqrt(mean(y^2)) too
    local = lv.transform(pred).std.numpy()
    single = VarianceScaling().fit(pred, torch.from_numpy(y)).transform(pred).std.numpy()
    np.testing.assert_allclose(local, single, rtol=1e-6)
    np.testing.assert_allclose(local, np.full(n, math.sqrt(expected)), rtol=1e-6)


def test_recovers_log_linear_variance_and_matches_scipy():
    n = 20000
    x, y = _recovery_data(n, seed=2)
    pred = _constant(n)
    lv = LocalVarianceScaling().fit(pred, y, x[:, None], names=["x"])
    assert lv.features_ == ["log_var", "x"]

    # truth: Var(y | x) = exp(-1 + 2 x) = exp(-0.5) = 0.6065 at x = 0.25 and exp(0.5) = 1.6487
    # at x = 0.75; the standard error of the fitted log variance there is about
    # sqrt(2 / n) * 2 ~ 0.02, so 5% is a > 2.5 se margin
    grid = np.array([[0.25], [0.75]])
    var = lv.variance(_constant(2), grid).numpy()
    np.testing.assert_allclose(var, np.exp(-1.0 + 2.0 * grid[:, 0]), rtol=0.05)

    # the same objective minimised by scipy's BFGS from zero with the analytic gradient
    phi = np.column_stack([np.zeros(n), x])  # log(1^2) = 0, then the covariate
    f, grad = _objective(lv, phi, y**2)
    res = minimize(f, np.zeros(3), jac=grad, method="BFGS", options={"gtol": 1e-10})
    assert abs(res.fun - f(lv.weights_)) < 1e-5
    assert f(lv.weights_) <= res.fun + 1e-12  # Newton is at least as good as BFGS
    assert np.max(np.abs(grad(lv.weights_))) < 1e-6
    np.testing.assert_allclose(lv.weights_, res.x, atol=1e-4)


def test_transform_rescales_each_std_part_and_spreads_samples():
    rng = np.random.default_rng(3)
    n, s = 400, 6
    ale = torch.from_numpy(rng.uniform(0.3, 1.0, n))
    epi = torch.from_numpy(rng.uniform(0.05, 0.5, n))
    std = (ale**2 + epi**2).sqrt()
    mean = torch.from_numpy(rng.uniform(2.5, 3.5, n))
    samples = mean + epi * torch.from_numpy(rng.standard_normal((s, n)))
    samples = samples - samples.mean(dim=0) + mean  # per-row average = mean exactly
    pred = Prediction(
        mean=mean,
        std=std,
        aleatoric_std=ale,
        epistemic_std=epi,
        samples=samples,
        method="ensemble(members=6)",
    )
    y = mean.numpy() + rng.normal(0.0, 1.5 * std.numpy())
    cov = rng.uniform(0.0, 1.0, (n, 1))
    lv = LocalVarianceScaling().fit(pred, y, cov, names=["c"])
    assert lv.features_ == ["log_aleatoric_var", "log_epistemic_var", "c"]
    # the floor is 1e-4 of the mean total variance of the fit rows
    assert lv.epistemic_floor_ == pytest.approx(1e-4 * float(torch.mean(std**2)), rel=1e-12)

    out = lv.transform(pred, cov)
    factor = lv.variance(pred, cov).sqrt() / std
    assert not torch.allclose(factor, factor[0].expand_as(factor))  # it is per-row
    assert torch.equal(out.mean, pred.mean) and out.support is None
    torch.testing.assert_close(out.std, std * factor, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out.aleatoric_std, ale * factor, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out.epistemic_std, epi * factor, rtol=1e-12, atol=0.0)
    # ale^2 + epi^2 = std^2 before, so (f ale)^2 + (f epi)^2 = (f std)^2 after
    torch.testing.assert_close(out.aleatoric_std**2 + out.epistemic_std**2, out.std**2)
    # the modelled std is sqrt(variance) itself
    torch.testing.assert_close(out.std**2, lv.variance(pred, cov), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(out.samples.mean(dim=0), pred.samples.mean(dim=0))
    torch.testing.assert_close(out.samples.std(dim=0), pred.samples.std(dim=0) * factor)
    assert out.method == "ensemble(members=6)+local_variance_scaling"


def test_transform_keeps_support():
    rng = np.random.default_rng(4)
    n = 300
    mean = torch.from_numpy(rng.uniform(1.5, 4.5, n))
    pred = Prediction(mean=mean, std=torch.full((n,), 0.5, dtype=torch.float64), support=(1, 5))
    y = mean.numpy() + rng.normal(0.0, 0.7, n)
    lv = LocalVarianceScaling().fit(pred, y)
    out = lv.transform(pred)
    assert out.support == (1, 5) and torch.equal(out.mean, mean)
    assert out.method == "local_variance_scaling"  # no prior method: the bare suffix


def test_covariates_beyond_fit_range_are_clipped():
    n = 2000
    x, y = _recovery_data(n, seed=5)
    lv = LocalVarianceScaling().fit(_constant(n), y, x[:, None])
    lo, hi = float(x.min()), float(x.max())
    assert lv.low_[1] == lo and lv.high_[1] == hi
    far = lv.variance(_constant(4), np.array([[hi], [100.0], [lo], [-100.0]])).numpy()
    # the variance increases with x (b = 2 > 0), so the clipped ends differ
    assert far[0] > far[2]
    assert far[1] == far[0]  # 100 is clipped to the largest x seen in fit
    assert far[3] == far[2]  # -100 to the smallest
    # the model's own log variance is clipped too: std 1 was the only value seen in fit
    np.testing.assert_array_equal(lv.variance(_constant(1, std=50.0), [[hi]]).numpy(), far[:1])


def _bounded(n: int, rng: np.random.Generator) -> tuple[Prediction, Prediction, np.ndarray]:
    """Ratings on [1, 5] whose error sd shrinks towards the bounds: sd = 0.15 + 0.85 (1 - z^2)."""
    mean = rng.uniform(1.0, 5.0, n)
    z = (2.0 * mean - 6.0) / 4.0
    y = mean + rng.normal(0.0, 0.15 + 0.85 * (1.0 - z**2))
    mu, std = torch.from_numpy(mean), torch.full((n,), 0.6, dtype=torch.float64)
    bounded = Prediction(mean=mu, std=std, support=(1.0, 5.0))
    return bounded, Prediction(mean=mu, std=std), y


def test_support_position_features_lower_fresh_nll():
    rng = np.random.default_rng(6)
    cal_s, cal_u, y_cal = _bounded(3000, rng)
    test_s, test_u, y_test = _bounded(3000, rng)
    with_support = LocalVarianceScaling().fit(cal_s, y_cal)
    without = LocalVarianceScaling().fit(cal_u, y_cal)
    assert with_support.features_ == ["log_var", "support_z", "support_z2"]
    assert with_support.support_ == (1.0, 5.0)
    assert without.features_ == ["log_var"] and without.support_ is None
    mu = test_s.mean.numpy()
    nll_s = _gaussian_nll(y_test, mu, with_support.variance(test_s).numpy())
    nll_u = _gaussian_nll(y_test, mu, without.variance(test_u).numpy())
    # population values for z ~ U(-1, 1) (scipy quad / a fine-grid minimiser, see _bounded):
    # without the position the best is one variance E[sd^2] = 0.5778, NLL = 0.5 log(2 pi
    # 0.5778) + 0.5 = 1.145; the best log-quadratic in z reaches NLL 1.006, a gain of 0.138
    # nats (the oracle sd(z) itself: 0.148). The per-row NLL difference has sd ~ 0.5, so the
    # mean over 3000 fresh rows has se ~ 0.01 and 0.08 leaves > 5 se
    assert nll_s < nll_u - 0.08
    assert nll_u == pytest.approx(1.145, abs=0.06) and nll_s == pytest.approx(1.006, abs=0.06)
    # near a bound (z = +-0.95) the modelled variance is far below the middle (z = 0): the
    # population log-quadratic gives 0.081 at z = +-0.95 and 1.18 at z = 0
    edge = Prediction(
        mean=torch.tensor([1.1, 3.0, 4.9], dtype=torch.float64),
        std=torch.full((3,), 0.6, dtype=torch.float64),
        support=(1.0, 5.0),
    )
    v = with_support.variance(edge).numpy()
    assert v[0] < 0.3 * v[1] and v[2] < 0.3 * v[1]


def test_state_round_trip_through_json():
    rng = np.random.default_rng(7)
    n = 500
    x, y = _recovery_data(n, seed=7)
    mean = torch.from_numpy(rng.uniform(1.0, 5.0, n))
    pred = Prediction(mean=mean, std=torch.full((n,), 1.0, dtype=torch.float64), support=(1, 5))
    cov = np.column_stack([x, rng.uniform(0.0, 1.0, n)])
    lv = LocalVarianceScaling(ridge=0.01).fit(pred, y + mean.numpy(), cov, names=["a", "b"])
    state = json.loads(json.dumps(lv.state_dict()))
    assert state["kind"] == "local_variance_scaling"
    back = LocalVarianceScaling().load_state_dict(state)
    assert back.ridge == 0.01 and back.features_ == lv.features_
    assert back.covariate_names_ == ["a", "b"] and back.support_ == (1.0, 5.0)
    torch.testing.assert_close(back.variance(pred, cov), lv.variance(pred, cov), rtol=0, atol=0)

    corrupt = dict(state, weights=state["weights"][:-1])
    with pytest.raises(ValueError, match="5 weights for 5 features"):
        LocalVarianceScaling().load_state_dict(corrupt)
    with pytest.raises(ValueError, match="corrupt"):
        LocalVarianceScaling().load_state_dict(dict(state, centre=state["centre"][:2]))
    with pytest.raises(ValueError, match="expected 'local_variance_scaling'"):
        LocalVarianceScaling().load_state_dict(dict(state, kind="variance_scaling"))
    with pytest.raises(ValueError, match="missing"):
        LocalVarianceScaling().load_state_dict({k: v for k, v in state.items() if k != "low"})


def test_errors_name_the_problem():
    n = 10
    pred = _constant(n)
    y = np.linspace(-1.0, 1.0, n)
    lv = LocalVarianceScaling()
    with pytest.raises(NotFittedError, match=r"call fit\(prediction, targets, covariates\)"):
        lv.variance(pred)
    with pytest.raises(NotFittedError, match="not fitted"):
        lv.transform(pred)
    with pytest.raises(NotFittedError, match="not fitted"):
        lv.state_dict()
    with pytest.raises(ValueError, match=r"shape \(9, 2\) but there are 10 predictions"):
        lv.fit(pred, y, np.zeros((9, 2)))
    bad = np.zeros((n, 2))
    bad[3, 1] = np.nan
    bad[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 NaN / inf entries \(first at row 3, column 1\)"):
        lv.fit(pred, y, bad)
    with pytest.raises(ValueError, match="names has 1 entries for 2 covariates"):
        lv.fit(pred, y, np.zeros((n, 2)), names=["a"])
    with pytest.raises(ValueError, match="exactly on every row"):
        lv.fit(pred, np.zeros(n))
    lv.fit(pred, y, np.random.default_rng(0).uniform(size=(n, 2)), names=["user", "item"])
    with pytest.raises(ValueError, match=r"2 covariates \(\['user', 'item'\]\) but got 1"):
        lv.transform(pred, np.zeros((n, 1)))
    with pytest.raises(ValueError, match=r"2 covariates \(\['user', 'item'\]\) but got 0"):
        lv.transform(pred)
    for ridge in (-1e-3, math.nan, math.inf):
        with pytest.raises(ValueError, match="ridge must be a finite number >= 0"):
            LocalVarianceScaling(ridge=ridge)
    with pytest.raises(ValueError, match=r"prediction\.std is None"):
        LocalVarianceScaling().fit(Prediction(mean=torch.zeros(n), method="mf"), y)
    with pytest.raises(ValueError, match="entries <= 0"):
        LocalVarianceScaling().fit(_constant(n, std=0.0), y)


def test_support_covariates_hand_table():
    labels = np.array([1.0, 2.0, 3.0, 5.0])
    sc = SupportCovariates().fit(
        {"user": torch.tensor([1, 1, 2, 1]), "item": np.array([0, 1, 1, 1])},
        torch.from_numpy(labels),
        {"user": 4, "item": 2},
    )
    # overall: mean 11/4, squared deviations 3.0625 + 0.5625 + 0.0625 + 5.0625 = 8.75,
    # s2 = 8.75 / 3 = 35/12 (ddof = 1)
    s2 = 35.0 / 12.0
    assert s2 == pytest.approx(np.var(labels, ddof=1), rel=1e-15)
    # user 1: labels 1, 2, 5, mean 8/3, SS = (25 + 4 + 49) / 9 = 26/3,
    # var = (26/3 + 5 * 35/12) / (2 + 5) = (279/12) / 7 = 93/28
    # user 2: one row, SS = 0 -> (0 + 5 s2) / (0 + 5) = s2; users 0 (OOV) and 3: 0 rows -> s2
    user = np.array(
        [
            [0.0, 0.5 * math.log(s2)],
            [math.log(4.0), 0.5 * math.log(93.0 / 28.0)],
            [math.log(2.0), 0.5 * math.log(s2)],
            [0.0, 0.5 * math.log(s2)],
        ]
    )
    np.testing.assert_allclose(sc.tables_["user"], user, rtol=1e-12)
    # item 0: one row (label 1) -> s2; item 1: labels 2, 3, 5, mean 10/3,
    # SS = (16 + 1 + 25) / 9 = 14/3, var = (14/3 + 5 * 35/12) / 7 = (231/12) / 7 = 11/4
    item = np.array([[math.log(2.0), 0.5 * math.log(s2)], [math.log(4.0), 0.5 * math.log(2.75)]])
    np.testing.assert_allclose(sc.tables_["item"], item, rtol=1e-12)
    assert sc.names_ == [
        "user:log1p_rows",
        "user:log_label_std",
        "item:log1p_rows",
        "item:log_label_std",
    ]

    batch = {"user": torch.tensor([2, 0, 1]), "item": torch.tensor([1, 1, 0])}
    expected = np.column_stack([user[[2, 0, 1]], item[[1, 1, 0]]])
    np.testing.assert_allclose(sc(batch), expected, rtol=1e-12)

    back = SupportCovariates().load_state_dict(json.loads(json.dumps(sc.state_dict())))
    assert back.prior_rows == 5.0 and back.names_ == sc.names_
    np.testing.assert_array_equal(back(batch), sc(batch))

    # the table feeds LocalVarianceScaling as named covariates
    pred = _constant(3)
    lv = LocalVarianceScaling().fit(pred, np.array([0.5, -1.0, 2.0]), sc(batch), names=sc.names_)
    assert lv.features_ == ["log_var", *sc.names_]


def test_support_covariates_prior_rows_and_bad_input():
    labels = np.array([1.0, 2.0, 3.0, 5.0])
    # k = 1: user 1 var = (26/3 + 35/12) / (2 + 1) = (139/12) / 3 = 139/36
    sc = SupportCovariates(prior_rows=1.0).fit({"u": [1, 1, 2, 1]}, labels, {"u": 3})
    assert sc.tables_["u"][1, 1] == pytest.approx(0.5 * math.log(139.0 / 36.0), rel=1e-12)
    for idx in ([1, 1, 4, 1], [1, -1, 2, 1], [1, 1, 2]):
        with pytest.raises(ValueError, match=r"indices\['user'\] must be 4 encoded indices"):
            SupportCovariates().fit({"user": np.array(idx)}, labels, {"user": 4})
    with pytest.raises(ValueError, match=r"in \[0, 4\); got shape \(4,\), range \[0, 4\]"):
        SupportCovariates().fit({"user": np.array([0, 1, 4, 2])}, labels, {"user": 4})
    with pytest.raises(ValueError, match=">= 2 finite"):
        SupportCovariates().fit({"user": [1]}, [1.0], {"user": 4})
    with pytest.raises(ValueError, match=">= 2 finite"):
        SupportCovariates().fit({"user": [1, 2]}, [1.0, math.nan], {"user": 4})
    for k in (0.0, -1.0, math.inf):
        with pytest.raises(ValueError, match="prior_rows must be a finite number > 0"):
            SupportCovariates(prior_rows=k)
    with pytest.raises(ValueError, match="expected 'support_covariates'"):
        SupportCovariates().load_state_dict({"kind": "local_variance_scaling"})


def test_conformal_on_rows_the_variance_model_never_saw_keeps_its_coverage():
    # the Recommender's recipe: LocalVarianceScaling on one half of the calibration rows,
    # SplitConformal (normalised by the refitted std) on the other half. The second half and
    # the test rows are exchangeable given the first, so split-conformal theory applies to
    # the refitted std: mean coverage k / (n + 1) with n = 50, k = ceil(51 * 0.9) = 46,
    # i.e. 0.9020, inside [0.9, 0.9 + 1 / 51].
    level, n_fit, n_cal, n_test, reps = 0.9, 200, 50, 100, 300
    rng = np.random.default_rng(0)

    def draw(n: int) -> tuple[Prediction, torch.Tensor, np.ndarray]:
        x = rng.uniform(0.0, 1.0, n)
        y = rng.normal(0.0, 0.2 + x)  # the model's std is a constant 1: wrong in shape
        pred = Prediction(mean=torch.zeros(n, dtype=torch.float64), std=torch.ones(n))
        return pred, torch.from_numpy(y), x[:, None]

    coverages = np.empty(reps)
    widths, flat = np.empty(reps), np.empty(reps)
    for r in range(reps):
        fit_pred, fit_y, fit_x = draw(n_fit)
        lv = LocalVarianceScaling().fit(fit_pred, fit_y, fit_x, names=["x"])
        cal_pred, cal_y, cal_x = draw(n_cal)
        test_pred, test_y, test_x = draw(n_test)
        cp = SplitConformal().fit(lv.transform(cal_pred, cal_x), cal_y)
        iv = cp.interval(lv.transform(test_pred, test_x), level)
        coverages[r] = iv.contains(test_y).double().mean().item()
        widths[r] = iv.width.double().mean().item()
        const = SplitConformal(normalized=False).fit(cal_pred, cal_y).interval(test_pred, level)
        flat[r] = const.width.double().mean().item()
    se = coverages.std(ddof=1) / np.sqrt(reps)
    assert level - 3 * se <= coverages.mean() <= level + 1.0 / (n_cal + 1) + 3 * se
    # and the refitted std pays: the constant width covering 90% of N(0, (0.2 + x)^2) with
    # x ~ U(0, 1) is 2 q with mean over x of P(|N(0, 1)| <= q / (0.2 + x)) = 0.9, q = 1.2605
    # (scipy brentq + quad): width 2.521; with the true std the interval is 2 * 1.645 *
    # (0.2 + x), mean width 2.303, 8.6% narrower. Both carry the finite-sample slack: the
    # 46th of 50 scores sits above the population quantile on average (2.65 here)
    assert 2.521 < flat.mean() < 2.521 + 0.2
    assert widths.mean() < 0.97 * flat.mean()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(min_value=8, max_value=60),
    seed=st.integers(min_value=0, max_value=10_000),
    with_support=st.booleans(),
)
def test_transform_keeps_the_mean_and_gives_finite_positive_stds(n, seed, with_support):
    # whatever the data, the refit only rescales: the mean is untouched, every std stays
    # finite and > 0, and the std part shares of the total are kept
    rng = np.random.default_rng(seed)
    mean = rng.uniform(1.0, 5.0, n)
    ale, epi = rng.uniform(0.1, 2.0, n), rng.uniform(0.0, 1.0, n)
    pred = Prediction(
        mean=torch.from_numpy(mean),
        std=torch.from_numpy(np.sqrt(ale**2 + epi**2)),
        aleatoric_std=torch.from_numpy(ale),
        epistemic_std=torch.from_numpy(epi),
        support=(1.0, 5.0) if with_support else None,
    )
    y = mean + rng.standard_normal(n) * rng.uniform(0.1, 3.0, n)
    cov = rng.standard_normal((n, 2))
    out = LocalVarianceScaling().fit(pred, y, cov).transform(pred, cov)
    torch.testing.assert_close(out.mean, pred.mean)
    assert bool(torch.isfinite(out.std).all()) and bool((out.std > 0).all())
    share = (out.aleatoric_std / out.std) - (pred.aleatoric_std / pred.std)
    assert float(share.abs().max()) < 1e-9


def test_monotone_covariate_is_pinned_at_the_scipy_bounded_optimum():
    # the noise GROWS with the count-like covariate c, but c is declared monotone -1 (more
    # evidence never adds variance): the constrained optimum pins its weight at 0, and the
    # free covariate x keeps the optimum scipy's L-BFGS-B finds under the same bound
    rng = np.random.default_rng(11)
    n = 6000
    x, c = rng.uniform(0.0, 1.0, n), rng.uniform(0.0, 1.0, n)
    y = rng.normal(0.0, np.exp(0.5 * (-1.0 + 1.5 * x + 1.0 * c)))
    cov = np.column_stack([x, c])
    pred = _constant(n)
    free = LocalVarianceScaling().fit(pred, y, cov, names=["x", "c"])
    assert free.weights_[3] > 0.2  # unconstrained, the data push the c weight up
    lv = LocalVarianceScaling().fit(pred, y, cov, names=["x", "c"], monotone={"c": -1})
    assert lv.monotone_ == {"c": -1}
    assert lv.weights_[3] == 0.0
    phi = np.column_stack([np.zeros(n), x, c])
    f, grad = _objective(lv, phi, y**2)
    bounds = [(None, None), (0.0, None), (None, None), (None, 0.0)]  # log_var >= 0, c <= 0
    res = minimize(
        f,
        np.zeros(4),
        jac=grad,
        method="L-BFGS-B",
        bounds=bounds,
        options={"ftol": 1e-15, "gtol": 1e-12},
    )
    assert f(lv.weights_) <= res.fun + 1e-10
    np.testing.assert_allclose(lv.weights_, res.x, atol=1e-4)
    # KKT: zero gradient on the free weights; on the pinned c weight the gradient points
    # outwards (d f / d w_c <= 0 would lower f only by a positive weight, which is barred)
    g = grad(lv.weights_)
    assert np.max(np.abs(g[[0, 2]])) < 1e-6 and g[3] <= 0.0
    # and the pinned fit is the free fit of x alone, to the optimiser's precision
    only_x = LocalVarianceScaling().fit(pred, y, x[:, None], names=["x"])
    np.testing.assert_allclose(lv.weights_[:3], only_x.weights_, atol=1e-8)


def test_a_model_variance_that_points_the_wrong_way_is_ignored():
    # the head's std is LARGE where the noise is small: its weight would be negative, and a
    # negative weight would make the rows the model doubts the most the most certain; the
    # bound pins it at 0, leaving the intercept: every std = sqrt(mean(e)) in closed form
    rng = np.random.default_rng(12)
    n = 3000
    s = rng.uniform(0.5, 2.0, n)
    y = rng.normal(0.0, 1.0 / s)
    pred = Prediction(mean=torch.zeros(n, dtype=torch.float64), std=torch.from_numpy(s))
    lv = LocalVarianceScaling(ridge=0.0).fit(pred, y)
    assert lv.weights_[1] == 0.0
    np.testing.assert_allclose(lv.transform(pred).std.numpy(), np.sqrt(np.mean(y**2)), rtol=1e-9)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10_000), slope=st.floats(-2.0, 2.0))
def test_fewer_training_rows_never_lower_the_variance(seed, slope):
    # whatever the data say, with the row count declared monotone -1 a row with fewer
    # training rows (an out-of-vocabulary id has 0) never comes out more certain
    rng = np.random.default_rng(seed)
    n = 200
    rows = np.log1p(rng.integers(0, 300, n).astype(float))
    other = rng.standard_normal(n)
    y = rng.normal(0.0, np.exp(0.2 * slope * rows))
    cov = np.column_stack([rows, other])
    pred = _constant(n)
    lv = LocalVarianceScaling().fit(pred, y, cov, names=["rows", "z"], monotone={"rows": -1})
    fewer = cov.copy()
    fewer[:, 0] = fewer[:, 0] * rng.uniform(0.0, 1.0, n)
    assert bool((lv.variance(pred, fewer) >= lv.variance(pred, cov) * (1 - 1e-12)).all())


def test_monotone_state_and_errors():
    x, y = _recovery_data(300, seed=4)
    pred = _constant(300)
    lv = LocalVarianceScaling().fit(pred, y, x[:, None], names=["x"], monotone={"x": 1})
    back = LocalVarianceScaling().load_state_dict(json.loads(json.dumps(lv.state_dict())))
    assert back.monotone_ == {"x": 1}
    with pytest.raises(ValueError, match=r"monotone names \['nope'\] are not covariates"):
        LocalVarianceScaling().fit(pred, y, x[:, None], names=["x"], monotone={"nope": -1})
    with pytest.raises(ValueError, match="must be \\+1 or -1"):
        LocalVarianceScaling().fit(pred, y, x[:, None], names=["x"], monotone={"x": 0})
    sc = SupportCovariates().fit(
        {"user.user_id": np.array([1, 1, 2]), "item.item_id": np.array([1, 2, 2])},
        np.array([1.0, 3.0, 5.0]),
        {"user.user_id": 3, "item.item_id": 3},
    )
    assert sc.monotone_ == {"user.user_id:log1p_rows": -1, "item.item_id:log1p_rows": -1}
