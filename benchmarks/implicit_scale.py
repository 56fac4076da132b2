"""Implicit feedback at catalogue scale: wager beside implicit's ALS and BPR and most-popular.

Prints one JSON object on stdout (progress goes to stderr). Every number in it comes from
this run.

Usage::

    python benchmarks/implicit_scale.py --data-dir ../shared/data/ml-100k \\
        [--parts synthetic,ml100k] [--methods wager,most_popular,als,bpr] \\
        [--configs PART=PATH ...] [--threads 1] [--max-epochs N] [--out results.json]

Parts (one key each in the JSON, plus "env"):

- ``synthetic``: wager's synthetic world with 2,000 users and 20,000 items (one day, no new
  items, popularity exponent 0.6), 3,000,000 logged impressions; the clicked ones,
  aggregated to unique (user, item) pairs with ``plays`` = clicks of the pair, are the
  positives (~79k pairs). Each pair goes to train / valid / test with probability
  0.8 / 0.1 / 0.1 (``numpy.random.default_rng(0)``). The world's user and item feature
  tables are there for configs that use features.
- ``ml100k``: u1.base / u1.test of MovieLens 100k, positives = ratings >= 4. The
  validation rows are a random 15% of each user's u1.base rows (``default_rng(0)``, the
  same carve for every method); train = the positives of the other 85%.

Methods, all on the same split: wager with each config of ``--configs`` (fitted through
``Recommender.fit(train, valid)``: valid rows for early stopping and the relevance
calibration), implicit's ``AlternatingLeastSquares`` and ``BayesianPersonalizedRanking``
(a grid on the validation rows chooses factors, regularization, alpha / learning rate and
the iterations; the chosen setting is then fitted on train only, the rows the grid fitted
on), and most-popular (train positives per item).

Test protocol (the same ranking functions, ``wager.evaluation.ranking``, for every method):
candidates = every item with a train positive; relevant = the user's test positives among
the candidates; excluded from each user's ranking = every item the user has in train or
valid (ml100k: every u1.base item the user rated, any rating); NDCG@10 and recall@10 over
the users with a relevant item.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PER_USER_NDCG,
    capped,
    emit,
    environment,
    factor_scores,
    fit_implicit,
    history_summary,
    interaction_matrix,
    log,
    paired_difference,
    per_user_holdout,
    rank_metrics,
    seconds_since_start,
    version_of,
)
from wager.config import RunConfig
from wager.data.loaders import load_dataset
from wager.data.schema import Schema
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation import ranking
from wager.recommender import Recommender

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PARTS = ("synthetic", "ml100k")
METHODS = ("wager", "most_popular", "als", "bpr", "als_parity")
DEFAULT_CONFIGS = {
    "synthetic": (EXAMPLES / "implicit-large.toml", EXAMPLES / "implicit-large-two-tower.toml"),
    "ml100k": (EXAMPLES / "movielens-implicit.toml", EXAMPLES / "movielens-als.toml"),
}
K = 10
METRIC = f"ndcg@{K}"  # what the peers' grids maximise on the validation rows
# implicit's peers: each grid cell is fitted once for the most iterations and scored on the
# validation rows after each checkpoint's iteration, so the iterations are chosen too
PEER_GRIDS: dict[str, dict[str, tuple[float, ...]]] = {
    "als": {
        "factors": (32, 64, 128),
        "regularization": (10.0, 100.0, 300.0),
        # implicit's confidence is alpha * value; >= 1 so that wager's ALS (1 + alpha' * r)
        # can take the very same confidences in the parity run (alpha' = alpha - 1 on 0/1)
        "alpha": (1.0, 3.0, 10.0, 30.0),
    },
    "bpr": {
        "factors": (16, 32, 64),
        "learning_rate": (0.001, 0.003, 0.01, 0.03),
        "regularization": (0.0001, 0.001, 0.01),
    },
}
PEER_CHECKPOINTS = {"als": (5, 15, 30), "bpr": (10, 25, 50, 100, 200, 400)}
PEER_CLASSES = {
    "als": "implicit.cpu.als.AlternatingLeastSquares",
    "bpr": "implicit.cpu.bpr.BayesianPersonalizedRanking",
}
USER_CHUNK = 256  # users scored at once by wager (memory: members x chunk x candidates)


@dataclass(frozen=True)
class Options:
    """What the command line chose.

    Attributes:
        data_dir: the ml-100k directory (ml100k part), or None.
        configs: part -> the wager configs run on it.
        methods: which of METHODS run.
        threads: torch, BLAS / OpenMP and implicit threads.
        max_epochs: cap on every wager config's epochs (smoke runs), or None.
        world: the synthetic part's world, log and split settings (see ``synthetic_part``).
        ml_valid_fraction: share of each user's u1.base rows carved out as validation.
    """

    data_dir: Path | None
    configs: dict[str, tuple[Path, ...]]
    methods: tuple[str, ...]
    threads: int
    max_epochs: int | None
    world: dict[str, Any]
    ml_valid_fraction: float


@dataclass
class PartData:
    """One part's split, shared by every method.

    Attributes:
        train: positives the models fit (user_id, item_id, label column).
        valid: positives for early stopping, calibration and the peers' grids.
        test: positives whose items are the relevant ones.
        seen: rows whose items each user's test ranking excludes.
        schema: the data's schema with every feature it has (a config's ``[data]``
            user_features / item_features / drop_features pick among them).
        user_features: user feature table, or None.
        item_features: item feature table, or None.
        confidence: column that ALS reads as the confidence of a pair (None: 1 per pair).
        protocol: how the split was made, for the JSON.
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    seen: pd.DataFrame
    schema: Schema
    user_features: pd.DataFrame | None
    item_features: pd.DataFrame | None
    confidence: str | None
    protocol: dict[str, Any]


