"""ModelSpec: what a run config asks for, decided once, and every rule across config sections.

Built from a :class:`~wager.config.RunConfig`; the facade, the fitting code and the scorer
read its task, head and capability flags instead of comparing task strings or probing the
model with ``hasattr``. :meth:`ModelSpec.validate` holds every rule that spans config sections
and runs before any data is read or any epoch trained.

Example:
    >>> from wager.config import RunConfig, ModelConfig
    >>> from wager.data.features import vector_columns
from wager.data.schema import Schema, Vector
from wager.errors import data_error
    >>> spec = ModelSpec.from_config(
    ...     RunConfig(schema=Schema(label="rating", label_kind="rating"),
    ...               model=ModelConfig(type="biased_mf", likelihood="gaussian")))
    >>> spec.task, spec.pointwise, spec.has_std
    ('rating', True, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from torch import Tensor, nn

from wager.config import RunConfig, TrainConfig
from wager.data.features import vector_columns
from wager.data.schema import Schema, Vector
from wager.errors import data_error
from wager.models.fields import Field
from wager.models.heads import (
    BernoulliHead,
    DeepDensityHead,
    GaussianHead,
    Head,
    MixtureDensityHead,
    PointHead,
)
from wager.models.ranking import Task, task_output
from wager.models.registry import ModelInputs, ModelType, TaskKind, model_type
from wager.uncertainty.mc_dropout import MCDropout

# [training] settings of the gradient loop (what ALS, fitted in closed form, never reads)
_GRADIENT_SETTINGS = (
    "batch_size",
    "learning_rate",
    "weight_decay",
    "anchored",
    "optimizer",
    "grad_clip",
    "lr_schedule",
    "warmup_steps",
    "mixed_precision",
)


def _head(config: RunConfig, task: TaskKind) -> Head | None:
    """The likelihood head for ``task`` (None for retrieval scores)."""
    m = config.model
    if task == "retrieval":
        return None
    if task == "click" and m.likelihood == "mdn":
        return MixtureDensityHead(components=m.components, support=(0.0, 1.0))
    if task == "click" and m.likelihood == "ddn":
        return DeepDensityHead(components=m.components)
    if task in ("click", "implicit"):
        return BernoulliHead()
    rr = config.schema.rating_range if config.schema is not None else None
    support = (float(rr[0]), float(rr[1])) if rr is not None else None
    if m.likelihood == "gaussian":
        return GaussianHead(support=support, mean_loss=m.mean_loss)
    return PointHead(support=support)


@dataclass(frozen=True)
class TaskSpec:
    """One task the model predicts (one, or several with ``[[model.tasks]]``).

    Attributes:
        name: the task's name ("label" for the schema's single task).
        label: the data column of its label.
        kind: "rating" or "click" (pointwise tasks).
        head: its likelihood head.
        label_key: the batch key of its label ("label" for the primary task).
        weight: its weight in the summed loss.
        threshold: clicks derived from a number: label = column >= threshold.
    """

    name: str
    label: str | None
    kind: str
    head: Head | None
    label_key: str = "label"
    weight: float = 1.0
    threshold: float | None = None

    def labels(self, rows: pd.DataFrame) -> np.ndarray:
        """(n,) float64 labels of ``rows`` (0/1 when derived by the threshold)."""
        assert self.label is not None
        y = rows[self.label].to_numpy(dtype=np.float64)
        return (y >= self.threshold).astype(np.float64) if self.threshold is not None else y


def _tasks(config: RunConfig, task: TaskKind, head: Head | None) -> tuple[TaskSpec, ...]:
    """The schema's single task, or the ``[[model.tasks]]`` (the first is the primary)."""
    label = config.schema.label if config.schema is not None else None
    if not config.model.tasks:
        return (TaskSpec("label", label, task, head),)
    rr = config.schema.rating_range if config.schema is not None else None
    out = []
    for i, t in enumerate(config.model.tasks):
        if t.kind == "click":
            task_head: Head = BernoulliHead()
        else:
            support = (float(rr[0]), float(rr[1])) if rr is not None and t.label == label else None
            task_head = (
                GaussianHead(support=support, mean_loss=config.model.mean_loss)
                if t.likelihood == "gaussian"
                else PointHead(support=support)
            )
        key = "label" if i == 0 else f"label.{t.name}"
        out.append(TaskSpec(t.name, t.label, t.kind, task_head, key, t.weight, t.threshold))
    return tuple(out)


