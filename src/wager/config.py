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

import dataclasses
import functools
import math
import tomllib
import types
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from wager.data.duplicates import DUPLICATE_POLICIES
from wager.data.loaders import FORMATS
from wager.data.schema import Feature, Schema, feature_type_name
from wager.data.splits import SPLIT_METHODS
from wager.errors import WagerError, suggest
from wager.models.registry import MODEL_TYPES


class ConfigError(WagerError, ValueError):
    """A run config that cannot be used, found before any data is read.

    Attributes:
        problems: every mistake found, one line each, naming section, key, value and what
            is allowed (``"[training] epochs = '2' is invalid: must be an integer ..."``).
    """

    def __init__(self, problems: str | Sequence[str], path: str | Path | None = None) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        self.path = None if path is None else str(path)
        super().__init__("\n".join(self.problems))


def _where(section: str) -> str:
    """``[section] `` (or nothing for top-level keys such as ``seed``)."""
    if not section:
        return ""
    return section + " " if section.startswith("[") else f"[{section}] "


def _show(value: Any) -> str:
    """A value as the message shows it: repr, but booleans as TOML writes them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _problem(section: str, name: str, value: Any, allowed: str) -> str:
    return f"{_where(section)}{name} = {_show(value)} is invalid: must be {allowed}"


def _check(cond: bool, section: str, name: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(_problem(section, name, value, allowed))


# ----------------------------------------------------------------------------- types
# One checker for every field, driven by the dataclass annotations: int (not bool), float
# (int accepted, bool not, finite), bool, str, None (unset), Literal choices, tuple[X, ...]
# and tuple[X, Y] (a TOML list), unions of these, and nested dataclasses.

_NO_MATCH = object()


def _is_union(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType)


def _describe(hint: Any, plural: bool = False) -> str:
    """What values of type ``hint`` look like, in words ("an integer", "a list of numbers")."""
    if _is_union(hint):
        arms = [a for a in get_args(hint) if a is not type(None)]
        text = " or ".join(_describe(a, plural) for a in arms)
        return text + (" or unset (leave the key out)" if len(arms) < len(get_args(hint)) else "")
    if get_origin(hint) is Literal:
        choices = ", ".join(repr(c) for c in get_args(hint))
        return f"values among {choices}" if plural else f"one of {choices}"
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return ("lists" if plural else "a list") + " of " + _describe(args[0], plural=True)
        return f"a list of {len(args)} " + _describe(args[0], plural=True)
    words = {
        int: ("an integer", "integers"),
        float: ("a finite number", "finite numbers"),
        bool: ("true or false", "true / false values"),
        str: ("a string", "strings"),
    }
    if hint in words:
        return words[hint][plural]
    name = getattr(hint, "__name__", str(hint))
    return f"{name} objects" if plural else f"a {name}"


def _conform(hint: Any, value: Any) -> Any:
    """``value`` as a value of type ``hint`` (lists -> tuples, int -> float), or _NO_MATCH."""
    if hint is Any:
        return value
    if hint is type(None):
        return None if value is None else _NO_MATCH
    if _is_union(hint):
        for arm in get_args(hint):
            out = _conform(arm, value)
            if out is not _NO_MATCH:
                return out
        return _NO_MATCH
    if get_origin(hint) is Literal:
        ok = any(type(value) is type(c) and value == c for c in get_args(hint))
        return value if ok else _NO_MATCH
    if get_origin(hint) is tuple:
        args = get_args(hint)
        if not isinstance(value, list | tuple):
            return _NO_MATCH
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(args) != len(value):
            return _NO_MATCH
        out = tuple(_conform(a, v) for a, v in zip(args, value, strict=True))
        return _NO_MATCH if any(v is _NO_MATCH for v in out) else out
    if hint is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return float(value) if ok and math.isfinite(value) else _NO_MATCH
    if isinstance(hint, type):
        return value if isinstance(value, hint) else _NO_MATCH
    raise TypeError(f"config type {hint!r} has no checker")  # a new annotation needs one


def _quote_hint(hint: Any, value: Any) -> str:
    """' (write 2 without quotes)' when a number or boolean was written as a string."""
    if not isinstance(value, str):
        return ""
    text = value.strip()
    parsed = {"true": True, "false": False}.get(text.lower(), _parse_number(text))
    if parsed is _NO_MATCH or _conform(hint, parsed) is _NO_MATCH:
        return ""
    shown = str(parsed).lower() if isinstance(parsed, bool) else text
    return f" (write {shown} without quotes)"


def _did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """'; did you mean 'x'?' for a string close to one of ``choices``, else ''."""
    hint = suggest(value, choices).strip() if isinstance(value, str) else ""
    return f"; d{hint[1:]}" if hint else ""


def _parse_number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return _NO_MATCH


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _type_problems(
    cls: type, section: str, values: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """Check ``values`` (field name -> value) against the annotations of dataclass ``cls``.

    Returns:
        The values that conform (converted: lists to tuples, ints to floats) and one line
        per value that does not.
    """
    hints = _hints(cls)
    good: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in values.items():
        out = _conform(hints[name], value)
        if out is _NO_MATCH:
            hint = hints[name]
            allowed = _describe(hint) + _quote_hint(hint, value)
            if get_origin(hint) is Literal:
                allowed += _did_you_mean(value, get_args(hint))
            problems.append(_problem(section, name, value, allowed))
        else:
            good[name] = out
    return good, problems


def _conform_fields(obj: Any, section: str) -> None:
    """Type-check every field of the frozen dataclass ``obj`` in place (ConfigError lists all)."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    good, problems = _type_problems(type(obj), section, values)
    if problems:
        raise ConfigError(problems)
    for name, value in good.items():
        if value is not values[name]:
            object.__setattr__(obj, name, value)