@dataclass
class Target:
    """What a ranking is scored against.

    Attributes:
        users: (U,) rows of the index's users that have a relevant candidate.
        relevant: U arrays of relevant candidate columns.
        exclude: (U, n_items) CSR of the items each user's ranking leaves out.
        n_rows_outside: relevant rows dropped because their user or item is not indexed.
    """

    users: np.ndarray
    relevant: list[np.ndarray]
    exclude: sp.csr_matrix
    n_rows_outside: int


class Index:
    """Users and candidate items of a part: those of its train positives, sorted."""

    def __init__(self, train: pd.DataFrame) -> None:
        self.user_ids = np.sort(train["user_id"].unique())
        self.item_ids = np.sort(train["item_id"].unique())
        self.user_row = pd.Series(np.arange(len(self.user_ids)), index=self.user_ids)
        self.item_col = pd.Series(np.arange(len(self.item_ids)), index=self.item_ids)

    def known(self, rows: pd.DataFrame) -> pd.DataFrame:
        """The rows whose user and item are both indexed."""
        ok = rows["user_id"].isin(self.user_row.index) & rows["item_id"].isin(self.item_col.index)
        return rows[ok]

    def matrix(self, rows: pd.DataFrame, values: str | None = None) -> sp.csr_matrix:
        """(n_users, n_items) CSR of the indexed rows: 1 per pair, or the sum of ``values``."""
        rows = self.known(rows)
        return interaction_matrix(
            self.user_row[rows["user_id"]].to_numpy(),
            self.item_col[rows["item_id"]].to_numpy(),
            len(self.user_ids),
            len(self.item_ids),
            None if values is None else rows[values].to_numpy(dtype=np.float32),
        )

    def target(self, relevant_rows: pd.DataFrame, excluded_rows: pd.DataFrame) -> Target:
        """Each indexed user's relevant candidates among ``relevant_rows``; exclusion =
        the items of ``excluded_rows``."""
        rows = self.known(relevant_rows)
        users = np.sort(self.user_row[rows["user_id"].unique()].to_numpy())
        cols = self.item_col[rows["item_id"]].to_numpy()
        by_user = pd.Series(cols).groupby(self.user_row[rows["user_id"]].to_numpy(), sort=True)
        relevant = [np.unique(g.to_numpy()) for _, g in by_user]
        return Target(
            users=users,
            relevant=relevant,
            exclude=self.matrix(excluded_rows)[users],
            n_rows_outside=len(relevant_rows) - len(rows),
        )


# ---------------------------------------------------------------------------------- parts