@dataclass(frozen=True)
class ModelSpec:
    """The decisions a run config implies, made once.

    Attributes:
        config: the run configuration.
        model_type: the registry entry of ``[model] type``.
        task: "click", "rating", "retrieval" or "implicit" (the primary task's).
        head: the primary task's likelihood head (None for retrieval scores).
        members: ensemble members M (1 without ``[ensemble]``).
        tasks: every task the model predicts; the first is the primary one.
    """

    config: RunConfig
    model_type: ModelType
    task: TaskKind
    head: Head | None
    members: int
    tasks: tuple[TaskSpec, ...]

    @classmethod
    def from_config(cls, config: RunConfig) -> ModelSpec:
        """Decide tasks, heads and members from ``config``."""
        mt = model_type(config.model.type)
        label_kind = config.schema.label_kind if config.schema is not None else None
        task = mt.task(label_kind)
        members = config.ensemble.members if config.ensemble is not None else 1
        tasks = _tasks(config, task, _head(config, task))
        return cls(config, mt, task, tasks[0].head, members, tasks)

    @property
    def heads(self) -> tuple[Head, ...]:
        """Every task's head (pointwise models)."""
        return tuple(t.head for t in self.tasks if t.head is not None)

    def task_output(self, out: Tensor, task: int = 0) -> Tensor:
        """Task ``task``'s raw outputs (..., out_dim) of the model's outputs ``out``."""
        if len(self.tasks) == 1:
            return out
        return task_output(out, self.heads, task)

    # ------------------------------------------------------------------ capability flags
    @property
    def pointwise(self) -> bool:
        """Rating and click models: one prediction per (user, item[, context]) row."""
        return self.task in ("click", "rating")

    @property
    def ranking(self) -> bool:
        """Retrieval and implicit models: scores that rank a user's catalogue."""
        return not self.pointwise

    @property
    def mixture(self) -> bool:
        """The head is a mixture of the CTR ("mdn" / "ddn")."""
        return isinstance(self.head, MixtureDensityHead | DeepDensityHead)

    @property
    def noise_head(self) -> bool:
        """The head predicts a data-noise std (Gaussian or mixture)."""
        return isinstance(self.head, GaussianHead) or self.mixture

    @property
    def has_std(self) -> bool:
        """Predictions carry a std (members, MC dropout or a noise head)."""
        return self.members >= 2 or self.mc_dropout is not None or self.noise_head

    @property
    def mc_dropout(self) -> MCDropout | None:
        """The MC-dropout sampler when ``[uncertainty] mc_dropout_samples`` is set."""
        samples = self.config.uncertainty.mc_dropout_samples
        return MCDropout(samples, seed=self.config.seed) if samples else None

    @property
    def method(self) -> str:
        """Provenance string of predictions, e.g. "ensemble(members=5, ...) of biased_mf"."""
        ens = self.config.ensemble
        name = self.config.model.type
        mc = self.mc_dropout
        if mc is not None:
            name = f"{mc.method} of {name}"
        if ens is None:
            return name
        return f"ensemble(members={ens.members}, bootstrap={ens.bootstrap}) of {name}"

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
    def needs_label(self) -> bool:
        """Training and validation rows must carry the label column."""
        return self.pointwise

    def check_columns(self, df: pd.DataFrame, what: str) -> None:
        """DataError naming the schema columns (user, item, context, label of pointwise
        models, impressions of "ddn") missing from the ``what`` table ``df``."""
        s = self.schema
        need = [s.user, s.item]
        for f in s.context:  # a context vector may be a list column or name_0..name_{d-1}
            need += vector_columns(f, list(df.columns), what) if isinstance(f, Vector) else [f.name]
        if self.needs_label and s.label is not None:
            need.append(s.label)
        if self.needs_label and len(self.tasks) > 1:
            need += [t.label for t in self.tasks[1:] if t.label is not None and t.label not in need]
        col = s.impressions
        if self.config.model.likelihood == "ddn" and col is not None and col not in df.columns:
            raise data_error(
                "missing_column",
                f"[model] likelihood = 'ddn' needs the impressions column {col!r} "
                f"(Schema.impressions), which is missing from the {what} table",
                source=what,
                column=col,
                fix=f"Add the impression counts as column {col!r}, or use likelihood = 'mdn'. "
                f"Available columns: {', '.join(map(str, df.columns))}.",
            )
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise data_error(
                "missing_column",
                f"columns {missing} are missing from the {what} table",
                source=what,
                column=missing[0],
                fix=f"Available columns: {', '.join(map(str, df.columns))}.",
            )

    def build_model(
        self, fields: list[Field], global_mean: float = 0.0, n_items: int | None = None
    ) -> nn.Module:
        """A fresh model of ``[model] type`` over the encoded ``fields``; ``n_items`` is the
        catalogue size (a two-tower model's full / sampled softmax switch), None unknown."""
        s = self.schema
        inputs = ModelInputs(
            user=[f for f in fields if f.key.startswith("user.")],
            item=[f for f in fields if f.key.startswith("item.")],
            context=[f for f in fields if f.key.startswith("context.")],
            head=self.head,
            global_mean=global_mean,
            item_id_key=f"item.{s.item}",
            tasks=tuple(
                Task(t.name, t.label_key, t.head, t.weight)
                for t in self.tasks
                if t.head is not None and len(self.tasks) > 1
            ),
            n_items=n_items,
        )
        return self.model_type.build(self.config.model, inputs)

    # ------------------------------------------------------------------ cross-section rules
    def post_hoc_steps(self) -> list[str]:
        """The ``[uncertainty]`` post-hoc steps the config asks for, in config order."""
        uc = self.config.uncertainty
        wanted = {
            "calibrator": uc.calibrator != "none",
            "conformal": uc.conformal != "none",
            "variance_scaling": uc.variance_scaling,
            "local_variance": uc.local_variance,
        }
        return [k for k, v in wanted.items() if v]

    def validate(self) -> None:
        """Every rule that spans config sections; raises ValueError naming section and key.

        Runs before any data is read (the schema of the config is checked, not the data).
        """
        s = self.schema
        if s.label is None and self.pointwise:
            raise ValueError(
                f"Schema.label is None: a {self.task} model needs a label column; set schema.label"
            )
        self._validate_likelihood()
        self._validate_ids_only()
        self._validate_uncertainty()
        self._validate_training()
        self._validate_tasks()
        if self.config.data.stream:
            self.check_streamable()

    def check_streamable(self) -> None:
        """The rules of ``[data] stream = true`` (training rows streamed from Parquet, see
        :mod:`wager.data.streaming`); raises ValueError naming the setting to change."""
        c, s = self.config, self.schema
        fix = "or set [data] stream = false"
        if c.data.split != "random" or c.data.format not in ("auto", "table"):
            raise ValueError(
                f"[data] split = {c.data.split!r}, format = {c.data.format!r}: a stream is a "
                "Parquet table split at random (each row's split hashed from its number): set "
                f'split = "random" and format = "table", {fix}'
            )
        if not self.pointwise or self.model_type.name == "als":
            raise ValueError(
                f"[data] stream = true trains rating and click models; [model] type = "
                f"{self.model_type.name!r} is a {self.task} model: use a rating or click "
                f"model, {fix}"
            )
        ens = c.ensemble
        if ens is not None and (ens.holdout > 0 or ens.fit != "stacked"):
            raise ValueError(
                "[data] stream = true trains the members together on one stream: set "
                '[ensemble] holdout = 0 and fit = "stacked", ' + fix
            )
        if c.uncertainty.local_variance:
            raise ValueError(
                "[uncertainty] local_variance counts each id's training rows in memory: set "
                f"it to false, {fix}"
            )
        if s.user_features or s.item_features:
            raise ValueError(
                "[data] stream = true streams the interaction table alone: set [data] "
                f"user_features = false and item_features = false, {fix}"
            )
        if len(self.tasks) > 1:
            raise ValueError(f"[data] stream = true trains one task: drop [[model.tasks]], {fix}")
        if s.label_kind == "rating" and c.data.duplicates != "keep":
            raise ValueError(
                f"[data] duplicates = {c.data.duplicates!r}: a stream cannot look back at "
                "earlier rows of a (user, item) pair, so every rating counts: set [data] "
                f'duplicates = "keep", {fix}'
            )

    def _validate_likelihood(self) -> None:
        m = self.config.model
        if m.likelihood == "gaussian" and self.task != "rating":
            raise ValueError(
                f"[model] likelihood = 'gaussian' models the noise of a rating, but this is a "
                f"{self.task} model (type = {m.type!r}, Schema.label_kind = "
                f"{self.schema.label_kind!r}); use likelihood = 'point', or 'mdn' / 'ddn' "
                "(type = 'dcn') for a distribution of the CTR"
            )
        if m.likelihood not in ("mdn", "ddn"):
            return
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
        if m.likelihood == "ddn" and self.schema.impressions is None:
            raise ValueError(
                "[model] likelihood = 'ddn' needs aggregated CTR rows with their impression "
                "counts, but Schema.impressions is not set: set Schema(impressions=<column>, "
                "clicks=<column>), or use likelihood = 'mdn'"
            )

    def _validate_ids_only(self) -> None:
        """A model of the ids alone ("als") refuses features and context it would ignore, and
        an ensemble of it needs cold_start = "population" (its unknown-id rows have no data:
        they would solve to 0 in every member, a certain score for what is least known)."""
        mt, s = self.model_type, self.schema
        if not mt.ids_only:
            return
        for what, specs in (
            ("user_features", s.user_features),
            ("item_features", s.item_features),
            ("context", s.context),
        ):
            if specs:
                loader = "" if what == "context" else f" (or set [data] {what} = false)"
                raise ValueError(
                    f"[model] type = {mt.name!r} uses the user and item ids only, but the "
                    f"schema has {what} ({', '.join(f.name for f in specs)}): remove [schema] "
                    f"{what}{loader}, or use a model type that reads them (two_tower, dcn)"
                )
        if mt.name == "als":  # fitted in closed form: the gradient loop's settings do nothing
            t, default = self.config.training, TrainConfig()
            for key in _GRADIENT_SETTINGS:
                if getattr(t, key) != getattr(default, key):
                    raise ValueError(
                        f"[training] {key} = {getattr(t, key)!r} is not used by [model] type = "
                        "'als' (alternating least squares reads epochs, patience, device and "
                        f"validation_metric only): remove {key}"
                    )
        if self.members >= 2 and self.config.uncertainty.cold_start != "population":
            raise ValueError(
                f"[model] type = {mt.name!r} learns nothing for unknown users and items (their "
                "rows have no data), so every ensemble member would score them alike: set "
                "[uncertainty] cold_start = 'population' to give them the spread of the "
                "known population"
            )

    def _validate_uncertainty(self) -> None:
        uc = self.config.uncertainty
        if uc.mc_dropout_samples and "dropout" not in self.model_type.settings:
            raise ValueError(
                f"[uncertainty] mc_dropout_samples = {uc.mc_dropout_samples} needs dropout in "
                f"the model, but [model] type = {self.model_type.name!r} has none: use a type "
                "with dropout (biased_mf, two_tower, neumf, dcn) or mc_dropout_samples = 0"
            )
        if uc.mc_dropout_samples and not self.config.model.dropout > 0:
            raise ValueError(
                f"[uncertainty] mc_dropout_samples = {uc.mc_dropout_samples} needs dropout in "
                "the model: set [model] dropout > 0 (e.g. 0.1), or mc_dropout_samples = 0"
            )
        if uc.cold_start == "population" and (self.members < 2 or uc.mc_dropout_samples):
            raise ValueError(
                "[uncertainty] cold_start = 'population' averages an unknown value over known "
                "values drawn for each ensemble member: it needs an [ensemble] section with "
                "members >= 2 and no mc_dropout_samples; or set cold_start = 'learned'"
            )
        asked = self.post_hoc_steps()
        if asked and not self.pointwise:
            raise ValueError(
                f"[uncertainty] {asked[0]} applies to rating and click models, not to a "
                f"{self.task} model; remove it from [uncertainty]"
            )
        if self.task == "click" and uc.local_variance:
            raise ValueError(
                "[uncertainty] local_variance refits the std of rating predictions; a click "
                "model's probabilities are calibrated by calibrator = 'platt' | 'isotonic' | "
                "'temperature': remove local_variance"
            )
        if self.task == "click" and asked and uc.calibrator == "none":
            raise ValueError(
                f"[uncertainty] {asked[0]} applies to rating models; for clicks use "
                "calibrator = 'platt' | 'isotonic' | 'temperature'"
            )
        if self.task == "rating" and uc.calibrator != "none":
            raise ValueError(
                f"[uncertainty] calibrator = {uc.calibrator!r} calibrates click probabilities; "
                "for ratings use conformal = 'normalized' and/or variance_scaling = true"
            )
        needs_std = uc.variance_scaling or uc.local_variance or uc.conformal == "normalized"
        if self.task == "rating" and needs_std and not self.has_std:
            raise ValueError(
                "[uncertainty] variance_scaling / local_variance / conformal = 'normalized' "
                "need a predicted std, but this model is deterministic: set [model] "
                "likelihood = 'gaussian', add an [ensemble] or set mc_dropout_samples; or use "
                "conformal = 'homoscedastic'"
            )

    def _validate_tasks(self) -> None:
        tasks = self.config.model.tasks
        if not tasks:
            return
        s, first = self.schema, tasks[0]
        kind = "rating" if s.label_kind == "rating" else "click"
        if first.label != s.label or first.kind != kind or first.threshold is not None:
            raise ValueError(
                f"[[model.tasks]] {first.name!r} is the primary task: it must predict the "
                f"schema's label as it is (label = {s.label!r}, kind = {kind!r}, no threshold); "
                "list that task first"
            )
        if self.config.model.likelihood != "point":
            raise ValueError(
                f"[model] likelihood = {self.config.model.likelihood!r} applies to a single "
                "task; with [[model.tasks]] give each task its own likelihood"
            )

    def _validate_training(self) -> None:
        ens = self.config.ensemble
        if ens is not None and ens.holdout > 0 and not self.pointwise:
            raise ValueError(
                f"[ensemble] holdout = {ens.holdout!r} applies to rating and click models, not "
                f"to a {self.task} model; set holdout = 0 and early-stop on the validation split"
            )
        metric = self.config.training.validation_metric
        if self.ranking and metric in ("rmse", "log_loss"):
            raise ValueError(
                f"[training] validation_metric = {metric!r} does not apply to a {self.task} "
                "model; use 'ndcg@K', 'recall@K' or 'top_k_accuracy@K'"
            )
