"""Uncertainty plots written as PNG files.

Every function draws on its own :class:`matplotlib.figure.Figure` rendered by the Agg
canvas, so importing or calling this module never touches pyplot's global state or the
process-wide matplotlib backend. Each plot function writes one PNG and returns its path;
:func:`uncertainty_plots` writes the set that applies to a prediction.

Example:
    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "coverage.png"
    >>> coverage_curve([0.5, 0.9], [0.48, 0.91], out).read_bytes()[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from wager.evaluation.metrics import (
    _arr,
    _to_numpy,
    calibration_bins,
    expected_calibration_error,
    interval_coverage,
)
from wager.evaluation.uncertainty import confidence_curve
from wager.prediction import Prediction

_DPI = 110
_COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
_CURVE_FRACTIONS = tuple(i / 20 for i in range(1, 21))


def _vector(x: object, name: str) -> np.ndarray:
    return _arr(_to_numpy(x) if isinstance(x, torch.Tensor) else x, name)


def _check_lengths(first: tuple[str, np.ndarray], second: tuple[str, np.ndarray]) -> None:
    (name_a, a), (name_b, b) = first, second
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_b} has {b.shape[0]} entries but {name_a} has {a.shape[0]}; "
            "pass one entry per point"
        )


def _check_nonempty(a: np.ndarray, name: str) -> None:
    if a.size == 0:
        raise ValueError(f"{name} is empty; a plot needs at least one value")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    fig.savefig(out, format="png", dpi=_DPI)
    return out


def reliability_diagram(
    probs: npt.ArrayLike,
    targets: npt.ArrayLike,
    path: str | os.PathLike[str],
    n_bins: int = 15,
    binning: Literal["equal_mass", "equal_width"] = "equal_mass",
) -> Path:
    """Reliability diagram: observed frequency vs mean predicted probability per bin.

    Top panel: one point per non-empty bin (same bins as the ECE) and the diagonal of
    perfect calibration; the title gives the ECE. Bottom panel: histogram of the
    predicted probabilities on [0, 1].

    Args:
        probs: (n,) predicted probabilities in [0, 1].
        targets: (n,) 0/1 outcomes or true probabilities.
        path: PNG file to write (parent folders are created).
        n_bins: number of bins (>= 1).
        binning: "equal_mass" or "equal_width".

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    p = _vector(probs, "probs")
    t = _vector(targets, "targets")
    _check_lengths(("probs", p), ("targets", t))
    _check_nonempty(p, "probs")
    counts, mean_p, mean_t = calibration_bins(p, t, n_bins, binning)
    used = counts > 0
    ece = expected_calibration_error(p, t, n_bins, binning)

    fig = Figure(figsize=(5.0, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.plot(mean_p[used], mean_t[used], marker="o", label="model")
    top.set_ylabel("observed frequency")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_title(f"Reliability ({binning}, {n_bins} bins), ECE = {ece:.4f}")
    top.legend(loc="upper left")
    bottom.hist(p, bins=np.linspace(0.0, 1.0, n_bins + 1), color="tab:blue", alpha=0.7)
    bottom.set_xlabel("mean predicted probability")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def coverage_curve(
    levels: npt.ArrayLike, coverages: npt.ArrayLike, path: str | os.PathLike[str]
) -> Path:
    """Empirical vs nominal interval coverage, with the diagonal of perfect coverage.

    Args:
        levels: (m,) nominal confidence levels in (0, 1).
        coverages: (m,) fraction of targets inside the interval at each level.
        path: PNG file to write.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    lv = _vector(levels, "levels")
    cov = _vector(coverages, "coverages")
    _check_lengths(("levels", lv), ("coverages", cov))
    _check_nonempty(lv, "levels")
    if np.any((lv <= 0) | (lv >= 1)):
        raise ValueError("levels must be confidence levels in (0, 1)")
    order = np.argsort(lv, kind="stable")
    fig = Figure(figsize=(5.0, 5.0))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="ideal")
    ax.plot(lv[order], cov[order], marker="o", label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("nominal confidence level")
    ax.set_ylabel("empirical coverage")
    ax.set_title("Interval coverage")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def _curve_arrays(curve: Mapping[float, float], name: str) -> tuple[np.ndarray, np.ndarray]:
    if len(curve) == 0:
        raise ValueError(f"{name} is empty; pass {{fraction: error}} with at least one entry")
    try:
        x = np.array([float(k) for k in curve], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} keys must be fractions in (0, 1] (numbers)") from exc
    y = np.array([float(v) for v in curve.values()], dtype=np.float64)
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def confidence_curve_plot(
    curve: Mapping[float, float],
    path: str | os.PathLike[str],
    oracle: Mapping[float, float] | None = None,
) -> Path:
    """Error of the most confident predictions vs the fraction kept.

    Args:
        curve: {fraction kept: RMSE} from
            :func:`wager.evaluation.uncertainty.confidence_curve` (numeric-string keys
            such as the report's "0.1" are accepted too).
        path: PNG file to write.
        oracle: the same curve with rows ranked by their actual error (the best any
            std could do), drawn dashed; None to omit.

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    x, y = _curve_arrays(curve, "curve")
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot()
    ax.plot(x, y, marker="o", label="ranked by std")
    if oracle is not None:
        ox, oy = _curve_arrays(oracle, "oracle")
        ax.plot(ox, oy, linestyle="--", color="grey", label="oracle (ranked by error)")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel("fraction of most confident predictions kept")
    ax.set_ylabel("error")
    ax.set_title("Confidence curve")
    ax.legend(loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def std_histogram(
    std_known: npt.ArrayLike,
    std_oov: npt.ArrayLike,
    path: str | os.PathLike[str],
    labels: tuple[str, str] = ("known", "OOV"),
    title: str | None = None,
) -> Path:
    """Overlaid histograms (density-normalized, shared bins) of predictive std in two groups.

    x: predictive std in the target's units (30 bins spanning both groups); y: density, so
    groups of different sizes compare; the legend gives each group's count.

    Args:
        std_known: (n1,) stds of predictions whose features are all in the vocabulary.
        std_oov: (n2,) stds of predictions with an out-of-vocabulary feature.
        path: PNG file to write.
        labels: legend names of the two groups.
        title: axes title; None for "Predictive std".

    Returns:
        ``path`` as a :class:`pathlib.Path`.
    """
    a = _vector(std_known, "std_known")
    b = _vector(std_oov, "std_oov")
    _check_nonempty(a, "std_known")
    _check_nonempty(b, "std_oov")
    if len(labels) != 2:
        raise ValueError(f"labels must hold 2 names, got {len(labels)}")
    both = np.concatenate([a, b])
    lo, hi = float(both.min()), float(both.max())
    if hi <= lo:
        hi = lo + 1.0
    bins = np.linspace(lo, hi, 31).tolist()  # 30 equal-width bins: 31 edges
    fig = Figure(figsize=(5.0, 4.0))
    ax = fig.add_subplot()
    for values, label in ((a, labels[0]), (b, labels[1])):
        ax.hist(values, bins=bins, density=True, alpha=0.55, label=f"{label} (n={values.size})")
    ax.set_xlabel("predictive std")
    ax.set_ylabel("density")
    ax.set_title("Predictive std" if title is None else title)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def uncertainty_plots(
    prediction: Prediction,
    targets: npt.ArrayLike | torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    probability: bool = False,
    oov_mask: npt.ArrayLike | torch.Tensor | None = None,
    oov_labels: tuple[str, str] = ("known", "OOV"),
) -> dict[str, str]:
    """Write the uncertainty plots that apply to ``prediction`` into ``out_dir``.

    - ``reliability_diagram`` (probability=True): mean as probability vs targets.
    - ``coverage_curve`` (std not None, and not 0/1 targets of a probability): coverage of
      ``prediction.interval(level)`` at levels 0.1, ..., 0.9, 0.95, 0.99.
    - ``confidence_curve`` (std not None): RMSE of the most confident fraction, with the
      oracle curve.
    - ``std_histogram`` (std not None, ``oov_mask`` given with both groups non-empty):
      predictive std of the in-vocabulary rows vs the OOV rows (see :func:`std_histogram`).

    Args:
        prediction: a :class:`~wager.prediction.Prediction`; mean/std are (...) tensors.
        targets: (...) observed values, one per prediction.
        out_dir: folder for the PNGs (created when missing).
        probability: the mean is a probability and targets are 0/1 or probabilities.
        oov_mask: (...) bool, True where a prediction involves an out-of-vocabulary
            feature value; None to skip the std histogram.
        oov_labels: legend names of the in-vocabulary and the OOV group of the std histogram.

    Returns:
        {plot name: file name inside out_dir}, for listing in the metrics JSON.
    """
    mean = _vector(prediction.mean, "prediction.mean")
    y = _vector(targets, "targets")
    _check_lengths(("prediction.mean", mean), ("targets", y))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if probability:
        written["reliability_diagram"] = reliability_diagram(
            mean, y, out / "reliability_diagram.png"
        ).name
    if prediction.std is None:
        return written
    std = _vector(prediction.std, "prediction.std")
    # an interval on a CTR says nothing about how often 0/1 outcomes fall inside it
    if not (probability and np.all((y == 0) | (y == 1))):
        coverages = []
        for level in _COVERAGE_LEVELS:
            interval = prediction.interval(level)
            low, high = _to_numpy(interval.low), _to_numpy(interval.high)
            coverages.append(interval_coverage(low, high, y))
        written["coverage_curve"] = coverage_curve(
            _COVERAGE_LEVELS, coverages, out / "coverage_curve.png"
        ).name
    abs_error = np.abs(mean - y)
    written["confidence_curve"] = confidence_curve_plot(
        confidence_curve(std, abs_error, _CURVE_FRACTIONS),
        out / "confidence_curve.png",
        oracle=confidence_curve(abs_error, abs_error, _CURVE_FRACTIONS),
    ).name
    if oov_mask is not None:
        mask = np.asarray(_to_numpy(oov_mask), dtype=bool).reshape(-1)
        _check_lengths(("prediction.mean", mean), ("oov_mask", mask))
        if mask.any() and not mask.all():
            written["std_histogram"] = std_histogram(
                std[~mask], std[mask], out / "std_histogram.png", labels=oov_labels
            ).name
    return written


def plot_regret(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | os.PathLike[str]
) -> Path:
    """Cumulative regret per day, one line per policy (shaded +- one std over seeds).

    Args:
        curves: policy label -> ((days,) mean cumulative regret, (days,) its std over seeds,
            zeros for one seed).
        path: the PNG to write.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for label, (mean, std) in curves.items():
        days = np.arange(len(mean))
        ax.plot(days, mean, marker="o", markersize=3, label=label)
        if np.any(std > 0):
            ax.fill_between(days, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("day")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title("Cumulative regret against the oracle")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_tradeoff(
    points: dict[str, tuple[float, float, float, float]], path: str | os.PathLike[str]
) -> Path:
    """Reward against targets throughput, one point per policy with +- one std error bars.

    Args:
        points: policy label -> (mean throughput, its std, mean RPM, its std) over seeds.
        path: the PNG to write.

    Returns:
        The path written.
    """
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    for label, (x, dx, y, dy) in points.items():
        ax.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt="o", capsize=3, label=label)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("targets throughput (new items reaching the target)")
    ax.set_ylabel("RPM (revenue per 1000 impressions)")
    ax.set_title("Reward against throughput")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_estimates(result: dict[str, Any], path: str | os.PathLike[str], title: str = "") -> Path:
    """Draw each estimate with its interval (and the on-policy value, when known) as a PNG.

    Args:
        result: what :func:`wager.evaluation.ope.estimate_all` returned.
        path: the PNG to write.
        title: the figure title.

    Returns:
        ``path``.
    """
    names = list(result["estimates"])
    rows = [result["estimates"][k] for k in names]
    fig = Figure(figsize=(6.4, 0.5 * len(names) + 1.6))
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    values = np.array([r["value"] for r in rows])
    err = np.array([[r["value"] - r["low"] for r in rows], [r["high"] - r["value"] for r in rows]])
    ax.errorbar(values, y, xerr=np.clip(err, 0, None), fmt="o", capsize=4, label="estimate")
    if result.get("on_policy") is not None:  # None: no known value (wager ope --policy)
        ax.axvline(result["on_policy"], color="tab:red", ls="--", label="on-policy value")
    ax.set_yticks(y, names)
    level = result.get("confidence_level", 0.95)
    ax.set_xlabel(f"policy value (reward per impression), {level:.0%} bootstrap interval")
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