def synthetic_part(opts: Options) -> PartData:
    """The synthetic world's clicks, aggregated to (user, item, plays), split per pair."""
    w = opts.world
    world = SyntheticWorld(
        WorldConfig(
            n_users=w["n_users"],
            n_items=w["n_items"],
            n_days=1,
            new_items_per_day=0,
            popularity_exponent=w["popularity_exponent"],
            hidden_strength=w["hidden_strength"],
            latent_dim=w["latent_dim"],
            seed=w["world_seed"],
        )
    )
    impressions = world.sample_log(w["impressions"], seed=w["log_seed"])
    clicked = impressions[impressions["click"] == 1]
    pairs = clicked.groupby(["user_id", "item_id"], as_index=False).size()
    pairs = pairs.rename(columns={"size": "plays"})
    u = np.random.default_rng(w["split_seed"]).random(len(pairs))
    train, valid, test = pairs[u < 0.8], pairs[(u >= 0.8) & (u < 0.9)], pairs[u >= 0.9]
    ws = world.schema()
    schema = Schema(
        user="user_id",
        item="item_id",
        label="plays",
        label_kind="rating",
        user_features=ws.user_features,
        item_features=ws.item_features,
    )
    return PartData(
        train=train.reset_index(drop=True),
        valid=valid.reset_index(drop=True),
        test=test.reset_index(drop=True),
        seen=pd.concat([train, valid], ignore_index=True),
        schema=schema,
        user_features=world.users,
        item_features=world.items,
        confidence="plays",
        protocol={
            "world": f"SyntheticWorld(WorldConfig(n_users={w['n_users']}, n_items="
            f"{w['n_items']}, n_days=1, new_items_per_day=0, popularity_exponent="
            f"{w['popularity_exponent']}, hidden_strength={w['hidden_strength']}, "
            f"latent_dim={w['latent_dim']}, seed={w['world_seed']}))",
            "log": f"world.sample_log({w['impressions']}, seed={w['log_seed']})",
            "positives": "clicked impressions aggregated to unique (user_id, item_id) pairs, "
            "plays = clicks of the pair",
            "split": "per pair: train / valid / test with probability 0.8 / 0.1 / 0.1 "
            f"(numpy.random.default_rng({w['split_seed']}).random)",
            "excluded": "each user's train and valid pairs",
            "schema": "user_id, item_id, label plays (label_kind 'rating': every row is a "
            "positive); the world's user / item features for configs that use them",
            "n_impressions": len(impressions),
            "n_clicks": len(clicked),
        },
    )


def ml100k_part(opts: Options) -> PartData:
    """u1.base / u1.test, positives = ratings >= 4, validation carved per user from u1.base."""
    if opts.data_dir is None:
        raise SystemExit("--parts ml100k needs --data-dir (the ml-100k directory)")
    ds = load_dataset(opts.data_dir, "movielens")
    base, test = ds.folds["u1"]
    hold = per_user_holdout(base, opts.ml_valid_fraction, seed=0)
    positive = base["rating"].to_numpy() >= 4.0
    return PartData(
        train=base[~hold & positive].reset_index(drop=True),
        valid=base[hold & positive].reset_index(drop=True),
        test=test[test["rating"] >= 4.0].reset_index(drop=True),
        seen=base,
        schema=ds.schema,
        user_features=ds.user_features,
        item_features=ds.item_features,
        confidence=None,
        protocol={
            "positives": "ratings >= 4",
            "split": f"validation = a random {opts.ml_valid_fraction:g} of each user's u1.base "
            "rows (round(fraction x rows), numpy.random.default_rng(0)); train = the "
            "positives of the rest of u1.base; valid = the positives of the carved rows; "
            "test = the positives of u1.test",
            "excluded": "every u1.base item of the user (any rating, validation rows included)",
        },
    )


PART_BUILDERS: dict[str, Callable[[Options], PartData]] = {
    "synthetic": synthetic_part,
    "ml100k": ml100k_part,
}


# ---------------------------------------------------------------------------------- wager


def run_schema(cfg: RunConfig, part: PartData) -> Schema:
    """The part's schema (or the config's own), with the features its ``[data]`` keeps."""
    data = cfg.data
    schema = cfg.schema or part.schema

    def kept(specs: tuple[Any, ...], on: bool) -> tuple[Any, ...]:
        return tuple(f for f in specs if on and f.name not in data.drop_features)

    return replace(
        schema,
        user_features=kept(schema.user_features, data.user_features),
        item_features=kept(schema.item_features, data.item_features),
    )


