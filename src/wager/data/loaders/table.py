"""Generic table loaders: CSV / TSV / Parquet / JSON-lines interaction tables and CTR tables.

:func:`read_table` reads one file by its extension (it lives in
:mod:`wager.data.loaders.read` and is re-exported here). :func:`load_table` reads an
interaction table plus optional user and item feature tables, checks all of them
(:mod:`wager.data.checks`) and either returns a :class:`~wager.data.dataset.Dataset`
or raises one :class:`~wager.errors.DataError` listing every error found.
:func:`load_ctr_table` does the same for aggregated CTR data (one row per target and
context, with impression and click counts).

Rows are never dropped silently: the only rows any loader here drops are CTR rows with
zero impressions (their rate is undefined), counted in ``dataset.report``. The
interaction table keeps its file row positions as index (0 = first data row), also
after such drops.

Example:
    >>> import pandas as pd, tempfile, pathlib
    >>> from wager.data.schema import Schema
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> pd.DataFrame({"u": [1, 2], "i": [7, 8], "r": [4, 5]}).to_csv(d / "r.csv", index=False)
    >>> ds = load_table(d / "r.csv", Schema(user="u", item="i", label="r", label_kind="rating"))
    >>> len(ds.interactions), ds.report.ok
    (2, True)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wager.data.checks import (
    ReportedDataError,
    validate_feature_table,
    validate_interactions,
)
from wager.data.dataset import Dataset
from wager.data.loaders.read import SUPPORTED_EXTENSIONS, read_table
from wager.data.schema import Categorical, Feature, MultiCategorical, Numeric, Schema, Text
from wager.errors import DataError, ValidationReport, make_finding

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "coerce_roles",
    "infer_features",
    "load_ctr_table",
    "load_table",
    "read_table",
]

# infer_features thresholds
_MULTI_SHARE = 0.1  # share of non-empty cells containing the separator -> MultiCategorical
_TEXT_MEAN_WORDS = 3.0  # mean words per cell -> Text
_MAX_INT_LEVELS = 20  # integer columns with at most this many distinct values -> Categorical
_UNNAMED = re.compile(r"^Unnamed: \d+$")  # pandas' name for a header cell left empty
_NUMERIC_SHARE = 0.9  # share of text cells that read as numbers -> judged as numbers
_TEXT_MIN_LEVELS = 50  # strings with more distinct values than this ...
_TEXT_UNIQUE_SHARE = 0.5  # ... that are also mostly unique -> Text


# ----------------------------------------------------------------------------- inference


def _is_list_like(value: Any) -> bool:
    return isinstance(value, list | tuple | np.ndarray)


def _infer_one(series: pd.Series) -> Feature | None:
    """The suggested spec for one column, or None when it carries nothing usable."""
    name = str(series.name)
    values = series.dropna()
    if len(values) == 0 or pd.api.types.is_datetime64_any_dtype(series.dtype):
        return None
    if pd.api.types.is_bool_dtype(series.dtype):
        return Categorical(name)
    if pd.api.types.is_integer_dtype(series.dtype):
        return Categorical(name) if values.nunique() <= _MAX_INT_LEVELS else Numeric(name)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return Numeric(name)
    if _is_list_like(values.iloc[0]):
        return MultiCategorical(name)
    text = values.astype(str)
    text = text[text.str.strip() != ""]
    if len(text) == 0:
        return None
    as_number = pd.to_numeric(text, errors="coerce")
    if as_number.notna().mean() >= _NUMERIC_SHARE:
        # numbers stored as text (JSON strings, or a column with a few typos that
        # validation then reports): judged like a numeric column
        numbers = as_number.dropna()
        integral = bool((numbers == numbers.round()).all())
        if integral and numbers.nunique() <= _MAX_INT_LEVELS:
            return Categorical(name)
        return Numeric(name)
    if text.str.contains("|", regex=False).mean() >= _MULTI_SHARE:
        return MultiCategorical(name, sep="|")
    if text.str.split().map(len).mean() >= _TEXT_MEAN_WORDS:  # words per cell
        return Text(name)
    n_levels = text.nunique()
    if n_levels > _TEXT_MIN_LEVELS and n_levels > _TEXT_UNIQUE_SHARE * len(text):
        return Text(name)
    return Categorical(name)


def infer_features(df: pd.DataFrame, key: str) -> tuple[Feature, ...]:
    """Suggest feature specs for the non-key columns of a user or item feature table.

    Rules, per column (missing cells ignored):

    - bool -> :class:`Categorical`; integers with at most 20 distinct values ->
      :class:`Categorical`, other integers and floats -> :class:`Numeric`;
    - text columns whose cells read as numbers (at least 90% of them) are judged as
      numbers by the rules above, so that the few that do not are reported by validation;
    - cells holding lists, or strings of which at least 10% contain "|" ->
      :class:`MultiCategorical` (``sep="|"``);
    - strings of 3 or more words on average -> :class:`Text`; strings with more than 50
      distinct values, most of them unique (names, titles) -> :class:`Text`;
    - other strings -> :class:`Categorical`;
    - columns that are empty in every row, datetime columns, and columns whose header
      cell is empty (read as "Unnamed: 0", typically a saved row index) get no spec.

    Args:
        df: the feature table.
        key: its id column (not a feature).

    Returns:
        Specs in column order; edit them freely and pass them in the schema.
    """
    specs = []
    for col in df.columns:
        if col == key or _UNNAMED.match(str(col)):
            continue
        spec = _infer_one(df[col])
        if spec is not None:
            specs.append(spec)
    return tuple(specs)


# ----------------------------------------------------------------------------- loading


def _merge_error(report: ValidationReport, exc: DataError) -> None:
    if isinstance(exc, ReportedDataError):
        report.extend(exc.report)
    else:
        for finding in exc.findings:
            report.add(finding)


def _text_columns(key_columns: Sequence[str], specs: Sequence[Feature]) -> set[str]:
    """Columns a loader reads as text: the id columns and every non-numeric feature column."""
    return set(key_columns) | {s.name for s in specs if not isinstance(s, Numeric)}


def _ids_as_int(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Validated whole-number id columns (``Schema.id_dtype = "int"``) as int64."""
    out = df.copy()
    for col in columns:
        if col in out.columns:
            out[col] = pd.to_numeric(out[col]).astype("int64")
    return out


