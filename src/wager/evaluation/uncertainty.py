"""Uncertainty-quality metrics: calibration, proper scores, error/uncertainty agreement.

Pure functions on numpy arrays (torch tensors and lists are accepted too). Every
per-prediction argument is a 1-D array of length n (one entry per prediction; inputs of
any shape are flattened); mixture arguments are (n, K) arrays, K = number of
components. A metric that cannot be computed (e.g. no rows) returns NaN, never a fake 0.

Interval coverage and width are not repeated here: use
:func:`wager.evaluation.metrics.interval_coverage` and
:func:`wager.evaluation.metrics.mean_interval_width`.

:func:`uncertainty_report` runs them all on a :class:`~wager.prediction.Prediction`.

Example:
    >>> round(gaussian_crps([0.0], [1.0], [0.0]), 4)  # sigma * (2 phi(0) - 1/sqrt(pi))
    0.2337
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, Literal, TypeGuard

import numpy as np
import numpy.typing as npt
import torch
from scipy.special import beta as beta_fn
from scipy.special import logsumexp
from scipy.stats import norm, spearmanr
from scipy.stats import t as student_t

from wager.evaluation.metrics import (
    _arr,
    _to_numpy,
    auc,
    calibration_bins,
    expected_calibration_error,
    interval_coverage,
    log_loss,
    mae,
    mean_interval_width,
    rmse,
)
from wager.prediction import MixturePrediction, Prediction

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_DEFAULT_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _vector(x: object, name: str) -> np.ndarray:
    """(n,) float64 copy of ``x`` (tensor, array or list), flattened; rejects NaN/inf."""
    return _arr(_to_numpy(x) if isinstance(x, torch.Tensor) else x, name)


def _same_length(**arrays: np.ndarray) -> int:
    """Check that all arrays have the length of the first one; return that length."""
    items = list(arrays.items())
    first_name, first = items[0]
    n = first.shape[0]
    for name, a in items[1:]:
        if a.shape[0] != n:
            raise ValueError(
                f"{name} has {a.shape[0]} entries but {first_name} has {n}; "
                "pass one entry per prediction"
            )
    return n


def _check_positive(std: np.ndarray, name: str) -> None:
    if np.any(std <= 0):
        raise ValueError(
            f"{name} must be > 0 everywhere, got min {float(std.min())!r}; a Gaussian "
            "likelihood needs a positive std (clamp it, e.g. std.clamp_min(1e-6))"
        )


def max_calibration_error(
    probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    n_bins: int = 15,
    binning: Literal["equal_mass", "equal_width"] = "equal_mass",
) -> float:
    """MCE = max over non-empty bins b of |mean(p in b) - mean(y in b)|.

    Same bins as :func:`wager.evaluation.metrics.expected_calibration_error` (see
    :func:`calibration_bins`); ECE averages the bin gaps weighted by bin share, MCE takes
    the worst one.

    Args:
        probs: (n,) predicted probabilities.
        targets: (n,) 0/1 outcomes, or true probabilities when known.
        n_bins: number of bins (>= 1).
        binning: "equal_mass" (quantile bins) or "equal_width" on [0, 1].

    Returns:
        MCE in [0, 1] (probability units); NaN for no rows.
    """
    counts, mean_p, mean_t = calibration_bins(probs, targets, n_bins, binning)
    used = counts > 0
    if not used.any():
        return float("nan")
    return float(np.max(np.abs(mean_p[used] - mean_t[used])))


def brier_score(probs: npt.ArrayLike, targets: npt.ArrayLike) -> float:
    """Brier score = (1/n) sum_i (p_i - y_i)^2.

    Args:
        probs: (n,) predicted probabilities.
        targets: (n,) 0/1 outcomes or true probabilities.

    Returns:
        Mean squared probability error (lower is better); NaN for no rows.
    """
    p = _vector(probs, "probs")
    t = _vector(targets, "targets")
    if _same_length(probs=p, targets=t) == 0:
        return float("nan")
    return float(np.mean((p - t) ** 2))


def gaussian_nll(mean: npt.ArrayLike, std: npt.ArrayLike, targets: npt.ArrayLike) -> float:
    """Mean Gaussian negative log-likelihood (natural log, nats).

    NLL = (1/n) sum_i [0.5 log(2 pi) + log sigma_i + 0.5 ((y_i - mu_i) / sigma_i)^2].

    Args:
        mean: (n,) predictive means mu, in target units.
        std: (n,) predictive stds sigma > 0, in target units.
        targets: (n,) observed values y.

    Returns:
        Mean NLL in nats; NaN for no rows.

    Raises:
        ValueError: lengths differ, or some std <= 0.
    """
    mu, sigma, y = _vector(mean, "mean"), _vector(std, "std"), _vector(targets, "targets")
    if _same_length(mean=mu, std=sigma, targets=y) == 0:
        return float("nan")
    _check_positive(sigma, "std")
    z = (y - mu) / sigma
    return float(np.mean(_HALF_LOG_2PI + np.log(sigma) + 0.5 * z**2))


def student_t_nll(
    mean: npt.ArrayLike, scale: npt.ArrayLike, df: float, targets: npt.ArrayLike
) -> float:
    """Mean negative log-likelihood (nats) of location-scale Student-t forecasts.

    NLL_i = -log t_df((y_i - mu_i) / s_i) + log s_i, with t_df the standard t density.

    Args:
        mean: (n,) locations mu, in target units.
        scale: (n,) scales s > 0, in target units (not the std: for df > 2 the std is
            s sqrt(df / (df - 2))).
        df: degrees of freedom > 0.
        targets: (n,) observed values y.

    Returns:
        Mean NLL in nats; NaN for no rows.
    """
    mu, s, y = _vector(mean, "mean"), _vector(scale, "scale"), _vector(targets, "targets")
    if _same_length(mean=mu, scale=s, targets=y) == 0:
        return float("nan")
    _check_positive(s, "scale")
    if not df > 0:
        raise ValueError(f"df must be > 0, got {df!r}")
    return float(np.mean(-student_t.logpdf((y - mu) / s, df) + np.log(s)))


def student_t_crps(
    mean: npt.ArrayLike, scale: npt.ArrayLike, df: float, targets: npt.ArrayLike
) -> float:
    """Mean CRPS of location-scale Student-t forecasts (closed form, df > 1).

    With z = (y - mu) / s, F and f the standard t_df cdf and pdf and B the beta function,
    CRPS = s [z (2 F(z) - 1) + 2 f(z) (df + z^2) / (df - 1)
    - 2 sqrt(df) B(1/2, df - 1/2) / ((df - 1) B(1/2, df / 2)^2)]
    (Jordan, Krueger and Lerch 2019, scoringRules); it tends to the Gaussian CRPS as
    df grows. For df <= 1 the forecast has no finite mean and the CRPS is infinite.

    Args:
        mean: (n,) locations mu, in target units.
        scale: (n,) scales s > 0, in target units.
        df: degrees of freedom > 1.
        targets: (n,) observed values y.

    Returns:
        Mean CRPS in target units; NaN for no rows; inf when df <= 1.
    """
    mu, s, y = _vector(mean, "mean"), _vector(scale, "scale"), _vector(targets, "targets")
    if _same_length(mean=mu, scale=s, targets=y) == 0:
        return float("nan")
    _check_positive(s, "scale")
    if not df > 1:
        return float("inf")
    z = (y - mu) / s
    const = 2.0 * math.sqrt(df) * beta_fn(0.5, df - 0.5) / ((df - 1.0) * beta_fn(0.5, df / 2) ** 2)
    inner = (
        z * (2.0 * student_t.cdf(z, df) - 1.0)
        + 2.0 * student_t.pdf(z, df) * (df + z**2) / (df - 1.0)
        - const
    )
    return float(np.mean(s * inner))


def gaussian_crps(mean: npt.ArrayLike, std: npt.ArrayLike, targets: npt.ArrayLike) -> float:
    """Mean continuous ranked probability score of Gaussian forecasts (closed form).

    CRPS(N(mu, sigma^2), y) = sigma [z (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi)],
    z = (y - mu) / sigma, where phi, Phi are the standard normal pdf and cdf. It equals
    the integral of (F(x) - 1{x >= y})^2 dx. A zero std is the point-mass limit,
    CRPS = |y - mu|.

    Args:
        mean: (n,) predictive means mu, in target units.
        std: (n,) predictive stds sigma >= 0, in target units.
        targets: (n,) observed values y.

    Returns:
        Mean CRPS in target units (lower is better; >= 0); NaN for no rows.

    Raises:
        ValueError: lengths differ, or some std < 0.
    """
    mu, sigma, y = _vector(mean, "mean"), _vector(std, "std"), _vector(targets, "targets")
    if _same_length(mean=mu, std=sigma, targets=y) == 0:
        return float("nan")
    if np.any(sigma < 0):
        raise ValueError(f"std must be >= 0 everywhere, got min {float(sigma.min())!r}")
    point = sigma == 0
    safe = np.where(point, 1.0, sigma)
    z = (y - mu) / safe
    crps = safe * (z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / math.sqrt(math.pi))
    crps = np.where(point, np.abs(y - mu), crps)
    return float(np.mean(crps))


def _mixture_arrays(
    weights: npt.ArrayLike, means: npt.ArrayLike, stds: npt.ArrayLike, targets: npt.ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate mixture inputs; return (w, mu, s) as (n, K) and y as (n,) float64."""
    out: dict[str, np.ndarray] = {}
    for name, value in (("weights", weights), ("means", means), ("stds", stds)):
        a = np.asarray(_to_numpy(value) if isinstance(value, torch.Tensor) else value)
        a = a.astype(np.float64)
        if a.ndim != 2:
            raise ValueError(
                f"{name} must be a 2-D array of shape (n, K) (one row per prediction, one "
                f"column per mixture component), got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
        out[name] = a
    w, mu, s = out["weights"], out["means"], out["stds"]
    for name in ("means", "stds"):
        if out[name].shape != w.shape:
            raise ValueError(
                f"{name} has shape {out[name].shape} but weights has shape {w.shape}; "
                "weights, means and stds must all be (n, K)"
            )
    y = _vector(targets, "targets")
    if y.shape[0] != w.shape[0]:
        raise ValueError(
            f"targets has {y.shape[0]} entries but weights has {w.shape[0]} rows; "
            "pass one target per prediction"
        )
    if np.any(w < 0):
        raise ValueError("weights must be >= 0")
    if w.size and not np.allclose(w.sum(axis=1), 1.0, rtol=0.0, atol=1e-4):
        raise ValueError(
            "weights must sum to 1 over the K components of each row (within 1e-4); "
            "apply a softmax to the mixture logits"
        )
    _check_positive(s, "stds")
    w = w / w.sum(axis=1, keepdims=True) if w.size else w
    return w, mu, s, y


def mixture_nll(
    weights: npt.ArrayLike, means: npt.ArrayLike, stds: npt.ArrayLike, targets: npt.ArrayLike
) -> float:
    """Mean negative log-likelihood of Gaussian-mixture forecasts (natural log, nats).

    NLL_i = -log sum_k w_ik N(y_i; mu_ik, s_ik^2), computed as
    -logsumexp_k(log w_ik + log N(y_i; mu_ik, s_ik^2)) for numerical stability.

    Args:
        weights: (n, K) component weights, >= 0, each row summing to 1.
        means: (n, K) component means, in target units.
        stds: (n, K) component stds > 0, in target units.
        targets: (n,) observed values.

    Returns:
        Mean NLL in nats; NaN for no rows.
    """
    w, mu, s, y = _mixture_arrays(weights, means, stds, targets)
    if y.size == 0:
        return float("nan")
    z = (y[:, None] - mu) / s
    log_pdf = -_HALF_LOG_2PI - np.log(s) - 0.5 * z**2
    return float(-np.mean(logsumexp(log_pdf, b=w, axis=1)))


def _crps_a(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A(m, v) = E|X| for X ~ N(m, v): 2 sqrt(v) phi(m/sqrt(v)) + m (2 Phi(m/sqrt(v)) - 1)."""
    sd = np.sqrt(v)
    r = m / sd
    return 2.0 * sd * norm.pdf(r) + m * (2.0 * norm.cdf(r) - 1.0)


def mixture_crps(
    weights: npt.ArrayLike, means: npt.ArrayLike, stds: npt.ArrayLike, targets: npt.ArrayLike
) -> float:
    """Mean CRPS of Gaussian-mixture forecasts, exact closed form (Grimit et al., 2006).

    CRPS_i = sum_k w_k A(y - mu_k, s_k^2) - 0.5 sum_{k,l} w_k w_l A(mu_k - mu_l, s_k^2 + s_l^2),
    with A(m, v) = 2 sqrt(v) phi(m / sqrt(v)) + m (2 Phi(m / sqrt(v)) - 1) = E|N(m, v)|,
    i.e. the energy form E|X - y| - 0.5 E|X - X'|. With K = 1 it reduces to
    :func:`gaussian_crps`. Memory is O(n K^2).

    Args:
        weights: (n, K) component weights, >= 0, each row summing to 1.
        means: (n, K) component means, in target units.
        stds: (n, K) component stds > 0, in target units.
        targets: (n,) observed values.

    Returns:
        Mean CRPS in target units; NaN for no rows.
    """
    w, mu, s, y = _mixture_arrays(weights, means, stds, targets)
    if y.size == 0:
        return float("nan")
    var = s**2
    to_target = np.sum(w * _crps_a(y[:, None] - mu, var), axis=1)
    pair_a = _crps_a(mu[:, :, None] - mu[:, None, :], var[:, :, None] + var[:, None, :])
    spread = np.einsum("nk,nl,nkl->n", w, w, pair_a)
    return float(np.mean(to_target - 0.5 * spread))


def _std_and_error(std: npt.ArrayLike, abs_error: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = _vector(std, "std")
    e = _vector(abs_error, "abs_error")
    _same_length(std=s, abs_error=e)
    if np.any(e < 0):
        raise ValueError("abs_error must be >= 0; pass np.abs(mean - targets)")
    return s, e


def spearman_std_abs_error(std: npt.ArrayLike, abs_error: npt.ArrayLike) -> float:
    """Spearman rank correlation between predicted std and absolute error.

    rho = Pearson correlation of the mid-ranks of std and of |y - mu|
    (``scipy.stats.spearmanr``). Positive: larger std goes with larger errors.

    Args:
        std: (n,) predictive stds.
        abs_error: (n,) absolute errors |y - mu| >= 0, in target units.

    Returns:
        rho in [-1, 1]; NaN for fewer than 2 rows or a constant input.
    """
    s, e = _std_and_error(std, abs_error)
    if s.size < 2 or np.all(s == s[0]) or np.all(e == e[0]):
        return float("nan")
    return float(spearmanr(s, e).statistic)


def auroc_std_error(std: npt.ArrayLike, abs_error: npt.ArrayLike, quantile: float = 0.5) -> float:
    """AUROC of std as a score for "this prediction's error is large".

    Label_i = 1{|e_i| > q}, q = the ``quantile``-quantile of the absolute errors (rows
    tied at q count as not large); AUROC = P(std of a large-error row > std of a
    small-error row), ties counting 1/2 (:func:`wager.evaluation.metrics.auc`).
    1 = std perfectly ranks errors, 0.5 = uninformative, 0 = inverted.

    Args:
        std: (n,) predictive stds.
        abs_error: (n,) absolute errors |y - mu| >= 0.
        quantile: in (0, 1); 0.5 labels errors above the median as large.

    Returns:
        AUROC in [0, 1]; NaN when all rows get the same label (e.g. no rows).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    s, e = _std_and_error(std, abs_error)
    if s.size == 0:
        return float("nan")
    large = e > np.quantile(e, quantile)
    return auc(large.astype(np.float64), s)


def _most_confident(std: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ceil(fraction * n) lowest-std rows (stable: ties keep input order)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = max(1, math.ceil(fraction * std.size - 1e-9))
    return np.argsort(std, kind="stable")[:k]


def rmse_most_confident(std: npt.ArrayLike, errors: npt.ArrayLike, fraction: float = 0.5) -> float:
    """RMSE over the ``fraction`` of predictions with the lowest std.

    Keeps the k = ceil(fraction * n) rows (at least one) with the smallest std, ties
    broken stably (the earlier row first), and returns sqrt(mean(e_i^2)) over them.

    Args:
        std: (n,) predictive stds.
        errors: (n,) errors mu - y (signed or absolute), in target units.
        fraction: in (0, 1].

    Returns:
        RMSE in target units; NaN for no rows.
    """
    s = _vector(std, "std")
    e = _vector(errors, "errors")
    if _same_length(std=s, errors=e) == 0:
        return float("nan")
    kept = e[_most_confident(s, fraction)]
    return rmse(kept, np.zeros_like(kept))


def confidence_curve(
    std: npt.ArrayLike,
    abs_error: npt.ArrayLike,
    fractions: Sequence[float] = _DEFAULT_FRACTIONS,
    squared: bool = True,
) -> dict[float, float]:
    """Error of the most confident predictions as a function of how many are kept.

    For each f in ``fractions``, keep the k = ceil(f * n) rows (at least one) with the
    smallest std — ties broken stably, i.e. among equal stds the earlier row is kept
    first — and report RMSE = sqrt(mean(e^2)) (``squared=True``) or MAE = mean(|e|)
    over them. A useful std gives a curve that rises with f; at f = 1 it is the overall
    RMSE / MAE. Sorting by the error itself instead of std gives the oracle curve.

    Args:
        std: (n,) predictive stds (the confidence ranking; lower = more confident).
        abs_error: (n,) absolute errors |y - mu| >= 0, in target units.
        fractions: kept fractions, each in (0, 1].
        squared: RMSE when True, MAE when False.

    Returns:
        {fraction: error} in the order given; values NaN for no rows.
    """
    s, e = _std_and_error(std, abs_error)
    out: dict[float, float] = {}
    for f in fractions:
        f = float(f)
        if s.size == 0:
            _most_confident(s, f)  # still validate the fraction
            out[f] = float("nan")
            continue
        kept = e[_most_confident(s, f)]
        metric = rmse if squared else mae
        out[f] = metric(kept, np.zeros_like(kept))
    return out


def oov_std_ratio(
    std_oov: npt.ArrayLike,
    std_real: npt.ArrayLike,
    statistic: Literal["median", "mean"] = "median",
) -> float:
    """Summary of per-row ratios std_oov / std_real (feature-level OOV analysis).

    Each row is one prediction scored twice: with a categorical feature replaced by
    its out-of-vocabulary value (``std_oov``) and with its real value (``std_real``).
    A model that knows what it does not know gives ratios above 1.

    Args:
        std_oov: (n,) predictive std with the feature set to OOV.
        std_real: (n,) predictive std with the real value, > 0.
        statistic: "median" (robust default) or "mean" of the ratios.

    Returns:
        The median or mean ratio (unitless); NaN for no rows.
    """
    a = _vector(std_oov, "std_oov")
    b = _vector(std_real, "std_real")
    if _same_length(std_oov=a, std_real=b) == 0:
        return float("nan")
    if np.any(b <= 0):
        raise ValueError("std_real must be > 0 everywhere to form the ratio std_oov / std_real")
    ratios = a / b
    if statistic == "median":
        return float(np.median(ratios))
    if statistic == "mean":
        return float(np.mean(ratios))
    raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")


def _is_mixture(prediction: Any) -> TypeGuard[MixturePrediction]:
    """True when ``prediction`` carries mixture components (weights, means and stds)."""
    return all(getattr(prediction, name, None) is not None for name in ("weights", "means", "stds"))


def _components(x: Any) -> np.ndarray:
    """(..., K) tensor -> (n, K) float64 array."""
    a = _to_numpy(x).astype(np.float64)
    return a.reshape(-1, a.shape[-1])


def _interval_report(
    prediction: Any, y: np.ndarray, levels: Sequence[float], clicks: bool
) -> dict[str, float]:
    """coverage@L (not against 0/1 clicks: a CTR interval cannot "cover" a click) and
    width@L of ``prediction.interval(L)`` for each level."""
    out: dict[str, float] = {}
    for level in levels:
        interval = prediction.interval(float(level))
        low = _vector(interval.low, "interval.low")
        high = _vector(interval.high, "interval.high")
        if not clicks:
            out[f"coverage@{level:g}"] = interval_coverage(low, high, y)
        out[f"width@{level:g}"] = mean_interval_width(low, high)
    return out


def uncertainty_report(
    prediction: Prediction,
    targets: npt.ArrayLike | torch.Tensor,
    *,
    levels: Sequence[float] = (0.5, 0.8, 0.9, 0.95),
    probability: bool = False,
) -> dict[str, float | dict[str, float]]:
    """All uncertainty metrics of a prediction, as a JSON-ready dict.

    Keys (a metric that is not computable is absent or NaN, never 0):

    - probability=True only (mean is a probability; targets 0/1 or true probabilities):
      ``ece`` (equal-mass, 15 bins), ``ece_equal_width`` (15 bins), ``mce`` (equal-mass,
      15 bins), ``brier``, and ``nll`` = Bernoulli log-loss of the mean.
    - prediction.std not None only:
      ``nll`` (probability=False; Gaussian NLL of mean/std, the mixture NLL when the
      prediction has ``weights``/``means``/``stds`` of shape (..., K), the Student-t NLL
      when ``prediction.student_t()`` is set; NaN when some std is 0, where the density
      is undefined), ``crps`` (Gaussian, mixture or Student-t closed form;
      for probability=True it scores the predicted distribution of the probability
      itself against the targets), ``coverage@{level:g}`` (omitted when probability=True
      and the targets are 0/1 outcomes: a CTR interval is checked against true CTRs, not
      clicks) and ``width@{level:g}`` for each level (``prediction.interval(level)``),
      ``spearman_std_abs_error``,
      ``auroc_std_error`` (median split), ``rmse_most_confident_50pct``, and
      ``confidence_curve`` = {"0.1": rmse, ..., "1": rmse} (a nested dict).

    A deterministic prediction (std None) therefore gets only the probability keys when
    probability=True and an empty dict otherwise.

    Args:
        prediction: a :class:`~wager.prediction.Prediction` (or an object with ``mean``,
            ``std``, ``interval()``, and optionally ``weights``, ``means``, ``stds``).
            mean/std are (...) tensors.
        targets: (...) observed values, as many as prediction.mean has entries.
        levels: confidence levels in (0, 1) for coverage and width.
        probability: treat the mean as a probability (click-through rate).

    Returns:
        {metric name: float}, plus the nested ``confidence_curve`` dict.

    Example:
        >>> import torch
        >>> p = Prediction(mean=torch.tensor([1.0, 2.0]), std=torch.tensor([1.0, 2.0]))
        >>> r = uncertainty_report(p, torch.tensor([1.5, 2.0]), levels=(0.9,))
        >>> r["coverage@0.9"], round(r["width@0.9"], 3)
        (1.0, 4.935)
    """
    mean = _vector(prediction.mean, "prediction.mean")
    y = _vector(targets, "targets")
    if y.shape[0] != mean.shape[0]:
        raise ValueError(
            f"targets has {y.shape[0]} entries but prediction.mean has {mean.shape[0]}; "
            "pass one target per prediction"
        )
    report: dict[str, float | dict[str, float]] = {}
    if probability:
        report.update(_probability_metrics(mean, y))
    outcomes = bool(np.all((y == 0) | (y == 1)))
    if prediction.std is None:
        # a deterministic mean can still carry intervals (split conformal with one
        # constant width): report their coverage and width
        with contextlib.suppress(ValueError):  # no interval either: nothing to report
            report.update(_interval_report(prediction, y, levels, probability and outcomes))
        return report
    std = _vector(prediction.std, "prediction.std")
    report.update(_scoring_rules(prediction, mean, std, y, probability))
    report.update(_interval_report(prediction, y, levels, probability and outcomes))
    abs_error = np.abs(mean - y)
    report["spearman_std_abs_error"] = spearman_std_abs_error(std, abs_error)
    report["auroc_std_error"] = auroc_std_error(std, abs_error)
    report["rmse_most_confident_50pct"] = rmse_most_confident(std, abs_error, 0.5)
    curve = confidence_curve(std, abs_error)
    report["confidence_curve"] = {f"{f:g}": v for f, v in curve.items()}
    return report


def _probability_metrics(mean: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """ECE (equal-mass and equal-width), MCE, Brier and log-loss of a probability mean.

    Args:
        mean: (n,) predicted probabilities, in [0, 1].
        y: (n,) 0/1 outcomes or true probabilities, in [0, 1].

    Raises:
        ValueError: a mean or target lies outside [0, 1].
    """
    if np.any((mean < 0) | (mean > 1)):
        raise ValueError(
            "prediction.mean must be probabilities in [0, 1] when probability=True; "
            "pass probability=False for ratings or other real-valued targets"
        )
    if np.any((y < 0) | (y > 1)):
        raise ValueError(
            "targets must be 0/1 outcomes or probabilities in [0, 1] when probability=True"
        )
    return {
        "ece": expected_calibration_error(mean, y, binning="equal_mass"),
        "ece_equal_width": expected_calibration_error(mean, y, binning="equal_width"),
        "mce": max_calibration_error(mean, y, binning="equal_mass"),
        "brier": brier_score(mean, y),
        "nll": log_loss(y, mean),
    }


def _scoring_rules(
    prediction: Prediction, mean: np.ndarray, std: np.ndarray, y: np.ndarray, probability: bool
) -> dict[str, float]:
    """``nll`` (unless ``probability``) and ``crps`` of the predictive distribution.

    The mixture closed forms when the prediction has components, the Student-t ones when
    ``prediction.student_t()`` is set (and every std > 0), else the Gaussian ones (NLL NaN
    when some std is 0).

    Args:
        prediction: the prediction (for its components or Student-t parameters).
        mean: (n,) predictive means; std: (n,) predictive stds; y: (n,) targets.
        probability: the mean is a probability (its NLL is the log-loss, set elsewhere).
    """
    out: dict[str, float] = {}
    if _is_mixture(prediction):
        w = _components(prediction.weights)
        mu_k = _components(prediction.means)
        s_k = _components(prediction.stds)
        if not probability:
            out["nll"] = mixture_nll(w, mu_k, s_k, y)
        out["crps"] = mixture_crps(w, mu_k, s_k, y)
    elif (t := prediction.student_t()) is not None and np.all(std > 0):
        # spread from M draws alone: the Student-t its intervals come from (Prediction.quantile)
        df, scale = t[0], _vector(t[1], "scale")
        if not probability:
            out["nll"] = student_t_nll(mean, scale, df, y)
        out["crps"] = student_t_crps(mean, scale, df, y)
    else:
        if not probability:
            out["nll"] = gaussian_nll(mean, std, y) if np.all(std > 0) else float("nan")
        out["crps"] = gaussian_crps(mean, std, y)
    return out
