"""Evaluation of a fitted recommender: every metric that applies, as one JSON-ready dict.

:func:`evaluate` is what ``Recommender.evaluate`` and ``wager evaluate`` run. Pointwise models
report rmse / mae (ratings) or auc / log_loss (clicks) on the test rows and the quality of
their uncertainty; every model reports the full-ranking metrics @k over the catalogue with
each user's training items excluded, beyond-accuracy metrics and the factorized top-k
accuracy. :func:`probability_calibration` is the one home of the ECE / MCE / Brier block and
its reliability diagram.

The recommender is used through its public API only (``predict``, ``scorer_``,
``chain_``, ``oov_stds``...); it is named for type checkers alone, so this module does not
import the facade layer above it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from wager.data.features import categorical_keys
from wager.evaluation import ranking
from wager.evaluation.metrics import (
    auc,
    expected_calibration_error,
    interval_coverage,
    log_loss,
    mae,
    rmse,
)
from wager.evaluation.oov import oov_std_ratios
from wager.evaluation.plots import reliability_diagram, std_histogram, uncertainty_plots
from wager.evaluation.uncertainty import brier_score, max_calibration_error, uncertainty_report
from wager.prediction import Prediction
from wager.uncertainty.relevance import prob_at_least_one

if TYPE_CHECKING:
    from wager.recommender import Recommender


def probability_calibration(
    p: np.ndarray, hit: np.ndarray, plot: Path | None = None
) -> dict[str, Any]:
    """ECE (equal-mass and equal-width), MCE and Brier of probabilities ``p`` (n,) against
    0/1 outcomes ``hit`` (n,); with ``plot`` its reliability diagram is drawn there and
    named under "plots"."""
    out: dict[str, Any] = {
        "ece": expected_calibration_error(p, hit),
        "ece_equal_width": expected_calibration_error(p, hit, binning="equal_width"),
        "mce": max_calibration_error(p, hit),
        "brier": brier_score(p, hit),
    }
    if plot is not None:
        out["plots"] = {plot.stem: reliability_diagram(p, hit, plot).name}
    return out


def _pointwise(rec: Recommender, test: pd.DataFrame, plots_dir: Path | None) -> dict[str, Any]:
    """Accuracy and uncertainty of a rating / click model on the test rows."""
    s, task = rec.schema, rec.task
    uc, ev = rec.config.uncertainty, rec.config.evaluation
    assert s.label is not None
    out: dict[str, Any] = {}
    start = time.perf_counter()
    pred = rec.predict(test[s.user].to_numpy(), test[s.item].to_numpy(), test)
    out["predict_seconds"] = time.perf_counter() - start
    y = test[s.label].to_numpy(dtype=np.float64)
    mean = pred.mean.numpy().astype(np.float64)
    if task == "rating":
        out["rmse"], out["mae"] = rmse(mean, y), mae(mean, y)
    else:
        out["auc"] = auc(y, mean) if 0 < y.mean() < 1 else float("nan")
        out["log_loss"] = log_loss(y, mean)
    out.update(
        uncertainty_report(pred, y, levels=uc.confidence_levels, probability=task == "click")
    )
    if task == "click" and "true_ctr" in test.columns:
        out.update(_true_ctr(pred, test["true_ctr"].to_numpy(dtype=np.float64), rec))
    plots: dict[str, str] = {}
    draw = plots_dir is not None and uc.plots
    if task == "rating" and ev.relevance_threshold is not None:
        conf = rec.relevance_confidence(pred)
        if conf is not None:
            # ratings: the probabilities to calibrate are P(rating >= threshold)
            hit = (y >= ev.relevance_threshold).astype(np.float64)
            plot = None
            if draw and plots_dir is not None:
                plot = plots_dir / "relevance_reliability_diagram.png"
            block = probability_calibration(conf.numpy().astype(np.float64), hit, plot)
            plots.update(block.pop("plots", {}))
            out.update(block)
    stds = rec.oov_stds(test) if pred.std is not None else {}
    if pred.std is not None:
        out["oov_std_ratio"] = oov_std_ratios(stds)
    if draw:
        assert plots_dir is not None
        plots = {**_uncertainty_plots(rec, test, pred, y, Path(plots_dir), stds, out), **plots}
    if plots:
        out["plots"] = plots
    return out


def _true_ctr(pred: Prediction, truth: np.ndarray, rec: Recommender) -> dict[str, float]:
    """Simulated data: the CTR itself, free of click noise, against the predictions."""
    out = {"ece_true_ctr": expected_calibration_error(pred.mean.numpy().astype(np.float64), truth)}
    if pred.std is not None:
        for level in rec.config.uncertainty.confidence_levels:
            iv = pred.interval(level)
            out[f"coverage_true_ctr@{level:g}"] = interval_coverage(
                iv.low.numpy(), iv.high.numpy(), truth
            )
    return out


def _uncertainty_plots(
    rec: Recommender,
    test: pd.DataFrame,
    pred: Prediction,
    y: np.ndarray,
    plots_dir: Path,
    stds: dict[str, tuple[np.ndarray, np.ndarray]],
    out: dict[str, Any],
) -> dict[str, str]:
    """The uncertainty plots and the counterfactual cold-start std histograms per id field."""
    s = rec.schema
    plots = uncertainty_plots(
        pred,
        y,
        plots_dir,
        probability=rec.task == "click",
        oov_mask=~rec.scorer_.known_pairs(test[s.user], test[s.item]),
        oov_labels=("user and item known", "user or item OOV"),
    )
    for side, column in (("user", s.user), ("item", s.item)):
        key = f"{side}.{column}"
        if key not in stds:
            continue
        real, cold = stds[key]
        name = f"std_histogram_{key.replace('.', '_')}"
        path = std_histogram(
            real,
            cold,
            plots_dir / f"{name}.png",
            labels=(f"real {column}", f"{column} set to OOV"),
            title=f"Predictive std, median OOV/real ratio {out['oov_std_ratio'][key]:.2f}",
        )
        plots[name] = path.name
    return plots


def _list_confidence(
    rec: Recommender,
    top: np.ndarray,
    scores: np.ndarray,
    hits: np.ndarray,
    row_stats: np.ndarray,
    relevant: list[np.ndarray],
    plots_dir: Path | None,
) -> dict[str, Any]:
    """Calibration of ranking models' relevance confidence on test top-k lists: each
    listed item's P(among the user's next H positives), H = the user's number of test
    positives (the window the test holds), against whether it is one of them."""
    cal = rec.chain_.list_relevance
    assert cal is not None
    k = top.shape[1]
    listed = top >= 0
    horizon = torch.tensor([[max(len(r), 1)] for r in relevant], dtype=torch.float64)
    p = cal.probability(
        torch.as_tensor(np.where(listed, scores, -math.inf)), torch.as_tensor(row_stats), horizon
    ).numpy()
    plot = None
    if plots_dir is not None and rec.config.uncertainty.plots:
        plot = Path(plots_dir) / "relevance_reliability_diagram.png"
    out = probability_calibration(p[listed], hits[listed], plot)
    out.update(
        {
            f"expected_hits@{k}": float(p.sum(axis=1).mean()),
            f"hits@{k}": float(hits.sum(axis=1).mean()),
            f"prob_at_least_one@{k}": float(prob_at_least_one(torch.as_tensor(p)).mean()),
            "relevance_temperature": cal.temperature_,
            "relevance_slope": cal.slope_,
            "relevance_offset": cal.offset_,
        }
    )
    return out


def _lists(
    rec: Recommender, users: list[Any], relevant: list[np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Top-k lists by the ensemble-mean score, seen items excluded: (U, k) catalogue rows
    (-1 padded), (U, k) their scores, (U, k) 0/1 hits against ``relevant`` and, with a list
    relevance model, (U, 3) each user's statistics of the scores of their unseen items
    (``ListRelevanceCalibrator.row_statistics``)."""
    cal = rec.chain_.list_relevance
    tops, scores_out, hits, norms = [], [], [], []
    for start, part, masked in rec.scorer_.masked_score_chunks(users):
        top = ranking.top_k_from_scores(masked, k)
        tops.append(top)
        scores_out.append(np.take_along_axis(masked.numpy(), np.maximum(top, 0), axis=1))
        hits.append(
            np.stack(
                [np.isin(top[r], relevant[start + r]) & (top[r] >= 0) for r in range(len(part))]
            ).astype(np.float64)
        )
        if cal is not None:
            norms.append(cal.row_statistics(masked).numpy())
    return (
        np.concatenate(tops),
        np.concatenate(scores_out),
        np.concatenate(hits),
        np.concatenate(norms) if norms else None,
    )


