"""Helpers shared by the benchmark scripts: progress lines, JSON output, run summaries,
ranking metrics on index matrices and implicit's ALS / BPR peers.

Not a benchmark itself; the scripts import it from their own folder.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from wager.config import RunConfig
from wager.evaluation import ranking
from wager.recommender import Recommender

PEERS = ("scikit-surprise", "implicit")  # the [bench] extra

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress line on stderr, with seconds since start."""
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def seconds_since_start() -> float:
    """Seconds since the benchmark module was imported (the run's start)."""
    return time.perf_counter() - _START


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Peers that print to stdout would corrupt the JSON: send their output to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def version_of(dist: str) -> str:
    """Installed version of a distribution, or "not installed"."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def capped(cfg: RunConfig, max_epochs: int | None) -> RunConfig:
    """``cfg`` with its epochs capped at ``max_epochs`` (smoke runs); unchanged when None."""
    if max_epochs is None or cfg.training.epochs <= max_epochs:
        return cfg
    return replace(cfg, training=replace(cfg.training, epochs=max_epochs))


def history_summary(rec: Recommender) -> dict[str, Any]:
    """Epochs run, epoch kept (1-based; one per member for an ensemble), seconds per epoch.

    ``seconds_per_epoch`` is the mean wall time of an epoch's training steps (validation
    excluded; all members together); ``train_seconds`` is the whole loop, validation included.
    """
    hist = rec.history_
    assert hist is not None
    chosen = [int(e) + 1 for e in hist.best_epoch]
    out: dict[str, Any] = {"epochs_run": len(hist.train_loss)}
    if len(chosen) == 1:
        out["epoch_chosen"] = chosen[0]
    else:
        out["epoch_chosen_per_member"] = chosen
    out["seconds_per_epoch"] = float(np.mean(hist.epoch_seconds)) if hist.epoch_seconds else None
    out["train_seconds"] = float(hist.seconds)
    return out


PER_USER_NDCG = "_ndcg_per_user"


def paired_difference(
    a: np.ndarray, b: np.ndarray, draws: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean per-user difference a - b of two methods' metric on the same users, with a 95%
    percentile bootstrap interval over users (NaN users dropped from both)."""
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, len(d), len(d))].mean() for _ in range(draws)])
    low, high = np.quantile(means, [0.025, 0.975])
    return {
        "difference": float(d.mean()),
        "low": float(low),
        "high": float(high),
        "users": int(keep.sum()),
        "draws": draws,
    }


def strip_per_user(result: Any) -> Any:
    """``result`` with every ``PER_USER_NDCG`` entry removed, recursively (in place)."""
    if isinstance(result, dict):
        result.pop(PER_USER_NDCG, None)
        for v in result.values():
            strip_per_user(v)
    elif isinstance(result, list):
        for v in result:
            strip_per_user(v)
    return result


def rank_metrics(
    scores: torch.Tensor | np.ndarray,
    relevant: list[np.ndarray],
    exclude: sp.csr_matrix,
    k: int,
    item_popularity: np.ndarray | None = None,
    n_train_users: int | None = None,
) -> dict[str, Any]:
    """Full-ranking metrics @k of (n_users, n_items) scores, excluded items never ranked.
    ``PER_USER_NDCG`` holds the (n_users,) NDCG@k per user (NaN without a relevant item), for
    paired comparisons (:func:`paired_difference`); pop it before printing."""
    top = ranking.top_k_from_scores(scores, k, exclude)
    out: dict[str, Any] = dict(ranking.ranking_metrics(top, relevant, k))
    out[PER_USER_NDCG] = ranking.per_user_ranking_metrics(top, relevant, k)[f"ndcg@{k}"]
    n_items = int(exclude.shape[1])
    out[f"coverage@{k}"] = ranking.catalogue_coverage(top, n_items)
    if item_popularity is not None and n_train_users is not None:
        out[f"novelty@{k}"] = ranking.novelty(top, item_popularity, n_train_users)
    return out


