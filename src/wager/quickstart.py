"""The quickstart job (``wager quickstart``, ``make demo``): end to end on the synthetic world.

The run is the one ``examples/synthetic.toml`` describes, read from the copy that ships inside
the package (``wager/examples/synthetic.toml``; the repository's ``examples/synthetic.toml`` is
a link to it), so the quickstart and ``wager train examples/synthetic.toml`` train the same
model: the synthetic world (known true CTR for every pair), its logged impressions split as
the config says (the latest rows are the test rows, which bring new, cold-start items), an
ensemble whose spread is the confidence about each CTR. The result holds accuracy (AUC,
log-loss), calibration (ECE against clicks and against the true CTR), how often the intervals
contain the true CTR, how much less certain the model is when a feature value is unknown (the
OOV std ratio of every categorical feature), and top-k lists for a few users with their true
CTR side by side. The library returns data; ``wager.cli`` renders it.
"""

from __future__ import annotations

import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from wager.config import RunConfig
from wager.data.synthetic import SyntheticWorld
from wager.evaluation.metrics import (
    auc,
    expected_calibration_error,
    interval_coverage,
    log_loss,
    mean_interval_width,
)
from wager.pipeline import load_run_data, synthetic_world
from wager.recommender import Recommender
from wager.runs import RunDirectory

CONFIG_RESOURCE = "examples/synthetic.toml"
"""The quickstart's run config, as a path inside the installed ``wager`` package."""


def quickstart_config() -> RunConfig:
    """The run config of the quickstart: ``examples/synthetic.toml`` as shipped in the package."""
    with resources.as_file(resources.files("wager").joinpath(CONFIG_RESOURCE)) as path:
        return RunConfig.load(path)


def _check(config: RunConfig, n_show_users: int, k: int, confidence_level: float) -> None:
    """Refuse settings the quickstart cannot report on, before any data is built."""
    if config.data.format != "synthetic":
        raise ValueError(
            f'[data] format = "{config.data.format}" is invalid for the quickstart: it needs '
            'the synthetic world (its true CTR); set format = "synthetic"'
        )
    if config.ensemble is None:
        raise ValueError(
            "[ensemble] is missing: the quickstart reports the spread of an ensemble; "
            "add an [ensemble] section with members >= 2"
        )
    if n_show_users < 1 or k < 1:
        raise ValueError(f"n_show_users = {n_show_users}, k = {k} are invalid: each must be >= 1")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level = {confidence_level} is invalid: must be in (0, 1)")