def _top_k_accuracy(rec: Recommender, test: pd.DataFrame) -> dict[str, float]:
    """Factorized top-k accuracy (TensorFlow Recommenders' metric: seen items are not
    excluded) of the test rows whose item is in the catalogue."""
    s = rec.schema
    ks = rec.config.evaluation.top_k_accuracy
    rows = rec.scorer_.catalogue.item_rows(test[s.item])
    ok = ~np.isnan(rows)
    if not ok.any() or not ks:
        return {f"top_k_accuracy@{k}": float("nan") for k in ks}
    ukeys = categorical_keys(test[s.user]).to_numpy()[ok]
    beaten = rec.scorer_.n_beaten(ukeys, rows[ok])[0]
    return {f"top_k_accuracy@{k}": float((beaten < k).float().mean()) for k in ks}


def _task_metrics(rec: Recommender, test: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """{task name: its metrics} of a multi-task model: rmse / mae and the uncertainty report
    for ratings; auc / log_loss and the calibration block for clicks (labels derived by the
    task's threshold where it has one)."""
    s, levels = rec.schema, rec.config.uncertainty.confidence_levels
    preds = rec.predict_tasks(test[s.user].to_numpy(), test[s.item].to_numpy(), test)
    out: dict[str, dict[str, Any]] = {}
    for t in rec.spec.tasks:
        y, pred = t.labels(test), preds[t.name]
        mean = pred.mean.numpy().astype(np.float64)
        if t.kind == "rating":
            m: dict[str, Any] = {"rmse": rmse(mean, y), "mae": mae(mean, y)}
            if pred.std is not None:
                m.update(uncertainty_report(pred, y, levels=levels, probability=False))
        else:
            m = {"auc": auc(y, mean) if 0 < y.mean() < 1 else float("nan")}
            m["log_loss"] = log_loss(y, mean)
            m.update(probability_calibration(mean, y))
        out[t.name] = m
    return out


def evaluate(
    rec: Recommender, test: pd.DataFrame, plots_dir: str | Path | None = None
) -> dict[str, Any]:
    """Every metric that applies to a fitted recommender on ``test`` (see
    ``Recommender.evaluate`` for the keys and plots)."""
    ev, s = rec.config.evaluation, rec.schema
    plots = Path(plots_dir) if plots_dir is not None else None
    out: dict[str, Any] = {"n_test_rows": len(test)}
    if rec.spec.pointwise and s.label is not None and s.label in test.columns:
        out.update(_pointwise(rec, test, plots))
        if len(rec.spec.tasks) > 1:
            out["tasks"] = _task_metrics(rec, test)
    cat = rec.scorer_.catalogue
    users, relevant = cat.relevant_lists(test, s, ev.relevance_threshold)
    if ev.max_users is not None and len(users) > ev.max_users:
        rng = np.random.default_rng(rec.config.seed)
        pick = np.sort(rng.choice(len(users), ev.max_users, replace=False))
        users = [users[i] for i in pick]
        relevant = [relevant[i] for i in pick]
    if users:
        top, top_scores, top_hits, row_stats = _lists(rec, users, relevant, ev.k)
        if rec.spec.ranking and row_stats is not None:
            block = _list_confidence(rec, top, top_scores, top_hits, row_stats, relevant, plots)
            out.update(block)
        out.update(ranking.ranking_metrics(top, relevant, ev.k))
        out.update(
            ranking.beyond_accuracy_metrics(
                top,
                cat.n_items,
                cat.popularity(),
                max(cat.n_users, 1),
                item_vectors=rec.scorer_.item_vectors(),
            )
        )
    out.update(_top_k_accuracy(rec, test))
    out["train_seconds"] = rec.metrics_.get("train_seconds", float("nan"))
    return out