def member_spread(rec: Recommender, index: Index, target: Target) -> dict[str, Any]:
    """Ensemble-mean ranking metrics and how much the members disagree, on the test users.

    Lists are ranked by ``Scorer.mean_scores`` (what ``recommend`` ranks by). Each member's
    own lists give its own NDCG / recall; the std over members of each listed item's score
    (mean over the top-k slots) is set against the std of the mean score over a user's
    candidates (the scale of the scores).
    """
    scorer = rec.scorer_
    items = list(index.item_ids)
    means, member_tops, top_std, scale = [], [], [], []
    for start in range(0, len(target.users), USER_CHUNK):
        rows = target.users[start : start + USER_CHUNK]
        ids = list(index.user_ids[rows])
        exclude = target.exclude[start : start + USER_CHUNK]
        mean = scorer.mean_scores(ids, items).cpu().double()
        members = scorer.member_scores(ids, items).cpu().double()  # (M, U, I)
        means.append(mean)
        member_tops.append(np.stack([ranking.top_k_from_scores(m, K, exclude) for m in members]))
        top = ranking.top_k_from_scores(mean, K, exclude)
        std = members.std(dim=0).numpy() if len(members) > 1 else np.zeros(mean.shape)
        listed = top >= 0
        top_std.append(np.take_along_axis(std, np.maximum(top, 0), axis=1)[listed])
        scale.append(mean.std(dim=1).numpy())
    out = rank_metrics(torch.cat(means), target.relevant, target.exclude, K)
    tops = np.concatenate(member_tops, axis=1)  # (M, U, K)
    if len(tops) > 1:
        per_member = [ranking.ranking_metrics(t, target.relevant, K) for t in tops]
        spread: dict[str, Any] = {}
        for key in (f"ndcg@{K}", f"recall@{K}"):
            values = np.array([m[key] for m in per_member])
            spread[f"member_{key}"] = values
            spread[f"member_{key}_std"] = float(values.std(ddof=1))
        mean_std, mean_scale = (
            float(np.concatenate(top_std).mean()),
            float(np.concatenate(scale).mean()),
        )
        spread[f"member_score_std_at_top{K}"] = mean_std
        spread["score_std_across_candidates"] = mean_scale
        spread["member_std_over_score_std"] = mean_std / mean_scale
        out["member_spread"] = spread
    return out


FACADE_KEYS = (
    "ece",
    "ece_equal_width",
    "mce",
    "brier",
    "expected_hits@{k}",
    "hits@{k}",
    "prob_at_least_one@{k}",
    "relevance_temperature",
    "ndcg@{k}",
    "recall@{k}",
    "n_users",
)


def wager_run(path: Path, part: PartData, index: Index, target: Target, opts: Options) -> dict:
    """Fit one wager config on the part's train rows (valid: early stopping, calibration)."""
    cfg = capped(RunConfig.load(path), opts.max_epochs)
    cfg = replace(cfg, schema=run_schema(cfg, part))
    schema = cfg.schema
    assert schema is not None
    log(f"wager {path.name}: fitting on {len(part.train)} rows")
    start = time.perf_counter()
    rec = Recommender(cfg).fit(
        part.train,
        part.valid,
        user_features=part.user_features if schema.user_features else None,
        item_features=part.item_features if schema.item_features else None,
    )
    fit_seconds = time.perf_counter() - start
    log(f"wager {path.name}: fitted in {fit_seconds:.1f}s; scoring the test users")
    out: dict[str, Any] = {
        "config": str(path),
        "model_type": cfg.model.type,
        "members": cfg.ensemble.members if cfg.ensemble is not None else 1,
        **member_spread(rec, index, target),
        **history_summary(rec),
        "fit_seconds": fit_seconds,
    }
    facade = rec.evaluate(part.test)
    k = cfg.evaluation.k
    out["relevance_ece"] = facade.get("ece")
    out["facade_evaluate"] = {
        "note": "Recommender.evaluate(test): 'ece' is the relevance calibration of the "
        "ensemble's top-k lists (each listed item's P(among the user's test positives) "
        "against whether it is one); its ranking metrics use wager's own catalogue (train "
        "and valid items, plus the feature table's items) with train and valid excluded",
        **{
            key.format(k=k): facade[key.format(k=k)]
            for key in FACADE_KEYS
            if key.format(k=k) in facade
        },
    }
    return out


# ---------------------------------------------------------------------------------- peers


