"""Pure metric functions on numpy arrays. A metric that cannot be computed returns NaN.

Shapes: every argument is a 1-D array of length n (one entry per prediction).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import torch
from scipy.stats import rankdata


def _arr(x: object, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    return a


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties).

    Args:
        labels: (n,) 0/1 outcomes.
        scores: (n,) higher = more likely positive.

    Returns:
        AUC in [0, 1]; NaN when only one class is present.
    """
    y = _arr(labels, "labels")
    s = _arr(scores, "scores")
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean negative log-likelihood of 0/1 (or fractional) labels under Bernoulli probs."""
    y = _arr(labels, "labels")
    p = np.clip(_arr(probs, "probs"), eps, 1 - eps)
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def calibration_bins(
    probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    n_bins: int = 15,
    binning: Literal["equal_mass", "equal_width"] = "equal_mass",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-bin counts, mean prediction and mean target: the data of a reliability diagram.

    "equal_mass" gives the i-th smallest prediction (stable sort) bin ``i * n_bins // n``
    (equal counts); "equal_width" puts p in bin ``min(floor(p * n_bins), n_bins - 1)`` on
    [0, 1]. ECE, MCE and the reliability diagram all use these bins.

    Args:
        probs: (n,) predicted probabilities.
        targets: (n,) 0/1 outcomes or true probabilities.
        n_bins: number of bins (>= 1).
        binning: "equal_mass" or "equal_width".

    Returns:
        ``(counts, mean_prob, mean_target)``, each (n_bins,): counts int64; the means are
        float64 and NaN for empty bins.
    """
    p = _arr(probs, "probs")
    t = _arr(targets, "targets")
    if p.size != t.size:
        raise ValueError(f"probs and targets differ in length: {p.size} vs {t.size}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    if binning == "equal_mass":
        order = np.argsort(p, kind="stable")
        bins = np.empty(p.size, dtype=np.int64)
        bins[order] = np.arange(p.size) * n_bins // max(p.size, 1)
    elif binning == "equal_width":
        bins = np.clip(np.floor(p * n_bins).astype(np.int64), 0, n_bins - 1)
    else:
        raise ValueError(f"binning must be 'equal_mass' or 'equal_width', got {binning!r}")
    counts = np.bincount(bins, minlength=n_bins)
    sum_p = np.bincount(bins, weights=p, minlength=n_bins)
    sum_t = np.bincount(bins, weights=t, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / np.maximum(counts, 1), np.nan)
        mean_t = np.where(counts > 0, sum_t / np.maximum(counts, 1), np.nan)
    return counts, mean_p, mean_t


def expected_calibration_error(
    probs: np.ndarray,
    targets: np.ndarray,
    n_bins: int = 15,
    binning: Literal["equal_mass", "equal_width"] = "equal_mass",
) -> float:
    """ECE: sum over bins of (bin share) * |mean prediction - mean target|.

    Args:
        probs: (n,) predicted probabilities.
        targets: (n,) 0/1 outcomes, or true probabilities when they are known
            (e.g. the synthetic world's true CTR: a noise-free calibration check).
        n_bins: number of bins (>= 1); see :func:`calibration_bins`.
        binning: "equal_mass" (quantile bins, equal counts) or "equal_width" on [0, 1].
    """
    counts, mean_p, mean_t = calibration_bins(probs, targets, n_bins, binning)
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    used = counts > 0
    return float(np.sum(counts[used] * np.abs(mean_p[used] - mean_t[used])) / n)


def interval_coverage(low: np.ndarray, high: np.ndarray, targets: np.ndarray) -> float:
    """Fraction of targets inside [low, high] (NaN for no rows)."""
    lo, hi, t = _arr(low, "low"), _arr(high, "high"), _arr(targets, "targets")
    if t.size == 0:
        return float("nan")
    return float(np.mean((t >= lo) & (t <= hi)))


def mean_interval_width(low: np.ndarray, high: np.ndarray) -> float:
    """Mean of high - low (NaN for no rows)."""
    lo, hi = _arr(low, "low"), _arr(high, "high")
    return float(np.mean(hi - lo)) if lo.size else float("nan")


def _to_numpy(x: object) -> np.ndarray:
    """Return ``x`` as a numpy array; torch tensors are detached and copied to the CPU."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _error_vectors(
    predictions: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate rmse/mae inputs; return (errors, weights) as float64 (n,) arrays."""
    arrays: dict[str, np.ndarray] = {}
    named = [("predictions", predictions), ("targets", targets)]
    if weights is not None:
        named.append(("weights", weights))
    for name, value in named:
        a = _to_numpy(value).astype(np.float64, copy=False)
        if a.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D array of shape (n,), got shape {a.shape}; "
                "flatten it with .reshape(-1) first"
            )
        if a.size == 0:
            raise ValueError(f"{name} is empty; pass at least one prediction")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or inf")
        arrays[name] = a
    n = arrays["predictions"].shape[0]
    for name, a in arrays.items():
        if a.shape[0] != n:
            raise ValueError(
                f"{name} has {a.shape[0]} entries but predictions has {n}; "
                "pass one entry per prediction"
            )
    w = arrays.get("weights")
    if w is not None:
        if np.any(w < 0):
            raise ValueError("weights must be >= 0, got a negative weight")
        if w.sum() <= 0:
            raise ValueError("weights sum to 0; give at least one prediction a positive weight")
    return arrays["predictions"] - arrays["targets"], w


def rmse(
    predictions: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None = None,
) -> float:
    """Root mean squared error, ``sqrt(sum(w * (p - t)**2) / sum(w))``.

    Args:
        predictions: (n,) predicted values, e.g. ratings (numpy array or torch tensor).
        targets: (n,) observed values, same units as ``predictions``.
        weights: optional (n,) non-negative weights; ``None`` weighs every row 1.

    Returns:
        RMSE in the units of ``targets``.

    Raises:
        ValueError: an argument is not 1-D, is empty, contains NaN/inf, or its length differs
            from ``predictions``; weights are negative or sum to 0.
    """
    err, w = _error_vectors(predictions, targets, weights)
    if w is None:
        return float(np.sqrt(np.mean(err**2)))
    return float(np.sqrt(np.sum(w * err**2) / np.sum(w)))


def mae(
    predictions: np.ndarray | torch.Tensor,
    targets: np.ndarray | torch.Tensor,
    weights: np.ndarray | torch.Tensor | None = None,
) -> float:
    """Mean absolute error, ``sum(w * |p - t|) / sum(w)``.

    Args:
        predictions: (n,) predicted values, e.g. ratings (numpy array or torch tensor).
        targets: (n,) observed values, same units as ``predictions``.
        weights: optional (n,) non-negative weights; ``None`` weighs every row 1.

    Returns:
        MAE in the units of ``targets``.

    Raises:
        ValueError: as :func:`rmse`.
    """
    err, w = _error_vectors(predictions, targets, weights)
    if w is None:
        return float(np.mean(np.abs(err)))
    return float(np.sum(w * np.abs(err)) / np.sum(w))