def _unknown_keys(section: str, keys: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """One line per key of ``keys`` that is not in ``allowed``, with a "did you mean"."""
    allowed = list(allowed)
    out = []
    for key in keys:
        if key in allowed:
            continue
        hint = suggest(key, allowed).strip()
        if not hint and key in _TOP_LEVEL:
            hint = f"'{key}' is a top-level key: write it above the first [section]."
        out.append(
            f"{_where(section)}{key} is not a known key. "
            + (hint + " " if hint else "")
            + f"Allowed: {', '.join(allowed)}"
        )
    return out


def _choice(section: str, name: str, value: str, choices: Sequence[str]) -> None:
    """ConfigError unless ``value`` is one of ``choices`` (with a "did you mean")."""
    allowed = "one of " + ", ".join(repr(c) for c in choices) + _did_you_mean(value, choices)
    _check(value in choices, section, name, value, allowed)


def available_devices() -> tuple[str, ...]:
    """The ``[training] device`` values this machine can run.

    Returns:
        "cpu" and "auto" always; "cuda" and "cuda:0" .. "cuda:N-1" with N CUDA devices;
        "mps" when Apple's Metal backend is present.
    """
    import torch  # here, not at import: checking a CPU config needs no torch

    out = ["cpu", "auto"]
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        out.append("mps")
    return tuple(out)


def _check_device(device: str) -> None:
    """ConfigError unless ``device`` names a device kind wager knows and that is present."""
    if device in ("cpu", "auto"):
        return
    kind, colon, index = device.partition(":")
    well_formed = device in ("cpu", "auto", "mps") or (
        kind == "cuda" and (not colon or index.isdigit())
    )
    _check(
        well_formed,
        "training",
        "device",
        device,
        "'cpu', 'cuda', 'cuda:N' (N a GPU index), 'mps' or 'auto' (cuda when available)",
    )
    present = available_devices()
    _check(
        device in present,
        "training",
        "device",
        device,
        f"a device present on this machine: one of {', '.join(repr(d) for d in present)}",
    )


def unused_setting(model_type: str, name: str, value: Any) -> str:
    """The one-line error for a ``[model]`` setting that ``model_type`` does not read."""
    users = [t for t, spec in MODEL_TYPES.items() if name in spec.settings]
    return (
        f"[model] {name} = {_show(value)} is not used by type = {model_type!r}: remove it, or "
        f"choose a type that reads it ({', '.join(repr(t) for t in users)})"
    )


@dataclass(frozen=True)
class TaskConfig:
    """One task of a multi-task model (``[[model.tasks]]``; the DCN ranker).

    The first task is the primary one: it is what ``predict``, ``recommend``, early stopping
    and the post-hoc chain use, and its kind must be the schema's (rating or click). Every
    task gets its own Prediction (``Recommender.predict_tasks``) and metrics under
    ``evaluate()["tasks"][name]``.

    Attributes:
        name: the task's name (unique; letters, digits, "_" or "-").
        label: the column holding its label.
        kind: "rating" (a number: point or Gaussian head) or "click" (0/1: Bernoulli head).
        likelihood: "point" or, for ratings, "gaussian".
        weight: the task's weight in the summed loss (> 0).
        threshold: clicks only: the label is ``column >= threshold`` (e.g. a click derived
            from a rating >= 4); unset = the column already holds 0/1.
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

    Attributes:
        type: one of the model types above (the keys of
            :data:`wager.models.registry.MODEL_TYPES`).
        dim: embedding dimension (>= 1); for "neumf" the GMF dimension.
        init_std: std of the embedding initialisation (> 0).
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
            vectors).
        bias_reg: biased_mf: L2 on the user and item biases (>= 0); unset = ``reg``.
        temperature: two-tower softmax temperature (> 0).
        logq_correction: two-tower: subtract the log sampling probability of candidates.
        remove_accidental_hits: two-tower: mask in-batch / sampled candidates that are the
            row's own positive item.
        item_bias: two-tower: add a learned per-item bias to the score (popularity).
        user_dropout: two-tower: dropout rate on the user vector, in [0, 1).
        in_batch_negatives: two-tower: the batch's other items are negatives.
        full_softmax: two-tower: every catalogue item is a negative (exact softmax).
        negatives: two-tower: extra uniformly sampled negatives per batch; neumf: sampled
            negatives per positive (>= 0).
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
    negatives: int = 0
    loss_reduction: Literal["mean", "sum"] = "mean"
    normalize: bool = False
    components: int = 3
    cross_layers: int = 3
    low_rank: int | None = None
    positive_threshold: float | None = None
    oov_rate: float = 0.0
    hard_negatives: int = 0
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
        _check(self.negatives >= 0, "model", "negatives", self.negatives, ">= 0")
        _check(self.cross_layers >= 1, "model", "cross_layers", self.cross_layers, ">= 1")
        _check(
            self.low_rank is None or self.low_rank >= 1,
            "model",
            "low_rank",
            self.low_rank,
            ">= 1 or unset",
        )
        _check(
            self.type != "two_tower"
            or self.in_batch_negatives
            or self.full_softmax
            or self.negatives > 0,
            "model",
            "in_batch_negatives",
            self.in_batch_negatives,
            "true unless full_softmax = true or negatives > 0 (a softmax needs negatives)",
        )
        _check(
            self.type != "neumf" or self.negatives >= 1,
            "model",
            "negatives",
            self.negatives,
            ">= 1 for type = 'neumf' (negatives sampled per positive)",
        )
        _check(
            self.hard_negatives >= 0,
            "model",
            "hard_negatives",
            self.hard_negatives,
            "an integer >= 1, or 0 = off",
        )
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
    """

    members: int = 5
    bootstrap: bool = True
    holdout: float = 0.0

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
        problems = _unknown_sections(data)
        kwargs: dict[str, Any] = {"seed": None}  # TOML has no null: no seed = not seeded
        if "seed" in data:
            good, found = _type_problems(RunConfig, "", {"seed": data["seed"]})
            kwargs.update(good)
            problems += found
        if "schema" in data:
            found = _schema_problems(data["schema"])
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
_FEATURE_KEYS = ("context", "user_features", "item_features")


def _unknown_sections(data: dict[str, Any]) -> list[str]:
    """One line per top-level key of a config that is neither a section nor ``seed``."""
    sections = [f"[{name}]" for name in _TOP_LEVEL if name != "seed"]
    out = []
    for key in data:
        if key in _TOP_LEVEL:
            continue
        if isinstance(data[key], dict):
            hint = suggest(f"[{key}]", sections).strip()
            out.append(
                f"[{key}] is not a known section. {hint + ' ' if hint else ''}"
                f"Sections: {', '.join(sections)}"
            )
        else:
            out += _unknown_keys("", [key], _TOP_LEVEL)
    return out


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
    problems = _unknown_keys(name, raw, allowed)
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
        task, found = _section_from_toml(where, TaskConfig, entry)
        missing = [k for k in ("name", "label") if k not in entry]
        found += [f"{where} needs {k} = ..." for k in missing]
        problems += found
        if task is not None and not found:
            tasks.append(task)
    return (tuple(tasks) if not problems else None), problems


def _model_type_choices(kind: str) -> str:
    return "one of " + ", ".join(repr(t) for t in MODEL_TYPES) + _did_you_mean(kind, MODEL_TYPES)


@functools.cache
def _feature_classes() -> dict[str, type]:
    """Feature type tag ("categorical", ...) -> its spec class."""
    return {feature_type_name(object.__new__(c)): c for c in get_args(Feature)}


def _schema_problems(raw: Any) -> list[str]:
    """Every problem of a ``[schema]`` table: unknown keys, types, feature tables."""
    if not isinstance(raw, dict):
        return [f"schema = {raw!r} is invalid: must be a table ([schema] then its keys)"]
    names = [f.name for f in fields(Schema)]
    problems = _unknown_keys("schema", raw, names)
    scalars = {k: v for k, v in raw.items() if k in names and k not in _FEATURE_KEYS}
    problems += _type_problems(Schema, "schema", scalars)[1]
    classes = _feature_classes()
    tags = ", ".join(repr(t) for t in classes)
    for key in _FEATURE_KEYS:
        entries = raw.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            problems.append(
                _problem("schema", key, entries, f"a list of feature tables ([[schema.{key}]])")
            )
            continue
        for i, entry in enumerate(entries, 1):
            name = entry.get("name")
            where = f"[[schema.{key}]] #{i}" + (f" ({name!r})" if isinstance(name, str) else "")
            tag = entry.get("type")
            if tag not in classes:
                allowed = f"one of {tags}" + _did_you_mean(tag, classes)
                problems.append(
                    _problem(where, "type", tag, allowed)
                    if "type" in entry
                    else f"{where} needs type = one of {tags}"
                )
                continue
            cls = classes[tag]
            keys = [f.name for f in fields(cls)]
            problems += _unknown_keys(where, [k for k in entry if k != "type"], keys)
            if "name" not in entry:
                problems.append(f"{where} needs name = the column name")
            values = {k: v for k, v in entry.items() if k in keys}
            problems += _type_problems(cls, where, values)[1]
    return problems


def _schema_object_problems(schema: Schema) -> list[str]:
    """Type problems of a :class:`Schema` built in Python (fields and feature specs)."""
    values = {f.name: getattr(schema, f.name) for f in fields(schema)}
    problems = _type_problems(Schema, "schema", values)[1]
    for key in _FEATURE_KEYS:
        for i, spec in enumerate(getattr(schema, key), 1):
            if not dataclasses.is_dataclass(spec) or not isinstance(spec, Feature):
                continue  # reported above (the tuple's element type)
            where = f"[[schema.{key}]] #{i} ({spec.name!r})"
            spec_values = {f.name: getattr(spec, f.name) for f in fields(spec)}
            problems += _type_problems(type(spec), where, spec_values)[1]
    return problems


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def dumps_toml(data: dict[str, Any], prefix: str = "") -> str:
    """Serialise nested dicts of scalars, lists and lists of tables as TOML."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    for k, v in data.items():
        if isinstance(v, dict) or (
            isinstance(v, list) and v and all(isinstance(x, dict) for x in v)
        ):
            tables.append((k, v))
        else:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables:
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            lines.append(f"\n[{name}]")
            lines.append(dumps_toml(v, prefix=f"{name}.").strip("\n"))
        else:
            for item in v:
                lines.append(f"\n[[{name}]]")
                lines.append(dumps_toml(item, prefix=f"{name}.").strip("\n"))
    return "\n".join(x for x in lines if x != "") + "\n"
