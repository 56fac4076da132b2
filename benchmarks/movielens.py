"""MovieLens 100k benchmark: wager next to its peers on rating, retrieval and implicit top-k.

Prints one JSON object on stdout (progress goes to stderr). Every number in it comes from
this run, except ``tfrs_seconds_per_epoch``, the reference bar of the TensorFlow
Recommenders tutorial that our seconds per epoch are compared with.

Usage::

    python benchmarks/movielens.py --data-dir ../shared/data/ml-100k \\
        [--parts rating,retrieval,implicit] [--out results.json] [--threads 1] [--slow-peers]

Sections (one key each in the JSON, plus "env"):

- ``rating``: the five predefined folds u1..u5 with ``examples/movielens-rating.toml``
  (validation rows carved from uK.base, so early stopping never sees uK.test); RMSE / MAE
  per fold and their mean, next to a global-mean baseline and Surprise's SVD, KNNBaseline
  (item-based, pearson_baseline) and, with ``--slow-peers``, SVD++ (all at their defaults,
  seeded), trained on uK.base and tested on uK.test.
- ``retrieval``: the TensorFlow Recommenders retrieval tutorial's protocol: ids only (user
  id, movie title), u.data in file order permuted with ``default_rng(42)``, 80,000 rows for
  training and 20,000 for test, factorized top-k accuracy over every distinct title with
  seen items not excluded. Three runs: the tutorial's settings, the settings of
  ``examples/movielens-retrieval.toml`` (validation = the last 10% of the training rows),
  the same config with ``hard_negatives = N`` (N in ``HARD_NEGATIVES`` chosen on those
  validation rows by the config's early-stopping metric), and most-popular.
- ``implicit``: (a) u1 full ranking with ``examples/movielens-implicit.toml`` (relevant =
  u1.test ratings >= 4, every u1.base item of the user excluded), most-popular and
  implicit's ALS (tuned on a per-user validation split of u1.base); (b) leave-one-out on
  u.data (each user's latest rating against 99 sampled negatives, HR@10 / NDCG@10), the
  same three models.

Peers (the ``[bench]`` extra: scikit-surprise, implicit) are used when installed and
reported as "not installed" otherwise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    capped,
    emit,
    environment,
    factor_scores,
    fit_implicit,
    history_summary,
    interaction_matrix,
    log,
    per_user_holdout,
    rank_metrics,
    seconds_since_start,
    stdout_to_stderr,
    version_of,
)
from wager.config import DataConfig, EvaluationConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.dataset import Dataset
from wager.data.loaders import load_dataset
from wager.data.schema import Schema
from wager.data.splits import leave_last_out
from wager.evaluation import ranking
from wager.evaluation.metrics import mae, rmse
from wager.pipeline import load_run_data, train_run
from wager.recommender import Recommender

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FOLDS = ("u1", "u2", "u3", "u4", "u5")
PARTS = ("rating", "retrieval", "implicit")
TOP_KS = (1, 5, 10, 50, 100)
TFRS_SECONDS_PER_EPOCH = 5.0  # the TensorFlow Recommenders tutorial's bar, not measured here
# chosen so that the best cell is inside the grid on both validation splits
ALS_GRID = {
    "factors": (16, 32, 64, 128),
    "regularization": (0.1, 1.0, 10.0, 100.0),
    "alpha": (0.3, 1.0, 3.0, 10.0),
}
ALS_ITERATIONS = 15
HARD_NEGATIVES = (1, 5, 20, 100)  # [model] hard_negatives tried on the retrieval validation rows


@dataclass(frozen=True)
class Options:
    """What the command line chose.

    Attributes:
        data_dir: the ml-100k directory.
        examples: directory of the movielens-*.toml configs.
        threads: torch and ALS threads.
        slow_peers: also run Surprise's SVD++.
        max_epochs: cap on every wager config's epochs (smoke runs), or None.
        folds: the rating part's predefined folds.
    """

    data_dir: Path
    examples: Path
    threads: int = 1
    slow_peers: bool = False
    max_epochs: int | None = None
    folds: tuple[str, ...] = FOLDS

    def config(self, name: str) -> RunConfig:
        """``examples/<name>``, its epochs capped at ``max_epochs`` when set."""
        cfg = RunConfig.load(self.examples / name)
        return self.capped(cfg)

    def capped(self, cfg: RunConfig) -> RunConfig:
        return capped(cfg, self.max_epochs)


def with_fields(obj: Any, **changes: Any) -> tuple[Any, list[str]]:
    """``dataclasses.replace`` with the fields the dataclass has; also the names it lacks.

    Lets the benchmark name settings that a config class does not have yet, and report them
    as not applied instead of failing.
    """
    known = {f.name for f in fields(obj)}
    applied = {k: v for k, v in changes.items() if k in known}
    return replace(obj, **applied), sorted(set(changes) - known)


def mean_of(rows: Sequence[dict[str, Any]], key: str) -> float:
    return float(np.mean([r[key] for r in rows]))


def best_validation(rec: Recommender) -> float:
    """The validation metric at the kept epoch, sign restored (the trainer minimises minus an
    accuracy-like metric)."""
    hist = rec.history_
    assert hist is not None and hist.valid_metric
    return -float(hist.valid_metric[hist.best_epoch[0]][0])


def score_grid(rec: Recommender, user_ids: Sequence[Any], item_ids: Sequence[Any]) -> torch.Tensor:
    """(n_users, n_items) scores from the public ``predict`` over every (user, item) pair."""
    u = np.repeat(np.asarray(user_ids, dtype=object), len(item_ids))
    i = np.tile(np.asarray(item_ids, dtype=object), len(user_ids))
    return rec.predict(u, i).mean.reshape(len(user_ids), len(item_ids))


# --------------------------------------------------------------------------------- rating


def surprise_fold(
    make_algo: Callable[[], Any], train: pd.DataFrame, test: pd.DataFrame
) -> dict[str, float]:
    """Fit a Surprise algorithm on ``train``, RMSE / MAE on ``test``, fit seconds."""
    from surprise import Dataset as SurpriseDataset
    from surprise import Reader

    reader = Reader(rating_scale=(1, 5))
    trainset = SurpriseDataset.load_from_df(
        train[["user_id", "item_id", "rating"]], reader
    ).build_full_trainset()
    algo = make_algo()
    with stdout_to_stderr():
        start = time.perf_counter()
        algo.fit(trainset)
        fit_seconds = time.perf_counter() - start
        est = np.array(
            [algo.predict(u, i).est for u, i in zip(test["user_id"], test["item_id"], strict=True)]
        )
    y = test["rating"].to_numpy(dtype=np.float64)
    return {"rmse": rmse(est, y), "mae": mae(est, y), "fit_seconds": fit_seconds}


def surprise_peers(slow_peers: bool) -> dict[str, Callable[[], Any]] | None:
    """Name -> factory of the Surprise algorithms to run, or None when not installed."""
    try:
        from surprise import SVD, KNNBaseline, SVDpp
    except ImportError:
        return None
    peers: dict[str, Callable[[], Any]] = {
        "surprise_svd": lambda: SVD(random_state=0),
        "surprise_knn_baseline_item_pearson_baseline": lambda: KNNBaseline(
            sim_options={"name": "pearson_baseline", "user_based": False}, verbose=False
        ),
    }
    if slow_peers:
        peers["surprise_svdpp"] = lambda: SVDpp(random_state=0)
    return peers


def early_stopping_text(cfg: RunConfig) -> str:
    """How the rating config early-stops, for the protocol string."""
    holdout = cfg.ensemble.holdout if cfg.ensemble is not None else 0.0
    if holdout > 0:
        return (
            f"each wager ensemble member trains on a random {1 - holdout:g} of uK.base and "
            "early-stops on its own remaining rows, so the ensemble sees all of uK.base"
        )
    return f"wager trains on {1 - cfg.data.valid_fraction:g} of uK.base and early-stops on the rest"


def rating_section(ds: Dataset, opts: Options) -> dict:
    """u1..u5: wager's rating config, a global-mean baseline and Surprise's models."""
    cfg = opts.config("movielens-rating.toml")
    out: dict[str, Any] = {
        "protocol": "predefined folds u1..u5 of ml-100k: train on uK.base, test on uK.test; "
        + early_stopping_text(cfg)
        + " (never on uK.test); the peers and the global mean use all of uK.base; RMSE/MAE "
        "over the test ratings; train_seconds include validation",
        "config": str(opts.examples / "movielens-rating.toml"),
    }
    runs: dict[str, list[dict[str, Any]]] = {"wager": [], "global_mean": []}
    for fold in opts.folds:
        log(f"rating: wager on {fold}")
        fold_cfg = replace(cfg, data=replace(cfg.data, split=fold))
        _, m = train_run(fold_cfg, data_dir=opts.data_dir, split=fold)
        runs["wager"].append(
            {
                "fold": fold,
                "rmse": m["rmse"],
                "mae": m["mae"],
                "train_seconds": m["train_seconds"],
                "seconds_per_epoch": m.get("epoch_seconds"),
                "epochs": m.get("epochs"),
                "n_train": m["n_train"],
                "n_valid": m["n_valid"],
                "n_test": m["n_test"],
            }
        )
        train, test = ds.folds[fold]
        y = test["rating"].to_numpy(dtype=np.float64)
        mu = np.full_like(y, float(train["rating"].mean()))
        runs["global_mean"].append({"fold": fold, "rmse": rmse(mu, y), "mae": mae(mu, y)})
    peers = surprise_peers(opts.slow_peers)
    if peers is None:
        out["surprise"] = "not installed"
    else:
        for name, make in peers.items():
            runs[name] = []
            for fold in opts.folds:
                log(f"rating: {name} on {fold}")
                train, test = ds.folds[fold]
                runs[name].append({"fold": fold, **surprise_fold(make, train, test)})
        if not opts.slow_peers:
            out["surprise_svdpp"] = "skipped (slow; pass --slow-peers)"
    for name, rows in runs.items():
        summary: dict[str, Any] = {"per_fold": rows}
        for key in ("rmse", "mae", "train_seconds", "fit_seconds"):
            if key in rows[0]:
                summary[f"mean_{key}"] = mean_of(rows, key)
        out[name] = summary
    return out


# ------------------------------------------------------------------------------ retrieval


def file_order_interactions(ds: Dataset, data_dir: Path) -> tuple[pd.DataFrame, bool]:
    """u.data rows in file order: the loader's table when it keeps the order, else the file.

    Returns:
        (user_id, item_id, rating, timestamp) frame and whether the loader's order was kept.
    """
    raw = pd.read_csv(
        data_dir / "u.data", sep="\t", header=None, names=["user_id", "item_id", "rating", "ts"]
    )
    df = ds.interactions
    same = len(df) == len(raw) and all(
        np.array_equal(df[a].to_numpy(), raw[b].to_numpy())
        for a, b in (("user_id", "user_id"), ("item_id", "item_id"), ("timestamp", "ts"))
    )
    if same:
        return df.reset_index(drop=True), True
    raw = raw.rename(columns={"ts": "timestamp"})
    raw["rating"] = raw["rating"].astype(np.float64)
    return raw, False


def retrieval_section(ds: Dataset, opts: Options) -> dict:
    """The TensorFlow Recommenders retrieval tutorial's protocol: three models, one split."""
    inter, loader_order = file_order_interactions(ds, opts.data_dir)
    titles = ds.item_features.set_index("item_id")["title"]
    df = pd.DataFrame(
        {
            "user_id": inter["user_id"].astype(str).to_numpy(),
            "title": inter["item_id"].map(titles).to_numpy(),
            "rating": inter["rating"].to_numpy(dtype=np.float64),
        }
    )
    perm = np.random.default_rng(42).permutation(len(df))
    shuffled = df.iloc[perm].reset_index(drop=True)
    train, test = shuffled.iloc[:80_000], shuffled.iloc[80_000:]
    candidates = pd.DataFrame({"title": pd.unique(ds.item_features["title"])})
    schema = Schema(
        user="user_id", item="title", label="rating", label_kind="rating", rating_range=(1, 5)
    )
    evaluation = EvaluationConfig(k=10, top_k_accuracy=TOP_KS)
    out: dict[str, Any] = {
        "protocol": "ids only (user id, movie title); u.data in file order permuted with "
        "numpy.random.default_rng(42).permutation, first 80,000 rows train, last 20,000 test; "
        "factorized top-k accuracy of the test rows over every distinct title, seen items "
        "not excluded (hit when fewer than k candidates score strictly higher)",
        "loader_keeps_file_order": loader_order,
        "n_train": len(train),
        "n_test": len(test),
        "n_candidates": len(candidates),
        "n_test_rows_title_unseen_in_train": int((~test["title"].isin(train["title"])).sum()),
    }

    # a. the tutorial's settings
    log("retrieval: tutorial settings")
    model, missing = with_fields(
        ModelConfig(type="two_tower"),
        dim=32,
        # Keras initialises embeddings uniform(-0.05, 0.05): same variance, std 0.05 / sqrt(3)
        init_std=0.05 / math.sqrt(3.0),
        logq_correction=False,
        in_batch_negatives=True,
        loss_reduction="sum",
        remove_accidental_hits=False,
    )
    cfg = RunConfig(
        schema=schema,
        data=DataConfig(valid_fraction=0.0, user_features=False, item_features=False),
        model=model,
        training=TrainConfig(optimizer="adagrad", learning_rate=0.1, batch_size=8192, epochs=3),
        evaluation=evaluation,
        seed=0,
    )
    rec = Recommender(opts.capped(cfg)).fit(train, None, item_features=candidates)
    metrics = rec.evaluate(test)
    hist = history_summary(rec)
    tutorial = {
        "settings": "two_tower dim 32, init N(0, 0.05/sqrt(3)) (the variance of Keras' "
        "uniform(-0.05, 0.05)), in-batch "
        "softmax without log-Q, loss summed over the batch, accidental hits kept, Adagrad 0.1, "
        "batch 8192, 3 epochs, no validation",
        **{f"top_k_accuracy@{k}": metrics[f"top_k_accuracy@{k}"] for k in TOP_KS},
        "n_candidates_scored": len(rec.scorer_.catalogue.items),
        **hist,
        "tfrs_seconds_per_epoch": TFRS_SECONDS_PER_EPOCH,
        "seconds_per_epoch_ratio_to_tfrs": hist["seconds_per_epoch"] / TFRS_SECONDS_PER_EPOCH,
    }
    if missing:
        tutorial["settings_not_available"] = missing
    out["wager_tutorial_settings"] = tutorial

    # b. the example config's settings, validation = last 10% of the training rows
    log("retrieval: examples/movielens-retrieval.toml settings")
    best_cfg = opts.config("movielens-retrieval.toml")
    best_cfg = replace(best_cfg, schema=schema, evaluation=evaluation)
    fit_rows, valid = train.iloc[:72_000], train.iloc[72_000:]
    rec = Recommender(best_cfg).fit(fit_rows, valid, item_features=candidates)
    metrics = rec.evaluate(test)
    metric = best_cfg.training.validation_metric
    out["wager_example_config"] = {
        "config": str(opts.examples / "movielens-retrieval.toml"),
        "validation": "the last 8,000 of the 80,000 training rows (permuted order); trained on "
        f"the first 72,000; early stopping on validation {metric}",
        **{f"top_k_accuracy@{k}": metrics[f"top_k_accuracy@{k}"] for k in TOP_KS},
        f"validation_{metric}": best_validation(rec),
        **history_summary(rec),
    }
    out["wager_example_config_hard_negatives"] = hard_negatives_variant(
        best_cfg, fit_rows, valid, test, candidates, opts
    )

    # c. most popular: score = the title's count among the 80,000 training rows
    log("retrieval: most popular")
    index = {t: j for j, t in enumerate(candidates["title"])}
    counts = np.bincount(train["title"].map(index).to_numpy(), minlength=len(index))
    pop = torch.as_tensor(counts, dtype=torch.float64)
    cols = torch.tensor(test["title"].map(index).to_numpy(dtype=np.int64))
    acc = ranking.factorized_top_k_accuracy(pop[cols], pop.expand(len(test), -1), TOP_KS)
    out["most_popular"] = {"score": "training count of the title", **acc}
    return out