def interaction_matrix(
    users: np.ndarray,
    items: np.ndarray,
    n_users: int,
    n_items: int,
    values: np.ndarray | None = None,
) -> sp.csr_matrix:
    """(n_users, n_items) CSR from index pairs: 1 per pair (duplicates count once), or the
    sum of ``values`` (n,) over a pair's rows when given."""
    data = np.ones(len(users), dtype=np.float32) if values is None else values
    m = sp.csr_matrix(
        (np.asarray(data, dtype=np.float32), (users, items)), shape=(n_users, n_items)
    )
    if values is None:
        m.data[:] = 1.0
    return m


def per_user_holdout(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """(n,) bool: a random ``round(fraction * n_u)`` of each user's rows (seeded)."""
    users = pd.factorize(df["user_id"])[0]
    r = np.random.default_rng(seed).random(len(df))
    order = np.lexsort((r, users))
    counts = np.bincount(users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rank = np.arange(len(df)) - starts[users[order]]
    mask = np.zeros(len(df), dtype=bool)
    mask[order[rank < np.round(fraction * counts[users[order]])]] = True
    return mask


def fit_implicit(
    kind: str,
    user_items: sp.csr_matrix,
    params: dict[str, Any],
    threads: int,
    callback: Callable[[Any, int], None] | None = None,
) -> tuple[Any, float]:
    """Fit implicit's ``AlternatingLeastSquares`` (``kind`` "als") or
    ``BayesianPersonalizedRanking`` ("bpr") on the CPU, seeded (random_state 0).

    Args:
        kind: "als" or "bpr".
        user_items: (n_users, n_items) CSR of confidences (ALS) / interactions (BPR).
        params: the model's keyword arguments (factors, regularization, iterations and
            alpha for ALS or learning_rate for BPR).
        threads: implicit's num_threads.
        callback: ``callback(model, iteration)`` after every iteration (0-based), the
            model's factors being the current ones.

    Returns:
        The fitted model and the seconds its ``fit`` took (callback time included).
    """
    from threadpoolctl import threadpool_limits

    if kind == "als":
        from implicit.cpu.als import AlternatingLeastSquares as Model
    else:
        from implicit.cpu.bpr import BayesianPersonalizedRanking as Model
    # implicit checks the BLAS thread pool when the model is built: limit it first
    with threadpool_limits(1, "blas"), stdout_to_stderr():
        model = Model(**params, random_state=0, num_threads=threads)
        start = time.perf_counter()
        each = None if callback is None else lambda it, *_: callback(model, it)
        model.fit(user_items, show_progress=False, callback=each)
        seconds = time.perf_counter() - start
    return model, seconds


def factor_scores(model: Any, users: np.ndarray | None = None) -> np.ndarray:
    """(n_users, n_items) scores of a fitted implicit matrix-factorisation model, or
    (len(users), n_items) for the given user rows (BPR's item bias is its factors' last
    column, against a column of ones on the user side)."""
    u = np.asarray(model.user_factors)
    return (u if users is None else u[users]) @ np.asarray(model.item_factors).T


def json_ready(value: Any) -> Any:
    """numpy scalars / arrays to Python; NaN and infinities to None (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON on stdout and, with ``out``, also write it there (per-user
    arrays of :func:`rank_metrics` left out)."""
    text = json.dumps(json_ready(strip_per_user(result)), indent=2)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    print(text)


def environment(threads: int, peers: Sequence[str] = PEERS) -> dict[str, Any]:
    """Versions, threads and machine, for the JSON's "env"."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "wager": version_of("wager"),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "peers": {name: version_of(name) for name in peers},
    }


def stop_on_sigterm() -> None:
    """Make SIGTERM (``kill``, ``pkill``) raise SystemExit, so the ``finally:`` blocks that
    stop the servers a benchmark started run; without it the process dies on the spot and
    leaves its ``wager serve`` subprocesses behind."""

    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)
