"""Recommender: the facade used by the CLI, serving and notebooks.

``Recommender(config).fit(train, valid)`` fits the encoders on the training split, builds the
model named by ``config.model.type`` (a single model, or a deep ensemble of it when
``config.ensemble`` is set) and trains it with the one trainer; then

- ``predict(user_ids, item_ids) -> Prediction`` (rating, click probability or retrieval score,
  with the ensemble's / head's uncertainty),
- ``recommend(user_ids, k) -> DataFrame`` (top-k per user, already-seen items excluded),
- ``evaluate(test) -> dict`` (the metrics JSON keys used by every command),
- ``save(dir)`` / ``Recommender.load(dir)``: a run directory (config TOML, safetensors
  weights, encoders JSON, feature tables Parquet, catalogue JSON, metrics JSON) that needs
  nothing else to load.

Unknown users and items go through the out-of-vocabulary row and their features: cold start,
never a KeyError.

Example:
    >>> import pandas as pd
    >>> from wager.config import RunConfig, TrainConfig, EnsembleConfig
    >>> from wager.data.schema import Schema
    >>> df = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 2],
    ...                    "click": [1, 0, 0, 1]})
    >>> cfg = RunConfig(schema=Schema(label="click"), training=TrainConfig(epochs=2),
    ...                 ensemble=EnsembleConfig(members=2))
    >>> rec = Recommender(cfg).fit(df)
    >>> rec.predict([1], [2]).mean.shape
    torch.Size([1])
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from wager.config import RunConfig
from wager.data.features import InteractionEncoder, categorical_keys
from wager.data.schema import Schema
from wager.errors import NotFittedError, data_error
from wager.evaluation import ranking
from wager.evaluation.metrics import (
    auc,
    expected_calibration_error,
    interval_coverage,
    log_loss,
    mae,
    rmse,
)
from wager.evaluation.plots import reliability_diagram, std_histogram, uncertainty_plots
from wager.evaluation.uncertainty import brier_score, max_calibration_error, uncertainty_report
from wager.models.fields import Field
from wager.models.heads import (
    BernoulliHead,
    DeepDensityHead,
    GaussianHead,
    MixtureDensityHead,
    PointHead,
)
from wager.models.mf import BiasedMF, FeatureFactorization
from wager.models.ncf import NeuMF
from wager.models.ranking import DCNRanker, Task
from wager.models.two_tower import TwoTower
from wager.prediction import MixturePrediction, Prediction
from wager.training.trainer import History, StackedModel, resolve_device, train_stacked
from wager.uncertainty.calibration import (
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from wager.uncertainty.cold_start import (
    centre_oov,
    draw_known_rows,
    oov_rows,
    population_batch,
)
from wager.uncertainty.conformal import ConformalPrediction, SplitConformal, VarianceScaling
from wager.uncertainty.ensemble import bootstrap_weights, holdout_mask
from wager.uncertainty.local_variance import LocalVarianceScaling, SupportCovariates
from wager.uncertainty.mc_dropout import MCDropout
from wager.uncertainty.relevance import (
    ListRelevanceCalibrator,
    RelevanceCalibrator,
    expected_hits,
    load_relevance_calibrator,
    prob_at_least_one,
    relevance_probability,
)

ProbabilityCalibrator = PlattScaling | IsotonicCalibration | TemperatureScaling
_CALIBRATORS: dict[str, type[PlattScaling | IsotonicCalibration | TemperatureScaling]] = {
    "platt": PlattScaling,
    "isotonic": IsotonicCalibration,
    "temperature": TemperatureScaling,
}

RUN_FILES = {
    "config": "config.toml",
    "weights": "weights.safetensors",
    "encoders": "encoders.json",
    "user_features": "user_features.parquet",
    "item_features": "item_features.parquet",
    "catalogue": "catalogue.json",
    "metrics": "metrics.json",
    "uncertainty": "uncertainty.json",
}

TaskKind = Literal["click", "rating", "retrieval", "implicit"]
Batch = dict[str, Tensor]
# rows x population draws per forward pass of cold_start = "population"
_POPULATION_ROWS = 65536
# heads whose outputs are a Gaussian mixture of the CTR ([model] likelihood "mdn" / "ddn")
_MIXTURE_HEADS = (MixtureDensityHead, DeepDensityHead)

# pairs scored per forward pass when a model has no factorised (dot-product) form
_PAIRS_PER_PASS = 262_144


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device | None = None) -> Batch:
    """numpy arrays -> torch tensors (int64 stays int64, floats become float32)."""
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(np.require(v, requirements=["C", "W"]))
        t = t.float() if t.is_floating_point() else t
        out[k] = t.to(device) if device is not None else t
    return out


def task_of(config: RunConfig) -> TaskKind:
    """What the model learns: "click", "rating", "retrieval" or "implicit"."""
    kind = config.model.type
    if kind == "two_tower":
        return "retrieval"
    if kind == "neumf":
        return "implicit"
    if kind == "biased_mf":
        return "rating"
    if kind == "dcn":
        schema = config.schema
        return "rating" if schema is not None and schema.label_kind == "rating" else "click"
    return "click"


def _gather(batch: Batch, rows: Tensor, prefix: str = "") -> Batch:
    """Rows of every tensor of ``batch``; keys optionally re-prefixed (e.g. "neg.")."""
    return {prefix + k: v[rows] for k, v in batch.items()}


def _mean_of_location(head: Any, location: Tensor) -> Tensor:
    """The head's predicted mean from the location of its output (the mean's raw value)."""
    if head is None:  # retrieval scores
        return location
    if isinstance(head, GaussianHead):
        return head.mean(torch.stack([location, torch.zeros_like(location)], dim=-1))
    return head.mean(location)


class Recommender:
    """Fit / predict / recommend / evaluate / save / load any wager model.

    Learned state ends in ``_``; calling ``predict``/``recommend``/``evaluate``/``save``
    before ``fit`` raises :class:`~wager.errors.NotFittedError`.

    Args:
        config: the run configuration (``config.schema`` must be set before ``fit``).
    """

    def __init__(self, config: RunConfig | None = None) -> None:
        self.config = config or RunConfig()
        self.encoder_: InteractionEncoder | None = None
        self.stack_: StackedModel | None = None
        self.items_: np.ndarray | None = None
        self.item_index_: dict[str, int] | None = None
        self.user_index_: dict[str, int] | None = None
        self.seen_: sp.csr_matrix | None = None
        self.item_counts_: np.ndarray | None = None
        self.global_mean_: float = 0.0
        self.history_: History | None = None
        self.metrics_: dict[str, Any] = {}
        self.calibrator_: ProbabilityCalibrator | None = None
        self.variance_scaling_: VarianceScaling | None = None
        # [uncertainty] local_variance: the variance model and its per-id covariate tables
        self.local_variance_: LocalVarianceScaling | None = None
        self.support_covariates_: SupportCovariates | None = None
        self.conformal_: SplitConformal | None = None
        self.relevance_calibrator_: RelevanceCalibrator | ListRelevanceCalibrator | None = None
        # cold_start = "population": {field key: (M, K) known rows standing in for OOV}
        self.population_picks_: dict[str, Tensor] | None = None
        self._item_cache: dict[str, Batch] = {}

    # ------------------------------------------------------------------ properties
    @property
    def schema(self) -> Schema:
        """The data schema (an error when the config has none)."""
        if self.config.schema is None:
            raise ValueError(
                "config.schema is not set: give RunConfig(schema=...) or let `wager train` "
                "take the schema the data loader suggests"
            )
        return self.config.schema

    @property
    def task(self) -> TaskKind:
        """What the model learns: "click", "rating", "retrieval" or "implicit"."""
        return task_of(self.config)

    @property
    def head(self) -> Any:
        """The likelihood head of pointwise models (None for retrieval scores).

        Clicks: Bernoulli, or with ``[model] likelihood = "mdn"`` / ``"ddn"`` a K-component
        mixture density / deep density head of the CTR (K = ``[model] components``).
        Ratings: point or Gaussian.
        """
        task = self.task
        if task == "retrieval":
            return None
        likelihood = self.config.model.likelihood
        if task == "click" and likelihood == "mdn":
            return MixtureDensityHead(components=self.config.model.components, support=(0.0, 1.0))
        if task == "click" and likelihood == "ddn":
            return DeepDensityHead(components=self.config.model.components)
        if task in ("click", "implicit"):
            return BernoulliHead()
        rr = self.schema.rating_range
        support = (float(rr[0]), float(rr[1])) if rr is not None else None
        if self.config.model.likelihood == "gaussian":
            return GaussianHead(support=support, mean_loss=self.config.model.mean_loss)
        return PointHead(support=support)

    @property
    def method(self) -> str:
        """Provenance string of predictions."""
        ens = self.config.ensemble
        name = self.config.model.type
        mc = self._mc_dropout()
        if mc is not None:
            name = f"{mc.method} of {name}"
        if ens is None:
            return name
        return f"ensemble(members={ens.members}, bootstrap={ens.bootstrap}) of {name}"

    def _mc_dropout(self) -> MCDropout | None:
        """The MC-dropout sampler when ``[uncertainty] mc_dropout_samples`` is set."""
        samples = self.config.uncertainty.mc_dropout_samples
        return MCDropout(samples, seed=self.config.seed) if samples else None

    def _outputs(self, batch: Batch) -> Tensor:
        """(R, B, ...) raw outputs: R = M members, or M * S with MC dropout (one pass)."""
        assert self.stack_ is not None
        mc = self._mc_dropout()
        if mc is not None:
            return mc.sample_outputs(self.stack_, batch)
        with torch.no_grad():
            return self.stack_.call("forward", batch)

    # ------------------------------------------------------------------ model
    def _fields(self) -> list[Field]:
        assert self.encoder_ is not None
        return [Field(k, kind, size) for k, kind, size in self.encoder_.fields()]  # type: ignore[arg-type]

    def _factory(self) -> nn.Module:
        fields = self._fields()
        user = [f for f in fields if f.key.startswith("user.")]
        item = [f for f in fields if f.key.startswith("item.")]
        context = [f for f in fields if f.key.startswith("context.")]
        m = self.config.model
        if m.type == "factorization":
            return FeatureFactorization(user, item, context, dim=m.dim, init_std=m.init_std)
        if m.type == "biased_mf":
            return BiasedMF(
                user,
                item,
                dim=m.dim,
                init_std=m.init_std,
                head=self.head,
                reg=m.reg,
                bias_reg=m.bias_reg,
                global_mean=self.global_mean_,
                dropout=m.dropout,
            )
        if m.type == "two_tower":
            return TwoTower(
                user,
                item,
                dim=m.dim,
                hidden=m.hidden,
                dropout=m.dropout,
                init_std=m.init_std,
                temperature=m.temperature,
                logq_correction=m.logq_correction and not m.full_softmax,
                in_batch_negatives=m.in_batch_negatives and not m.full_softmax,
                remove_accidental_hits=m.remove_accidental_hits,
                item_id_key=f"item.{self.schema.item}",
                item_bias=m.item_bias,
                user_dropout=m.user_dropout,
                reg=m.reg,
                normalize=m.normalize,
                reduction=m.loss_reduction,
            )
        if m.type == "neumf":
            return NeuMF(
                user,
                item,
                gmf_dim=m.dim,
                mlp_dim=m.dim,
                hidden=m.hidden or (2 * m.dim, m.dim),
                dropout=m.dropout,
                init_std=m.init_std,
            )
        return DCNRanker(
            user,
            item,
            context,
            dim=m.dim,
            cross_layers=m.cross_layers,
            low_rank=m.low_rank,
            deep=m.hidden or (256, 128),
            dropout=m.dropout,
            init_std=m.init_std,
            tasks=(Task("label", "label", self.head, 1.0),),
        )

    def _members(self) -> int:
        return self.config.ensemble.members if self.config.ensemble is not None else 1

    def _require_fit(self) -> tuple[InteractionEncoder, StackedModel]:
        if self.encoder_ is None or self.stack_ is None:
            raise NotFittedError("this Recommender is not fitted: call fit() (or load()) first")
        return self.encoder_, self.stack_

    # ------------------------------------------------------------------ fitting
    def _check_columns(self, df: pd.DataFrame, what: str, need_label: bool) -> None:
        s = self.schema
        need = [s.user, s.item] + [f.name for f in s.context]
        if need_label and s.label is not None:
            need.append(s.label)
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise data_error(
                "missing_column",
                f"columns {missing} are missing from the {what} table",
                source=what,
                column=missing[0],
                fix=f"Available columns: {', '.join(map(str, df.columns))}.",
            )

    def _positives(self, df: pd.DataFrame) -> pd.DataFrame:
        """Rows that count as positives for retrieval / implicit training."""
        thr = self.config.model.positive_threshold
        if thr is None or self.schema.label is None:
            return df
        return df[df[self.schema.label].to_numpy(dtype=float) >= thr]

    def _check_likelihood(self, train: pd.DataFrame) -> None:
        """Errors for ``[model] likelihood`` values the model type, task or data cannot take.

        Args:
            train: the training rows (checked for the impressions column of "ddn").
        """
        m = self.config.model
        if m.likelihood not in ("mdn", "ddn"):
            return
        if m.type != "dcn":
            raise ValueError(
                f"[model] likelihood = {m.likelihood!r} needs [model] type = 'dcn' (got "
                f"type = {m.type!r}): the mixture density heads model a CTR with the DCN "
                "ranker; set type = 'dcn', or likelihood = 'point' for this model type"
            )
        if self.task != "click":
            raise ValueError(
                f"[model] likelihood = {m.likelihood!r} models a click-through rate, but this "
                f"is a {self.task} model (Schema.label_kind = {self.schema.label_kind!r}); "
                "use a click / CTR label (Schema.label_kind = 'click' or 'ctr'), or "
                "likelihood = 'gaussian' for ratings"
            )
        calibrator = self.config.uncertainty.calibrator
        if calibrator != "none":
            raise ValueError(
                f"[uncertainty] calibrator = {calibrator!r} maps a click probability, but "
                f"[model] likelihood = {m.likelihood!r} predicts a whole CTR distribution "
                "(mixture weights, means and stds fitted by likelihood) that a probability map "
                "would leave inconsistent: set calibrator = 'none', or likelihood = 'point' "
                "to calibrate a single CTR"
            )
        if m.likelihood != "ddn":
            return
        col = self.schema.impressions
        if col is None:
            raise ValueError(
                "[model] likelihood = 'ddn' needs aggregated CTR rows with their impression "
                "counts, but Schema.impressions is not set: set Schema(impressions=<column>, "
                "clicks=<column>), or use likelihood = 'mdn'"
            )
        if col not in train.columns:
            raise data_error(
                "missing_column",
                f"[model] likelihood = 'ddn' needs the impressions column {col!r} "
                "(Schema.impressions), which is missing from the train table",
                source="train",
                column=col,
                fix=f"Add the impression counts as column {col!r}, or use likelihood = 'mdn'. "
                f"Available columns: {', '.join(map(str, train.columns))}.",
            )

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
        show_progress: bool = False,
    ) -> Recommender:
        """Fit encoders (training split only) and train the model; returns self.

        Args:
            train: interaction rows with the schema's user, item, label and context columns.
            valid: rows for early stopping (validation RMSE for ratings, log-loss for clicks,
                impression-weighted squared error of the mean CTR for "mdn" / "ddn", NDCG@k
                for retrieval / implicit), or None (no early stopping).
            user_features: user feature table keyed by ``schema.user``, or None.
            item_features: item feature table keyed by ``schema.item``, or None.
            show_progress: draw a progress bar.
        """
        s = self.schema
        task = self.task
        if s.label is None and task in ("click", "rating"):
            raise ValueError(
                f"Schema.label is None: a {task} model needs a label column; set schema.label"
            )
        self._check_likelihood(train)
        self._check_columns(train, "train", need_label=task in ("click", "rating"))
        if valid is not None:
            self._check_columns(valid, "valid", need_label=task in ("click", "rating"))
        fit_rows = self._positives(train) if task in ("retrieval", "implicit") else train
        if len(fit_rows) == 0:
            raise data_error(
                "empty_data",
                "the training split has no rows"
                + (" at or above model.positive_threshold" if len(train) else ""),
                source="train",
                fix="Check the split, any filters applied before fit() and "
                "model.positive_threshold.",
            )
        if self.config.uncertainty.mc_dropout_samples and not self.config.model.dropout > 0:
            raise ValueError(
                f"[uncertainty] mc_dropout_samples = "
                f"{self.config.uncertainty.mc_dropout_samples} needs dropout in the model: set "
                "[model] dropout > 0 (e.g. 0.1), or mc_dropout_samples = 0"
            )
        if self.config.uncertainty.cold_start == "population" and (
            self._members() < 2 or self.config.uncertainty.mc_dropout_samples
        ):
            raise ValueError(
                "[uncertainty] cold_start = 'population' averages an unknown value over known "
                "values drawn for each ensemble member: it needs an [ensemble] section with "
                "members >= 2 and no mc_dropout_samples; or set cold_start = 'learned'"
            )
        device = resolve_device(self.config.training.device)
        mc = self.config.model
        self._item_cache = {}
        self.encoder_ = InteractionEncoder.from_schema(s, mc.user_min_count, mc.item_min_count)
        self.encoder_.fit(fit_rows, user_features, item_features)
        # items seen in the validation rows are history too: recommend() / evaluate() exclude them
        history = train if valid is None else pd.concat([train, valid], ignore_index=True)
        self._fit_catalogue(history, fit_rows, item_features)
        if task == "rating":
            self.global_mean_ = float(np.mean(fit_rows[s.label].to_numpy(dtype=float)))
        train_t = to_tensors(self.encoder_.transform(fit_rows), device)
        self.support_covariates_ = None
        if self.config.uncertainty.local_variance and task == "rating":
            self.support_covariates_ = self._fit_support_covariates(train_t, fit_rows)
        n_rows = len(fit_rows)
        seed = self.config.seed if self.config.seed is not None else 0
        gen = torch.Generator().manual_seed(seed)
        self.stack_ = StackedModel(self._factory, self._members(), self.config.seed, device)
        stack = self.stack_
        ens = self.config.ensemble
        row_w = train_t.pop("weight", torch.ones(n_rows, device=device))
        member_w = bootstrap_weights(
            row_w, self._members(), ens is not None and ens.bootstrap, gen
        ).to(device)
        make_batch = self._batch_builder(train_t, fit_rows, gen, device)

        def batch_losses(p: dict[str, Tensor], idx: Tensor) -> Tensor:
            idx = idx.to(device)
            return stack.call_weighted("loss", make_batch(idx), member_w[:, idx], params=p)

        holdout = ens.holdout if ens is not None else 0.0
        if holdout > 0:
            if task not in ("click", "rating"):
                raise ValueError(
                    f"[ensemble] holdout = {holdout!r} applies to rating and click models, not "
                    f"to a {task} model; set holdout = 0 and early-stop on the validation split"
                )
            held_out = holdout_mask(n_rows, self._members(), holdout, gen).to(device)
            member_w = member_w * (~held_out)
            validate = self._pointwise_validator(train_t, held_out)
        elif valid is not None and len(valid):
            # validation ranks the validation items: exclude the training rows only
            validate = self._validator(valid, device, self._seen_matrix(train))
        else:
            validate = None
        stack.train(True)
        self.history_ = train_stacked(
            stack.params,
            batch_losses,
            n_rows,
            self.config.training,
            validate=validate,
            generator=gen,
            show_progress=show_progress,
            description=f"{self.method}",
        )
        stack.train(False)
        self.population_picks_ = None
        unc = self.config.uncertainty
        if unc.cold_start == "population":
            learned = (
                frozenset({f"user.{s.user}", f"item.{s.item}"})
                if self.config.model.oov_rate > 0
                else frozenset()
            )
            centre_oov(stack.params, self._fields(), learned)
            self.population_picks_ = draw_known_rows(
                self._fields(), self._members(), unc.population_draws, gen
            )
        self._fit_post_hoc(valid, train)
        hist = self.history_
        self.metrics_ = {
            "train_seconds": hist.seconds,
            "epoch_seconds": float(np.mean(hist.epoch_seconds)) if hist.epoch_seconds else 0.0,
            "epochs": len(hist.train_loss),
            "best_epoch": hist.best_epoch,
        }
        return self

    def _fit_post_hoc(self, valid: pd.DataFrame | None, train: pd.DataFrame) -> None:
        """Fit the ``[uncertainty]`` calibrators on the validation rows (after training);
        ``train`` = the training rows (what validation top-k lists exclude)."""
        uc = self.config.uncertainty
        s = self.schema
        task = self.task
        self.calibrator_ = self.variance_scaling_ = self.conformal_ = None
        self.relevance_calibrator_ = self.local_variance_ = None
        wanted = {
            "calibrator": uc.calibrator != "none",
            "conformal": uc.conformal != "none",
            "variance_scaling": uc.variance_scaling,
            "local_variance": uc.local_variance,
        }
        asked = [k for k, v in wanted.items() if v]
        if asked and task not in ("click", "rating"):
            raise ValueError(
                f"[uncertainty] {asked[0]} applies to rating and click models, not to a {task} "
                "model; remove it from [uncertainty]"
            )
        if task in ("retrieval", "implicit"):
            if valid is not None and len(valid):
                self.relevance_calibrator_ = self._fit_list_calibrator(valid, train)
            return
        if task not in ("click", "rating") or s.label is None:
            return
        if valid is None or not len(valid):
            if asked:
                raise ValueError(
                    f"[uncertainty] {asked[0]} is fitted on validation rows, but there are "
                    "none: set [data] valid_fraction > 0 (or pass valid to fit())"
                )
            return
        if task == "click" and uc.local_variance:
            raise ValueError(
                "[uncertainty] local_variance refits the std of rating predictions; a click "
                "model's probabilities are calibrated by calibrator = 'platt' | 'isotonic' | "
                "'temperature': remove local_variance"
            )
        if task == "click" and asked and uc.calibrator == "none":
            raise ValueError(
                f"[uncertainty] {asked[0]} applies to rating models; for clicks use "
                "calibrator = 'platt' | 'isotonic' | 'temperature'"
            )
        thr = self.config.evaluation.relevance_threshold
        if not asked and (task == "click" or thr is None):
            return  # nothing to fit: skip scoring the validation rows
        y = torch.tensor(valid[s.label].to_numpy(dtype=np.float64), dtype=torch.float32)
        pred, cov = self._raw_and_covariates(
            valid[s.user].to_numpy(), valid[s.item].to_numpy(), valid
        )
        if task == "click":
            self.calibrator_ = _CALIBRATORS[uc.calibrator]().fit(pred.mean, y)
            slope = getattr(self.calibrator_, "slope_", None)
            if slope is not None and slope < 0:
                warnings.warn(
                    f"[uncertainty] calibrator = 'platt' fitted a negative slope ({slope:.3g}) on "
                    f"{len(y)} validation rows with {int(y.sum())} clicks: the model ranks "
                    "them worse than chance, so the calibrated CTRs reverse its order. Use more "
                    "validation rows ([data] valid_fraction) or calibrator = 'isotonic' "
                    "(monotone non-decreasing)",
                    stacklevel=2,
                )
            return
        if uc.calibrator != "none":
            raise ValueError(
                f"[uncertainty] calibrator = {uc.calibrator!r} calibrates click probabilities; "
                "for ratings use conformal = 'normalized' and/or variance_scaling = true"
            )
        needs_std = uc.variance_scaling or uc.local_variance or uc.conformal == "normalized"
        if needs_std and pred.std is None:
            raise ValueError(
                "[uncertainty] variance_scaling / local_variance / conformal = 'normalized' "
                "need a predicted std, but this model is deterministic: set [model] "
                "likelihood = 'gaussian', "
                "add an [ensemble] or set mc_dropout_samples; or use conformal = "
                "'homoscedastic'"
            )
        if uc.variance_scaling:
            self.variance_scaling_ = VarianceScaling().fit(pred, y)
            pred = self.variance_scaling_.transform(pred)
        conformal_rows = np.arange(len(y))  # validation rows the conformal step calibrates on
        if uc.local_variance:
            assert self.support_covariates_ is not None
            variance_rows = conformal_rows
            if uc.conformal != "none":
                # the conformal step must calibrate on rows the variance model never saw
                order = np.random.default_rng(self.config.seed).permutation(len(y))
                variance_rows, conformal_rows = order[: len(y) // 2], order[len(y) // 2 :]
            sel = torch.as_tensor(variance_rows)
            self.local_variance_ = LocalVarianceScaling().fit(
                pred[sel],
                y[sel],
                cov[variance_rows],
                names=self.support_covariates_.names_,
                monotone=self.support_covariates_.monotone_,
            )
            pred = self.local_variance_.transform(pred, cov)
        if uc.conformal != "none":
            floor = 0.0
            if pred.std is not None and bool((pred.std > 0).any()):
                # members that agree exactly (all clipped to a bound) give std 0
                floor = 0.01 * float(pred.std[pred.std > 0].median())
            part = torch.as_tensor(conformal_rows)
            self.conformal_ = SplitConformal(
                normalized=uc.conformal == "normalized", std_floor=floor
            ).fit(pred[part], y[part], confidence_levels=uc.confidence_levels)
        if thr is not None and pred.std is not None:
            raw = relevance_probability(pred, thr)
            relevant = (y >= thr).to(torch.float32)
            if 0 < float(relevant.mean()) < 1:
                self.relevance_calibrator_ = RelevanceCalibrator().fit(raw, relevant)

    @staticmethod
    def _masked(scores: Tensor, exclude: sp.csr_matrix | None) -> Tensor:
        """(U, I) scores with the ``exclude`` entries set to -inf."""
        out = scores.clone()
        if exclude is not None and exclude.nnz:
            ex = exclude.tocoo()
            out[
                torch.as_tensor(ex.row.astype(np.int64)), torch.as_tensor(ex.col.astype(np.int64))
            ] = -math.inf
        return out

    def _masked_score_chunks(
        self, users: list[Any], seen: sp.csr_matrix | None
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """(start, users, (U_c, I) ensemble-mean catalogue scores on the CPU with ``seen``
        items at -inf; default ``seen_``) for chunks of ``users``."""
        n_items = len(self.items_ if self.items_ is not None else [])
        chunk = max(1, min(1024, _PAIRS_PER_PASS * 4 // max(n_items, 1)))
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            yield (
                start,
                part,
                self._masked(self._mean_scores(part).cpu(), self._seen_rows(part, seen)),
            )

    def _list_scores(
        self,
        users: list[Any],
        relevant: list[np.ndarray],
        k: int,
        seen: sp.csr_matrix | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Top-k lists by the ensemble-mean score, ``seen`` items excluded (default
        ``seen_``): (U, k) catalogue rows (-1 padded), (U, k) their scores, (U, k) 0/1 hits
        against ``relevant`` and, with a list calibrator, (U, 1) the log-normaliser of each
        user's softmax over the unseen items (else None)."""
        cal = self.relevance_calibrator_
        tops, scores_out, hits, norms = [], [], [], []
        for start, part, masked in self._masked_score_chunks(users, seen):
            top = ranking.top_k_from_scores(masked, k)
            tops.append(top)
            scores_out.append(np.take_along_axis(masked.numpy(), np.maximum(top, 0), axis=1))
            hits.append(
                np.stack(
                    [np.isin(top[r], relevant[start + r]) & (top[r] >= 0) for r in range(len(part))]
                ).astype(np.float64)
            )
            if isinstance(cal, ListRelevanceCalibrator):
                norms.append(cal.log_normalizer(masked).numpy())
        return (
            np.concatenate(tops),
            np.concatenate(scores_out),
            np.concatenate(hits),
            np.concatenate(norms) if norms else None,
        )

    def _list_confidence_report(
        self,
        top: np.ndarray,
        scores: np.ndarray,
        hits: np.ndarray,
        log_norm: np.ndarray,
        relevant: list[np.ndarray],
        plots_dir: str | Path | None,
    ) -> dict[str, Any]:
        """Calibration of ranking models' relevance confidence on test top-k lists: each
        listed item's P(among the user's next H positives), H = the user's number of test
        positives (the window the test holds), against whether it is one of them: ece, mce,
        brier, and per user the mean expected hits and P(at least one hit)."""
        cal = self.relevance_calibrator_
        assert isinstance(cal, ListRelevanceCalibrator)
        k = top.shape[1]
        listed = top >= 0
        horizon = torch.tensor([[max(len(r), 1)] for r in relevant], dtype=torch.float64)
        p = cal.probability(
            torch.as_tensor(np.where(listed, scores, -math.inf)), torch.as_tensor(log_norm), horizon
        ).numpy()
        p_listed, h_listed = p[listed], hits[listed]
        out: dict[str, Any] = {
            "ece": expected_calibration_error(p_listed, h_listed),
            "ece_equal_width": expected_calibration_error(
                p_listed, h_listed, binning="equal_width"
            ),
            "mce": max_calibration_error(p_listed, h_listed),
            "brier": brier_score(p_listed, h_listed),
            f"expected_hits@{k}": float(p.sum(axis=1).mean()),
            f"hits@{k}": float(hits.sum(axis=1).mean()),
            f"prob_at_least_one@{k}": float(prob_at_least_one(torch.as_tensor(p)).mean()),
            "relevance_temperature": cal.temperature_,
        }
        if plots_dir is not None and self.config.uncertainty.plots:
            path = reliability_diagram(
                p_listed, h_listed, Path(plots_dir) / "relevance_reliability_diagram.png"
            )
            out["plots"] = {"relevance_reliability_diagram": path.name}
        return out

    def _fit_list_calibrator(
        self, valid: pd.DataFrame, train: pd.DataFrame
    ) -> ListRelevanceCalibrator | None:
        """Retrieval / implicit: the softmax temperature of the next-positive model, fitted
        on the validation users' positives with their training items excluded (at most
        2,000 users, and at most ~5e7 scored (user, item) cells); None without any."""
        ev = self.config.evaluation
        users, relevant = self._relevant_lists(valid, ev.relevance_threshold)
        n_items = max(len(self.items_ if self.items_ is not None else []), 1)
        cap = int(min(2000, max(50, 50_000_000 // n_items)))
        if len(users) > cap:
            pick = np.sort(np.random.default_rng(self.config.seed).choice(len(users), cap, False))
            users, relevant = [users[i] for i in pick], [relevant[i] for i in pick]
        if not users:
            return None
        rows, positives = [], []
        for start, part, masked in self._masked_score_chunks(users, self._seen_matrix(train)):
            rows.append(masked)
            positives.append(relevant[start : start + len(part)])
        try:
            return ListRelevanceCalibrator().fit(rows, positives)
        except ValueError:
            return None

    def relevance_confidence(self, prediction: Prediction) -> Tensor | None:
        """(...) probability that each prediction is relevant, or None when undefined.

        Ratings: P(rating >= ``evaluation.relevance_threshold``) under the predicted
        N(mean, std), mapped by the isotonic calibrator fitted on the validation rows when
        there is one. Clicks: the (calibrated) click probability. None for deterministic
        rating models and for retrieval / implicit scores, whose relevance depends on the
        whole catalogue row: :meth:`recommend` fills it from the list calibrator.
        """
        thr = self.config.evaluation.relevance_threshold
        if self.task == "click":
            return prediction.mean
        if self.task != "rating" or thr is None or prediction.std is None:
            return None
        p = relevance_probability(prediction, thr)
        if self.relevance_calibrator_ is not None:
            p = self.relevance_calibrator_.transform(p)
        return p

    def _fit_catalogue(
        self, train: pd.DataFrame, fit_rows: pd.DataFrame, item_features: pd.DataFrame | None
    ) -> None:
        """Known users and items, per-item positive counts, and the users x items matrix of
        seen items (what recommend() excludes: rated / interacted items; clicked ones for
        click logs)."""
        s = self.schema
        items = categorical_keys(train[s.item]).dropna()
        if item_features is not None and s.item in item_features.columns:
            items = pd.concat([items, categorical_keys(item_features[s.item]).dropna()])
        self.items_ = np.asarray(pd.unique(items.to_numpy()), dtype=object)
        self.item_index_ = {k: i for i, k in enumerate(self.items_)}
        fit_items = categorical_keys(fit_rows[s.item]).map(self.item_index_).to_numpy()
        self.item_counts_ = np.bincount(
            fit_items.astype(np.int64), minlength=len(self.items_)
        ).astype(np.float64)
        users = categorical_keys(train[s.user])
        uniq = pd.unique(users.dropna().to_numpy())
        self.user_index_ = {k: i for i, k in enumerate(uniq)}
        self.seen_ = self._seen_matrix(train)

    def _seen_matrix(self, rows: pd.DataFrame) -> sp.csr_matrix:
        """(known users, catalogue items) 0/1 CSR of what ``rows`` count as seen: every
        rated / interacted item, but for click logs only clicked items (an impression
        without a click may be shown again). Users / items outside the catalogue are
        skipped."""
        assert self.user_index_ is not None and self.item_index_ is not None
        s = self.schema
        interacted = rows
        if self.task == "click" and s.label is not None:
            interacted = rows[rows[s.label].to_numpy(dtype=float) > 0]
        r = categorical_keys(interacted[s.user]).map(self.user_index_).to_numpy()
        c = categorical_keys(interacted[s.item]).map(self.item_index_).to_numpy()
        ok = ~(pd.isna(r) | pd.isna(c))
        seen = sp.csr_matrix(
            (
                np.ones(int(ok.sum()), dtype=np.float32),
                (r[ok].astype(np.int64), c[ok].astype(np.int64)),
            ),
            shape=(len(self.user_index_), len(self.item_index_)),
        )
        seen.data[:] = 1.0  # duplicates count once
        return seen

    def _item_batch(self, device: torch.device | None = None) -> Batch:
        """Encoded features of every catalogue item: "item.*" tensors with n_items rows.

        Encoded once per fit / load and cached (per device).
        """
        assert self.encoder_ is not None and self.items_ is not None
        key = str(device)
        if key not in self._item_cache:
            self._item_cache[key] = to_tensors(
                self.encoder_.transform_items(list(self.items_)), device
            )
        return self._item_cache[key]

    def _batch_builder(
        self,
        train_t: Batch,
        fit_rows: pd.DataFrame,
        gen: torch.Generator,
        device: torch.device,
    ) -> Callable[[Tensor], Batch]:
        """Row indices -> training batch (negatives and log-Q terms added as the task needs)."""
        task = self.task
        if task in ("click", "rating"):
            rate = self.config.model.oov_rate
            ids = [
                k for k in (f"user.{self.schema.user}", f"item.{self.schema.item}") if k in train_t
            ]
            if rate == 0 or not ids:
                return lambda idx: _gather(train_t, idx)

            def pointwise_batch(idx: Tensor) -> Batch:
                batch = _gather(train_t, idx)
                for key in ids:  # cold-start practice: ids -> OOV (index 0) at random
                    drop = (torch.rand(idx.numel(), generator=gen) < rate).to(device)
                    batch[key] = batch[key].masked_fill(drop, 0)
                return batch

            return pointwise_batch
        assert self.item_counts_ is not None and self.item_index_ is not None
        m = self.config.model
        items = self._item_batch(device)
        n_items = len(self.item_counts_)
        row_item = torch.tensor(
            categorical_keys(fit_rows[self.schema.item])
            .map(self.item_index_)
            .to_numpy(dtype=np.int64),
            device=device,
        )
        if task == "retrieval":
            # expected count of item i among the B in-batch candidates: B * count_i / n
            p_item = torch.as_tensor(
                self.item_counts_ / self.item_counts_.sum(), dtype=torch.float32, device=device
            )
            all_rows = torch.arange(n_items, device=device)

            def retrieval_batch(idx: Tensor) -> Batch:
                batch = _gather(train_t, idx)
                batch["item.logq"] = torch.log(p_item[row_item[idx]] * idx.numel())
                if m.full_softmax:
                    batch.update(_gather(items, all_rows, "neg."))
                    batch["neg.item.logq"] = torch.zeros(n_items, device=device)
                elif m.negatives > 0:
                    neg = torch.randint(0, n_items, (m.negatives,), generator=gen).to(device)
                    batch.update(_gather(items, neg, "neg."))
                    batch["neg.item.logq"] = torch.full(
                        (m.negatives,), math.log(m.negatives / n_items), device=device
                    )
                return batch

            return retrieval_batch

        # implicit: K uniform negatives per positive, resampled (3 rounds) when already seen
        assert self.seen_ is not None and self.user_index_ is not None
        seen = self.seen_.tocoo()
        seen_keys = torch.as_tensor(
            np.sort(seen.row.astype(np.int64) * n_items + seen.col.astype(np.int64)),
            device=device,
        )
        row_user = torch.tensor(
            categorical_keys(fit_rows[self.schema.user])
            .map(self.user_index_)
            .to_numpy(dtype=np.int64),
            device=device,
        )
        k = m.negatives

        def is_seen(users: Tensor, cand: Tensor) -> Tensor:
            key = users.unsqueeze(1) * n_items + cand
            pos = torch.searchsorted(seen_keys, key).clamp_max(seen_keys.numel() - 1)
            return seen_keys[pos] == key

        def implicit_batch(idx: Tensor) -> Batch:
            batch = _gather(train_t, idx)
            users = row_user[idx]
            neg = torch.randint(0, n_items, (idx.numel(), k), generator=gen).to(device)
            for _ in range(3):
                bad = is_seen(users, neg)
                if not bool(bad.any()):
                    break
                fresh = torch.randint(0, n_items, neg.shape, generator=gen).to(device)
                neg = torch.where(bad, fresh, neg)
            batch.update(_gather(items, neg, "neg."))
            return batch

        return implicit_batch

    def _pointwise_validator(
        self, rows: Batch, mask: Tensor | None
    ) -> Callable[[dict[str, Tensor]], Tensor]:
        """params -> (M,) validation RMSE (ratings) or log-loss (clicks) on encoded ``rows``.

        Clicks with a mixture head ("mdn" / "ddn"): the impression-weighted squared error of
        each member's predicted mean CTR against the label, ``sum n (mean - ctr)^2 / sum n``
        (n = ``rows["impressions"]`` when present, else 1 per row).

        Args:
            rows: encoded rows with "label" (n,) and optionally "impressions" (n,).
            mask: (M, n) bool with the same number of True per member: the rows each member
                is scored on (its own holdout), or None to score every member on all rows.
        """
        assert self.stack_ is not None
        stack = self.stack_
        task = self.task
        head = self.head
        inputs = {k: v for k, v in rows.items() if k != "weight"}
        per_member = mask is not None
        if mask is not None:
            # member m's held-out rows, gathered into a leading M dimension
            idx = torch.stack([torch.nonzero(mask[m]).squeeze(1) for m in range(len(mask))])
            inputs = {k: v[idx] for k, v in inputs.items()}
        labels = inputs.pop("label")
        mixture = isinstance(head, _MIXTURE_HEADS)
        row_w = inputs.get("impressions", torch.ones_like(labels))  # (n,) or (M, n)

        def pointwise(p: dict[str, Tensor]) -> Tensor:
            stack.train(False)
            try:
                with torch.no_grad():
                    out = stack.call("forward", inputs, params=p, per_member=per_member)
            finally:
                stack.train(True)
            if task == "rating":
                means = torch.stack([head.mean(out[m]) for m in range(out.shape[0])])
                return (means - labels).square().mean(dim=-1).sqrt()
            if mixture:
                means = torch.stack([head.mean(out[m]) for m in range(out.shape[0])])
                sq = (means - labels).square() * row_w
                return sq.sum(dim=-1) / row_w.sum(dim=-1).clamp_min(1e-12)
            return torch.nn.functional.binary_cross_entropy_with_logits(
                out, labels.expand_as(out), reduction="none"
            ).mean(dim=-1)

        return pointwise

    def _validator(
        self, valid: pd.DataFrame, device: torch.device, train_seen: sp.csr_matrix
    ) -> Callable[[dict[str, Tensor]], Tensor]:
        """params -> (M,) validation metric, lower is better."""
        assert self.encoder_ is not None and self.stack_ is not None
        stack = self.stack_
        task = self.task
        if task in ("click", "rating"):
            valid_t = to_tensors(self.encoder_.transform(valid), device)
            valid_t.pop("weight", None)
            return self._pointwise_validator(valid_t, None)

        # ranking tasks: NDCG@k / recall@k / top-k accuracy on the validation rows
        rows = self._positives(valid)
        users, relevant = self._relevant_lists(rows, threshold=None)
        metric = self.config.training.validation_metric or f"ndcg@{self.config.evaluation.k}"
        if metric in ("rmse", "log_loss"):
            raise ValueError(
                f"[training] validation_metric = {metric!r} does not apply to a {task} model; "
                "use 'ndcg@K', 'recall@K' or 'top_k_accuracy@K'"
            )
        name, _, k_text = metric.partition("@")
        k = int(k_text)
        assert self.user_index_ is not None and self.item_index_ is not None
        v_users = categorical_keys(rows[self.schema.user]).to_numpy()
        v_items = categorical_keys(rows[self.schema.item]).map(self.item_index_).to_numpy()
        in_cat = ~pd.isna(v_items)

        def ranking_metric(p: dict[str, Tensor]) -> Tensor:
            stack.train(False)
            try:
                if name == "top_k_accuracy":
                    return -self._top_k_accuracy_members(v_users[in_cat], v_items[in_cat], k, p)
                scores = self._member_scores(users, params=p)  # (M, U, I)
            finally:
                stack.train(True)
            exclude = self._seen_rows(users, train_seen)
            out = []
            for m in range(scores.shape[0]):
                top = ranking.top_k_from_scores(scores[m], k, exclude)
                out.append(-ranking.ranking_metrics(top, relevant, k)[f"{name}@{k}"])
            return torch.tensor(out)

        return ranking_metric

    # ------------------------------------------------------------------ scoring
    def _encode_users(self, user_ids: Sequence[Any], device: torch.device | None = None) -> Batch:
        assert self.encoder_ is not None
        return to_tensors(self.encoder_.transform_users(list(user_ids)), device)

    def _encode_context(
        self, n: int, context: pd.DataFrame | Mapping[str, Any] | None
    ) -> pd.DataFrame:
        s = self.schema
        rows = pd.DataFrame(index=range(n))
        for f in s.context:
            if isinstance(context, pd.DataFrame):
                rows[f.name] = context[f.name].to_numpy()
            elif context is not None and f.name in context:
                rows[f.name] = context[f.name]
            else:
                rows[f.name] = None  # missing context: OOV / missing indicator
        return rows

    def _mean_scores(
        self,
        user_ids: Sequence[Any],
        items: Sequence[Any] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """(n_users, n_items) ensemble-mean scores, what recommend() and evaluate() rank by.

        For factorised models (no context) this is ONE matrix product of the members'
        concatenated factors, [u_1 .. u_M] . [v_1 .. v_M] / M = the mean location, mapped
        through the head (exact for linear heads; for clipped ratings and sigmoid CTRs the
        head of the mean location, which ranks like the mean of the heads up to members
        straddling a bound). Dropout is off: for a dot product of inverted-dropout vectors
        the mean over dropout masks is the dropout-free score, so MC dropout needs no
        sampling here. Other models average the members' outputs.
        """
        encoder, stack = self._require_fit()
        model = stack.model
        if not (hasattr(model, "user_factors") and getattr(model, "context", None) is None):
            return self._member_scores(user_ids, items, context).mean(dim=0)
        device = stack.device
        ub = self._encode_users(user_ids, device)
        ib = (
            self._item_batch(device)
            if items is None
            else to_tensors(encoder.transform_items(list(items)), device)
        )
        with torch.no_grad():
            u = stack.call("user_factors", ub)  # (M, U, d')
            v = stack.call("item_factors", ib)  # (M, I, d')
            m = u.shape[0]
            u_cat = u.permute(1, 0, 2).reshape(u.shape[1], -1)  # (U, M d')
            v_cat = v.permute(1, 0, 2).reshape(v.shape[1], -1)  # (I, M d')
            loc = (u_cat @ v_cat.T) / m
            return _mean_of_location(self.head, loc)

    def _member_scores(
        self,
        user_ids: Sequence[Any],
        items: Sequence[Any] | None = None,
        context: Mapping[str, Any] | None = None,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """(M, n_users, n_items) per-member predicted means (ratings, CTRs or scores).

        ``items`` defaults to the catalogue. Users / items unknown at fit time use the OOV
        row plus their features.
        """
        encoder, stack = self._require_fit()
        device = stack.device
        ub = self._encode_users(user_ids, device)
        ib = (
            self._item_batch(device)
            if items is None
            else to_tensors(encoder.transform_items(list(items)), device)
        )
        n_u = len(user_ids)
        n_i = len(next(iter(ib.values())))
        with torch.no_grad():
            head = self.head
            model = stack.model
            if hasattr(model, "user_factors") and getattr(model, "context", None) is None:
                u = stack.call("user_factors", ub, params=params)  # (M, U, d')
                v = stack.call("item_factors", ib, params=params)  # (M, I, d')
                loc = torch.einsum("mud,mid->mui", u, v)
                return _mean_of_location(head, loc)
            ctx: Batch = {}
            if self.schema.context:
                ctx = {
                    f"context.{k}": v
                    for k, v in encoder.context.transform(self._encode_context(1, context)).items()
                }
                ctx = to_tensors(ctx, device)
            chunk = max(1, _PAIRS_PER_PASS // max(n_i, 1))
            parts = []
            for start in range(0, n_u, chunk):
                c = min(chunk, n_u - start)
                pair: Batch = {
                    k: v[start : start + c].repeat_interleave(n_i, dim=0) for k, v in ub.items()
                }
                pair.update({k: v.repeat((c,) + (1,) * (v.ndim - 1)) for k, v in ib.items()})
                pair.update({k: v.expand(c * n_i, *v.shape[1:]) for k, v in ctx.items()})
                out = stack.call("forward", pair, params=params)
                means = torch.stack([head.mean(out[m]) for m in range(out.shape[0])])
                parts.append(means.reshape(-1, c, n_i))
            return torch.cat(parts, dim=1)

    def _pair_member_scores(
        self,
        user_ids: Sequence[Any],
        item_ids: np.ndarray,
        context: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """(M, n) per-member scores of n (user, item) pairs, as :meth:`_member_scores` gives
        them, without scoring the rest of the catalogue.

        Factorised models gather each pair's member factors (n dot products per member);
        other models score the pairs' users against the pairs' distinct items.
        """
        encoder, stack = self._require_fit()
        # missing ids (None / NaN) are a key of their own: the encoder sends them to OOV
        u_pos, u_keys = pd.factorize(pd.Series(list(user_ids), dtype=object), use_na_sentinel=False)
        i_pos, i_keys = pd.factorize(pd.Series(list(item_ids), dtype=object), use_na_sentinel=False)
        model = stack.model
        if hasattr(model, "user_factors") and getattr(model, "context", None) is None:
            device = stack.device
            with torch.no_grad():
                u = stack.call("user_factors", self._encode_users(list(u_keys), device))
                v = stack.call(
                    "item_factors", to_tensors(encoder.transform_items(list(i_keys)), device)
                )
                loc = (u[:, torch.as_tensor(u_pos)] * v[:, torch.as_tensor(i_pos)]).sum(-1)
                return _mean_of_location(self.head, loc)
        scores = self._member_scores(list(u_keys), list(i_keys), context)  # (M, U', I')
        return scores[:, torch.as_tensor(u_pos), torch.as_tensor(i_pos)]

    def _seen_rows(
        self, user_ids: Sequence[Any], seen: sp.csr_matrix | None = None
    ) -> sp.csr_matrix:
        """(n_users, n_items) CSR of each user's seen items (empty row: unknown user).

        Args:
            user_ids: users, in output row order.
            seen: the (known users, items) matrix to read; default ``seen_`` (training and
                validation history).
        """
        assert self.seen_ is not None and self.user_index_ is not None
        seen = self.seen_ if seen is None else seen
        n = seen.shape[0]
        idx = np.fromiter(
            (self.user_index_.get(k, n) for k in categorical_keys(list(user_ids))),
            dtype=np.int64,
            count=len(user_ids),
        )
        padded = sp.vstack([seen, sp.csr_matrix((1, seen.shape[1]))], format="csr")
        return padded[idx]

    def known_users(self, user_ids: Sequence[Any]) -> np.ndarray:
        """(n,) bool: which users had training interactions (False = cold start)."""
        self._require_fit()
        assert self.user_index_ is not None
        return np.array([k in self.user_index_ for k in categorical_keys(list(user_ids))])

    def _prediction(
        self,
        member_means: Tensor,
        member_std: Tensor | None,
        population_var: Tensor | None = None,
    ) -> Prediction:
        head = self.head
        support = head.support if head is not None else None
        if member_means.shape[0] >= 2:
            return Prediction.from_members(
                member_means,
                member_std,
                method=self.method,
                support=support,
                population_var=population_var,
            )
        std = member_std[0] if member_std is not None else None
        return Prediction(
            mean=member_means[0],
            std=std,
            aleatoric_std=std,
            epistemic_std=None,
            method=self.method,
            support=support,
        )

    def predict(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None = None,
        batch_size: int = 65536,
    ) -> Prediction:
        """Predictions with uncertainty for (user, item) pairs.

        Args:
            user_ids: (n,) user ids (unknown ids go through the OOV path).
            item_ids: (n,) item ids, paired with ``user_ids``.
            context: context values: a DataFrame with n rows, a mapping of column -> scalar
                applied to every pair (e.g. {"position": 1}), or None (missing context).
            batch_size: pairs per forward pass.

        Returns:
            Prediction of the rating / click probability / retrieval score, mean (n,). With
            an ensemble, std combines the members' spread (epistemic) and, for Gaussian
            heads, the predicted rating noise (aleatoric); samples (M, n) are the members'
            means. A single point model has std None. For clicks, std is uncertainty about the
            CTR itself (Bernoulli click noise is not added). Mixture likelihoods ("mdn" /
            "ddn") return the pooled clean-CTR mixture of :meth:`predict_mixture` (a
            :class:`MixturePrediction`: its quantiles and intervals come from the mixture
            CDF, and evaluate() scores it by the mixture's CRPS), the same in recommend(),
            evaluate() and serving.
        """
        if isinstance(self.head, _MIXTURE_HEADS):
            # no post-hoc step applies to a mixture (probability calibrators are refused)
            return self.predict_mixture(user_ids, item_ids, context, batch_size=batch_size)
        return self._post_hoc(*self._raw_and_covariates(user_ids, item_ids, context, batch_size))

    def predict_mixture(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None = None,
        impressions: Sequence[float] | np.ndarray | Tensor | None = None,
        batch_size: int = 65536,
    ) -> MixturePrediction:
        """The predictive CTR mixture of a "mdn" / "ddn" model for (user, item) pairs.

        The R members' (ensemble members, times MC-dropout samples or, with ``cold_start =
        "population"``, times the population draws, every row K-fold) K-component mixtures are
        pooled into one mixture of R * K components, member r's weights divided by R (member
        r's components at positions r K .. r K + K - 1). Its mean is the average of the
        members' (unclipped) means and its variance the average of their mixture variances
        plus the variance of their means (law of total variance); ``epistemic_std`` is the
        std of the members' means (None for one member). :meth:`predict` returns this
        mixture for these likelihoods.

        Args:
            user_ids: (n,) user ids (unknown ids go through the OOV path).
            item_ids: (n,) item ids, paired with ``user_ids``.
            context: context values as in :meth:`predict`, or None.
            impressions: (n,) impression counts n >= 1 at which the CTR will be measured,
                for a "ddn" model only: fills ``measurement_std`` = sqrt(m (1 - m) / n), the
                std of an observed CTR over n impressions around the pooled mean m (the DDN
                head's measurement noise; not part of std, quantiles or samples). None
                leaves ``measurement_std`` None.
            batch_size: pairs per forward pass.

        Returns:
            MixturePrediction with weights, means, stds (n, R K) (CTR units), mean / std
            (n,), support (0, 1).

        Raises:
            ValueError: the likelihood is not "mdn" / "ddn", the ids do not pair up, or
                ``impressions`` is given for a non-"ddn" model or is not (n,) counts >= 1.
        """
        self._require_fit()
        head = self.head
        likelihood = self.config.model.likelihood
        if not isinstance(head, _MIXTURE_HEADS):
            raise ValueError(
                f"predict_mixture needs a mixture likelihood, but [model] likelihood = "
                f"{likelihood!r} for a {self.task} model of type {self.config.model.type!r}; "
                "train with [model] type = 'dcn' and likelihood = 'mdn' or 'ddn' on a click / "
                "CTR label, or use predict()"
            )
        n = len(user_ids)
        encoded = self._pair_batches(user_ids, item_ids, context, batch_size)
        n_imp: Tensor | None = None
        if impressions is not None:
            if not isinstance(head, DeepDensityHead):
                raise ValueError(
                    f"impressions apply to [model] likelihood = 'ddn' (measurement noise of an "
                    f"observed CTR), not to {likelihood!r}; pass impressions=None"
                )
            n_imp = torch.as_tensor(np.asarray(impressions, dtype=np.float32))
            if n_imp.shape != (n,):
                raise ValueError(
                    f"impressions must have shape ({n},), one count per pair, got "
                    f"{tuple(n_imp.shape)}"
                )
            if n and not bool((n_imp >= 1).all()):
                raise ValueError(
                    "impressions must be counts >= 1 (the CTR is measured over n impressions), "
                    f"got a minimum of {float(n_imp.min())}"
                )
        parts: list[tuple[Tensor, Tensor, Tensor]] = []
        for batch in encoded:
            if self.population_picks_:  # R = M * draws: known rows repeat each member
                raw = self._population_outputs(batch)
                raw = raw.reshape(raw.shape[0] * raw.shape[1], *raw.shape[2:])
            else:
                raw = self._outputs(batch)
            parts.append(head.mixture_components(raw.cpu()))  # each (R, B, K)
        w, mu, s = (torch.cat(p, dim=1) for p in zip(*parts, strict=True))
        pred = MixturePrediction.from_members(
            w,
            mu,
            s,
            method=f"{self.method}, {likelihood}(components={w.shape[-1]})",
            support=head.support,
        )
        if n_imp is None:
            return pred
        assert isinstance(head, DeepDensityHead)
        # the DDN head's noise variance m (1 - m) / n at the pooled mixture mean m
        return replace(pred, measurement_std=head.noise_var(pred.weights, pred.means, n_imp).sqrt())

    def _post_hoc(self, pred: Prediction, covariates: np.ndarray | None = None) -> Prediction:
        """Apply the calibrators fitted on the validation rows (probability calibration for
        clicks; variance scaling or the local variance model, then conformal intervals, for
        ratings); ``covariates`` = :meth:`_covariates` of the same rows."""
        if self.calibrator_ is not None:
            pred = self.calibrator_.calibrate(pred)
        if self.variance_scaling_ is not None and pred.std is not None:
            pred = self.variance_scaling_.transform(pred)
        if self.local_variance_ is not None and pred.std is not None:
            pred = self.local_variance_.transform(pred, covariates)
        if self.conformal_ is not None:
            pred = self.conformal_.conformalize(pred)
        return pred

    def _predict_raw(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None = None,
        batch_size: int = 65536,
    ) -> Prediction:
        """:meth:`predict` before the post-hoc calibrators."""
        return self._raw_and_covariates(user_ids, item_ids, context, batch_size)[0]

    def _covariates(self, batch: Batch) -> np.ndarray | None:
        """(n, p) covariates of the local variance model for an encoded batch (None when
        ``[uncertainty] local_variance`` is off)."""
        if self.support_covariates_ is None:
            return None
        return self.support_covariates_(batch)

    def _fit_support_covariates(self, encoded: Batch, rows: pd.DataFrame) -> SupportCovariates:
        """Per-id training support (rows, label spread) of the user and item id fields, from
        the training ``rows`` and their ``encoded`` batch."""
        assert self.encoder_ is not None and self.schema.label is not None
        s = self.schema
        sizes = {key: size for key, kind, size in self.encoder_.fields() if kind == "index"}
        keys = [k for k in (f"user.{s.user}", f"item.{s.item}") if k in sizes]
        return SupportCovariates().fit(
            {k: encoded[k] for k in keys},
            rows[s.label].to_numpy(dtype=np.float64),
            {k: sizes[k] for k in keys},
        )

    def _raw_and_covariates(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None = None,
        batch_size: int = 65536,
    ) -> tuple[Prediction, np.ndarray | None]:
        """:meth:`_predict_raw` and the :meth:`_covariates` of the same pairs."""
        means, stds, pops, covs = [], [], [], []
        for batch in self._pair_batches(user_ids, item_ids, context, batch_size):
            cov = self._covariates(batch)
            if cov is not None:
                covs.append(cov)
            m, sd, pop = self._member_outputs(batch)
            means.append(m)
            pops.append(torch.zeros(m.shape[1], dtype=m.dtype) if pop is None else pop.cpu())
            if sd is not None:
                stds.append(sd)
        mean = torch.cat(means, dim=1).cpu()
        std = torch.cat(stds, dim=1).cpu() if stds else None
        population = torch.cat(pops) if self.population_picks_ else None
        return self._prediction(mean, std, population), (np.concatenate(covs) if covs else None)

    def _pair_batches(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None,
        batch_size: int,
    ) -> Iterator[Batch]:
        """Encoded batches of at most ``batch_size`` (user, item) pairs, in order (one empty
        batch for no pairs); the ids are checked to pair up before any batch is made."""
        if len(user_ids) != len(item_ids):
            raise ValueError(
                f"user_ids and item_ids must pair up: got {len(user_ids)} and {len(item_ids)}"
            )

        def batches() -> Iterator[Batch]:
            for start in range(0, max(len(user_ids), 1), batch_size):
                stop = start + batch_size
                ctx = context.iloc[start:stop] if isinstance(context, pd.DataFrame) else context
                yield self.encode_pairs(user_ids[start:stop], item_ids[start:stop], ctx)

        return batches()

    def encode_pairs(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: pd.DataFrame | Mapping[str, Any] | None = None,
    ) -> Batch:
        """Model inputs for (user, item) pairs: the encoded "user.*", "item.*" and
        "context.*" tensors (B, ...) on the model's device, B = len(user_ids)."""
        encoder, stack = self._require_fit()
        s = self.schema
        rows = self._encode_context(len(user_ids), context)
        rows[s.user] = list(user_ids)
        rows[s.item] = list(item_ids)
        batch = to_tensors(encoder.transform(rows), stack.device)
        batch.pop("label", None)
        batch.pop("weight", None)
        return batch

    def _head_moments(self, out: Tensor) -> tuple[Tensor, Tensor | None]:
        """(R, B) means and (R, B) head stds (None without a noise head) of raw (R, B, ...)
        outputs. Mixture heads report the std of each member's mixture (for "ddn" the
        clean-CTR mixture; the measurement noise of an observed CTR is not added)."""
        head = self.head
        if head is None:
            return out, None
        means = torch.stack([head.mean(out[r]) for r in range(out.shape[0])])
        if isinstance(head, (GaussianHead, *_MIXTURE_HEADS)):
            return means, torch.stack([head.aleatoric_std(out[r]) for r in range(out.shape[0])])
        return means, None

    def _population_outputs(self, batch: Batch) -> Tensor:
        """(M, K, B, ...) raw outputs of every row under each member's K population draws
        (``[uncertainty] cold_start = "population"``; known values are left as they are)."""
        assert self.stack_ is not None and self.population_picks_ is not None
        pm = population_batch(batch, self.population_picks_)
        with torch.no_grad():
            raw = self.stack_.call("forward", pm, per_member=True)  # (M, K B, ...)
        m, k = next(iter(self.population_picks_.values())).shape
        return raw.reshape(m, k, -1, *raw.shape[2:])

    def _member_outputs(self, batch: Batch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(R, B) member / sample means, (R, B) head stds (None without a noise head) and
        (B,) population variance (None when no row has a population-drawn OOV value).

        With ``cold_start = "population"`` a row holding an OOV value gets, per member, the
        average of its K draws' means (and the root mean square of their head stds), and
        the population variance is the variance over the draws averaged over the members,
        so that adding it to the variance of the member means gives the variance over all
        M * K draws (law of total variance). Other rows cost one pass as usual.
        """
        means, stds = self._head_moments(self._outputs(batch))
        picks = self.population_picks_
        if not picks:
            return means, stds, None
        rows = oov_rows(batch, picks)
        if not bool(rows.any()):
            return means, stds, None
        idx = torch.nonzero(rows).squeeze(1)
        k = next(iter(picks.values())).shape[1]
        step = max(1, _POPULATION_ROWS // k)  # at most ~_POPULATION_ROWS rows per pass
        parts_m, parts_s = [], []
        for start in range(0, idx.numel(), step):
            sel = idx[start : start + step]
            raw = self._population_outputs({key: v[sel] for key, v in batch.items()})
            m, _, b = raw.shape[:3]
            pm, ps = self._head_moments(raw.reshape(m, k * b, *raw.shape[3:]))
            parts_m.append(pm.reshape(m, k, b))
            if ps is not None:
                parts_s.append(ps.reshape(m, k, b))
        d_means = torch.cat(parts_m, dim=2)
        d_stds = torch.cat(parts_s, dim=2) if parts_s else None
        member_mean = d_means.mean(dim=1)
        means = means.clone()
        means[:, rows] = member_mean
        population = torch.zeros(means.shape[1], dtype=means.dtype, device=means.device)
        within = (d_means.square().mean(dim=1) - member_mean.square()).clamp_min(0.0)
        population[rows] = within.mean(dim=0)
        if stds is not None and d_stds is not None:
            stds = stds.clone()
            stds[:, rows] = d_stds.square().mean(dim=1).sqrt()
        return means, stds, population

    def _prediction_from_batch(self, batch: Batch) -> Prediction:
        """Raw (pre-calibration) Prediction for an encoded batch."""
        mean, std, population = self._member_outputs(batch)
        return self._prediction(
            mean.cpu(),
            None if std is None else std.cpu(),
            None if population is None else population.cpu(),
        )

    def recommend(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        k: int = 10,
        *,
        items: Sequence[Any] | np.ndarray | None = None,
        exclude_seen: bool = True,
        context: Mapping[str, Any] | None = None,
        confidence_level: float = 0.9,
        batch_users: int = 256,
        progress: Callable[[int], None] | None = None,
        horizon: float | None = None,
    ) -> pd.DataFrame:
        """Top-k items per user, ranked by predicted mean, with std and interval.

        Args:
            user_ids: users to recommend for (unknown users get cold-start recommendations
                from the OOV row and their features).
            k: list length per user (>= 1).
            items: candidate items (default: every item known at fit time).
            exclude_seen: drop items the user interacted with in training.
            context: context applied to every candidate (e.g. {"position": 1}).
            confidence_level: level of the [low, high] interval.
            batch_users: users scored per pass.
            progress: called with the number of users done after each pass.
            horizon: retrieval / implicit models: the relevance confidence is P(the item is
                among the user's next ``horizon`` positive interactions, under a softmax over
                the user's unseen candidates: the catalogue, or ``items`` when given); None =
                the mean number of validation positives per user (the calibrator's
                ``horizon_``).

        Returns:
            DataFrame with columns user, item, rank (1-based), score (the ranking score:
            the ensemble-mean score of the model before calibration, MC dropout and
            population cold start; ranks follow it), mean (the calibrated predictive mean,
            as :meth:`predict` gives it), std, low, high (NaN when the model has no
            uncertainty; conformal when ``[uncertainty] conformal`` is set) and confidence (the
            probability that the item is relevant, see :meth:`relevance_confidence`; NaN
            when undefined), one row per recommended item.
        """
        self._require_fit()
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        assert self.items_ is not None and self.item_index_ is not None
        cand = (
            self.items_
            if items is None
            else np.asarray(categorical_keys(list(items)).to_numpy(), dtype=object)
        )
        users = list(user_ids)
        frames = []
        cols = ["user", "item", "rank", "score", "mean", "std", "low", "high", "confidence"]
        for start in range(0, len(users), batch_users):
            chunk = users[start : start + batch_users]
            pointwise = self.task in ("click", "rating")
            cand_arg = None if items is None else cand
            # ranked by the ensemble mean: one product of the concatenated member factors
            mean_scores = self._mean_scores(chunk, cand_arg, context)  # (U, I)
            exclude = None
            if exclude_seen:
                seen = self._seen_rows(chunk)
                if items is not None:
                    cols_idx = [self.item_index_.get(c, -1) for c in cand]
                    keep = np.array([c >= 0 for c in cols_idx])
                    mapped = sp.lil_matrix((len(chunk), len(cand)), dtype=np.float32)
                    sub = seen[:, [c for c in cols_idx if c >= 0]]
                    mapped[:, np.flatnonzero(keep)] = sub
                    seen = sp.csr_matrix(mapped)
                exclude = seen
            top = ranking.top_k_from_scores(mean_scores, k, exclude)  # (U, k), -1 padded
            rows = [(r, top[r][top[r] >= 0]) for r in range(len(chunk))]
            rows = [(r, sel) for r, sel in rows if sel.size]
            if not rows:
                continue
            ranked = torch.cat([mean_scores[r, torch.as_tensor(sel)] for r, sel in rows])
            if pointwise:
                # ranked by the mean (one matrix product); the full uncertainty model (head
                # noise, members, MC dropout, calibration) only for the k chosen items
                pair_users = [chunk[r] for r, sel in rows for _ in range(sel.size)]
                pair_items = np.concatenate([cand[sel] for _, sel in rows])
                pred = self.predict(pair_users, pair_items, context)
            else:
                # the members' scores only for the k chosen items of each user
                pred = self._prediction(
                    self._pair_member_scores(
                        [chunk[r] for r, sel in rows for _ in range(sel.size)],
                        np.concatenate([cand[sel] for _, sel in rows]),
                        context,
                    ),
                    None,
                )
            has_std = pred.std is not None
            # a homoscedastic conformal interval needs no std
            has_interval = has_std or isinstance(pred, ConformalPrediction)
            iv = pred.interval(confidence_level) if has_interval else None
            mean = pred.mean.cpu().numpy()
            conf = self.relevance_confidence(pred)
            cal = self.relevance_calibrator_
            if not pointwise and isinstance(cal, ListRelevanceCalibrator):
                # P(among the next H positives) under the softmax over each user's candidates
                mean_cpu = mean_scores.cpu()
                norm = cal.log_normalizer(self._masked(mean_cpu, exclude))
                conf = torch.cat(
                    [
                        cal.probability(
                            mean_cpu[r, torch.as_tensor(sel)].unsqueeze(0), norm[r : r + 1], horizon
                        )[0]
                        for r, sel in rows
                    ]
                )
            frames.append(
                pd.DataFrame(
                    {
                        "user": [chunk[r] for r, sel in rows for _ in range(sel.size)],
                        "item": np.concatenate([cand[sel] for _, sel in rows]),
                        "rank": np.concatenate([np.arange(1, sel.size + 1) for _, sel in rows]),
                        "score": ranked.cpu().numpy(),
                        "mean": mean,
                        "std": pred.std.cpu().numpy() if has_std else np.nan,
                        "low": iv.low.cpu().numpy() if iv is not None else np.nan,
                        "high": iv.high.cpu().numpy() if iv is not None else np.nan,
                        "confidence": conf.cpu().numpy() if conf is not None else np.nan,
                    }
                )
            )
            if progress is not None:
                progress(len(chunk))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)

    def oov_std_ratios(self, rows: pd.DataFrame, max_rows: int = 5000) -> dict[str, float]:
        """Feature-level cold-start analysis (as in the deep density network paper).

        For each categorical user / item / context field (ids included), the median over rows
        of std(prediction with that field set to OOV) / std(prediction with its real value),
        over rows whose value is known (a categorical bag becomes a single OOV token, a
        hashed text bag an empty bag: see ``InteractionEncoder.unknown_token``). A ratio
        above 1 means the model is less certain when it does not know that feature.

        Args:
            rows: interaction rows (user, item and context columns).
            max_rows: rows used (the first ones; the analysis is a median).

        Returns:
            {field key, e.g. "user.user_id": median ratio}; empty for deterministic models.
        """
        return {
            key: float(np.median(cold / real))
            for key, (real, cold) in self._oov_stds(rows, max_rows).items()
        }

    def _oov_stds(
        self, rows: pd.DataFrame, max_rows: int = 5000
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per-row predictive stds behind :meth:`oov_std_ratios` (one prediction pass).

        Args:
            rows: interaction rows (user, item and context columns).
            max_rows: rows used (the first ones).

        Returns:
            {field key, e.g. "user.user_id": (real, cold)} for each categorical user / item /
            context field with at least one known value in the rows used: ``real`` is the (n_known,)
            std with the row's real value (clamped at 1e-12 so that ``cold / real`` is
            defined), ``cold`` the (n_known,) std with that field set to OOV, both in the
            target's units, over the rows whose value is known. Empty for deterministic
            models.
        """
        encoder, _stack = self._require_fit()
        part = rows.iloc[:max_rows]
        batch = to_tensors(encoder.transform(part), _stack.device)
        batch.pop("label", None)
        batch.pop("weight", None)
        base = self._post_hoc(self._prediction_from_batch(batch), self._covariates(batch))
        if base.std is None:
            return {}
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for key, kind, _size in encoder.fields():
            if kind == "numeric":
                continue
            unknown = encoder.unknown_token(key)
            # known: an index other than OOV; a bag holding at least one real value
            known = batch[key] != 0 if kind == "index" else (batch[key] > unknown).any(-1)
            if not bool(known.any()):
                continue
            cold = dict(batch)
            cold[key] = torch.zeros_like(batch[key])  # index: OOV row 0; text bag: empty
            if kind != "index" and unknown:  # categorical bags: one OOV token, no padding
                cold[key][..., 0] = unknown
            std_cold = self._post_hoc(self._prediction_from_batch(cold), self._covariates(cold)).std
            assert std_cold is not None
            out[key] = (
                base.std[known].clamp_min(1e-12).cpu().numpy(),
                std_cold[known].cpu().numpy(),
            )
        return out

    @staticmethod
    def list_confidence(recommendations: pd.DataFrame) -> pd.DataFrame:
        """Per user, what a top-k list is likely to deliver.

        Args:
            recommendations: the output of :meth:`recommend` (needs user and confidence).

        Returns:
            DataFrame with user, expected_hits (sum of the items' relevance probabilities)
            and prob_at_least_one (1 - prod(1 - p), treating items as independent); NaN
            when the model has no relevance confidence.
        """
        rows = []
        for user, g in recommendations.groupby("user", sort=False):
            p = torch.tensor(g["confidence"].to_numpy(dtype=np.float64))
            if p.numel() == 0 or bool(torch.isnan(p).any()):
                rows.append((user, float("nan"), float("nan")))
                continue
            rows.append((user, float(expected_hits(p)), float(prob_at_least_one(p))))
        return pd.DataFrame(rows, columns=["user", "expected_hits", "prob_at_least_one"])

    # ------------------------------------------------------------------ evaluation
    def _relevant_lists(
        self, test: pd.DataFrame, threshold: float | None
    ) -> tuple[list[Any], list[np.ndarray]]:
        """Test users (first-seen order) and each one's relevant catalogue rows."""
        assert self.item_index_ is not None
        s = self.schema
        rows = test
        if threshold is not None and s.label is not None and s.label in test.columns:
            rows = test[test[s.label].to_numpy(dtype=float) >= threshold]
        ukeys = categorical_keys(rows[s.user])
        icol = categorical_keys(rows[s.item]).map(self.item_index_)
        frame = pd.DataFrame({"u": ukeys.to_numpy(), "i": icol.to_numpy()}).dropna()
        users, relevant = [], []
        for u, g in frame.groupby("u", sort=False):
            users.append(u)
            relevant.append(np.unique(g["i"].to_numpy(dtype=np.int64)))
        return users, relevant

    def evaluate(
        self,
        test: pd.DataFrame,
        *,
        show_progress: bool = False,
        plots_dir: str | Path | None = None,
    ) -> dict[str, Any]:
        """Every metric that applies, on a test table (keys as in the metrics JSON).

        Pointwise models report rmse / mae (ratings) or auc / log_loss (clicks) on the test
        rows; every model reports the full-ranking metrics @k over the catalogue with each
        user's training items excluded (relevant = test rows with label >=
        ``evaluation.relevance_threshold``), catalogue coverage, intra-list diversity (cosine
        over the model's item embeddings, NaN when it has none), novelty and popularity bias
        @k, and the factorized top-k accuracy of the test rows (TensorFlow Recommenders'
        metric: seen items are not excluded).

        Rating and click models also report the quality of their uncertainty (see
        :func:`wager.evaluation.uncertainty.uncertainty_report`: ECE / MCE / Brier for
        clicks; NLL, CRPS, coverage and width at ``[uncertainty] confidence_levels``,
        Spearman and AUROC of std against the absolute error, the confidence curve), the
        per-feature OOV std ratios and ``predict_seconds``; with ``plots_dir`` (and
        ``[uncertainty] plots``) the plots are written there and listed under "plots"
        ({name: PNG file name}): those of :func:`wager.evaluation.plots.uncertainty_plots`
        (its ``std_histogram`` compares the predictive std of test rows whose user and item
        ids are both in the model's vocabulary with rows where either is OOV, when both
        groups occur), ``relevance_reliability_diagram`` (ratings with a relevance
        threshold), and, for models with a std, the counterfactual cold-start histograms
        ``std_histogram_user_<user id column>`` / ``std_histogram_item_<item id column>``:
        over the first 5000 test rows whose id is known, the std with the real id vs with
        that id set to OOV (the rows behind ``oov_std_ratio``, whose median ratio is in the
        title).
        """
        _encoder, _stack = self._require_fit()
        assert self.items_ is not None and self.item_counts_ is not None
        ev = self.config.evaluation
        s = self.schema
        task = self.task
        out: dict[str, Any] = {"n_test_rows": len(test)}
        if task in ("click", "rating") and s.label is not None and s.label in test.columns:
            start = time.perf_counter()
            pred = self.predict(test[s.user].to_numpy(), test[s.item].to_numpy(), test)
            out["predict_seconds"] = time.perf_counter() - start
            y = test[s.label].to_numpy(dtype=np.float64)
            mean = pred.mean.numpy().astype(np.float64)
            if task == "rating":
                out["rmse"] = rmse(mean, y)
                out["mae"] = mae(mean, y)
            else:
                out["auc"] = auc(y, mean) if 0 < y.mean() < 1 else float("nan")
                out["log_loss"] = log_loss(y, mean)
            uc = self.config.uncertainty
            out.update(
                uncertainty_report(
                    pred, y, levels=uc.confidence_levels, probability=task == "click"
                )
            )
            if task == "click" and "true_ctr" in test.columns:
                # simulated data: check the CTR itself, free of click noise
                truth = test["true_ctr"].to_numpy(dtype=np.float64)
                out["ece_true_ctr"] = expected_calibration_error(mean, truth)
                if pred.std is not None:
                    for level in uc.confidence_levels:
                        iv = pred.interval(level)
                        out[f"coverage_true_ctr@{level:g}"] = interval_coverage(
                            iv.low.numpy(), iv.high.numpy(), truth
                        )
            relevance = None
            if task == "rating" and ev.relevance_threshold is not None:
                conf = self.relevance_confidence(pred)
                if conf is not None:
                    # ratings: the probabilities to calibrate are P(rating >= threshold)
                    relevance = conf.numpy().astype(np.float64)
                    hit = (y >= ev.relevance_threshold).astype(np.float64)
                    out["ece"] = expected_calibration_error(relevance, hit)
                    out["ece_equal_width"] = expected_calibration_error(
                        relevance, hit, binning="equal_width"
                    )
                    out["mce"] = max_calibration_error(relevance, hit)
                    out["brier"] = brier_score(relevance, hit)
            oov_stds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            if pred.std is not None:
                # one pass gives both the ratios and the counterfactual histograms
                oov_stds = self._oov_stds(test)
                out["oov_std_ratio"] = {
                    key: float(np.median(cold / real)) for key, (real, cold) in oov_stds.items()
                }
            if plots_dir is not None and uc.plots:
                # actual OOV rows: the user id or the item id is outside the model's
                # vocabulary (not in the training rows, or below its min_count)
                assert _encoder.users.id_encoder_ is not None
                assert _encoder.items.id_encoder_ is not None
                oov = (_encoder.users.id_encoder_.transform(test[s.user]) == 0) | (
                    _encoder.items.id_encoder_.transform(test[s.item]) == 0
                )
                plots = uncertainty_plots(
                    pred,
                    y,
                    Path(plots_dir),
                    probability=task == "click",
                    oov_mask=oov,
                    oov_labels=("user and item known", "user or item OOV"),
                )
                for side, ent in (("user", _encoder.users), ("item", _encoder.items)):
                    key = f"{side}.{ent.key}"
                    if key not in oov_stds:
                        continue
                    real, cold = oov_stds[key]
                    ratio = out["oov_std_ratio"][key]
                    name = f"std_histogram_{key.replace('.', '_')}"
                    path = std_histogram(
                        real,
                        cold,
                        Path(plots_dir) / f"{name}.png",
                        labels=(f"real {ent.key}", f"{ent.key} set to OOV"),
                        title=f"Predictive std, median OOV/real ratio {ratio:.2f}",
                    )
                    plots[name] = path.name
                if relevance is not None:
                    path = reliability_diagram(
                        relevance, hit, Path(plots_dir) / "relevance_reliability_diagram.png"
                    )
                    plots["relevance_reliability_diagram"] = path.name
                if plots:
                    out["plots"] = plots
        users, relevant = self._relevant_lists(test, ev.relevance_threshold)
        if ev.max_users is not None and len(users) > ev.max_users:
            rng = np.random.default_rng(self.config.seed)
            pick = np.sort(rng.choice(len(users), ev.max_users, replace=False))
            users = [users[i] for i in pick]
            relevant = [relevant[i] for i in pick]
        k = ev.k
        n_items = len(self.items_)
        if users:
            top, top_scores, top_hits, log_norm = self._list_scores(users, relevant, k)
            if task in ("retrieval", "implicit") and log_norm is not None:
                out.update(
                    self._list_confidence_report(
                        top, top_scores, top_hits, log_norm, relevant, plots_dir
                    )
                )
            out.update({key: v for key, v in ranking.ranking_metrics(top, relevant, k).items()})
            assert self.seen_ is not None
            # popularity = share of training users who interacted with the item
            pop = np.asarray(self.seen_.getnnz(axis=0), dtype=np.float64) / max(
                self.seen_.shape[0], 1
            )
            vectors = self.item_vectors()
            out.update(
                ranking.beyond_accuracy_metrics(
                    top,
                    n_items,
                    pop,
                    max(len(self.user_index_ or {}), 1),
                    item_vectors=vectors,
                )
            )
        out.update(self._top_k_accuracy(test))
        out["train_seconds"] = self.metrics_.get("train_seconds", float("nan"))
        return out

    def _n_beaten(
        self,
        user_keys: np.ndarray,
        item_rows: np.ndarray,
        params: dict[str, Tensor] | None = None,
        per_member: bool = False,
    ) -> Tensor:
        """For each (user, catalogue row) pair, how many catalogue items score strictly
        higher: (M, n) per member, or (1, n) for the members' mean score. A pair is a top-k
        hit of the factorized top-k accuracy (TensorFlow Recommenders' rule) when this is < k.
        """
        codes, uniq = pd.factorize(user_keys)
        items = torch.as_tensor(item_rows.astype(np.int64))
        codes_t = torch.as_tensor(codes)
        out: Tensor | None = None
        chunk = max(1, _PAIRS_PER_PASS * 4 // max(len(self.item_index_ or {}), 1))
        for start in range(0, len(uniq), chunk):
            part = list(uniq[start : start + chunk])
            scores = self._member_scores(part, params=params)  # (M, U, I)
            if not per_member:
                scores = scores.mean(dim=0, keepdim=True)
            sel = torch.nonzero((codes_t >= start) & (codes_t < start + len(part))).flatten()
            all_scores = scores[:, codes_t[sel] - start]  # (M, n_sel, I)
            pos = all_scores[:, torch.arange(sel.numel()), items[sel]]
            beaten = (all_scores > pos.unsqueeze(-1)).sum(-1)
            if out is None:
                out = torch.zeros(scores.shape[0], len(items), dtype=torch.long)
            out[:, sel] = beaten.cpu()
        assert out is not None
        return out

    def _top_k_accuracy_members(
        self,
        user_keys: np.ndarray,
        item_rows: np.ndarray,
        k: int,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """(M,) per-member factorized top-k accuracy of (user, catalogue row) pairs."""
        beaten = self._n_beaten(user_keys, item_rows, params, per_member=True)
        return (beaten < k).float().mean(dim=1)

    def _top_k_accuracy(self, test: pd.DataFrame) -> dict[str, float]:
        """Factorized top-k accuracy of the test rows whose item is in the catalogue."""
        assert self.item_index_ is not None
        s = self.schema
        ks = self.config.evaluation.top_k_accuracy
        icol = categorical_keys(test[s.item]).map(self.item_index_).to_numpy()
        ok = ~pd.isna(icol)
        if not ok.any() or not ks:
            return {f"top_k_accuracy@{k}": float("nan") for k in ks}
        ukeys = categorical_keys(test[s.user]).to_numpy()[ok]
        beaten = self._n_beaten(ukeys, icol[ok])[0]
        return {f"top_k_accuracy@{k}": float((beaten < k).float().mean()) for k in ks}

    def item_vectors(self) -> np.ndarray | None:
        """(n_items, d) catalogue item embeddings (members averaged) if the model has them."""
        _, stack = self._require_fit()
        if not hasattr(stack.model, "item_embedding"):
            return None
        with torch.no_grad():
            v = stack.call("item_embedding", self._item_batch(stack.device)).mean(dim=0)
        return v.cpu().numpy()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write the run directory; returns its path."""
        encoder, stack = self._require_fit()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.config.save(d / RUN_FILES["config"])
        save_file(
            {k: v.contiguous() for k, v in stack.state_dict().items()},
            str(d / RUN_FILES["weights"]),
        )
        (d / RUN_FILES["encoders"]).write_text(json.dumps(encoder.state_dict(), indent=1))
        for name, table in (
            ("user_features", encoder.users.table_),
            ("item_features", encoder.items.table_),
        ):
            path = d / RUN_FILES[name]
            if table is not None:
                out = table.copy()
                out.index = out.index.astype(str)
                out.to_parquet(path)
            elif path.exists():
                path.unlink()
        assert self.items_ is not None and self.seen_ is not None and self.user_index_ is not None
        seen = self.seen_.tocsr()
        users = list(self.user_index_)
        (d / RUN_FILES["catalogue"]).write_text(
            json.dumps(
                {
                    "items": [str(i) for i in self.items_],
                    "item_counts": self.item_counts_.tolist()
                    if self.item_counts_ is not None
                    else [],
                    "global_mean": self.global_mean_,
                    "users": [str(u) for u in users],
                    "seen_indptr": seen.indptr.tolist(),
                    "seen_indices": seen.indices.tolist(),
                }
            )
        )
        post_hoc = {
            name: obj.state_dict()
            for name, obj in (
                ("calibrator", self.calibrator_),
                ("variance_scaling", self.variance_scaling_),
                ("local_variance", self.local_variance_),
                ("support_covariates", self.support_covariates_),
                ("conformal", self.conformal_),
                ("relevance_calibrator", self.relevance_calibrator_),
            )
            if obj is not None
        }
        if self.population_picks_:
            post_hoc["population_picks"] = {
                k: v.tolist() for k, v in self.population_picks_.items()
            }
        (d / RUN_FILES["uncertainty"]).write_text(json.dumps(post_hoc, indent=1))
        self.save_metrics(d)
        return d

    def save_metrics(self, directory: str | Path) -> Path:
        """Write ``metrics_`` as metrics.json into the run directory."""
        path = Path(directory) / RUN_FILES["metrics"]
        path.write_text(json.dumps(self.metrics_, indent=2, default=float))
        return path

    @classmethod
    def load(cls, directory: str | Path, device: str | None = None) -> Recommender:
        """Read a run directory written by :meth:`save`.

        Args:
            directory: the run directory.
            device: "cpu" / "cuda" / "auto" to override ``training.device`` for inference.
        """
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(
                f"{d}: run directory not found; pass a directory written by `wager train`, "
                "`wager quickstart` or Recommender.save()"
            )
        for key in ("config", "weights", "encoders", "catalogue"):
            if not (d / RUN_FILES[key]).exists():
                raise FileNotFoundError(
                    f"{d / RUN_FILES[key]}: missing from the run directory; is '{d}' a directory "
                    "written by Recommender.save() / wager train / wager quickstart?"
                )
        config = RunConfig.load(d / RUN_FILES["config"])
        if device is not None:
            config = replace(config, training=replace(config.training, device=device))
        rec = cls(config)
        tables = {}
        for name in ("user_features", "item_features"):
            p = d / RUN_FILES[name]
            tables[name] = pd.read_parquet(p) if p.exists() else None
        rec.encoder_ = InteractionEncoder.from_state_dict(
            json.loads((d / RUN_FILES["encoders"]).read_text()),
            tables["user_features"],
            tables["item_features"],
        )
        cat = json.loads((d / RUN_FILES["catalogue"]).read_text())
        rec.items_ = np.asarray(cat["items"], dtype=object)
        rec.item_index_ = {k: i for i, k in enumerate(rec.items_)}
        rec.item_counts_ = np.asarray(cat["item_counts"], dtype=np.float64)
        rec.global_mean_ = float(cat["global_mean"])
        rec.user_index_ = {k: i for i, k in enumerate(cat["users"])}
        rec.seen_ = sp.csr_matrix(
            (
                np.ones(len(cat["seen_indices"]), dtype=np.float32),
                np.asarray(cat["seen_indices"], dtype=np.int64),
                np.asarray(cat["seen_indptr"], dtype=np.int64),
            ),
            shape=(len(rec.user_index_), len(rec.items_)),
        )
        dev = resolve_device(rec.config.training.device)
        rec.stack_ = StackedModel(rec._factory, rec._members(), rec.config.seed, dev)
        rec.stack_.load_state_dict(load_file(str(d / RUN_FILES["weights"])))
        rec.stack_.train(False)
        up = d / RUN_FILES["uncertainty"]
        post_hoc = json.loads(up.read_text()) if up.exists() else {}
        if "calibrator" in post_hoc:
            kind = rec.config.uncertainty.calibrator
            if isinstance(rec.head, _MIXTURE_HEADS):
                raise ValueError(
                    f"{up}: this run's [model] likelihood = {config.model.likelihood!r} carries "
                    f"a [uncertainty] calibrator = {kind!r}, which wager no longer applies to a "
                    "mixture (it would leave the mixture's components uncalibrated); retrain "
                    "with calibrator = 'none'"
                )
            rec.calibrator_ = _CALIBRATORS[kind]().load_state_dict(post_hoc["calibrator"])
        if "variance_scaling" in post_hoc:
            rec.variance_scaling_ = VarianceScaling().load_state_dict(post_hoc["variance_scaling"])
        if "local_variance" in post_hoc:
            rec.local_variance_ = LocalVarianceScaling().load_state_dict(post_hoc["local_variance"])
            rec.support_covariates_ = SupportCovariates().load_state_dict(
                post_hoc["support_covariates"]
            )
        if "conformal" in post_hoc:
            rec.conformal_ = SplitConformal().load_state_dict(post_hoc["conformal"])
        if "relevance_calibrator" in post_hoc:
            rec.relevance_calibrator_ = load_relevance_calibrator(post_hoc["relevance_calibrator"])
        if "population_picks" in post_hoc:
            rec.population_picks_ = {
                k: torch.tensor(v, dtype=torch.int64)
                for k, v in post_hoc["population_picks"].items()
            }
        mp = d / RUN_FILES["metrics"]
        rec.metrics_ = json.loads(mp.read_text()) if mp.exists() else {}
        return rec
