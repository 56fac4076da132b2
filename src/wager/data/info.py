"""Dataset summary for ``wager data info``: counts, sparsity, label, features, folds, findings.

:func:`describe` turns a :class:`~wager.data.dataset.Dataset` into a JSON-ready ``dict`` of plain
Python types (the ``--json`` output; its keys are stable); ``wager data info`` renders it
(``wager.cli.render_description``).

Example:
    >>> import pandas as pd
    >>> from wager.data.dataset import Dataset
    >>> from wager.data.schema import Schema
    >>> ds = Dataset(pd.DataFrame({"user_id": [1, 1, 2], "item_id": [1, 2, 1],
    ...                            "rating": [4.0, 2.0, 3.0]}),
    ...              Schema(label="rating", label_kind="rating", rating_range=(1, 5)))
    >>> s = describe(ds)
    >>> s["n_users"], s["n_items"], s["density"], s["label"]["mean"]
    (2, 2, 0.75, 3.0)
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pandas as pd

from wager.data.dataset import Dataset
from wager.data.schema import Feature, MultiCategorical, Schema, feature_type_name
from wager.errors import ValidationReport

_LAYOUT_CODE = "layout_detected"
_LAYOUT_TEXT = re.compile(r"read as (\S+) layout")
_MAX_VALUE_COUNTS = 20  # a label with more distinct values gets no value_counts
_MAX_POSITIONS = 50
_TOP = 3


def describe(dataset: Dataset) -> dict[str, Any]:
    """Summarise a dataset as a JSON-ready dict (plain ``int``/``float``/``str``/``None``).

    Keys (always present unless marked optional):

    - ``source``, ``layout`` (e.g. "movielens-100k", "obd", "table", "ctr").
    - ``n_interactions`` (rows of the interaction table), ``n_users`` and ``n_items`` (distinct
      ids in it), ``n_pairs`` (distinct (user, item) pairs), ``density`` =
      n_pairs / (n_users * n_items) and ``sparsity`` = 1 - density (None when empty).
    - ``label``: None, or ``{"column", "kind", "missing", "min", "max", "mean", "std"
      (sample, ddof=1), "value_counts" ({value as str: count}, when at most 20 distinct
      values)}``, plus ``"rating_range"`` for ratings.
    - ``n_impressions``, ``n_clicks``, ``ctr`` (optional): click data (one row per impression)
      and aggregated CTR data (``schema.impressions``/``clicks`` totals; ctr = clicks /
      impressions, pooled).
    - ``timestamp`` (optional): ``{"column", "min", "max"}`` as ISO-8601 UTC strings, plus
      ``"min_epoch_s"``/``"max_epoch_s"`` when the column converts to epoch seconds.
    - ``positions`` (optional, when a ``position`` column exists): ``{"column", "count",
      "values", "ctr_by_position"}`` (the last for click labels only).
    - ``propensity`` (optional): ``{"column", "min", "max", "mean"}``; ``weight`` likewise.
    - ``tables``: rows and key of each feature table present.
    - ``user_features``, ``item_features``, ``context``: lists of per-column summaries
      ``{"name", "type", "in_schema", "n_unique", "missing", ...}``; numeric adds min, max,
      mean, std; categorical adds ``top``; multi_categorical counts distinct individual values
      (e.g. 19 genres) and adds ``n_empty``, ``mean_values_per_row``, ``top``; text adds
      ``mean_tokens`` and ``max_tokens`` (whitespace tokens). Columns of a feature table that
      the schema does not name appear with ``in_schema`` False and type "datetime" or "other".
    - ``folds``: ``{name: {"n_train", "n_test"}}`` of the predefined folds.
    - ``report``: ``{"n_errors", "n_warnings", "findings" (list of Finding dicts), "dropped"}``.

    Args:
        dataset: a loaded dataset.

    Returns:
        The summary dict; ``json.dumps`` accepts it as is (NaN becomes None).
    """
    schema = dataset.schema
    df = dataset.interactions
    n = len(df)
    n_users, n_items, n_pairs = _id_counts(df, schema.user, schema.item)
    cells = (n_users or 0) * (n_items or 0)
    density = n_pairs / cells if cells and n_pairs is not None else None
    out: dict[str, Any] = {
        "source": dataset.source,
        "layout": _layout(dataset),
        "n_interactions": int(n),
        "n_users": n_users,
        "n_items": n_items,
        "n_pairs": n_pairs,
        "density": density,
        "sparsity": None if density is None else 1.0 - density,
        "label": _label(df, schema.label, schema.label_kind, schema.rating_range),
    }
    out.update(_click_totals(df, schema))
    if schema.timestamp is not None and schema.timestamp in df.columns:
        out["timestamp"] = _timestamps(df[schema.timestamp], schema.timestamp)
    position = _position_column(df)
    if position is not None:
        out["positions"] = _positions(df, position, schema.label, schema.label_kind)
    for key, col in (("propensity", schema.propensity), ("weight", schema.weight)):
        if col is not None and col in df.columns:
            out[key] = _numeric_summary(df[col], col)
    out["tables"] = _tables(dataset)
    named = set(schema.interaction_columns)
    out["user_features"] = _features(
        schema.user_features, dataset.user_features, df, schema.user, named
    )
    out["item_features"] = _features(
        schema.item_features, dataset.item_features, df, schema.item, named
    )
    out["context"] = _features(schema.context, None, df, None, named)
    out["folds"] = {
        name: {"n_train": len(train), "n_test": len(test)}
        for name, (train, test) in dataset.folds.items()
    }
    out["report"] = _report_summary(dataset.report)
    return out


def _click_totals(df: pd.DataFrame, schema: Schema) -> dict[str, Any]:
    """``n_impressions``, ``n_clicks`` and pooled ``ctr`` (in that key order), or {}.

    Aggregated CTR data sum the impression and click columns; click labels count one
    impression per row. Other data have no click totals (empty dict).
    """
    n = len(df)
    out: dict[str, Any] = {}
    if schema.impressions is not None and schema.clicks is not None:
        imp = _total(df, schema.impressions)
        clk = _total(df, schema.clicks)
        out["n_impressions"] = imp
        out["n_clicks"] = clk
        out["ctr"] = clk / imp if imp and clk is not None else None
    elif schema.label_kind == "click" and schema.label in df.columns:
        clicks = pd.to_numeric(df[schema.label], errors="coerce")
        out["n_impressions"] = int(n)
        out["n_clicks"] = _int(clicks.sum())
        out["ctr"] = _float(clicks.mean()) if n else None
    return out


def _numeric_summary(series: pd.Series, column: str) -> dict[str, Any]:
    """``{"column", "min", "max", "mean"}`` of a numeric column (non-numbers ignored)."""
    values = pd.to_numeric(series, errors="coerce")
    return {
        "column": column,
        "min": _float(values.min()),
        "max": _float(values.max()),
        "mean": _float(values.mean()),
    }


def _tables(dataset: Dataset) -> dict[str, Any]:
    """Rows (and key) of the interaction table and of each feature table present."""
    df, schema = dataset.interactions, dataset.schema
    return {
        "interactions": {"n_rows": len(df), "n_columns": int(df.shape[1])},
        **{
            name: {"n_rows": len(table), "key": key}
            for name, table, key in (
                ("user_features", dataset.user_features, schema.user),
                ("item_features", dataset.item_features, schema.item),
            )
            if table is not None
        },
    }


def _report_summary(report: ValidationReport) -> dict[str, Any]:
    """Counts of errors and warnings, every finding as a dict, and rows dropped per reason."""
    return {
        "n_errors": len(report.errors),
        "n_warnings": len(report.warnings),
        "findings": [f.to_dict() for f in report.findings],
        "dropped": {k: int(v) for k, v in report.dropped.items()},
    }


# ----------------------------------------------------------------------------- pieces


def _layout(dataset: Dataset) -> str:
    explicit = getattr(dataset, "layout", None)
    if explicit:
        return str(explicit)
    for f in dataset.report.findings:
        if f.code == _LAYOUT_CODE:
            match = _LAYOUT_TEXT.search(f.message)
            if match:
                return match.group(1)
    return "ctr" if dataset.schema.impressions is not None else "table"


def _label(
    df: pd.DataFrame, col: str | None, kind: str, rating_range: tuple[float, float] | None
) -> dict[str, Any] | None:
    if col is None or col not in df.columns:
        return None
    values = pd.to_numeric(df[col], errors="coerce")
    out: dict[str, Any] = {
        "column": col,
        "kind": kind,
        "missing": int(values.isna().sum()),
        "min": _float(values.min()),
        "max": _float(values.max()),
        "mean": _float(values.mean()),
        "std": _float(values.std()),
    }
    if kind == "rating" and rating_range is not None:
        out["rating_range"] = [float(rating_range[0]), float(rating_range[1])]
    counts = values.value_counts(dropna=True)
    if 0 < len(counts) <= _MAX_VALUE_COUNTS:
        out["value_counts"] = {
            _value_key(v): int(c)
            for v, c in counts.sort_index().items()  # ascending values
        }
    return out


def _timestamps(series: pd.Series, col: str) -> dict[str, Any]:
    out: dict[str, Any] = {"column": col, "missing": int(series.isna().sum())}
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        lo, hi = series.min(), series.max()
        if pd.isna(lo):
            return {**out, "min": None, "max": None}
        out["min_epoch_s"] = _num(lo)
        out["max_epoch_s"] = _num(hi)
        out["min"] = _iso(pd.to_datetime(float(lo), unit="s", utc=True))
        out["max"] = _iso(pd.to_datetime(float(hi), unit="s", utc=True))
        return out
    stamps = series
    if not isinstance(series.dtype, pd.DatetimeTZDtype) and not pd.api.types.is_datetime64_dtype(
        series
    ):
        stamps = pd.to_datetime(series, utc=True, errors="coerce", format="mixed")
    lo, hi = stamps.min(), stamps.max()
    if pd.isna(lo):
        return {**out, "min": None, "max": None}
    out["min"] = _iso(lo)
    out["max"] = _iso(hi)
    out["min_epoch_s"] = _epoch(lo)
    out["max_epoch_s"] = _epoch(hi)
    return out


def _position_column(df: pd.DataFrame) -> str | None:
    for col in df.columns:
        if str(col).lower() == "position":
            return str(col)
    return None


def _positions(df: pd.DataFrame, col: str, label: str | None, kind: str) -> dict[str, Any]:
    values = df[col].dropna().unique()
    ordered = sorted(values.tolist(), key=lambda v: (str(type(v)), v))
    out: dict[str, Any] = {
        "column": col,
        "count": len(ordered),
        "values": [_plain(v) for v in ordered[:_MAX_POSITIONS]],
    }
    if (
        kind == "click"
        and label is not None
        and label in df.columns
        and len(ordered) <= _MAX_POSITIONS
    ):
        clicks = pd.to_numeric(df[label], errors="coerce")
        ctr = clicks.groupby(df[col]).mean()
        out["ctr_by_position"] = {str(_plain(k)): _float(v) for k, v in ctr.items()}
    return out


def _features(
    specs: tuple[Feature, ...],
    table: pd.DataFrame | None,
    interactions: pd.DataFrame,
    key: str | None,
    named: set[str],
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for spec in specs:
        seen.add(spec.name)
        if table is not None and spec.name in table.columns:
            series = table[spec.name]
        elif spec.name in interactions.columns:
            series = interactions[spec.name]
        else:
            out.append(
                {
                    "name": spec.name,
                    "type": feature_type_name(spec),
                    "in_schema": True,
                    "present": False,
                    "n_unique": None,
                    "missing": None,
                }
            )
            continue
        out.append(_feature(spec.name, feature_type_name(spec), series, spec))
    if table is not None:
        for col in table.columns:
            col = str(col)
            if col == key or col in seen:
                continue
            out.append(_extra(col, table[col]))
    elif key is None:  # context: interaction columns that no schema role names
        for col in interactions.columns:
            col = str(col)
            if col in named or col in seen:
                continue
            out.append(_extra(col, interactions[col]))
    return out


def _feature(name: str, tag: str, series: pd.Series, spec: Feature) -> dict[str, Any]:
    missing = int(series.isna().sum())
    out: dict[str, Any] = {"name": name, "type": tag, "in_schema": True, "missing": missing}
    if tag == "numeric":
        values = pd.to_numeric(series, errors="coerce")
        out.update(
            n_unique=int(values.nunique()),
            min=_float(values.min()),
            max=_float(values.max()),
            mean=_float(values.mean()),
            std=_float(values.std()),
        )
    elif tag == "multi_categorical":
        sep = spec.sep if isinstance(spec, MultiCategorical) else "|"
        present = series.dropna()
        parts = present.map(
            lambda v: [p for p in (v if isinstance(v, list) else str(v).split(sep)) if p != ""]
        )
        lengths = parts.map(len)
        exploded = parts.explode().dropna()
        counts = exploded.value_counts()
        out.update(
            n_unique=len(counts),
            n_empty=int((lengths == 0).sum()),
            mean_values_per_row=_float(lengths.mean()) if len(lengths) else None,
            top=_top(counts),
        )
    elif tag == "text":
        present = series.dropna().astype("str")
        tokens = present.str.split().map(len)
        out.update(
            n_unique=int(present.nunique()),
            mean_tokens=_float(tokens.mean()) if len(tokens) else None,
            max_tokens=_int(tokens.max()) if len(tokens) else None,
        )
    else:  # categorical
        counts = series.dropna().astype("str").value_counts()
        out.update(n_unique=len(counts), top=_top(counts))
    return out


def _extra(name: str, series: pd.Series) -> dict[str, Any]:
    missing = int(series.isna().sum())
    if pd.api.types.is_datetime64_any_dtype(series):
        present = series.dropna()
        return {
            "name": name,
            "type": "datetime",
            "in_schema": False,
            "missing": missing,
            "n_unique": int(present.nunique()),
            "min": _iso(present.min()) if len(present) else None,
            "max": _iso(present.max()) if len(present) else None,
        }
    return {
        "name": name,
        "type": "other",
        "in_schema": False,
        "missing": missing,
        "n_unique": int(series.nunique()),
        "dtype": str(series.dtype),
    }


# ----------------------------------------------------------------------------- plain values


def _id_counts(df: pd.DataFrame, user: str, item: str) -> tuple[int | None, int | None, int | None]:
    """(distinct users, distinct items, distinct pairs); None where a column is absent."""
    u_codes = i_codes = None
    n_users = n_items = n_pairs = None
    if user in df.columns:
        u_codes, uniques = pd.factorize(df[user])
        n_users = len(uniques)
    if item in df.columns:
        i_codes, uniques = pd.factorize(df[item])
        n_items = len(uniques)
    if u_codes is not None and i_codes is not None:
        ok = (u_codes >= 0) & (i_codes >= 0)
        pairs = np.sort(u_codes[ok].astype(np.int64) * max(n_items or 0, 1) + i_codes[ok])
        n_pairs = int(len(pairs) > 0) + int(np.count_nonzero(pairs[1:] != pairs[:-1]))
    return n_users, n_items, n_pairs


def _total(df: pd.DataFrame, col: str) -> float | int | None:
    if col not in df.columns:
        return None
    return _num(pd.to_numeric(df[col], errors="coerce").sum())


def _top(counts: pd.Series) -> list[dict[str, Any]]:
    return [{"value": str(v), "count": int(c)} for v, c in counts.head(_TOP).items()]


def _value_key(v: Any) -> str:
    f = float(v)
    return str(int(f)) if f.is_integer() else f"{f:g}"


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _num(v: Any) -> float | int | None:
    if v is None or pd.isna(v):
        return None
    v = _plain(v)
    return v if isinstance(v, int) else float(v)


def _float(v: Any) -> float | None:
    if v is None or pd.isna(v):
        return None
    f = float(v)
    return None if math.isinf(f) else f


def _int(v: Any) -> int | None:
    return None if v is None or pd.isna(v) else int(v)


def _iso(ts: Any) -> str | None:
    if ts is None or pd.isna(ts):
        return None
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return stamp.tz_convert("UTC").isoformat()


def _epoch(ts: Any) -> float | None:
    if ts is None or pd.isna(ts):
        return None
    stamp = pd.Timestamp(ts)
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return float(stamp.timestamp())
