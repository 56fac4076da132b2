"""Data checks: every problem in an interaction table or feature table, found in one pass.

The checks never stop at the first problem: each returns a
:class:`~wager.errors.ValidationReport` holding every finding, each naming the source
file, the column, the first offending rows (0-based in ``Finding.rows``, 1-based data
rows in the message) and how to fix it. Severity follows one rule: an **error** makes
the data unusable as given; a **warning** is reported and the data are used (ids
absent from a feature table are handled as out-of-vocabulary); **info** records what
was found or done (rows dropped, with their count).

These are pure functions of frames: the loaders (``wager.data.loaders``) call them, and
:mod:`wager.data.validate` (the back end of ``wager data validate``) sits above both, so
the module graph has no cycle. The building blocks shared by the checks (value
formatting, findings, the numeric / id / feature-column and header checks) live in
:mod:`wager.data.checks_common`, the checks of the interaction table's role columns in
:mod:`wager.data.checks_interactions`; :data:`ROLE_FLAGS` and :func:`column_name_report`
are re-exported here.

Example:
    >>> import pandas as pd
    >>> from wager.data.schema import Schema
    >>> df = pd.DataFrame({"user_id": [1, 2], "item_id": [3, 4], "rating": [4.0, 9.0]})
    >>> r = validate_interactions(df, Schema(label="rating", label_kind="rating",
    ...                                      rating_range=(1, 5)), "ratings.csv")
    >>> r.errors[0].rows, r.errors[0].code
    ((1,), 'out_of_range')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wager.data.checks_common import (
    _MAX_SHOWN,
    ROLE_FLAGS,
    _add,
    _check_feature_columns,
    _check_ids,
    _columns_listed,
    _have,
    _missing_column,
    _src,
    column_name_report,
)
from wager.data.checks_interactions import (
    _check_counts,
    _check_label,
    _check_propensities,
    _check_repeats,
    _check_timestamps,
    _check_weights,
)
from wager.data.features import categorical_keys
from wager.data.schema import Feature, Schema
from wager.errors import DataError, ValidationReport, make_finding, suggest

__all__ = [
    "ROLE_FLAGS",
    "ReportedDataError",
    "column_name_report",
    "validate_feature_table",
    "validate_interactions",
]


class ReportedDataError(DataError):
    """A :class:`~wager.errors.DataError` that also carries the whole report.

    ``str(exc)`` and ``exc.findings`` hold the errors only (as for any ``DataError``);
    ``exc.report`` also holds the warnings and info found on the way, so that
    ``wager data validate`` can show everything at once.
    """

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.errors)
        self.report = report


# ----------------------------------------------------------------------------- interactions


def _check_schema_columns(
    report: ValidationReport, df: pd.DataFrame, schema: Schema, source: str | None
) -> set[str]:
    """Report every schema role whose column is absent; return the roles present."""
    present: set[str] = set()
    if schema.user == schema.item:
        report.add(
            make_finding(
                "error",
                "same_column",
                "the same column is named as both the user id and the item id",
                source=source,
                column=schema.user,
                fix="Pass different columns with --user-col and --item-col",
            )
        )
    for role, (what, flag) in ROLE_FLAGS.items():
        col = getattr(schema, role)
        if col is None:
            continue
        if col in df.columns:
            present.add(role)
        else:
            _missing_column(report, df, col, what, f"{flag} (Schema.{role} in Python)", source)
    return present


def validate_interactions(df: pd.DataFrame, schema: Schema, source: str) -> ValidationReport:
    """Check an interaction table against its schema; collect every problem.

    Checks, each reported with source, column, the first rows and a fix:

    - every column the schema names exists (else the message names the role's flag, e.g.
      ``--label-col``, and the closest existing names);
    - the table has data rows;
    - user and item ids are present in every row;
    - the label is numeric, present and finite; ratings lie in ``schema.rating_range``;
      click labels are 0 or 1; CTR labels lie in [0, 1];
    - weights are present, finite and >= 0;
    - impression and click counts are non-negative integers and clicks <= impressions;
    - propensities lie in (0, 1];
    - timestamps are present and readable as epoch numbers or dates;
    - numeric context features are numeric and finite;
    - exact duplicate rows are counted (a warning: they are kept);
    - ratings (label kind "rating") that conflict for one (user, item) pair are counted
      with an example (a warning here; ``[data] duplicates`` decides what a run does,
      see :mod:`wager.data.duplicates`). Repeated pairs of clicks and CTRs are not
      conflicts (repeated impressions).

    Args:
        df: interaction table, one row per interaction (or per aggregated row).
        schema: column roles and context feature specs.
        source: the file or table name used in messages.

    Returns:
        The report; ``report.ok`` is False when any error was found.
    """
    src = _src(source)
    report = column_name_report(list(df.columns), src)
    if not report.ok:
        return report
    present = _check_schema_columns(report, df, schema, src)
    _check_feature_columns(
        report, df, schema.context, source=src, how_to_name="Schema.context", where="interaction"
    )
    if len(df) == 0:
        report.add(
            make_finding(
                "error",
                "empty_table",
                "the table has no data rows",
                source=src,
                fix="Check that the right file was given and that it is not truncated",
            )
        )
        return report

    for role in ("user", "item"):
        if role in present:
            col = getattr(schema, role)
            _check_ids(report, df[col], role, src, col, schema.id_dtype)

    if "label" in present and schema.label is not None:
        _check_label(report, df[schema.label], schema, src)

    if "weight" in present and schema.weight is not None:
        _check_weights(report, df[schema.weight], src, schema.weight)
    _check_counts(report, df, schema, present, src)
    if "propensity" in present and schema.propensity is not None:
        _check_propensities(report, df[schema.propensity], src, schema.propensity)
    if "timestamp" in present and schema.timestamp is not None:
        _check_timestamps(report, df[schema.timestamp], src, schema.timestamp)
    _check_repeats(report, df, schema, src)
    return report


# ----------------------------------------------------------------------------- feature tables


def _id_keys(series: pd.Series, id_dtype: str = "string") -> pd.Series:
    """Canonical string keys of ids, as the encoders match them (3, 3.0 and "3" agree).

    With ``id_dtype = "int"`` the ids are compared as numbers ("007" and "7" agree).
    """
    if id_dtype == "int" and not pd.api.types.is_integer_dtype(series.dtype):
        series = pd.to_numeric(series, errors="coerce")
    return categorical_keys(series)


def _fmt_ids(ids: Sequence[Any], total: int) -> str:
    shown = ", ".join(str(v) for v in list(ids)[:_MAX_SHOWN])
    if total > _MAX_SHOWN:
        shown += f" (and {total - _MAX_SHOWN} more)"
    return shown


def validate_feature_table(
    df: pd.DataFrame,
    key: str,
    specs: Sequence[Feature],
    source: str,
    interaction_ids: pd.Series | None,
    role: str,
    *,
    id_dtype: str = "string",
) -> ValidationReport:
    """Check a user or item feature table keyed by id.

    Errors: the key column is missing, an id is missing or occurs more than once (the
    rows of every copy are named), a feature column is missing, a numeric feature holds
    non-numbers or infinities. Warning (data still used): ids that occur in the
    interactions but have no row here, with counts; they are handled as
    out-of-vocabulary. Info: ids here that never occur in the interactions.

    Ids are compared as the encoders compare them: 3, 3.0 and "3" are the same id, and
    "007" and "7" are two (the loaders read ids as written unless the schema declares
    ``id_dtype = "int"``, then both sides are int64).

    Args:
        df: the feature table, one row per id.
        key: the id column (the same name as in the interactions).
        specs: feature specs for the table's columns.
        source: the feature table's file name, used in messages.
        interaction_ids: the id column of the interactions, or None to skip coverage.
        role: "user" or "item".
        id_dtype: the schema's ``id_dtype``; with "int" an id that is not a whole number
            is an error.

    Returns:
        The report.
    """
    src = _src(source)
    report = column_name_report(list(df.columns), src)
    if not report.ok:
        return report
    name = Path(source).name if source else "the feature table"
    feature_specs = [s for s in specs if s.name != key]
    _check_feature_columns(
        report,
        df,
        feature_specs,
        source=src,
        how_to_name=f"the {role} feature specs (Schema.{role}_features)",
        where=role,
    )
    if key not in df.columns:
        _missing_key_column(report, df, key, role, src)
        return report
    if len(df) == 0:
        report.add(
            make_finding(
                "warning",
                "empty_table",
                f"the {role} feature table has no data rows; every {role} is handled as "
                "out-of-vocabulary",
                source=src,
                fix="Check that the right file was given",
            )
        )
    _check_ids(report, df[key], role, src, key, id_dtype)
    keys = _id_keys(df[key], id_dtype)
    present = keys.notna().to_numpy(dtype=bool)
    _check_duplicate_ids(report, df[key], keys, present, role, src, key)
    if interaction_ids is not None:
        _check_id_coverage(report, interaction_ids, keys[present], role, src, key, name, id_dtype)
    return report


def _missing_key_column(
    report: ValidationReport, df: pd.DataFrame, key: str, role: str, src: str | None
) -> None:
    """Report a feature table without its id column, naming the flag that names the key."""
    flag = ROLE_FLAGS.get(role, (role, f"--{role}-col"))[1]
    hint = suggest(key, [str(c) for c in df.columns]).strip()
    report.add(
        make_finding(
            "error",
            "missing_column",
            f"the {role} feature table has no {role} id column (columns present: "
            f"{_columns_listed(df)})",
            source=src,
            column=key,
            fix=(hint + " " if hint else "")
            + f"The table is joined on the {role} id column named by {flag}; "
            "rename its id column to match",
        )
    )


def _check_duplicate_ids(
    report: ValidationReport,
    ids: pd.Series,
    keys: pd.Series,
    present: np.ndarray,
    role: str,
    src: str | None,
    key: str,
) -> None:
    """Report feature-table ids that occur more than once, naming every copy's row.

    Args:
        report: the report to add to.
        ids: the table's id column as written.
        keys: canonical keys of ``ids`` (see :func:`_id_keys`), NaN where missing.
        present: bool mask, shape (n_rows,): the id is present.
        role: "user" or "item".
        src: the source named in messages.
        key: the id column's name.
    """
    dup_mask = (keys.duplicated(keep=False).to_numpy(dtype=bool)) & present
    dup = np.flatnonzero(dup_mask)
    if len(dup):
        dup_ids = list(dict.fromkeys(ids.iloc[dup].tolist()))
        _add(
            report,
            "error",
            "duplicate_id",
            f"{role} ids that occur more than once: {_fmt_ids(dup_ids, len(dup_ids))} "
            f"({len(dup)} rows in all)",
            source=src,
            column=key,
            positions=dup,
            fix=f"Keep one row per {role} id, so that its features are not ambiguous",
        )


def _check_id_coverage(
    report: ValidationReport,
    interaction_ids: pd.Series,
    table_keys_present: pd.Series,
    role: str,
    src: str | None,
    key: str,
    name: str,
    id_dtype: str,
) -> None:
    """Compare the ids of the interactions with those of a feature table.

    Warns about interaction ids with no feature row (handled as out-of-vocabulary) and
    records as info the feature-table ids that never occur in the interactions.

    Args:
        report: the report to add to.
        interaction_ids: the id column of the interactions.
        table_keys_present: canonical keys of the feature table's present ids.
        role: "user" or "item".
        src: the source named in messages.
        key: the id column's name.
        name: the feature table's file name, for messages.
        id_dtype: the schema's ``id_dtype``.
    """
    inter_keys = pd.Index(_id_keys(interaction_ids, id_dtype).dropna().unique())
    table_keys = pd.Index(table_keys_present.unique())
    absent = inter_keys[~inter_keys.isin(table_keys)]
    if len(absent):
        report.add(
            make_finding(
                "warning",
                "ids_missing_from_features",
                f"{len(absent)} of {len(inter_keys)} {role} ids in the interactions "
                f"{_have(len(absent))} no row in {name} "
                f"(e.g. {_fmt_ids(list(absent), len(absent))}); "
                f"{'it is' if len(absent) == 1 else 'they are'} handled as out-of-vocabulary",
                source=src,
                column=key,
                count=len(absent),
                fix=f"Add rows for them to {name} if their features are known",
            )
        )
    unused = table_keys[~table_keys.isin(inter_keys)]
    if len(unused):
        report.add(
            make_finding(
                "info",
                "ids_without_interactions",
                f"{len(unused)} of {len(table_keys)} {role} ids in {name} never "
                f"{'occurs' if len(unused) == 1 else 'occur'} in "
                "the interactions",
                source=src,
                column=key,
                count=len(unused),
            )
        )
