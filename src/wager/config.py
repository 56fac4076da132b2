"""Run configuration: frozen dataclasses per component, validated, loaded from / saved to TOML.

``dataclasses.replace`` is clone. A config is checked whole before any data is read: every
field against its annotation (one checker reads the dataclass annotations: an integer is
not a float, a string or a boolean; lists of the declared element type; Literal choices),
unknown sections and keys (also in ``[schema]`` and its feature tables) with a "did you
mean", choices (the model types come from :data:`wager.models.registry.MODEL_TYPES`),
ranges, ``[model]`` settings the model type does not read, and the device. Each mistake is
one line of a :class:`ConfigError` naming section, key, value and what is allowed, e.g.
``[training] epochs = '2' is invalid: must be an integer (write 2 without quotes)``;
:meth:`RunConfig.load` lists every mistake of a file at once.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from wager.config_sections import CALIBRATORS as CALIBRATORS
from wager.config_sections import CONFORMAL as CONFORMAL
from wager.config_sections import DATA_FORMATS as DATA_FORMATS
from wager.config_sections import SPLIT_NAMES as SPLIT_NAMES
from wager.config_sections import DataConfig as DataConfig
from wager.config_sections import EnsembleConfig as EnsembleConfig
from wager.config_sections import EvaluationConfig as EvaluationConfig
from wager.config_sections import TrainConfig as TrainConfig
from wager.config_sections import UncertaintyConfig as UncertaintyConfig
from wager.config_types import (
    ConfigError as ConfigError,
)
from wager.config_types import (
    _check,
    _check_negatives,
    _choice,
    _conform_fields,
    _model_type_choices,
    _problem,
    _schema_object_problems,
    _schema_problems,
    _type_problems,
    _unknown_keys,
    _unknown_sections,
)
from wager.config_types import available_devices as available_devices
from wager.config_types import dumps_toml as dumps_toml
from wager.config_types import unused_setting as unused_setting
from wager.data.schema import Schema
from wager.models.registry import MODEL_TYPES


@dataclass(frozen=True)
class TaskConfig:
    """One task of a multi-task model (``[[model.tasks]]``; the DCN ranker).

    The first task is the primary one (``predict``, ``recommend``, early stopping, the
    post-hoc chain; its kind is the schema's). Each task gets a Prediction
    (``Recommender.predict_tasks``) and metrics under ``evaluate()["tasks"][name]``.

    Attributes:
        name: the task's name (unique; letters, digits, "_" or "-").
        label: the column holding its label.
        kind: "rating" (a number: point or Gaussian head) or "click" (0/1: Bernoulli head).
        likelihood: "point" or, for ratings, "gaussian".
        weight: the task's weight in the summed loss (> 0).
        threshold: clicks only: label = ``column >= threshold``; unset: the column is 0/1.
    """

    name: str
    label: str
    kind: Literal["rating", "click"] = "rating"
    likelihood: Literal["point", "gaussian"] = "point"
    weight: float = 1.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        _conform_fields(self, "model.tasks")
        where = f"[[model.tasks]] {self.name!r}"
        _check(
            bool(self.name) and all(c.isalnum() or c in "_-" for c in self.name),
            where,
            "name",
            self.name,
            "a non-empty name of letters, digits, '_' or '-'",
        )
        _check(self.weight > 0, where, "weight", self.weight, "> 0")
        _check(
            self.kind == "rating" or self.likelihood == "point",
            where,
            "likelihood",
            self.likelihood,
            "'point' for kind = 'click' (the Bernoulli head)",
        )
        _check(
            self.threshold is None or self.kind == "click",
            where,
            "threshold",
            self.threshold,
            "unset for kind = 'rating' (a threshold makes a 0/1 click label)",
        )


@dataclass(frozen=True)
class ModelConfig:
    """Which model, and its settings.

    Each model type reads only some settings (``wager.models.registry.MODEL_TYPES[type]
    .settings``); setting one it does not read is an error (in a TOML file: naming it at all;
    in Python: a value other than its default), so no setting is silently ignored.

    Model types (each a class in ``wager.models``):
        "factorization": click model, user x item factorisation over all features
            (:class:`~wager.models.mf.FeatureFactorization`, BCE).
        "biased_mf": rating model, global + user + item bias + dot product over id and
            feature embeddings (:class:`~wager.models.mf.BiasedMF`, MSE or Gaussian NLL).
        "two_tower": retrieval, user and item towers trained with a sampled (in-batch, log-Q
            corrected) or full softmax (:class:`~wager.models.two_tower.TwoTower`).
        "neumf": implicit feedback, GMF + MLP with sampled negatives
            (:class:`~wager.models.ncf.NeuMF`, BCE).
        "dcn": ranking over user, item and context features with a DCN-v2 cross network and
            a deep tower (:class:`~wager.models.ranking.DCNRanker`); BCE for clicks / CTRs,
            MSE or Gaussian NLL for ratings.
        "als": retrieval, user and item id factors fitted by implicit alternating least
            squares (:class:`~wager.models.als.ImplicitALS`, :mod:`wager.training.als`).

    Attributes:
        type: one of the model types above (the keys of
            :data:`wager.models.registry.MODEL_TYPES`).
        dim: embedding dimension (>= 1); for "neumf" the GMF dimension.
        init_std: std of the embedding initialisation (> 0); als: factors start U(0, init_std).
        user_min_count: training interactions a user id needs for its own embedding (>= 1).
        item_min_count: training interactions an item id needs for its own embedding (>= 1).
        hidden: MLP widths on top of the embeddings (towers; NeuMF's MLP; DCN's deep tower).
        dropout: dropout rate in [0, 1) on hidden layers.
        likelihood: rating models: "point" (MSE) or "gaussian" (heteroscedastic NLL).
            "mdn" / "ddn": click / CTR models of type "dcn": a mixture density network /
            deep density network of the CTR (:class:`~wager.models.heads.MixtureDensityHead`
            / :class:`~wager.models.heads.DeepDensityHead`); "ddn" needs aggregated rows
            with an impressions column (``Schema.impressions``). "point" for clicks is the
            Bernoulli (BCE) head.
        mean_loss: gaussian likelihood: "nll" fits mean and std jointly by the Gaussian NLL;
            "mse" fits the mean by squared error (as the point model) and the std by the NLL
            of the residuals with the mean held fixed (see
            :class:`~wager.models.heads.GaussianHead`).
        reg: L2 on the embeddings of the batch rows (>= 0): biased_mf (factors and biases,
            per example); two_tower (user vectors of the batch rows and the candidate item
            vectors); als: on every factor (implicit's unscaled ``regularization``).
        alpha: als: confidence slope (>= 0): c = 1 + alpha * (summed row weight) on pairs.
        cg_steps: als: conjugate-gradient steps per solve (>= 0; 0 = exact Cholesky).
        reg_exponent: als: in [0, 2]; a row's L2 weight is reg * (its confidence mass / the
            mean mass) ** reg_exponent (0 = one reg for all rows, as implicit).
        bias_reg: biased_mf: L2 on the user and item biases (>= 0); unset = ``reg``.
        temperature: two-tower softmax temperature (> 0).
        logq_correction: two-tower: subtract the log sampling probability of candidates.
        remove_accidental_hits: two-tower: mask in-batch / sampled candidates that are the
            row's own positive item.
        item_bias: two-tower: add a learned per-item bias to the score (popularity).
        user_dropout: two-tower: dropout rate on the user vector, in [0, 1).
        in_batch_negatives: two-tower: the batch's other items are negatives.
        full_softmax: two-tower: every catalogue item is a negative (exact softmax), for
            catalogues of at most ``full_softmax_max_items`` items; a larger one trains by
            sampled softmax (in-batch + ``negatives`` extra, log-Q corrected, whatever
            in_batch_negatives / logq_correction say), warns, and records
            ``metrics_["softmax"] = "sampled"``.
        full_softmax_max_items: two-tower: the largest catalogue trained by full softmax
            (its (users in batch, n_items) scores per batch grow with the catalogue).
        negatives: two-tower: extra sampled negatives per batch; neumf: uniform sampled
            negatives per positive (>= 0).
        negative_sampling: two-tower: how the extra negatives are drawn: "uniform" or
            "popularity" (q_i proportional to count_i ** ``negative_power``).
        negative_power: two-tower, popularity negatives: the exponent (> 0; word2vec: 0.75).
        loss_reduction: two-tower: "mean" or "sum" (the TensorFlow Recommenders tutorial) over
            the batch.
        normalize: two-tower: L2-normalise the tower outputs (cosine scores).
        components: "mdn" / "ddn" likelihood: mixture components K (>= 1).
        cross_layers: dcn: cross layers (>= 1).
        low_rank: dcn: rank of the cross weight matrices, or None for full rank.
        oov_rate: rating / click models: probability that a training row's user id and,
            independently, its item id are replaced by the out-of-vocabulary index, so the
            OOV rows learn what an unknown user / item looks like (and, with a noise head,
            how uncertain it is) instead of keeping their random initialisation.
        positive_threshold: retrieval / implicit models: rows whose label is >= this are the
            positives (None: every row is a positive).
        hard_negatives: two-tower: each row's softmax keeps only its n highest-scoring
            negatives after the log-Q correction and accidental-hit removal (TensorFlow
            Recommenders' ``HardNegativeMining``); 0 = off (every candidate counts).
    """

    type: str = "factorization"
    dim: int = 16
    init_std: float = 0.05
    user_min_count: int = 1
    item_min_count: int = 1
    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    likelihood: Literal["point", "gaussian", "mdn", "ddn"] = "point"
    mean_loss: Literal["nll", "mse"] = "nll"
    reg: float = 0.0
    bias_reg: float | None = None
    temperature: float = 1.0
    logq_correction: bool = True
    remove_accidental_hits: bool = True
    item_bias: bool = False
    user_dropout: float = 0.0
    in_batch_negatives: bool = True
    full_softmax: bool = False
    full_softmax_max_items: int = 10_000
    negatives: int = 0
    negative_sampling: Literal["uniform", "popularity"] = "uniform"
    negative_power: float = 0.75
    loss_reduction: Literal["mean", "sum"] = "mean"
    normalize: bool = False
    components: int = 3
    cross_layers: int = 3
    low_rank: int | None = None
    positive_threshold: float | None = None
    oov_rate: float = 0.0
    hard_negatives: int = 0
    alpha: float = 1.0
    cg_steps: int = 3
    reg_exponent: float = 0.0
    tasks: tuple[TaskConfig, ...] = ()

    def __post_init__(self) -> None:
        _conform_fields(self, "model")
        _choice("model", "type", self.type, tuple(MODEL_TYPES))
        settings = MODEL_TYPES[self.type].settings
        unused = [
            f.name
            for f in fields(self)
            if f.name not in settings and getattr(self, f.name) != f.default
        ]
        if unused:
            raise ConfigError([unused_setting(self.type, n, getattr(self, n)) for n in unused])
        _check(
            self.likelihood not in ("mdn", "ddn") or self.type == "dcn",
            "model",
            "likelihood",
            self.likelihood,
            f"'point' or 'gaussian' for type = {self.type!r}: the mixture density heads "
            "('mdn', 'ddn') model a CTR with the DCN ranker ([model] type = 'dcn')",
        )
        _check(self.dim >= 1, "model", "dim", self.dim, "an integer >= 1")
        _check(self.init_std > 0, "model", "init_std", self.init_std, "> 0")
        _check(self.user_min_count >= 1, "model", "user_min_count", self.user_min_count, ">= 1")
        _check(self.item_min_count >= 1, "model", "item_min_count", self.item_min_count, ">= 1")
        _check(all(h >= 1 for h in self.hidden), "model", "hidden", self.hidden, "widths >= 1")
        _check(0 <= self.dropout < 1, "model", "dropout", self.dropout, "in [0, 1)")
        _check(
            self.components >= 1,
            "model",
            "components",
            self.components,
            "an integer >= 1 (3 to 5 mixture components are common)",
        )
        _check(self.reg >= 0, "model", "reg", self.reg, ">= 0")
        _check(
            self.bias_reg is None or self.bias_reg >= 0,
            "model",
            "bias_reg",
            self.bias_reg,
            ">= 0 or unset",
        )
        _check(0 <= self.user_dropout < 1, "model", "user_dropout", self.user_dropout, "in [0, 1)")
        _check(0 <= self.oov_rate < 1, "model", "oov_rate", self.oov_rate, "in [0, 1)")
        _check(self.temperature > 0, "model", "temperature", self.temperature, "> 0")
        _check(self.alpha >= 0, "model", "alpha", self.alpha, ">= 0 (e.g. 1.0 on 0/1 data)")
        _check(self.cg_steps >= 0, "model", "cg_steps", self.cg_steps, "an integer >= 0")
        _check(0 <= self.reg_exponent <= 2, "model", "reg_exponent", self.reg_exponent, "in [0, 2]")
        _check(self.cross_layers >= 1, "model", "cross_layers", self.cross_layers, ">= 1")
        ok_rank = self.low_rank is None or self.low_rank >= 1
        _check(ok_rank, "model", "low_rank", self.low_rank, ">= 1 or unset")
        _check_negatives(self)
        names = [t.name for t in self.tasks]
        _check(
            len(set(names)) == len(names),
            "model",
            "tasks",
            names,
            "tasks with distinct names",
        )
        _check(
            len(self.tasks) != 1,
            "model",
            "tasks",
            names,
            "two or more [[model.tasks]] (one task is the schema's label: leave tasks out)",
        )


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs: data, schema, model, training, uncertainty, evaluation, seed.

    Attributes:
        schema: column roles and features; None = the schema the data loader suggests
            (``wager train`` fills it in from the dataset).
        data: where the data comes from and how it is split.
        model: the model and its settings.
        training: the training loop.
        ensemble: a deep ensemble of the model, or None for a single model (then
            predictions carry only the head's own uncertainty, if any).
        evaluation: what ``evaluate`` reports.
        uncertainty: MC dropout, calibration and conformal intervals.
        seed: seed of initialisation, shuffling, splits and sampling (None: not seeded).
    """

    schema: Schema | None = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    ensemble: EnsembleConfig | None = None
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    uncertainty: UncertaintyConfig = field(default_factory=UncertaintyConfig)
    seed: int | None = 0

    def __post_init__(self) -> None:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        problems = _type_problems(RunConfig, "", values)[1]
        if isinstance(self.schema, Schema):
            problems += _schema_object_problems(self.schema)
        if problems:
            raise ConfigError(problems)

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict (None values omitted: TOML has no null; ``[model]`` holds only
        the settings its type reads)."""
        out: dict[str, Any] = {}
        if self.seed is not None:
            out["seed"] = self.seed
        if self.schema is not None:
            out["schema"] = self.schema.to_dict()
        for name in _SECTIONS:
            value = getattr(self, name)
            if value is None:
                continue
            keep = MODEL_TYPES[value.type].settings if name == "model" else None
            out[name] = {
                k: list(v) if isinstance(v, tuple) else v
                for k, v in asdict(value).items()
                if v is not None and v != () and (keep is None or k in keep)
            }
            if out[name].get("tasks"):  # [[model.tasks]]: TOML has no null
                out[name]["tasks"] = [
                    {k: v for k, v in t.items() if v is not None} for t in out[name]["tasks"]
                ]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Inverse of :meth:`to_dict`, checking everything a config can get wrong on its own.

        Raises:
            ConfigError: every problem found (one line each, naming section, key, value and
                what is allowed): unknown sections and keys (with a "did you mean"), values
                of the wrong type, choices outside their allowed values, values out of range,
                ``[model]`` settings the model type does not read, and a device that this
                machine does not have. Nothing else has been read or done.
        """
        problems = _unknown_sections(data, _TOP_LEVEL)
        kwargs: dict[str, Any] = {"seed": None}  # TOML has no null: no seed = not seeded
        if "seed" in data:
            good, found = _type_problems(RunConfig, "", {"seed": data["seed"]})
            kwargs.update(good)
            problems += found
        if "schema" in data:
            found = _schema_problems(data["schema"], _TOP_LEVEL)
            if not found:
                try:
                    kwargs["schema"] = Schema.from_dict(data["schema"])
                except ValueError as exc:
                    found = [f"[schema] {exc}"]
            problems += found
        for name, klass in _SECTIONS.items():
            if name in data:
                section, found = _section_from_toml(name, klass, data[name])
                problems += found
                if section is not None:
                    kwargs[name] = section
        if problems:
            raise ConfigError(problems)
        return cls(**kwargs)

    def save(self, path: str | Path) -> None:
        """Write TOML."""
        Path(path).write_text(dumps_toml(self.to_dict()), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path, *, device: str | None = None) -> RunConfig:
        """Read TOML written by :meth:`save` (or by hand), checked as :meth:`from_dict` says.

        Args:
            path: the TOML file.
            device: replaces ``[training] device`` before the checks (e.g. a run trained on
                a GPU, loaded on a machine without one); None keeps the file's.

        Raises:
            FileNotFoundError: no such file.
            ConfigError: the file is not a UTF-8 TOML file, or the config has mistakes
                (every one listed).
        """
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: config file not found") from None
        except IsADirectoryError:
            raise ConfigError(
                f"{p}: is a directory, not a config file; pass a run config TOML (see examples/)",
                p,
            ) from None
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"{p}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); save the "
                "config as UTF-8",
                p,
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}", p) from None
        if device is not None:
            training = data.get("training")
            data["training"] = {
                **(training if isinstance(training, dict) else {}),
                "device": device,
            }
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError([f"{p}: {line}" for line in exc.problems], p) from None


_SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "training": TrainConfig,
    "ensemble": EnsembleConfig,
    "evaluation": EvaluationConfig,
    "uncertainty": UncertaintyConfig,
}


