"""The run configuration's sections after ``[model]``: ``[data]``, ``[evaluation]``,
``[training]``, ``[ensemble]`` and ``[uncertainty]`` (frozen dataclasses, each checked on
construction). :mod:`wager.config` assembles them into a ``RunConfig`` and re-exports
them, so ``from wager.config import TrainConfig`` is the import to use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

from wager.config_types import (
    _check,
    _check_device,
    _choice,
    _conform_fields,
    _did_you_mean,
)
from wager.data.duplicates import DUPLICATE_POLICIES
from wager.data.loaders import FORMATS
from wager.data.splits import SPLIT_METHODS
from wager.errors import suggest

DATA_FORMATS: tuple[str, ...] = (*FORMATS, "synthetic")

SPLIT_NAMES = "'random', 'temporal', 'leave-last-out' or a predefined fold such as 'u1'"


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is split (used by ``wager train``).

    Attributes:
        path: dataset file or directory (MovieLens, Open Bandit, CSV/Parquet table); relative
            paths are relative to the working directory; ``--data-dir`` overrides it.
        format: "auto" (detect) or a loader name ("movielens", "obd", "table").
        split: "random", "temporal", "leave-last-out" or a predefined fold ("u1".."u5").
        test_fraction: share of rows in the test split (random / temporal), in (0, 1).
        valid_fraction: share of the training rows held out for early stopping and model
            selection, in [0, 1) (0: no validation split).
        user_features: use the dataset's user feature table.
        item_features: use the dataset's item feature table.
        drop_features: user / item feature columns to leave out (e.g. ["zip", "title"]);
            names the dataset does not have are ignored, so one config serves every layout.
        synthetic_rows: logged impressions drawn when ``format = "synthetic"`` (the
            synthetic world of ``wager.data.synthetic``; ``path`` is then unused).
        duplicates: what to do when one (user, item) pair has conflicting ratings (label
            kind "rating" only; repeated clicks are impressions): "refuse" (an error naming
            the rows), "last" (keep the latest by timestamp, else file order), "mean"
            (average them into the latest row) or "keep" (every row counts).
        synthetic_users: users in the synthetic world (``format = "synthetic"``); with
            ``synthetic_rows`` it sets how many impressions each user has.
        stream: read the interaction table as a stream of Parquet row groups instead of
            loading it (data larger than memory; see :mod:`wager.data.streaming`): a
            Parquet file or folder of part files, a "random" split hashed from each row's
            number, the validation and test rows kept in memory, rating and click models.
        memory_budget_mb: with ``stream``, the most memory (MiB) the streamed data may
            take: the shuffle buffer, one row group, the held-out rows, the vocabularies
            and the sample. Checked against the files' metadata before training (an error
            names what does not fit) and measured by ``benchmarks/scale.py --part stream``.
        shuffle_buffer: with ``stream``, rows mixed in the shuffle buffer (more: batches
            closer to a uniform shuffle, more memory).
        stream_sample_rows: with ``stream``, training rows of the uniform sample the
            context encoders (their vocabularies and statistics) are fitted on.
    """

    path: str | None = None
    format: str = "auto"
    split: str = "random"
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    user_features: bool = True
    item_features: bool = True
    drop_features: tuple[str, ...] = ()
    synthetic_rows: int = 100_000
    duplicates: str = "refuse"
    synthetic_users: int = 2000
    stream: bool = False
    memory_budget_mb: int = 1024
    shuffle_buffer: int = 100_000
    stream_sample_rows: int = 100_000

    def __post_init__(self) -> None:
        _conform_fields(self, "data")
        _choice("data", "format", self.format, DATA_FORMATS)
        _check(
            self.split in SPLIT_METHODS or not suggest(self.split, SPLIT_METHODS),
            "data",
            "split",
            self.split,
            SPLIT_NAMES + _did_you_mean(self.split, SPLIT_METHODS),
        )
        _check(
            self.synthetic_rows >= 1000, "data", "synthetic_rows", self.synthetic_rows, ">= 1000"
        )
        _check(self.synthetic_users >= 1, "data", "synthetic_users", self.synthetic_users, ">= 1")
        _check(bool(self.split), "data", "split", self.split, SPLIT_NAMES)
        _check(0 < self.test_fraction < 1, "data", "test_fraction", self.test_fraction, "in (0, 1)")
        _check(
            0 <= self.valid_fraction < 1,
            "data",
            "valid_fraction",
            self.valid_fraction,
            "in [0, 1)",
        )
        _check(
            self.duplicates in DUPLICATE_POLICIES,
            "data",
            "duplicates",
            self.duplicates,
            "one of " + ", ".join(DUPLICATE_POLICIES),
        )
        _check(
            self.memory_budget_mb >= 16,
            "data",
            "memory_budget_mb",
            self.memory_budget_mb,
            "an integer >= 16 (MiB)",
        )
        _check(self.shuffle_buffer >= 0, "data", "shuffle_buffer", self.shuffle_buffer, ">= 0")
        _check(
            self.stream_sample_rows >= 1,
            "data",
            "stream_sample_rows",
            self.stream_sample_rows,
            ">= 1",
        )


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``evaluate`` reports.

    Attributes:
        k: list length of the ranking metrics (precision@k ... novelty@k) (>= 1).
        top_k_accuracy: the ks of the factorized top-k accuracy (TensorFlow Recommenders).
        relevance_threshold: test rows whose label is >= this are relevant for the ranking
            metrics (None: every test row is relevant).
        max_users: evaluate ranking on at most this many test users (a seeded sample;
            None = all).
    """

    k: int = 10
    top_k_accuracy: tuple[int, ...] = (1, 5, 10, 50, 100)
    relevance_threshold: float | None = None
    max_users: int | None = None

    def __post_init__(self) -> None:
        _conform_fields(self, "evaluation")
        _check(self.k >= 1, "evaluation", "k", self.k, ">= 1")
        _check(
            all(k >= 1 for k in self.top_k_accuracy),
            "evaluation",
            "top_k_accuracy",
            self.top_k_accuracy,
            "ks >= 1",
        )
        _check(
            self.max_users is None or self.max_users >= 1,
            "evaluation",
            "max_users",
            self.max_users,
            ">= 1 or unset",
        )


@dataclass(frozen=True)
class TrainConfig:
    """The training loop.

    Attributes:
        epochs: maximum epochs (>= 1).
        batch_size: rows per step (>= 1).
        learning_rate: optimiser step size (> 0).
        weight_decay: decoupled weight decay (AdamW) / L2 (Adam, Adagrad) (>= 0).
        anchored: the weight decay pulls every parameter towards its own initial value
            instead of towards 0 (anchored ensembles, Pearce et al. 2020). Each ensemble
            member starts from its own random draw, so members keep a prior-sized
            disagreement where the data say little (rare users and items, OOV rows) and
            agree where the data are plentiful; with ``init_std ~ 1 / sqrt(weight_decay *
            n_rows)`` each member is approximately a posterior sample of the embeddings.
        optimizer: "adamw", "adam" or "adagrad".
        patience: epochs without validation improvement before stopping (>= 1); the best
            epoch's parameters are restored.
        grad_clip: max gradient norm, or None.
        device: "cpu", "cuda", "cuda:N" (GPU N), "mps" or "auto" (cuda when available) — an
            explicit choice; a device this machine does not have is an error
            (:func:`available_devices`).
        lr_schedule: "constant", "cosine" (to 0 at the last step) or "linear" (to 0).
        warmup_steps: optimiser steps of linear learning-rate warm-up (>= 0).
        mixed_precision: bfloat16 autocast on CUDA (ignored on CPU, which stays float32).
        validation_metric: early-stopping metric on the validation rows: "rmse", "log_loss",
            "ndcg@K", "recall@K" or "top_k_accuracy@K" (K an integer); None = the task's
            default (rmse for ratings, log_loss for clicks, ndcg@k for retrieval / implicit).
    """

    epochs: int = 20
    batch_size: int = 2048
    learning_rate: float = 0.01
    weight_decay: float = 0.0
    anchored: bool = False
    optimizer: Literal["adamw", "adam", "adagrad"] = "adam"
    patience: int = 2
    grad_clip: float | None = None
    device: str = "cpu"
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    mixed_precision: bool = False
    validation_metric: str | None = None

    def __post_init__(self) -> None:
        _conform_fields(self, "training")
        _check_device(self.device)
        vm = self.validation_metric
        name, _, k = (vm or "").partition("@")
        _check(
            vm is None
            or vm in ("rmse", "log_loss")
            or (name in ("ndcg", "recall", "top_k_accuracy") and k.isdigit() and int(k) >= 1),
            "training",
            "validation_metric",
            vm,
            "'rmse', 'log_loss', 'ndcg@K', 'recall@K' or 'top_k_accuracy@K'",
        )
        _check(self.epochs >= 1, "training", "epochs", self.epochs, "an integer >= 1")
        _check(self.warmup_steps >= 0, "training", "warmup_steps", self.warmup_steps, ">= 0")
        _check(self.batch_size >= 1, "training", "batch_size", self.batch_size, ">= 1")
        _check(
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            "training",
            "learning_rate",
            self.learning_rate,
            "a finite number > 0",
        )
        _check(self.weight_decay >= 0, "training", "weight_decay", self.weight_decay, ">= 0")
        _check(self.patience >= 1, "training", "patience", self.patience, ">= 1")
        _check(
            self.grad_clip is None or self.grad_clip > 0,
            "training",
            "grad_clip",
            self.grad_clip,
            "> 0 or unset",
        )


@dataclass(frozen=True)
class EnsembleConfig:
    """Deep ensemble: members trained with different seeds (and bootstrap resampling).

    Attributes:
        members: number of members (>= 2).
        bootstrap: each member sees a bootstrap resample (Poisson(1) row weights).
        holdout: fraction of the training rows each member holds out for its own early
            stopping (a different random subset per member, so every row trains most
            members and the ensemble as a whole sees all the data); 0 = members stop on
            the shared validation split. Rating and click models only.
        fit: "stacked": the members train together, one vmapped model in one loop over
            shared batches (the fastest on one machine); "separate": each member trains in
            its own loop (its own shuffles, bootstrap draw and early stopping, everything
            seeded by ``[run] seed`` + its index), so members can train in parallel on Ray
            (``wager train --ray``) with the same result as one after another.
        member_threads: "separate": torch threads each member trains with (and the CPUs Ray
            reserves for it); fixed so a member's arithmetic, and so its weights, are the
            same wherever it runs.
    """

    members: int = 5
    bootstrap: bool = True
    holdout: float = 0.0
    fit: Literal["stacked", "separate"] = "stacked"
    member_threads: int = 1

    def __post_init__(self) -> None:
        _conform_fields(self, "ensemble")
        _check(self.members >= 2, "ensemble", "members", self.members, "an integer >= 2")
        _check(
            0 <= self.holdout < 1,
            "ensemble",
            "holdout",
            self.holdout,
            "a fraction in [0, 1), e.g. 0.1",
        )
        _check(
            self.member_threads >= 1,
            "ensemble",
            "member_threads",
            self.member_threads,
            "an integer >= 1",
        )


Calibrator = Literal["none", "platt", "isotonic", "temperature"]
Conformal = Literal["none", "normalized", "homoscedastic"]
CALIBRATORS: tuple[str, ...] = get_args(Calibrator)
CONFORMAL: tuple[str, ...] = get_args(Conformal)


@dataclass(frozen=True)
class UncertaintyConfig:
    """How predictions get (and check) their confidence beyond the model's own head.

    The estimator that makes the spread is the model's head (Gaussian / mixture), the
    ``[ensemble]`` section, and MC dropout here; the post-hoc steps below are fitted on the
    validation rows after training (with ``[ensemble] holdout`` those rows are never seen
    by training; otherwise they also served early stopping).

    Attributes:
        mc_dropout_samples: S >= 2 turns on Monte Carlo dropout at inference (needs
            ``model.dropout > 0``), all S samples in one batched pass; 0 = off.
        calibrator: probability calibration of click models: "none", "platt",
            "isotonic" or "temperature".
        conformal: intervals of rating models: "none" (Gaussian mean +- z std),
            "normalized" (split conformal on |y - mean| / std: adapts per prediction) or
            "homoscedastic" (split conformal on |y - mean|: constant width, the baseline).
        variance_scaling: rescale std by one factor fitted on the validation rows
            (Gaussian NLL), before any conformal step.
        local_variance: refit each rating prediction's std on held-out residuals: a
            log-linear model of the squared error on the head's log aleatoric and epistemic
            variances, where the mean sits on the rating scale, and the training support of
            the user and the item (log rows, log label std); see
            :mod:`wager.uncertainty.local_variance`. Fitted on a seeded half of the
            validation rows when a conformal step follows (which then calibrates on the
            other half, keeping its coverage guarantee), else on all of them. Replaces
            variance_scaling (its intercept is that scale).
        cold_start: how out-of-vocabulary users, items and feature values get their
            uncertainty: "learned" (the OOV rows as trained) or "population" (an unknown
            value is a random known value: each member averages its prediction over
            ``population_draws`` known values drawn for it, and the spread over those draws
            adds to the members' spread; see :mod:`wager.uncertainty.cold_start`). Needs an
            ensemble, without MC dropout.
        population_draws: K >= 1 known values per member that stand in for an unknown one
            under cold_start = "population" (rows with an OOV value cost K forward passes).
        confidence_levels: levels at which evaluation reports coverage and width.
        plots: ``wager evaluate`` writes reliability / coverage / confidence plots (PNG)
            into the run directory.
    """

    mc_dropout_samples: int = 0
    calibrator: Calibrator = "none"
    conformal: Conformal = "none"
    variance_scaling: bool = False
    local_variance: bool = False
    cold_start: Literal["learned", "population"] = "learned"
    population_draws: int = 16
    confidence_levels: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    plots: bool = True

    def __post_init__(self) -> None:
        _conform_fields(self, "uncertainty")
        s = self.mc_dropout_samples
        _check(
            s == 0 or s >= 2, "uncertainty", "mc_dropout_samples", s, "0 (off) or an integer >= 2"
        )
        k = self.population_draws
        _check(k >= 1, "uncertainty", "population_draws", k, "an integer >= 1")
        _check(
            not (self.variance_scaling and self.local_variance),
            "uncertainty",
            "variance_scaling",
            self.variance_scaling,
            "false when local_variance = true (local_variance fits the overall scale too)",
        )
        _check(
            len(self.confidence_levels) > 0 and all(0 < x < 1 for x in self.confidence_levels),
            "uncertainty",
            "confidence_levels",
            self.confidence_levels,
            "a non-empty list of levels in (0, 1), e.g. [0.5, 0.8, 0.9, 0.95]",
        )
