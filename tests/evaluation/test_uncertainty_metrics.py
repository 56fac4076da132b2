"""Uncertainty metrics against closed forms, scipy references and hand-worked cases."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from wager.evaluation.metrics import (
    expected_calibration_error,
    interval_coverage,
    log_loss,
    mean_interval_width,
)
from wager.evaluation.uncertainty import (
    auroc_std_error,
    brier_score,
    calibration_bins,
    confidence_curve,
    gaussian_crps,
    gaussian_nll,
    max_calibration_error,
    mixture_crps,
    mixture_nll,
    oov_std_ratio,
    rmse_most_confident,
    spearman_std_abs_error,
    student_t_crps,
    student_t_nll,
    uncertainty_report,
)
from wager.prediction import Interval, Prediction

# ---------------------------------------------------------------- references


def crps_by_integration(cdf, y: float) -> float:
    """CRPS = int (F(x) - 1{x >= y})^2 dx, split at y where the indicator jumps."""
    left, _ = integrate.quad(lambda x: cdf(x) ** 2, -np.inf, y, epsabs=1e-11, epsrel=1e-10)
    right, _ = integrate.quad(lambda x: (1.0 - cdf(x)) ** 2, y, np.inf, epsabs=1e-11, epsrel=1e-10)
    return left + right


GAUSSIAN_CASES = [(0.0, 1.0, 0.0), (1.0, 0.5, 2.3), (-2.0, 3.0, 1.0), (4.0, 0.1, 3.95)]


# ---------------------------------------------------------------- Gaussian scores


@pytest.mark.parametrize(("mu", "sigma", "y"), GAUSSIAN_CASES)
def test_gaussian_crps_matches_closed_form_and_numeric_integration(mu, sigma, y):
    z = (y - mu) / sigma
    closed = sigma * (
        z * (2 * stats.norm.cdf(z) - 1) + 2 * stats.norm.pdf(z) - 1 / math.sqrt(math.pi)
    )
    numeric = crps_by_integration(lambda x: stats.norm.cdf(x, mu, sigma), y)
    got = gaussian_crps([mu], [sigma], [y])
    assert got == pytest.approx(closed, rel=1e-12, abs=1e-14)
    assert got == pytest.approx(numeric, rel=1e-7, abs=1e-9)


def test_gaussian_crps_is_mean_over_rows_and_zero_std_is_absolute_error():
    mu, sigma, y = map(np.array, zip(*GAUSSIAN_CASES, strict=True))
    per_row = [gaussian_crps([m], [s], [t]) for m, s, t in GAUSSIAN_CASES]
    assert gaussian_crps(mu, sigma, y) == pytest.approx(np.mean(per_row), rel=1e-12)
    # point mass at mu: CRPS = |y - mu| = (|1-3| + |0-0|) / 2 = 1
    assert gaussian_crps([1.0, 0.0], [0.0, 0.0], [3.0, 0.0]) == pytest.approx(1.0)


def test_gaussian_nll_matches_scipy_logpdf():
    rng = np.random.default_rng(0)
    mu, sigma, y = rng.normal(size=50), rng.uniform(0.1, 3, 50), rng.normal(size=50)
    expected = -np.mean(stats.norm.logpdf(y, mu, sigma))
    assert gaussian_nll(mu, sigma, y) == pytest.approx(expected, rel=1e-12)


def test_gaussian_nll_rejects_non_positive_std_and_mismatched_lengths():
    with pytest.raises(ValueError, match="std must be > 0"):
        gaussian_nll([0.0, 1.0], [1.0, 0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="targets has 1 entries but mean has 2"):
        gaussian_nll([0.0, 1.0], [1.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="std must be >= 0"):
        gaussian_crps([0.0], [-1.0], [0.0])


def test_empty_input_gives_nan():
    for value in (
        gaussian_nll([], [], []),
        gaussian_crps([], [], []),
        brier_score([], []),
        max_calibration_error([], []),
        spearman_std_abs_error([], []),
        auroc_std_error([], []),
        rmse_most_confident([], []),
        oov_std_ratio([], []),
        mixture_nll(np.empty((0, 2)), np.empty((0, 2)), np.empty((0, 2)), []),
        mixture_crps(np.empty((0, 2)), np.empty((0, 2)), np.empty((0, 2)), []),
    ):
        assert math.isnan(value)
    assert math.isnan(confidence_curve([], [], fractions=(0.5,))[0.5])


# ---------------------------------------------------------------- mixtures


def test_mixture_with_one_component_equals_gaussian():
    rng = np.random.default_rng(1)
    mu, sigma, y = rng.normal(size=20), rng.uniform(0.2, 2, 20), rng.normal(size=20)
    w = np.ones((20, 1))
    assert mixture_crps(w, mu[:, None], sigma[:, None], y) == pytest.approx(
        gaussian_crps(mu, sigma, y), rel=1e-12
    )
    assert mixture_nll(w, mu[:, None], sigma[:, None], y) == pytest.approx(
        gaussian_nll(mu, sigma, y), rel=1e-12
    )


@pytest.mark.parametrize(
    ("w", "mu", "s", "y"),
    [
        ([0.3, 0.7], [-1.0, 2.0], [0.5, 1.0], 0.4),
        ([0.5, 0.5], [0.0, 0.0], [0.2, 3.0], 2.5),
        ([0.9, 0.1], [1.0, 5.0], [1.0, 0.3], 5.1),
    ],
)
def test_two_component_mixture_crps_matches_numeric_integration(w, mu, s, y):
    def cdf(x: float) -> float:
        return sum(wk * stats.norm.cdf(x, mk, sk) for wk, mk, sk in zip(w, mu, s, strict=True))

    got = mixture_crps([w], [mu], [s], [y])
    assert got == pytest.approx(crps_by_integration(cdf, y), rel=1e-7, abs=1e-9)


def test_mixture_nll_matches_scipy_pdf_sums():
    rng = np.random.default_rng(2)
    n, k = 30, 3
    w = rng.dirichlet(np.ones(k), size=n)
    mu, s, y = rng.normal(size=(n, k)), rng.uniform(0.3, 2, (n, k)), rng.normal(size=n)
    density = np.sum(w * stats.norm.pdf(y[:, None], mu, s), axis=1)
    assert mixture_nll(w, mu, s, y) == pytest.approx(-np.mean(np.log(density)), rel=1e-10)
    # far-away target: plain pdf sums underflow to 0, logsumexp stays finite
    assert math.isfinite(mixture_nll([[0.5, 0.5]], [[0.0, 1.0]], [[0.01, 0.01]], [100.0]))


def test_mixture_input_errors_name_the_argument():
    ok = [[0.5, 0.5]]
    with pytest.raises(ValueError, match="weights must sum to 1"):
        mixture_crps([[0.5, 0.6]], ok, [[1.0, 1.0]], [0.0])
    with pytest.raises(ValueError, match="means has shape"):
        mixture_nll(ok, [[0.0, 1.0, 2.0]], [[1.0, 1.0]], [0.0])
    with pytest.raises(ValueError, match="stds must be a 2-D array"):
        mixture_nll(ok, ok, [1.0, 1.0], [0.0])
    with pytest.raises(ValueError, match="stds must be > 0"):
        mixture_nll(ok, ok, [[1.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match="targets has 2 entries"):
        mixture_nll(ok, ok, [[1.0, 1.0]], [0.0, 1.0])


# ---------------------------------------------------------------- calibration


def test_mce_and_brier_hand_worked():
    # 2 bins (equal width and equal mass agree here): bin 0 preds 0.2, 0.4 (mean 0.3) vs
    # labels 0, 1 (mean 0.5) -> 0.2; bin 1 preds 0.6, 0.8 (mean 0.7) vs 1, 1 -> 0.3.
    # MCE = max(0.2, 0.3) = 0.3. Brier = (0.2^2 + 0.6^2 + 0.4^2 + 0.2^2) / 4
    # = (0.04 + 0.36 + 0.16 + 0.04) / 4 = 0.15.
    p = np.array([0.2, 0.4, 0.6, 0.8])
    y = np.array([0, 1, 1, 1])
    assert max_calibration_error(p, y, n_bins=2, binning="equal_width") == pytest.approx(0.3)
    assert max_calibration_error(p, y, n_bins=2) == pytest.approx(0.3)
    assert brier_score(p, y) == pytest.approx(0.15)


def test_calibration_bins_reproduce_metrics_ece():
    rng = np.random.default_rng(3)
    p = rng.random(500)
    y = (rng.random(500) < p**1.5).astype(float)
    for binning in ("equal_mass", "equal_width"):
        counts, mp, mt = calibration_bins(p, y, 15, binning)
        used = counts > 0
        ece = np.sum(counts[used] * np.abs(mp[used] - mt[used])) / p.size
        assert ece == pytest.approx(expected_calibration_error(p, y, 15, binning), rel=1e-12)
        assert max_calibration_error(p, y, 15, binning) == pytest.approx(
            np.max(np.abs(mp[used] - mt[used]))
        )
        assert max_calibration_error(p, y, 15, binning) >= ece


# ---------------------------------------------------------------- std vs error


def test_spearman_matches_scipy_and_constant_input_is_nan():
    rng = np.random.default_rng(4)
    s = rng.random(100)
    e = np.abs(s + rng.normal(scale=0.3, size=100))
    assert spearman_std_abs_error(s, e) == pytest.approx(stats.spearmanr(s, e).statistic)
    assert math.isnan(spearman_std_abs_error(np.ones(5), np.arange(5.0)))


def test_auroc_informative_anti_informative_and_hand_case():
    e = np.array([0.1, 0.5, 0.2, 2.0, 1.0, 0.05])
    assert auroc_std_error(e, e) == pytest.approx(1.0)
    assert auroc_std_error(1.0 / (1.0 + e), e) == pytest.approx(0.0)
    # median of e = (0.2 + 0.5) / 2 = 0.35 -> large = rows 1, 3, 4. stds: large rows
    # (0.3, 0.2, 0.1) vs small rows (0.2, 0.1, 0.4): wins 0.3>{0.2,0.1}=2, 0.2: >0.1 and
    # tie 0.2 -> 1.5, 0.1: tie -> 0.5; total 4 of 9 pairs.
    std = np.array([0.2, 0.3, 0.1, 0.2, 0.1, 0.4])
    assert auroc_std_error(std, e) == pytest.approx(4 / 9)
    with pytest.raises(ValueError, match="quantile"):
        auroc_std_error(std, e, quantile=1.0)
    with pytest.raises(ValueError, match="abs_error must be >= 0"):
        auroc_std_error(std, -e)


def test_confidence_curve_hand_worked():
    std = np.array([0.3, 0.1, 0.2, 0.4])
    err = np.array([3.0, 1.0, 2.0, 4.0])
    curve = confidence_curve(std, err, fractions=(0.25, 0.5, 1.0))
    # 0.25 -> lowest-std row 1: 1; 0.5 -> rows 1, 2: sqrt((1 + 4) / 2);
    # 1.0 -> all: sqrt((9 + 1 + 4 + 16) / 4) = sqrt(7.5)
    assert curve == pytest.approx({0.25: 1.0, 0.5: math.sqrt(2.5), 1.0: math.sqrt(7.5)})
    # MAE at 0.5: (1 + 2) / 2 = 1.5
    assert confidence_curve(std, err, fractions=(0.5,), squared=False)[0.5] == pytest.approx(1.5)
    # 0.3 * 4 = 1.2 -> keep ceil = 2 rows
    assert confidence_curve(std, err, fractions=(0.3,))[0.3] == pytest.approx(math.sqrt(2.5))
    assert rmse_most_confident(std, -err, 0.5) == pytest.approx(math.sqrt(2.5))


def test_confidence_curve_breaks_ties_stably():
    # rows 0 and 1 tie on std; the earlier row (error 5) is kept first
    std = np.array([0.1, 0.1, 0.2])
    err = np.array([5.0, 1.0, 0.0])
    assert confidence_curve(std, err, fractions=(1 / 3,))[1 / 3] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="fraction must be in"):
        confidence_curve(std, err, fractions=(0.0,))


def test_oov_std_ratio_median_and_mean():
    # ratios 2, 1, 4 -> median 2, mean 7/3
    oov, real = np.array([2.0, 3.0, 2.0]), np.array([1.0, 3.0, 0.5])
    assert oov_std_ratio(oov, real) == pytest.approx(2.0)
    assert oov_std_ratio(oov, real, statistic="mean") == pytest.approx(7 / 3)
    with pytest.raises(ValueError, match="std_real must be > 0"):
        oov_std_ratio(oov, np.zeros(3))
    with pytest.raises(ValueError, match="std_real has 2 entries but std_oov has 3"):
        oov_std_ratio(oov, real[:2])


# ---------------------------------------------------------------- properties


finite = st.floats(-50, 50, allow_nan=False)
positive = st.floats(1e-3, 20, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(mu=finite, sigma=positive, y=finite)
def test_gaussian_crps_is_nonnegative_and_within_sigma_over_sqrt_pi_of_abs_error(mu, sigma, y):
    # CRPS = E|X - y| - 0.5 E|X - X'| with E|X - X'| = 2 sigma / sqrt(pi), and
    # |mu - y| <= E|X - y| <= |mu - y| + E|X - mu|, so |CRPS - |y - mu|| <= sigma / sqrt(pi):
    # it tends to |y - mu| as sigma -> 0.
    crps = gaussian_crps([mu], [sigma], [y])
    assert crps >= 0.0
    assert abs(crps - abs(y - mu)) <= sigma / math.sqrt(math.pi) + 1e-9
    tiny = gaussian_crps([mu], [sigma * 1e-6], [y])
    assert tiny == pytest.approx(abs(y - mu), abs=sigma * 1e-6)


@settings(max_examples=40, deadline=None)
@given(
    w=st.floats(0.0, 1.0),
    mu=st.tuples(finite, finite),
    s=st.tuples(positive, positive),
    y=finite,
)
def test_mixture_crps_is_nonnegative(w, mu, s, y):
    assert mixture_crps([[w, 1 - w]], [list(mu)], [list(s)], [y]) >= -1e-9


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(st.tuples(positive, st.floats(0, 100)), min_size=1, max_size=40),
)
def test_confidence_curve_at_one_equals_overall_rmse(data):
    std, err = map(np.array, zip(*data, strict=True))
    full = confidence_curve(std, err, fractions=(1.0,))[1.0]
    assert full == pytest.approx(math.sqrt(np.mean(err**2)), rel=1e-12)


# ---------------------------------------------------------------- report

LEVELS = (0.5, 0.8, 0.9, 0.95)
STD_KEYS = {
    "crps",
    *(f"coverage@{lv:g}" for lv in LEVELS),
    *(f"width@{lv:g}" for lv in LEVELS),
    "spearman_std_abs_error",
    "auroc_std_error",
    "rmse_most_confident_50pct",
    "confidence_curve",
}
PROBABILITY_KEYS = {"ece", "ece_equal_width", "mce", "brier", "nll"}


def test_report_gaussian_keys_and_values():
    rng = np.random.default_rng(5)
    mean, std = rng.normal(3, 1, 200), rng.uniform(0.3, 1.5, 200)
    y = mean + std * rng.normal(size=200)
    pred = Prediction(mean=torch.tensor(mean), std=torch.tensor(std))
    report = uncertainty_report(pred, torch.tensor(y))
    assert set(report) == STD_KEYS | {"nll"}
    assert report["nll"] == pytest.approx(gaussian_nll(mean, std, y), rel=1e-12)
    assert report["crps"] == pytest.approx(gaussian_crps(mean, std, y), rel=1e-12)
    iv = pred.interval(0.9)
    assert report["coverage@0.9"] == interval_coverage(iv.low.numpy(), iv.high.numpy(), y)
    # a 90% Gaussian interval is 2 * 1.6449 * std wide
    assert report["width@0.9"] == pytest.approx(
        mean_interval_width(iv.low.numpy(), iv.high.numpy())
    )
    assert report["width@0.9"] == pytest.approx(2 * stats.norm.ppf(0.95) * std.mean(), rel=1e-6)
    assert list(report["confidence_curve"]) == [f"{f / 10:g}" for f in range(1, 11)]
    assert report["confidence_curve"]["1"] == pytest.approx(np.sqrt(np.mean((mean - y) ** 2)))
    assert all(isinstance(v, float) for k, v in report.items() if k != "confidence_curve")


def test_report_probability_keys_and_values():
    rng = np.random.default_rng(6)
    p = rng.uniform(0.05, 0.95, 300)
    clicks = (rng.random(300) < p).astype(float)
    pred = Prediction(
        mean=torch.tensor(p), std=torch.full((300,), 0.05, dtype=torch.float64), support=(0, 1)
    )
    report = uncertainty_report(pred, clicks, probability=True)
    # a CTR interval is not checked against 0/1 clicks: no coverage keys, widths kept
    coverage = {k for k in STD_KEYS if k.startswith("coverage@")}
    assert set(report) == (STD_KEYS - coverage) | PROBABILITY_KEYS
    # against true probabilities the coverage is reported
    with_truth = uncertainty_report(pred, p, probability=True)
    assert coverage <= set(with_truth)
    assert report["nll"] == pytest.approx(log_loss(clicks, p))
    assert report["ece"] == pytest.approx(expected_calibration_error(p, clicks))
    assert report["brier"] == pytest.approx(np.mean((p - clicks) ** 2))
    with pytest.raises(ValueError, match=r"prediction\.mean must be probabilities"):
        uncertainty_report(Prediction(mean=torch.tensor([1.5])), [1.0], probability=True)


def test_report_deterministic_prediction_has_no_std_keys():
    p = torch.tensor([0.2, 0.7, 0.9, 0.4])
    y = [0.0, 1.0, 1.0, 1.0]
    assert set(uncertainty_report(Prediction(mean=p), y, probability=True)) == PROBABILITY_KEYS
    assert uncertainty_report(Prediction(mean=p * 5), y) == {}
    with pytest.raises(ValueError, match=r"targets has 3 entries but prediction\.mean has 4"):
        uncertainty_report(Prediction(mean=p), y[:3])


def test_report_zero_std_gives_nan_nll_not_a_crash():
    pred = Prediction(mean=torch.tensor([1.0, 2.0]), std=torch.tensor([0.0, 1.0]))
    report = uncertainty_report(pred, torch.tensor([1.0, 2.5]))
    assert math.isnan(report["nll"])
    assert math.isfinite(report["crps"])


@dataclass
class _StandInMixture:
    """Minimal object with the MixturePrediction attributes the report reads."""

    weights: torch.Tensor  # (n, K)
    means: torch.Tensor  # (n, K)
    stds: torch.Tensor  # (n, K)

    @property
    def mean(self) -> torch.Tensor:
        return (self.weights * self.means).sum(-1)

    @property
    def std(self) -> torch.Tensor:
        second = (self.weights * (self.stds**2 + self.means**2)).sum(-1)
        return (second - self.mean**2).clamp_min(0).sqrt()

    def interval(self, confidence_level: float) -> Interval:
        return Prediction(mean=self.mean, std=self.std).interval(confidence_level)


def test_report_uses_mixture_formulas_when_components_exist():
    rng = np.random.default_rng(7)
    n = 50
    w = torch.tensor(rng.dirichlet([1.0, 1.0], size=n))
    mu = torch.tensor(rng.normal(size=(n, 2)) * 2)
    s = torch.tensor(rng.uniform(0.2, 1.0, (n, 2)))
    y = rng.normal(size=n)
    mix = _StandInMixture(weights=w, means=mu, stds=s)
    report = uncertainty_report(mix, y)
    assert set(report) == STD_KEYS | {"nll"}
    assert report["nll"] == pytest.approx(mixture_nll(w, mu, s, y), rel=1e-12)
    assert report["crps"] == pytest.approx(mixture_crps(w, mu, s, y), rel=1e-12)
    # bimodal: differs from the Gaussian moment-matched score
    assert report["nll"] != pytest.approx(gaussian_nll(mix.mean, mix.std, y), rel=1e-3)


def test_report_of_a_constant_width_interval_without_std():
    # split conformal on a point model: std None, intervals mean +- 1. Targets 0, 0.5, 3
    # around means 0, 0, 0: covered 2 of 3; width 2 everywhere
    from wager.uncertainty.conformal import SplitConformal

    cal = Prediction(mean=torch.zeros(9))
    cp = SplitConformal(normalized=False).fit(cal, torch.linspace(-1.0, 1.0, 9))
    pred = cp.conformalize(Prediction(mean=torch.zeros(3)))
    half = float(pred.interval(0.9).high[0])
    r = uncertainty_report(pred, np.array([0.0, 0.5, 3.0]), levels=(0.9,))
    assert r["coverage@0.9"] == pytest.approx(2 / 3)
    assert r["width@0.9"] == pytest.approx(2 * half)
    assert "spearman_std_abs_error" not in r  # no std: no std-based metrics
    # a plain deterministic prediction has no interval at all
    assert "width@0.9" not in uncertainty_report(Prediction(mean=torch.zeros(3)), np.zeros(3))


# ------------------------------------------------------------- Student-t forecasts

T_CASES = [(0.0, 1.0, 4, 0.0), (1.0, 0.5, 2, 2.3), (-2.0, 3.0, 9, 1.0), (4.0, 0.1, 1.5, 3.95)]


@pytest.mark.parametrize(("mu", "s", "df", "y"), T_CASES)
def test_student_t_crps_matches_integration_and_nll_the_density(mu, s, df, y):
    ref = crps_by_integration(lambda x: stats.t.cdf((x - mu) / s, df), y)
    assert student_t_crps([mu], [s], df, [y]) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    # the density written out: Gamma((df+1)/2) / (Gamma(df/2) sqrt(df pi) s) (1+z^2/df)^-(df+1)/2
    z = (y - mu) / s
    log_pdf = (
        math.lgamma((df + 1) / 2)
        - math.lgamma(df / 2)
        - 0.5 * math.log(df * math.pi)
        - math.log(s)
        - (df + 1) / 2 * math.log1p(z * z / df)
    )
    assert student_t_nll([mu], [s], df, [y]) == pytest.approx(-log_pdf, rel=1e-10)


def test_student_t_scores_tend_to_gaussian_and_edge_cases():
    mu, s, y = np.array([0.0, 1.0]), np.array([1.0, 2.0]), np.array([0.7, -2.0])
    assert student_t_crps(mu, s, 1e7, y) == pytest.approx(gaussian_crps(mu, s, y), rel=1e-5)
    assert student_t_nll(mu, s, 1e7, y) == pytest.approx(gaussian_nll(mu, s, y), rel=1e-5)
    assert student_t_crps(mu, s, 1.0, y) == math.inf  # Cauchy: no finite mean
    assert math.isnan(student_t_crps([], [], 3, []))
    with pytest.raises(ValueError, match="scale"):
        student_t_nll([0.0], [0.0], 3, [1.0])


def test_report_scores_a_sample_only_prediction_by_its_student_t():
    # 5 draws and no noise head: intervals, NLL and CRPS all come from the t_4 with scale
    # std * sqrt(6 / 4) (Prediction.student_t), not from N(mean, std)
    rng = np.random.default_rng(5)
    draws = torch.from_numpy(rng.normal(3.0, 0.4, (5, 400)))
    pred = Prediction.from_members(draws)
    df, scale = pred.student_t()
    assert df == 4
    np.testing.assert_allclose(scale.numpy(), pred.std.numpy() * math.sqrt(6 / 4), rtol=1e-12)
    y = rng.normal(3.0, 0.5, 400)
    r = uncertainty_report(pred, y, levels=(0.9,))
    mean = pred.mean.numpy()
    assert r["nll"] == pytest.approx(student_t_nll(mean, scale.numpy(), 4, y), rel=1e-9)
    assert r["crps"] == pytest.approx(student_t_crps(mean, scale.numpy(), 4, y), rel=1e-9)
    half = stats.t.ppf(0.95, 4) * scale.numpy()
    assert r["coverage@0.9"] == pytest.approx(np.mean(np.abs(y - mean) <= half))
    assert r["nll"] != pytest.approx(gaussian_nll(mean, pred.std.numpy(), y), rel=1e-3)
