"""The generic machinery of run configs, below :mod:`wager.config`'s dataclasses.

- :class:`ConfigError` and the one-line problem messages (``[section] key = value is
  invalid: must be ...``);
- one type checker for every field, driven by the dataclass annotations (an integer is not
  a float, a string or a boolean; lists of the declared element type; Literal choices),
  with "write 2 without quotes" and "did you mean" hints;
- readers of TOML tables: unknown sections and keys, the ``[schema]`` table and its feature
  tables;
- checks against what this install has: model types (:data:`wager.models.registry.MODEL_TYPES`)
  and devices;
- the TOML writer (:func:`dumps_toml`).

Nothing here imports torch at import time.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from collections.abc import Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from wager.data.schema import Feature, Schema, feature_type_name
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


def _default(obj: Any, name: str) -> Any:
    """The declared default of dataclass field ``name`` of ``obj``."""
    return next(f.default for f in fields(obj) if f.name == name)


def _check_negatives(m: Any) -> None:
    """The ``[model]`` rules on negatives (``m`` is a :class:`wager.config.ModelConfig`):
    counts, the full / sampled softmax switch and the sampling distribution."""
    _check(m.negatives >= 0, "model", "negatives", m.negatives, ">= 0")
    _check(
        m.type != "two_tower" or m.in_batch_negatives or m.full_softmax or m.negatives > 0,
        "model",
        "in_batch_negatives",
        m.in_batch_negatives,
        "true unless full_softmax = true or negatives > 0 (a softmax needs negatives)",
    )
    _check(
        m.type != "neumf" or m.negatives >= 1,
        "model",
        "negatives",
        m.negatives,
        ">= 1 for type = 'neumf' (negatives sampled per positive)",
    )
    _check(
        m.hard_negatives >= 0,
        "model",
        "hard_negatives",
        m.hard_negatives,
        "an integer >= 1, or 0 = off",
    )
    _check(
        m.full_softmax_max_items >= 1,
        "model",
        "full_softmax_max_items",
        m.full_softmax_max_items,
        "an integer >= 1 (the largest catalogue trained by full softmax)",
    )
    _check(
        m.full_softmax or m.full_softmax_max_items == _default(m, "full_softmax_max_items"),
        "model",
        "full_softmax_max_items",
        m.full_softmax_max_items,
        "left out unless full_softmax = true (it caps the full softmax): remove it, or set "
        "full_softmax = true",
    )
    _check(
        m.negative_sampling == "uniform" or m.negatives >= 1,
        "model",
        "negative_sampling",
        m.negative_sampling,
        "'uniform' (or left out) when negatives = 0: set negatives >= 1 (e.g. 1024) for "
        "popularity-sampled negatives",
    )
    _check(
        math.isfinite(m.negative_power) and m.negative_power > 0,
        "model",
        "negative_power",
        m.negative_power,
        "a number > 0 (0.75 as word2vec; 1 = in proportion to the item counts)",
    )
    _check(
        m.negative_sampling == "popularity" or m.negative_power == _default(m, "negative_power"),
        "model",
        "negative_power",
        m.negative_power,
        "left out unless negative_sampling = 'popularity' (it shapes those draws): remove "
        "it, or set negative_sampling = 'popularity'",
    )


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


def _unknown_keys(
    section: str, keys: Iterable[str], allowed: Iterable[str], top_level: Sequence[str] = ()
) -> list[str]:
    """One line per key of ``keys`` that is not in ``allowed``, with a "did you mean" (or,
    for a key among ``top_level``, the run config's top-level keys, where it belongs)."""
    allowed = list(allowed)
    out = []
    for key in keys:
        if key in allowed:
            continue
        hint = suggest(key, allowed).strip()
        if not hint and key in top_level:
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


# ----------------------------------------------------------------------------- installed


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


def _model_type_choices(kind: str) -> str:
    return "one of " + ", ".join(repr(t) for t in MODEL_TYPES) + _did_you_mean(kind, MODEL_TYPES)


# ----------------------------------------------------------------------------- TOML tables


def _unknown_sections(data: dict[str, Any], top_level: Sequence[str]) -> list[str]:
    """One line per top-level key of a config (``data``) that is not among ``top_level``
    (the sections and ``seed``)."""
    sections = [f"[{name}]" for name in top_level if name != "seed"]
    out = []
    for key in data:
        if key in top_level:
            continue
        if key == "search" and isinstance(data[key], dict):
            out.append(
                "[search] is a search space, read by `wager tune CONFIG`; a run config for "
                "`wager train` has none (use the best.toml that wager tune writes)"
            )
        elif isinstance(data[key], dict):
            hint = suggest(f"[{key}]", sections).strip()
            out.append(
                f"[{key}] is not a known section. {hint + ' ' if hint else ''}"
                f"Sections: {', '.join(sections)}"
            )
        else:
            out += _unknown_keys("", [key], top_level)
    return out


_FEATURE_KEYS = ("context", "user_features", "item_features")


@functools.cache
def _feature_classes() -> dict[str, type]:
    """Feature type tag ("categorical", ...) -> its spec class."""
    return {feature_type_name(object.__new__(c)): c for c in get_args(Feature)}


def _schema_problems(raw: Any, top_level: Sequence[str] = ()) -> list[str]:
    """Every problem of a ``[schema]`` table: unknown keys (``top_level``: the run
    config's top-level keys, named when one is misplaced here), types, feature tables."""
    if not isinstance(raw, dict):
        return [f"schema = {raw!r} is invalid: must be a table ([schema] then its keys)"]
    names = [f.name for f in fields(Schema)]
    problems = _unknown_keys("schema", raw, names, top_level)
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
            problems += _unknown_keys(where, [k for k in entry if k != "type"], keys, top_level)
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


# ----------------------------------------------------------------------------- TOML writer


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