_TOP_LEVEL: tuple[str, ...] = tuple(f.name for f in fields(RunConfig))


def _section_from_toml(name: str, klass: type, raw: Any) -> tuple[Any, list[str]]:
    """The config object of section ``[name]`` from its TOML table, and every problem found.

    Keys that are unknown, mistyped or (in ``[model]``) not read by the model type are
    reported and left out, so the range checks of the other keys still run.
    """
    if not isinstance(raw, dict):
        return None, [
            f"{name} = {raw!r} is invalid: must be a table ([{name}] on its own line, then "
            "its keys)"
        ]
    allowed = [f.name for f in fields(klass)]
    problems = _unknown_keys(name, raw, allowed, _TOP_LEVEL)
    raw = dict(raw)
    tasks: tuple[TaskConfig, ...] | None = None
    if klass is ModelConfig and "tasks" in raw:
        tasks, found = _tasks_from_toml(raw.pop("tasks"))
        problems += found
    good, found = _type_problems(klass, name, {k: v for k, v in raw.items() if k in allowed})
    problems += found
    if tasks is not None:
        good["tasks"] = tasks
    if klass is ModelConfig:
        if "type" in raw and "type" not in good:
            return None, problems  # which settings apply depends on the type
        kind = good.get("type", ModelConfig.type)
        if kind not in MODEL_TYPES:
            return None, [*problems, _problem(name, "type", kind, _model_type_choices(kind))]
        for key in [k for k in good if k not in MODEL_TYPES[kind].settings]:
            problems.append(unused_setting(kind, key, good.pop(key)))
    try:
        return klass(**good), problems
    except ConfigError as exc:
        return None, [*problems, *exc.problems]
    except ValueError as exc:
        return None, [*problems, f"[{name}] {exc}"]


def _tasks_from_toml(raw: Any) -> tuple[tuple[TaskConfig, ...] | None, list[str]]:
    """``[[model.tasks]]`` tables -> TaskConfigs, and every problem found."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        return None, [_problem("model", "tasks", raw, "a list of task tables ([[model.tasks]])")]
    tasks, problems = [], []
    for i, entry in enumerate(raw, 1):
        where = f"[[model.tasks]] #{i}"
        missing = [k for k in ("name", "label") if k not in entry]
        if missing:  # a task without them cannot be built
            problems += [f"{where} needs {k} = ... (a string)" for k in missing]
            continue
        task, found = _section_from_toml(where, TaskConfig, entry)
        problems += found
        if task is not None and not found:
            tasks.append(task)
    return (tuple(tasks) if not problems else None), problems