def hard_negatives_variant(
    cfg: RunConfig,
    fit_rows: pd.DataFrame,
    valid: pd.DataFrame,
    test: pd.DataFrame,
    candidates: pd.DataFrame,
    opts: Options,
) -> dict[str, Any]:
    """The example config plus ``[model] hard_negatives = N``: every N of ``HARD_NEGATIVES``
    trained on ``fit_rows`` and early-stopped on ``valid``; the N with the best validation
    metric (the config's own early-stopping metric) is the one evaluated on ``test``."""
    metric = cfg.training.validation_metric
    grid: dict[str, dict[str, Any]] = {}
    best: tuple[float, int, Recommender] | None = None
    for n in HARD_NEGATIVES:
        log(f"retrieval: examples/movielens-retrieval.toml + hard_negatives = {n}")
        cfg_n = replace(cfg, model=replace(cfg.model, hard_negatives=n))
        rec = Recommender(cfg_n).fit(fit_rows, valid, item_features=candidates)
        value = best_validation(rec)
        grid[str(n)] = {f"validation_{metric}": value, **history_summary(rec)}
        if best is None or value > best[0]:
            best = (value, n, rec)
    assert best is not None
    value, chosen, rec = best
    metrics = rec.evaluate(test)
    return {
        "config": f"{opts.examples / 'movielens-retrieval.toml'} + [model] hard_negatives = N",
        "selection": f"N in {list(HARD_NEGATIVES)}, each trained on the first 72,000 training "
        f"rows and early-stopped on the last 8,000; N = the best validation {metric} at the "
        "kept epoch (the test rows are used only for the chosen N)",
        "hard_negatives": chosen,
        **{f"top_k_accuracy@{k}": metrics[f"top_k_accuracy@{k}"] for k in TOP_KS},
        f"validation_{metric}": value,
        **history_summary(rec),
        "validation_grid": grid,
    }