def tune_peer(
    kind: str, fit_matrix: sp.csr_matrix, valid: Target, threads: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid of ``PEER_GRIDS[kind]`` x ``PEER_CHECKPOINTS[kind]`` iterations, fitted on
    ``fit_matrix`` and scored on the validation target; the best cell by ``METRIC``."""
    grid, checkpoints = PEER_GRIDS[kind], PEER_CHECKPOINTS[kind]
    rows: list[dict[str, Any]] = []
    for values in itertools.product(*grid.values()):
        params: dict[str, Any] = dict(zip(grid, values, strict=True))
        params["factors"] = int(params["factors"])

        def score(model: Any, iteration: int, params: dict[str, Any] = params) -> None:
            if iteration + 1 not in checkpoints:
                return
            scores = factor_scores(model, valid.users)
            top = ranking.top_k_from_scores(scores, K, valid.exclude)
            m = ranking.ranking_metrics(top, valid.relevant, K)
            rows.append(
                {
                    **params,
                    "iterations": iteration + 1,
                    METRIC: m[METRIC],
                    f"recall@{K}": m[f"recall@{K}"],
                }
            )

        fit_implicit(kind, fit_matrix, {**params, "iterations": max(checkpoints)}, threads, score)
        here = max(rows[-len(checkpoints) :], key=lambda r: r[METRIC])
        log(f"{kind}: {params}: best {METRIC} {here[METRIC]:.4f} at {here['iterations']} it.")
    best = max(rows, key=lambda r: r[METRIC])
    chosen = {key: best[key] for key in (*grid, "iterations")}
    return chosen, rows


def grid_edges(chosen: dict[str, Any], kind: str) -> list[str]:
    """The settings whose chosen value is the first or last of its grid (a wider grid might
    do better there)."""
    axes = {**PEER_GRIDS[kind], "iterations": PEER_CHECKPOINTS[kind]}
    return [
        key
        for key, values in axes.items()
        if len(values) > 1 and chosen[key] in (values[0], values[-1])
    ]


def peer_run(
    kind: str, part: PartData, index: Index, valid: Target, test: Target, opts: Options
) -> dict:
    """Tune on the validation rows, refit the chosen setting on train, score the test."""
    fit_matrix = index.matrix(part.train, part.confidence)
    start = time.perf_counter()
    chosen, grid = tune_peer(kind, fit_matrix, valid, opts.threads)
    tune_seconds = time.perf_counter() - start
    log(f"{kind}: refit on train with {chosen}")
    model, fit_seconds = fit_implicit(kind, fit_matrix, chosen, opts.threads)
    scores = factor_scores(model, test.users)
    return {
        "class": PEER_CLASSES[kind],
        "input": (
            f"train positives, value = {part.confidence}"
            if part.confidence is not None and kind == "als"
            else "train positives, 1 per pair"
        ),
        "selection": f"grid {PEER_GRIDS[kind]} x iterations {PEER_CHECKPOINTS[kind]} "
        f"(each cell fitted once on train, scored on the validation positives after each "
        f"checkpoint iteration; train items excluded), best validation {METRIC}; then "
        "fitted again with the chosen setting on train only (never on valid or test)",
        "chosen": chosen,
        "chosen_on_grid_edge": grid_edges(chosen, kind),
        f"validation_{METRIC}": max(r[METRIC] for r in grid),
        **rank_metrics(scores, test.relevant, test.exclude, K),
        "fit_seconds": fit_seconds,
        "seconds_per_iteration": fit_seconds / chosen["iterations"],
        "tune_seconds": tune_seconds,
        "grid": grid,
    }


def als_parity(
    part: PartData, index: Index, test: Target, chosen: dict[str, Any], opts: Options
) -> dict:
    """wager's ``als`` model against implicit's ALS at the same setting, on the same rows.

    Both fit the train pairs with value 1 (binary), ``chosen`` factors, regularization and
    iterations, no early stopping; implicit's confidence of an observed pair is alpha, wager's
    1 + alpha' with alpha' = alpha - 1, so both minimise the same objective. One seed each.
    """
    fit_matrix = index.matrix(part.train)
    model, implicit_seconds = fit_implicit("als", fit_matrix, chosen, opts.threads)
    implicit = rank_metrics(factor_scores(model, test.users), test.relevant, test.exclude, K)
    cfg = RunConfig.from_dict(
        {
            "seed": 0,
            "schema": {"user": "user_id", "item": "item_id"},
            "data": {"user_features": False, "item_features": False},
            "model": {
                "type": "als",
                "dim": int(chosen["factors"]),
                "reg": float(chosen["regularization"]),
                "alpha": float(chosen["alpha"]) - 1.0,
                "cg_steps": 3,
                "init_std": 0.01,
            },
            "training": {"epochs": int(chosen["iterations"])},
            "evaluation": {"k": K},
        }
    )
    pairs = part.train[["user_id", "item_id"]]
    start = time.perf_counter()
    rec = Recommender(cfg).fit(pairs, None)  # no validation rows: every iteration is kept
    wager_seconds = time.perf_counter() - start
    ours = member_spread(rec, index, test)
    return {
        "setting": {**chosen, "wager_alpha": float(chosen["alpha"]) - 1.0, "input": "binary"},
        "implicit": {**implicit, "fit_seconds": implicit_seconds},
        "wager": {**ours, "fit_seconds": wager_seconds},
        f"ratio_{METRIC}": ours[METRIC] / implicit[METRIC],
    }


def most_popular(part: PartData, index: Index, test: Target) -> dict:
    """Train positives per candidate item, the same list for every user (minus exclusions)."""
    counts = np.bincount(
        index.item_col[index.known(part.train)["item_id"]].to_numpy(),
        minlength=len(index.item_ids),
    ).astype(np.float64)
    scores = torch.as_tensor(counts).expand(len(test.users), -1)
    return {
        "score": "train positives of the item",
        **rank_metrics(scores, test.relevant, test.exclude, K),
    }


def ratios_to_als(result: dict[str, Any]) -> None:
    """Each wager run's NDCG and seconds over ALS's, in place (when both ran)."""
    als = result.get("implicit_als")
    if not isinstance(als, dict):
        return
    for run in result.get("wager", {}).values():
        run[f"{METRIC}_minus_als_paired"] = paired_difference(
            run[PER_USER_NDCG], als[PER_USER_NDCG]
        )
        run["ratio_to_als"] = {
            METRIC: run[METRIC] / als[METRIC],
            "fit_seconds": run["fit_seconds"] / als["fit_seconds"],
            "seconds_per_epoch_over_als_seconds_per_iteration": (
                run["seconds_per_epoch"] / als["seconds_per_iteration"]
                if run.get("seconds_per_epoch") is not None
                else None
            ),
        }


def part_section(name: str, opts: Options) -> dict:
    """Build a part's split and run every asked method on it."""
    log(f"{name}: building the split")
    part = PART_BUILDERS[name](opts)
    index = Index(part.train)
    test = index.target(part.test, part.seen)
    valid = index.target(part.valid, part.train)
    out: dict[str, Any] = {
        "protocol": {
            **part.protocol,
            "candidates": "every item with a train positive",
            "relevant": "the user's test positives among the candidates",
            "metrics": f"ndcg@{K}, recall@{K} (wager.evaluation.ranking) over the test users "
            "with a relevant candidate",
        },
        "n_train": len(part.train),
        "n_valid": len(part.valid),
        "n_test": len(part.test),
        "n_users": len(index.user_ids),
        "n_candidates": len(index.item_ids),
        "n_test_users": len(test.users),
        "n_test_rows_outside_candidates": test.n_rows_outside,
    }
    if "wager" in opts.methods:
        out["wager"] = {
            path.name: wager_run(path, part, index, test, opts) for path in opts.configs[name]
        }
    if "most_popular" in opts.methods:
        out["most_popular"] = most_popular(part, index, test)
    for kind in ("als", "bpr"):
        if kind not in opts.methods:
            continue
        key = f"implicit_{kind}"
        if version_of("implicit") == "not installed":
            out[key] = "not installed"
            continue
        out[key] = peer_run(kind, part, index, valid, test, opts)
    als = out.get("implicit_als")
    if "als_parity" in opts.methods and isinstance(als, dict):
        log(f"{name}: wager's als beside implicit's at {als['chosen']}")
        out["als_parity"] = als_parity(part, index, test, als["chosen"], opts)
    ratios_to_als(out)
    return out


# ----------------------------------------------------------------------------------- main


def parse_configs(items: list[str], parts: list[str]) -> dict[str, tuple[Path, ...]]:
    """``--configs`` values (PART=PATH, or PATH for every part) -> part -> paths."""
    given: dict[str, list[Path]] = {}
    for item in items:
        part, sep, rest = item.partition("=")
        if sep and part not in PARTS:
            raise SystemExit(f"--configs {item}: unknown part {part!r}; use one of {PARTS}")
        for p in [part] if sep else parts:
            given.setdefault(p, []).append(Path(rest if sep else item))
    configs = {p: tuple(given.get(p, DEFAULT_CONFIGS[p])) for p in PARTS}
    for p in parts:
        for path in configs[p]:
            if not path.is_file():
                raise SystemExit(f"--configs: {path} (part {p}) is not a file")
    return configs


def arguments() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data-dir", type=Path, default=None, help="the ml-100k directory")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"subset of {','.join(METHODS)}")
    ap.add_argument(
        "--configs",
        action="append",
        default=[],
        metavar="PART=PATH",
        help="a wager config for a part (repeat for several; PATH alone: every part); "
        "defaults: synthetic=examples/implicit-large.toml and implicit-large-two-tower.toml, "
        "ml100k=examples/movielens-implicit.toml and movielens-als.toml",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch / BLAS / implicit threads")
    ap.add_argument("--max-epochs", type=int, default=None, help="cap wager's epochs (smoke runs)")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    ap.add_argument("--n-users", type=int, default=2000, help="synthetic world's users")
    ap.add_argument("--n-items", type=int, default=20000, help="synthetic world's items")
    ap.add_argument("--impressions", type=int, default=4_000_000, help="synthetic log size")
    ap.add_argument("--popularity-exponent", type=float, default=0.8)
    ap.add_argument(
        "--hidden-strength",
        type=float,
        default=6.0,
        help="weight of the world's hidden user x item factors (default 6: tastes that "
        "personalisation can learn; at the world's default 1 the clicks are mostly noise and "
        "ALS does no better than most-popular)",
    )
    ap.add_argument("--latent-dim", type=int, default=4, help="the world's hidden factors")
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--log-seed", type=int, default=1)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument(
        "--ml-valid-fraction",
        type=float,
        default=0.15,
        help="share of each user's u1.base rows carved out as validation (default 0.15)",
    )
    return ap


def main() -> None:
    ap = arguments()
    args = ap.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    if not parts or set(parts) - set(PARTS):
        ap.error(f"--parts {args.parts!r}: choose from {', '.join(PARTS)}")
    if not methods or set(methods) - set(METHODS):
        ap.error(f"--methods {args.methods!r}: choose from {', '.join(METHODS)}")
    if args.max_epochs is not None and args.max_epochs < 1:
        ap.error(f"--max-epochs must be >= 1, got {args.max_epochs}")
    if args.threads < 1:
        ap.error(f"--threads must be >= 1, got {args.threads}")
    if not 0 < args.ml_valid_fraction < 1:
        ap.error(f"--ml-valid-fraction must be in (0, 1), got {args.ml_valid_fraction}")
    if "ml100k" in parts and args.data_dir is None:
        ap.error("--parts ml100k needs --data-dir (the ml-100k directory)")
    opts = Options(
        data_dir=args.data_dir,
        configs=parse_configs(args.configs, parts),
        methods=methods,
        threads=args.threads,
        max_epochs=args.max_epochs,
        world={
            "n_users": args.n_users,
            "n_items": args.n_items,
            "impressions": args.impressions,
            "popularity_exponent": args.popularity_exponent,
            "hidden_strength": args.hidden_strength,
            "latent_dim": args.latent_dim,
            "world_seed": args.world_seed,
            "log_seed": args.log_seed,
            "split_seed": args.split_seed,
        },
        ml_valid_fraction=args.ml_valid_fraction,
    )
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"env": environment(args.threads, ("implicit",))}
    result["threads"] = (
        f"torch.set_num_threads({args.threads}); BLAS / OpenMP pools limited to {args.threads} "
        "(threadpoolctl), except during implicit's fits, which run num_threads="
        f"{args.threads} with BLAS at 1 (implicit's advice)"
    )
    if args.max_epochs is not None:
        result["max_epochs_override"] = args.max_epochs  # a smoke run, not the benchmark
    with threadpool_limits(args.threads):
        for part in parts:
            start = time.perf_counter()
            result[part] = part_section(part, opts)
            result[part]["wall_seconds"] = time.perf_counter() - start
            log(f"{part}: done in {result[part]['wall_seconds']:.1f}s")
    result["total_wall_seconds"] = seconds_since_start()
    emit(result, args.out)


if __name__ == "__main__":
    main()