def coerce_roles(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Make validated role columns numeric: labels/weights/propensities float, counts int64.

    Ids become int64 when the schema declares ``id_dtype = "int"`` (they stay text else).
    """
    out = df
    if schema.id_dtype == "int":
        out = _ids_as_int(df, [schema.user, schema.item])
    for col in (schema.label, schema.weight, schema.propensity):
        if col is None or col not in out.columns:
            continue
        s = out[col]
        if pd.api.types.is_bool_dtype(s.dtype) or not pd.api.types.is_numeric_dtype(s.dtype):
            if out is df:
                out = df.copy()
            numbers = s if pd.api.types.is_bool_dtype(s.dtype) else pd.to_numeric(s)
            out[col] = numbers.astype("float64")
    for col in (schema.impressions, schema.clicks):
        if col is None or col not in out.columns:
            continue
        if not pd.api.types.is_integer_dtype(out[col].dtype):
            if out is df:
                out = df.copy()
            out[col] = pd.to_numeric(out[col]).astype("int64")
    return out


def _feature_table(
    role: str,
    path: str | Path | None,
    key: str,
    declared: tuple[Feature, ...],
    interactions: pd.DataFrame | None,
    source: str,
    report: ValidationReport,
    id_dtype: str,
) -> tuple[pd.DataFrame | None, tuple[Feature, ...]]:
    """Read, infer specs for and check one feature table; findings go into ``report``."""
    if path is None:
        if declared:
            names = ", ".join(f.name for f in declared)
            report.add(
                make_finding(
                    "error",
                    "missing_feature_table",
                    f"the schema declares {role} features ({names}) but no {role} feature "
                    "table was given",
                    source=source,
                    fix=f"Pass the table with --{role}-features PATH ({role}_features_path= "
                    "in Python), or remove the feature specs",
                )
            )
        return None, declared
    fsource = str(path)
    try:
        table = read_table(path, text_columns=_text_columns([key], declared))
    except DataError as exc:
        _merge_error(report, exc)
        return None, declared
    specs = declared
    if not specs:
        specs = infer_features(table, key)
        if _text_columns([key], specs) != {key}:
            # read again with the inferred categorical columns as written ("007" stays "007")
            table = read_table(path, text_columns=_text_columns([key], specs))
        kinds = ", ".join(f"{s.name} ({type(s).__name__})" for s in specs) or "none"
        report.add(
            make_finding(
                "info",
                "features_inferred",
                f"{role} features inferred: {kinds}",
                source=fsource,
                fix="Declare them in the schema to choose differently",
            )
        )
        unused = [c for c in table.columns if c != key and c not in {s.name for s in specs}]
        if unused:
            report.add(
                make_finding(
                    "info",
                    "columns_unused",
                    f"columns not used as {role} features (empty, datetime or unnamed): "
                    f"{', '.join(unused)}",
                    source=fsource,
                )
            )
    ids = interactions[key] if interactions is not None and key in interactions.columns else None
    checked = validate_feature_table(table, key, specs, fsource, ids, role, id_dtype=id_dtype)
    report.extend(checked)
    if checked.ok and id_dtype == "int":
        table = _ids_as_int(table, [key])
    return table, specs


def _ctr_schema(
    schema: Schema, df: pd.DataFrame | None, source: str, report: ValidationReport
) -> Schema:
    """Check the CTR roles; the returned schema reads the label as a CTR."""
    if schema.impressions is None or schema.clicks is None:
        report.add(
            make_finding(
                "error",
                "missing_role",
                "aggregated CTR data needs an impression count column and a click count "
                "column, and the schema names neither",
                source=source,
                fix="Pass --impressions-col NAME and --clicks-col NAME "
                "(Schema(impressions=..., clicks=...) in Python)",
            )
        )
    if schema.label is None:
        if df is not None and "ctr" in df.columns:
            report.add(
                make_finding(
                    "error",
                    "column_exists",
                    "no label column was named, and the rate column wager would add as "
                    "clicks / impressions exists already",
                    source=source,
                    column="ctr",
                    fix="Pass --label-col ctr --label-kind ctr to use it as the label, or "
                    "rename it",
                )
            )
        return schema
    if schema.label_kind != "ctr":
        report.add(
            make_finding(
                "info",
                "label_kind_set",
                f"the label is read as a click-through rate in [0, 1] (label kind 'ctr', "
                f"was '{schema.label_kind}')",
                source=source,
                column=schema.label,
            )
        )
        return replace(schema, label_kind="ctr")
    return schema


def _load(
    path: str | Path,
    schema: Schema,
    user_features_path: str | Path | None,
    item_features_path: str | Path | None,
    *,
    ctr: bool,
) -> Dataset:
    source = str(path)
    report = ValidationReport()
    df: pd.DataFrame | None = None
    try:
        text = _text_columns([schema.user, schema.item], schema.context)
        df = read_table(path, text_columns=text)
    except DataError as exc:
        _merge_error(report, exc)
    if ctr:
        schema = _ctr_schema(schema, df, source, report)
    if df is not None:
        report.extend(validate_interactions(df, schema, source))
    if df is not None and report.ok and schema.impressions is not None:
        zero = np.flatnonzero(pd.to_numeric(df[schema.impressions]).to_numpy() == 0)
        if ctr and len(zero):
            report.drop(
                f"zero impressions in column '{schema.impressions}' (click-through rate undefined)",
                len(zero),
                source=source,
                rows=zero[:5].tolist(),
            )
            df = df.drop(index=df.index[zero])
        elif len(zero):
            report.add(
                make_finding(
                    "warning",
                    "zero_impressions",
                    f"{len(zero)} rows have 0 impressions (their click-through rate is "
                    "undefined); they are kept",
                    source=source,
                    column=schema.impressions,
                    rows=zero[:5].tolist(),
                    count=len(zero),
                    fix="Use --format ctr to drop them, or remove them",
                )
            )
    if df is not None and report.ok:
        df = coerce_roles(df, schema)
        if ctr and schema.label is None and schema.clicks and schema.impressions:
            df = df.assign(ctr=df[schema.clicks] / df[schema.impressions])
            schema = replace(schema, label="ctr", label_kind="ctr")
            report.add(
                make_finding(
                    "info",
                    "label_added",
                    f"added label column 'ctr' = {schema.clicks} / {schema.impressions}",
                    source=source,
                    column="ctr",
                )
            )
        if len(df) == 0:
            dropped = "; ".join(f"{n} rows: {why}" for why, n in report.dropped.items())
            report.add(
                make_finding(
                    "error",
                    "empty_after_filtering",
                    f"no rows are left after filtering (dropped {dropped})",
                    source=source,
                    fix="Check the impression counts; nothing can be trained on",
                )
            )
    users, user_specs = _feature_table(
        "user",
        user_features_path,
        schema.user,
        schema.user_features,
        df,
        source,
        report,
        schema.id_dtype,
    )
    items, item_specs = _feature_table(
        "item",
        item_features_path,
        schema.item,
        schema.item_features,
        df,
        source,
        report,
        schema.id_dtype,
    )
    if df is None or not report.ok:
        raise ReportedDataError(report)
    schema = replace(schema, user_features=user_specs, item_features=item_specs)
    return Dataset(
        interactions=df,
        schema=schema,
        user_features=users,
        item_features=items,
        source=source,
        report=report,
    )


def load_table(
    path: str | Path,
    schema: Schema,
    *,
    user_features_path: str | Path | None = None,
    item_features_path: str | Path | None = None,
) -> Dataset:
    """Load and check an interaction table and its optional user/item feature tables.

    Every check of :func:`~wager.data.checks.validate_interactions` and
    :func:`~wager.data.checks.validate_feature_table` runs on all tables before
    anything is raised, so one error lists every problem. Feature specs come from
    ``schema.user_features`` / ``schema.item_features`` when given, else from
    :func:`infer_features` (reported as info). Validated role columns are made
    numeric (label, weight and propensity float64; counts int64). Nothing is dropped;
    exact duplicate rows are kept and reported as a warning.

    Args:
        path: the interaction table (see :func:`read_table` for formats).
        schema: column roles; feature specs optional.
        user_features_path: a table with one row per user, keyed by ``schema.user``.
        item_features_path: a table with one row per item, keyed by ``schema.item``.

    Returns:
        The dataset; ``dataset.report`` holds the warnings and info.

    Raises:
        DataError: with every error finding (a ``ReportedDataError`` whose ``report``
            also holds the warnings).
    """
    return _load(path, schema, user_features_path, item_features_path, ctr=False)


def load_ctr_table(
    path: str | Path,
    schema: Schema,
    *,
    user_features_path: str | Path | None = None,
    item_features_path: str | Path | None = None,
) -> Dataset:
    """Load aggregated CTR data: one row per (target, context) with impressions and clicks.

    ``schema.item`` is the target, ``schema.user`` the context key (any column that
    identifies who or where the impressions were shown, e.g. a segment), and
    ``schema.impressions`` / ``schema.clicks`` the counts, which are required. Counts
    must be whole numbers >= 0 with clicks <= impressions. Rows with 0 impressions are
    dropped (their rate is undefined) and counted in ``dataset.report``. When
    ``schema.label`` is None, a ``ctr`` column = clicks / impressions is added and
    becomes the label; a given label is read as a rate in [0, 1] (label kind "ctr").

    Args:
        path: the CTR table (see :func:`read_table` for formats).
        schema: column roles including impressions and clicks.
        user_features_path: optional table keyed by ``schema.user``.
        item_features_path: optional table keyed by ``schema.item``.

    Returns:
        The dataset, with label kind "ctr".

    Raises:
        DataError: with every error found, including missing impression/click roles and
            no rows left after dropping zero-impression rows.
    """
    return _load(path, schema, user_features_path, item_features_path, ctr=True)