def run_quickstart(
    out: str | Path,
    config: RunConfig | None = None,
    *,
    n_show_users: int = 3,
    k: int = 5,
    confidence_level: float = 0.9,
    oov_rows: int = 1000,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Train the synthetic example, measure it on its test rows, save the run directory.

    Args:
        out: the run directory to write.
        config: the run config; None reads the shipped ``examples/synthetic.toml``
            (:func:`quickstart_config`). Its ``[data] format`` must be "synthetic".
        n_show_users: users whose top-k lists are returned (drawn with the config's seed).
        k: length of those lists.
        confidence_level: level of the intervals whose true-CTR coverage is reported.
        oov_rows: test rows of the OOV std analysis (the first ones; it reports medians).
        show_progress: print progress to stderr and draw the training progress bar.

    Returns:
        A JSON-ready dict: "world" (size, logged impressions, mean true CTR), "config"
        (where the settings came from and the main ones), "metrics" (AUC, log-loss with the
        true-CTR oracle and base-rate references, ECE against clicks and the true CTR,
        ``coverage_true_ctr@<level>`` and ``width@<level>``, mean std on known / cold-start
        items, row counts, training seconds, best epochs), "oov_std_ratio" ({field, e.g.
        "user.segment": median std with the value unknown / std with it known}, every
        categorical field of the schema), "confidence_level", "recommendations" (one record
        per listed item: user, rank, item, mean, std, low, high, true_ctr, new_item, inside),
        "run_dir", "files" (file names in it) and "seconds" (wall time of the whole job).

    Raises:
        ValueError: a setting the quickstart cannot use (the message names it).
    """
    start = time.perf_counter()
    source = "the caller's RunConfig"
    if config is None:
        config, source = quickstart_config(), f"wager/{CONFIG_RESOURCE} (shipped)"
    _check(config, n_show_users, k, confidence_level)
    # check first, then work: a previous quickstart run is replaced, any other folder refused
    RunDirectory(out).check_target(overwrite=True)
    console = Console(stderr=True, quiet=not show_progress)
    console.print("[bold]wager quickstart[/]: building the synthetic world")
    rd = load_run_data(config)
    world = synthetic_world(config)
    config = replace(config, schema=rd.schema)
    train, test = rd.train, rd.test
    console.print(
        f"logged {config.data.synthetic_rows:,} impressions; train {len(train):,}, "
        f"valid {0 if rd.valid is None else len(rd.valid):,}, test {len(test):,}"
    )
    rec = Recommender(config).fit(
        train,
        rd.valid,
        user_features=rd.user_features,
        item_features=rd.item_features,
        show_progress=show_progress,
    )
    metrics = _test_metrics(rec, train, test, confidence_level)
    console.print("cold-start analysis: each categorical feature set to unknown")
    ratios = rec.oov_std_ratios(test, max_rows=oov_rows)
    recs = _recommendations(rec, world, train, n_show_users, k, confidence_level)

    rec.metrics_.update(metrics)
    rec.metrics_["oov_std_ratio"] = ratios
    out_dir = rec.save(out, overwrite=True)
    result = _result(config, source, world, [train, rd.valid, test], out_dir)
    result.update(
        {
            "metrics": metrics,
            "oov_std_ratio": ratios,
            "confidence_level": confidence_level,
            "k": k,
            "recommendations": recs,
            "seconds": time.perf_counter() - start,
        }
    )
    return result


def _result(
    config: RunConfig,
    source: str,
    world: SyntheticWorld,
    frames: list[pd.DataFrame | None],
    out_dir: Path,
) -> dict[str, Any]:
    """The "world", "config", "run_dir" and "files" parts of the quickstart's result."""
    logged = [f for f in frames if f is not None]
    n_log = sum(len(f) for f in logged)
    return {
        "world": {
            "n_users": world.config.n_users,
            "n_items": int(world.items.shape[0]),
            "n_days": world.config.n_days,
            "logged_impressions": n_log,
            "mean_true_ctr": float(sum(f["true_ctr"].sum() for f in logged) / n_log),
        },
        "config": {
            "source": source,
            "model": config.model.type,
            "members": config.ensemble.members if config.ensemble else 1,
            "synthetic_rows": config.data.synthetic_rows,
            "split": config.data.split,
            "seed": config.seed,
        },
        "run_dir": str(out_dir),
        "files": sorted(p.name for p in Path(out_dir).iterdir()),
    }


def _test_metrics(
    rec: Recommender, train: pd.DataFrame, test: pd.DataFrame, confidence_level: float
) -> dict[str, Any]:
    """Accuracy, calibration and interval coverage of the true CTR on the test rows."""
    pred = rec.predict(test["user_id"].to_numpy(), test["item_id"].to_numpy(), context=test)
    mean = pred.mean.numpy().astype(np.float64)
    std = (
        pred.std.numpy().astype(np.float64) if pred.std is not None else np.full_like(mean, np.nan)
    )
    iv = pred.interval(confidence_level)
    low, high = iv.low.numpy(), iv.high.numpy()
    clicks = test["click"].to_numpy(dtype=np.float64)
    truth = test["true_ctr"].to_numpy(dtype=np.float64)
    cold = ~np.isin(test["item_id"].to_numpy(), train["item_id"].unique())
    level = f"{confidence_level:g}"
    base_rate = float(train["click"].mean())
    history = rec.history_
    return {
        "auc": auc(clicks, mean),
        "auc_true_ctr_oracle": auc(clicks, truth),
        "log_loss": log_loss(clicks, mean),
        "log_loss_true_ctr_oracle": log_loss(clicks, truth),
        "log_loss_base_rate": log_loss(clicks, np.full_like(mean, base_rate)),
        "ece": expected_calibration_error(mean, clicks),
        "ece_true_ctr": expected_calibration_error(mean, truth),
        f"coverage_true_ctr@{level}": interval_coverage(low, high, truth),
        f"width@{level}": mean_interval_width(low, high),
        "mean_std_known_items": float(std[~cold].mean()) if (~cold).any() else float("nan"),
        "mean_std_cold_items": float(std[cold].mean()) if cold.any() else float("nan"),
        "n_test": len(test),
        "n_test_cold_item_rows": int(cold.sum()),
        "test_ctr": float(clicks.mean()),
        "train_seconds": rec.metrics_.get("train_seconds", float("nan")),
        "best_epoch": history.best_epoch if history is not None else [],
    }


def _recommendations(
    rec: Recommender,
    world: SyntheticWorld,
    train: pd.DataFrame,
    n_show_users: int,
    k: int,
    confidence_level: float,
) -> list[dict[str, Any]]:
    """Top-k lists at position 1 on the world's last day, with each listed item's true CTR."""
    seed = rec.config.seed if rec.config.seed is not None else 0
    rng = np.random.default_rng(seed)
    all_users = world.users["user_id"].to_numpy()
    users = np.sort(rng.choice(all_users, min(n_show_users, len(all_users)), replace=False))
    last_day = world.config.n_days - 1
    recs = rec.recommend(
        users,
        k=k,
        items=world.available_items(last_day),
        exclude_seen=False,
        context={"position": 1},
        confidence_level=confidence_level,
    )
    recs["item"] = recs["item"].astype(np.int64)
    recs["user"] = recs["user"].astype(np.int64)
    recs["true_ctr"] = world.true_ctr(recs["user"].to_numpy(), recs["item"].to_numpy())
    recs["new_item"] = ~recs["item"].isin(train["item_id"].unique())
    recs["inside"] = (recs["true_ctr"] >= recs["low"]) & (recs["true_ctr"] <= recs["high"])
    columns = ["user", "rank", "item", "mean", "std", "low", "high", "true_ctr", "new_item"]
    rows = recs[[*columns, "inside"]].to_dict(orient="records")
    return [{str(key): value for key, value in row.items()} for row in rows]