# ------------------------------------------------------------------------------- implicit


def als_scores(user_items: sp.csr_matrix, params: dict[str, float], threads: int) -> np.ndarray:
    """(n_users, n_items) ALS scores (implicit's AlternatingLeastSquares, seeded)."""
    als_params = {**params, "factors": int(params["factors"]), "iterations": ALS_ITERATIONS}
    model, _ = fit_implicit("als", user_items, als_params, threads)
    return factor_scores(model)


def als_select(
    fit_matrix: sp.csr_matrix,
    valid_relevant: list[np.ndarray],
    valid_users: np.ndarray,
    metric: str,
    k: int,
    threads: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Grid search over ALS_GRID on a validation split; returns the best params and the grid."""
    grid = []
    exclude = fit_matrix[valid_users]
    for f in ALS_GRID["factors"]:
        for reg in ALS_GRID["regularization"]:
            for alpha in ALS_GRID["alpha"]:
                params = {"factors": f, "regularization": reg, "alpha": alpha}
                scores = als_scores(fit_matrix, params, threads)[valid_users]
                top = ranking.top_k_from_scores(scores, k, exclude)
                value = ranking.ranking_metrics(top, valid_relevant, k)[metric]
                grid.append({**params, metric: value})
    best = max(grid, key=lambda row: row[metric])
    return {key: best[key] for key in ALS_GRID}, grid


def implicit_full_ranking(ds: Dataset, opts: Options, als_installed: bool) -> dict:
    """u1: relevant = u1.test ratings >= 4, every u1.base item of the user excluded."""
    cfg = opts.config("movielens-implicit.toml")
    cfg = replace(cfg, data=replace(cfg.data, split="u1"))
    rd = load_run_data(cfg, opts.data_dir, "u1")
    base, test = ds.folds["u1"]  # u1.base and u1.test in file order
    n_valid = 0 if rd.valid is None else len(rd.valid)
    assert len(rd.train) + n_valid == len(base) and len(rd.test) == len(test)
    k = cfg.evaluation.k
    thr = cfg.evaluation.relevance_threshold
    log("implicit u1: wager (examples/movielens-implicit.toml)")
    rec = Recommender(replace(cfg, schema=rd.schema)).fit(
        rd.train, rd.valid, user_features=rd.user_features, item_features=rd.item_features
    )
    facade = rec.evaluate(test)

    # the benchmark's own protocol: candidates = every u1.base item, exclusion = all of u1.base
    items = np.sort(base["item_id"].unique())
    item_index = pd.Series(np.arange(len(items)), index=items)
    users = np.sort(base["user_id"].unique())
    user_index = pd.Series(np.arange(len(users)), index=users)
    seen = interaction_matrix(
        user_index[base["user_id"]].to_numpy(),
        item_index[base["item_id"]].to_numpy(),
        len(users),
        len(items),
    )
    rel_rows = test[test["rating"] >= thr] if thr is not None else test
    rel_rows = rel_rows[rel_rows["item_id"].isin(item_index.index)]
    rel_rows = rel_rows[rel_rows["user_id"].isin(user_index.index)]
    eval_users = np.sort(rel_rows["user_id"].unique())
    relevant = [
        np.unique(item_index[g["item_id"]].to_numpy())
        for _, g in rel_rows.groupby("user_id", sort=True)
    ]
    exclude = seen[user_index[eval_users].to_numpy()]
    n_train_users = len(users)
    popularity = np.asarray(seen.getnnz(axis=0), dtype=np.float64) / n_train_users
    log("implicit u1: scoring the user x item grid")
    scores = score_grid(rec, eval_users, items)
    out: dict[str, Any] = {
        "protocol": f"u1 full ranking @{k}: relevant = u1.test rows with rating >= {thr} whose "
        "item is in u1.base; candidates = every u1.base item; each user's u1.base items "
        "excluded (all of u1.base, validation rows included); computed here with "
        "ranking.top_k_from_scores on scores from Recommender.predict",
        "n_candidates": len(items),
        "n_relevant_rows": len(rel_rows),
        "n_relevant_rows_item_not_in_u1_base": int(
            ((test["rating"] >= thr) & ~test["item_id"].isin(item_index.index)).sum()
            if thr is not None
            else (~test["item_id"].isin(item_index.index)).sum()
        ),
    }
    wager_metrics = rank_metrics(scores, relevant, exclude, k, popularity, n_train_users)
    out["wager"] = {
        "config": str(opts.examples / "movielens-implicit.toml"),
        "trained_on": f"{len(rd.train)} u1.base rows ({cfg.data.valid_fraction:g} of u1.base "
        f"carved out as validation: {n_valid} rows)",
        **wager_metrics,
        **history_summary(rec),
        "facade_evaluate": {
            "note": "Recommender.evaluate: candidates = items of the fitted rows, exclusion = "
            "the fitted rows only (the validation rows of u1.base are not excluded)",
            **{
                key: facade[key]
                for key in (
                    f"precision@{k}",
                    f"recall@{k}",
                    f"ndcg@{k}",
                    f"map@{k}",
                    f"coverage@{k}",
                    "n_users",
                )
                if key in facade
            },
        },
    }
    for name, counts in (
        ("most_popular_all_ratings", seen.getnnz(axis=0)),
        (
            f"most_popular_ratings_ge_{thr:g}" if thr is not None else "most_popular_relevant",
            np.bincount(
                item_index[base.loc[base["rating"] >= (thr or -np.inf), "item_id"]].to_numpy(),
                minlength=len(items),
            ),
        ),
    ):
        pop = torch.as_tensor(np.asarray(counts, dtype=np.float64)).expand(len(eval_users), -1)
        out[name] = rank_metrics(pop, relevant, exclude, k, popularity, n_train_users)
    if not als_installed:
        out["implicit_als"] = "not installed"
        return out

    log("implicit u1: ALS grid on a 15% per-user validation split of u1.base")
    start = time.perf_counter()
    hold = per_user_holdout(base, 0.15, seed=0)
    fit_part, valid_part = base[~hold], base[hold]
    fit_matrix = interaction_matrix(
        user_index[fit_part["user_id"]].to_numpy(),
        item_index[fit_part["item_id"]].to_numpy(),
        len(users),
        len(items),
    )
    v_rel = valid_part[valid_part["rating"] >= thr] if thr is not None else valid_part
    v_users = np.sort(v_rel["user_id"].unique())
    v_relevant = [
        np.unique(item_index[g["item_id"]].to_numpy())
        for _, g in v_rel.groupby("user_id", sort=True)
    ]
    best, grid = als_select(
        fit_matrix, v_relevant, user_index[v_users].to_numpy(), f"ndcg@{k}", k, opts.threads
    )
    log(f"implicit u1: ALS refit on u1.base with {best}")
    t_fit = time.perf_counter()
    als = als_scores(seen, best, opts.threads)
    fit_seconds = time.perf_counter() - t_fit
    out["implicit_als"] = {
        "input": "binary: every u1.base rating is an interaction",
        "selection": f"grid {ALS_GRID} ({ALS_ITERATIONS} iterations) on validation ndcg@{k} "
        "of a 15% per-user random hold-out of u1.base; refit on all of u1.base",
        "best": best,
        "grid": grid,
        **rank_metrics(
            als[user_index[eval_users].to_numpy()], relevant, exclude, k, popularity, n_train_users
        ),
        "fit_seconds": fit_seconds,
        "selection_and_fit_seconds": time.perf_counter() - start,
    }
    return out


def implicit_leave_one_out(ds: Dataset, opts: Options, als_installed: bool) -> dict:
    """Each user's latest rating against 99 sampled unrated items (the NeuMF protocol)."""
    inter, _ = file_order_interactions(ds, opts.data_dir)
    schema = replace(ds.schema, user_features=(), item_features=())
    outer = leave_last_out(inter, schema, n=1, source="u.data")
    inner = leave_last_out(outer.train, schema, n=1, source="u.data minus the test rows")
    train, valid, test = inner.train, inner.test, outer.test
    k = 10
    items = np.sort(inter["item_id"].unique())
    item_index = pd.Series(np.arange(len(items)), index=items)
    users = np.sort(inter["user_id"].unique())
    user_index = pd.Series(np.arange(len(users)), index=users)
    positives = [
        np.unique(item_index[g].to_numpy()) for _, g in inter.groupby("user_id")["item_id"]
    ]
    negatives = ranking.sampled_negatives(len(users), len(items), positives, 99, seed=0)
    test = test.set_index("user_id").loc[users].reset_index()  # one row per user, user order
    pos_items = test["item_id"].to_numpy()
    neg_items = items[negatives]  # (n_users, 99) item ids
    out: dict[str, Any] = {
        "protocol": "per user, the latest rating of u.data (ties: the last in file order) is "
        "the test item, ranked against 99 items the user never rated (sampled_negatives, "
        "seed 0); ties count against the test item",
        "n_users": len(users),
        "n_items": len(items),
        "n_train": len(train),
        "n_valid": len(valid),
    }

    log("implicit LOO: wager")
    cfg = opts.config("movielens-implicit.toml")
    model, missing_model = with_fields(
        cfg.model, positive_threshold=None, dim=128, reg=0.03, user_dropout=0.0
    )
    cfg = replace(
        cfg,
        schema=schema,
        model=model,
        training=replace(cfg.training, validation_metric=f"recall@{k}"),
    )
    rec = Recommender(cfg).fit(train, valid)
    pos = rec.predict(users, pos_items).mean
    neg = rec.predict(np.repeat(users, neg_items.shape[1]), neg_items.ravel()).mean
    wager_row: dict[str, Any] = {
        "config": str(opts.examples / "movielens-implicit.toml") + " with every rating a positive, "
        f"dim 128, reg 0.03, user_dropout 0, early stopping on validation recall@{k}",
        "validation": "each user's second-latest rating; trained on the rest",
        **ranking.leave_one_out_metrics(pos, neg.reshape(neg_items.shape), k),
        **history_summary(rec),
    }
    if missing_model:
        wager_row["settings_not_available"] = missing_model
    out["wager"] = wager_row

    full_train = outer.train
    counts = np.bincount(item_index[full_train["item_id"]].to_numpy(), minlength=len(items))
    counts = counts.astype(np.float64)
    out["most_popular"] = {
        "score": "count of the item in the training rows (every rating but the test ones)",
        **ranking.leave_one_out_metrics(
            counts[item_index[pos_items].to_numpy()], counts[negatives], k
        ),
    }
    if not als_installed:
        out["implicit_als"] = "not installed"
        return out

    log("implicit LOO: ALS grid on the second-latest ratings")
    start = time.perf_counter()

    def matrix(rows: pd.DataFrame) -> sp.csr_matrix:
        return interaction_matrix(
            user_index[rows["user_id"]].to_numpy(),
            item_index[rows["item_id"]].to_numpy(),
            len(users),
            len(items),
        )

    v_users = user_index[np.sort(valid["user_id"].unique())].to_numpy()
    v_relevant = [
        np.array([item_index[i]]) for i in valid.set_index("user_id").loc[users[v_users], "item_id"]
    ]
    best, grid = als_select(matrix(train), v_relevant, v_users, f"recall@{k}", k, opts.threads)
    log(f"implicit LOO: ALS refit on every rating but the test ones with {best}")
    t_fit = time.perf_counter()
    als = als_scores(matrix(full_train), best, opts.threads)
    fit_seconds = time.perf_counter() - t_fit
    rows = np.arange(len(users))
    out["implicit_als"] = {
        "input": "binary: every training rating is an interaction",
        "selection": f"grid {ALS_GRID} ({ALS_ITERATIONS} iterations) on validation recall@{k} "
        "(full ranking, training items excluded) of each user's second-latest rating; refit "
        "with the validation rows added",
        "best": best,
        "grid": grid,
        **ranking.leave_one_out_metrics(
            als[rows, item_index[pos_items].to_numpy()], als[rows[:, None], negatives], k
        ),
        "fit_seconds": fit_seconds,
        "selection_and_fit_seconds": time.perf_counter() - start,
    }
    return out


def implicit_section(ds: Dataset, opts: Options) -> dict:
    """u1 full ranking and leave-one-out: wager, most-popular and ALS."""
    als_installed = version_of("implicit") != "not installed"
    return {
        "u1_full_ranking": implicit_full_ranking(ds, opts, als_installed),
        "leave_one_out": implicit_leave_one_out(ds, opts, als_installed),
    }


# ----------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, required=True, help="the ml-100k directory")
    ap.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}"
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    ap.add_argument("--threads", type=int, default=1, help="torch / ALS threads (default 1)")
    ap.add_argument(
        "--slow-peers", action="store_true", help="also run Surprise's SVD++ (minutes per fold)"
    )
    ap.add_argument(
        "--max-epochs",
        type=int,
        default=None,
        help="cap every wager config's epochs (smoke runs only; recorded in the JSON)",
    )
    ap.add_argument(
        "--folds",
        default=",".join(FOLDS),
        help="rating part: comma-separated predefined folds (default u1..u5)",
    )
    ap.add_argument(
        "--examples-dir",
        type=Path,
        default=EXAMPLES,
        help="directory of the movielens-*.toml configs (default: the repository's examples/)",
    )
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        ap.error(f"--parts: unknown part(s) {unknown}; choose from {', '.join(PARTS)}")
    if args.max_epochs is not None and args.max_epochs < 1:
        ap.error(f"--max-epochs must be >= 1, got {args.max_epochs}")
    opts = Options(
        data_dir=args.data_dir,
        examples=args.examples_dir,
        threads=args.threads,
        slow_peers=args.slow_peers,
        max_epochs=args.max_epochs,
        folds=tuple(f.strip() for f in args.folds.split(",") if f.strip()),
    )
    unknown_folds = sorted(set(opts.folds) - set(FOLDS))
    if unknown_folds or not opts.folds:
        ap.error(f"--folds: unknown fold(s) {unknown_folds}; choose from {', '.join(FOLDS)}")
    torch.set_num_threads(args.threads)
    log(f"loading {args.data_dir}")
    ds = load_dataset(args.data_dir, "movielens")
    result: dict[str, Any] = {"env": environment(args.threads)}
    if args.max_epochs is not None:
        result["max_epochs_override"] = args.max_epochs  # a smoke run, not the benchmark
    sections: dict[str, Callable[[Dataset, Options], dict]] = {
        "rating": rating_section,
        "retrieval": retrieval_section,
        "implicit": implicit_section,
    }
    for part in PARTS:
        if part not in parts:
            continue
        start = time.perf_counter()
        result[part] = sections[part](ds, opts)
        result[part]["wall_seconds"] = time.perf_counter() - start
        log(f"{part}: done in {result[part]['wall_seconds']:.1f}s")
    result["total_wall_seconds"] = seconds_since_start()
    emit(result, args.out)


if __name__ == "__main__":
    main()
