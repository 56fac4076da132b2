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
the module graph has no cycle.

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

import math
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wager.data.duplicates import FIX_TEXT, describe_label_conflicts, find_label_conflicts
from wager.data.features import categorical_keys, vector_values
from wager.data.schema import Feature, Numeric, Schema, Vector
from wager.errors import (
    DataError,
    Severity,
    ValidationReport,
    make_finding,
    suggest,
)

__all__ = [
    "ROLE_FLAGS",
    "ReportedDataError",
    "column_name_report",
    "validate_feature_table",
    "validate_interactions",
]

_MAX_SHOWN = 5
_MAX_COLUMNS_LISTED = 20

#: schema attribute -> (what the column holds, the CLI flag that names it)
ROLE_FLAGS: dict[str, tuple[str, str]] = {
    "user": ("user id", "--user-col"),
    "item": ("item id", "--item-col"),
    "label": ("label", "--label-col"),
    "weight": ("sample weight", "--weight-col"),
    "impressions": ("impression count", "--impressions-col"),
    "clicks": ("click count", "--clicks-col"),
    "timestamp": ("timestamp", "--timestamp-col"),
    "propensity": ("propensity", "--propensity-col"),
}


class ReportedDataError(DataError):
    """A :class:`~wager.errors.DataError` that also carries the whole report.

    ``str(exc)`` and ``exc.findings`` hold the errors only (as for any ``DataError``);
    ``exc.report`` also holds the warnings and info found on the way, so that
    ``wager data validate`` can show everything at once.
    """

    def __init__(self, report: ValidationReport) -> None:
        super().__init__(report.errors)
        self.report = report


# ----------------------------------------------------------------------------- helpers


def _src(source: str | None) -> str | None:
    return str(source) if source else None


def _fmt_value(value: Any) -> str:
    """Render one cell for a message: strings quoted, numbers plain (7 not 7.0)."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:g}"
    if value is None or value is pd.NA or value is pd.NaT:
        return "missing"
    return repr(value)


def _fmt_values(series: pd.Series, positions: np.ndarray) -> str:
    """The values at the first few positions, e.g. "'five', 7 (and 3 more)"."""
    shown = ", ".join(_fmt_value(series.iloc[int(p)]) for p in positions[:_MAX_SHOWN])
    if len(positions) > _MAX_SHOWN:
        shown += f" (and {len(positions) - _MAX_SHOWN} more)"
    return shown


def _fmt_array(values: np.ndarray, positions: np.ndarray) -> str:
    """Numeric values at the first few positions, e.g. "7, 0 (and 3 more)"."""
    shown = ", ".join(_num(values[int(p)]) for p in positions[:_MAX_SHOWN])
    if len(positions) > _MAX_SHOWN:
        shown += f" (and {len(positions) - _MAX_SHOWN} more)"
    return shown


def _num(x: float) -> str:
    return _fmt_value(float(x))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _have(k: int) -> str:
    return "has" if k == 1 else "have"


def _of(k: int, n: int, noun: str, plural: str | None = None) -> str:
    """ "2 of 5 ratings are", "1 of 1 rating is": a count out of a total, with its verb."""
    word = noun if n == 1 else (plural or noun + "s")
    return f"{k} of {n} {word} {'is' if k == 1 else 'are'}"


def _add(
    report: ValidationReport,
    severity: Severity,
    code: str,
    problem: str,
    *,
    source: str | None,
    column: str | None,
    positions: np.ndarray | Sequence[int] = (),
    count: int | None = None,
    fix: str | None = None,
) -> None:
    pos = np.asarray(positions, dtype=np.int64)
    report.add(
        make_finding(
            severity,
            code,
            problem,
            source=source,
            column=column,
            rows=[int(p) for p in pos[:_MAX_SHOWN]],
            count=len(pos) if count is None else count,
            fix=fix,
        )
    )


def _missing_mask(series: pd.Series) -> np.ndarray:
    """True where a cell is missing: NaN/None/NaT, or a string that is empty or only spaces."""
    miss = series.isna().to_numpy(dtype=bool, na_value=True)
    if isinstance(series.dtype, pd.StringDtype):
        blank = series.str.strip().eq("").to_numpy(dtype=bool, na_value=False)
        miss = miss | blank
    elif pd.api.types.is_string_dtype(series.dtype) or pd.api.types.is_object_dtype(series.dtype):
        blank = series.map(lambda v: isinstance(v, str) and not v.strip()).to_numpy(dtype=bool)
        miss = miss | blank
    return miss


def _columns_listed(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    text = ", ".join(cols[:_MAX_COLUMNS_LISTED])
    if len(cols) > _MAX_COLUMNS_LISTED:
        text += f" (and {len(cols) - _MAX_COLUMNS_LISTED} more)"
    return text or "none"


def _header_looks_like_data(df: pd.DataFrame) -> bool:
    """True when every column name reads as a number (a header-less file read with a header)."""
    names = [str(c) for c in df.columns]
    if not names:
        return False
    return bool(pd.to_numeric(pd.Series(names), errors="coerce").notna().all())


def _missing_column(
    report: ValidationReport,
    df: pd.DataFrame,
    col: str,
    what: str,
    how_to_name: str,
    source: str | None,
) -> None:
    if _header_looks_like_data(df):
        fix = (
            "The first line of the file is read as the header, but its names look like data: "
            f"add a header line naming the columns, then name the column with {how_to_name}."
        )
    else:
        hint = suggest(col, [str(c) for c in df.columns]).strip()
        fix = (hint + " " if hint else "") + f"Name the right column with {how_to_name}."
    report.add(
        make_finding(
            "error",
            "missing_column",
            f"the {what} column is not in the table (columns present: {_columns_listed(df)})",
            source=source,
            column=col,
            fix=fix,
        )
    )


def _numeric_values(
    report: ValidationReport,
    series: pd.Series,
    *,
    what: str,
    source: str | None,
    column: str,
    allow_missing: bool = False,
    missing_fix: str = "Fill in the value or remove the row.",
) -> np.ndarray:
    """Check a column that must hold finite numbers; return float64 values (NaN where bad).

    Reports non-numeric cells (with their values), missing cells (unless
    ``allow_missing``) and infinite values, each as one error finding.
    """
    missing = _missing_mask(series)
    if pd.api.types.is_bool_dtype(series.dtype):
        values = series.astype("float64").to_numpy()
    elif pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
    else:
        values = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    n = len(series)
    non_numeric = np.flatnonzero(np.isnan(values) & ~missing)
    if len(non_numeric):
        _add(
            report,
            "error",
            "non_numeric",
            f"{_of(len(non_numeric), n, f'{what} value')} not a number: "
            f"{_fmt_values(series, non_numeric)}",
            source=source,
            column=column,
            positions=non_numeric,
            fix="Write plain numbers (with '.' as the decimal point) or remove the rows",
        )
    missing_pos = np.flatnonzero(missing)
    if len(missing_pos) and not allow_missing:
        _add(
            report,
            "error",
            "missing_value",
            f"{_of(len(missing_pos), n, f'{what} value')} missing (empty or NaN)",
            source=source,
            column=column,
            positions=missing_pos,
            fix=missing_fix,
        )
    infinite = np.flatnonzero(np.isinf(values))
    if len(infinite):
        _add(
            report,
            "error",
            "infinite_value",
            f"{_of(len(infinite), n, f'{what} value')} infinite: {_fmt_values(series, infinite)}",
            source=source,
            column=column,
            positions=infinite,
            fix="Replace them with finite numbers or remove the rows",
        )
    values = values.copy()
    values[np.isinf(values)] = np.nan
    return values


def _check_ids(
    report: ValidationReport,
    series: pd.Series,
    role: str,
    source: str | None,
    column: str,
    id_dtype: str = "string",
) -> None:
    """Report missing ids, and ids that are not whole numbers when ``id_dtype`` is "int"."""
    missing_mask = _missing_mask(series)
    if id_dtype == "int":
        if pd.api.types.is_bool_dtype(series.dtype):
            values = np.full(len(series), np.nan)
        else:
            values = pd.to_numeric(series, errors="coerce").to_numpy(
                dtype="float64", na_value=np.nan
            )
        whole = np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < 2**63)
        bad = np.flatnonzero(~whole & ~missing_mask)
        if len(bad):
            _add(
                report,
                "error",
                "non_integer_id",
                f"{_of(len(bad), len(series), f'{role} id')} not a whole number, but the "
                f"schema declares integer ids (id_dtype = 'int'): {_fmt_values(series, bad)}",
                source=source,
                column=column,
                positions=bad,
                fix="Fix the rows, or declare id_dtype = 'string' (the default) to read ids "
                "as written",
            )
    missing = np.flatnonzero(missing_mask)
    if len(missing):
        _add(
            report,
            "error",
            "missing_id",
            f"{_of(len(missing), len(series), f'{role} id')} missing (empty or NaN)",
            source=source,
            column=column,
            positions=missing,
            fix="Fill in the id or remove the row; every row needs a "
            f"{role} (use a placeholder such as 'unknown' for anonymous {role}s)",
        )


def _parse_timestamps(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(reads as an epoch number, reads only as a date) for each cell of a timestamp column."""
    n = len(series)
    if pd.api.types.is_datetime64_any_dtype(series.dtype):
        return np.zeros(n, dtype=bool), series.notna().to_numpy(dtype=bool)
    if pd.api.types.is_bool_dtype(series.dtype):
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        values = series.to_numpy(dtype="float64", na_value=np.nan)
        return np.isfinite(values), np.zeros(n, dtype=bool)
    as_num = pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    number = np.isfinite(as_num)
    date = np.zeros(n, dtype=bool)
    pos = np.flatnonzero(~number & series.notna().to_numpy(dtype=bool))
    rest = series.iloc[pos]
    if len(rest):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                parsed = pd.to_datetime(rest, errors="coerce", format="mixed")
            except (ValueError, TypeError):
                parsed = pd.to_datetime(rest, errors="coerce", format="mixed", utc=True)
        date[pos] = parsed.notna().to_numpy(dtype=bool)
    return number, date


def _check_feature_columns(
    report: ValidationReport,
    df: pd.DataFrame,
    specs: Sequence[Feature],
    *,
    source: str | None,
    how_to_name: str,
    where: str,
) -> None:
    """Check that each spec's column exists and that its values fit the spec."""
    for spec in specs:
        kind = type(spec).__name__
        if isinstance(spec, Vector):  # a list column or the name_i columns; every row checked
            try:
                vector_values(df, spec, source or "")
            except DataError as exc:
                for finding in exc.findings:
                    report.add(finding)
            continue
        if spec.name not in df.columns:
            _missing_column(report, df, spec.name, f"{kind} feature", how_to_name, source)
            continue
        col = df[spec.name]
        if isinstance(spec, Numeric):
            values = _numeric_values(
                report,
                col,
                what=f"numeric feature '{spec.name}'",
                source=source,
                column=spec.name,
                allow_missing=spec.missing == "indicator",
                missing_fix="Fill them in, or declare the feature with missing='indicator' "
                "to encode missing values with an indicator",
            )
            n_missing = int(_missing_mask(col).sum())
            if spec.missing == "indicator" and n_missing:
                report.add(
                    make_finding(
                        "info",
                        "missing_feature_values",
                        f"{n_missing} of {len(col)} {where} rows have no value for numeric "
                        f"feature '{spec.name}'; they are encoded as the mean with a "
                        "'missing' indicator",
                        source=source,
                        column=spec.name,
                        count=n_missing,
                    )
                )
            if spec.log1p:
                low = np.flatnonzero(values <= -1)
                if len(low):
                    _add(
                        report,
                        "error",
                        "out_of_range",
                        f"log1p needs values > -1, but {len(low)} values are not: "
                        f"{_fmt_values(col, low)}",
                        source=source,
                        column=spec.name,
                        positions=low,
                        fix="Fix the values, or declare the feature with log1p=False",
                    )
        # Categorical, MultiCategorical and Text accept any value: rare, unseen and
        # missing values map to out-of-vocabulary.


def column_name_report(names: Sequence[Any], source: str | None) -> ValidationReport:
    """Check that a table's header names every column once.

    pandas would silently rename a copy (``a``, ``a.1``) and a JSON reader would keep one
    value of a repeated key; either way one column is read while another was meant. Empty
    header cells are not compared (pandas reads them as "Unnamed: N").

    Args:
        names: the header cells (column names) in file order.
        source: the file or table, named in the message.

    Returns:
        One "duplicate_column" error per repeated name, naming the column and its 1-based
        positions in the header.
    """
    cells = [str(n).strip() for n in names]
    report = ValidationReport()
    for name, n in Counter(c for c in cells if c).items():
        if n < 2:
            continue
        where = ", ".join(str(i + 1) for i, c in enumerate(cells) if c == name)
        report.add(
            make_finding(
                "error",
                "duplicate_column",
                f"the header names this column {n} times (columns {where}); wager cannot "
                "tell which one is meant",
                source=_src(source),
                column=name,
                fix="Rename or remove the copies so that every column name is unique",
            )
        )
    return report


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


def _check_weights(
    report: ValidationReport, series: pd.Series, src: str | None, column: str
) -> None:
    """Check a sample-weight column: finite numbers >= 0, not all zero."""
    w = _numeric_values(
        report,
        series,
        what="weight",
        source=src,
        column=column,
        missing_fix="Fill them in (1 is the neutral weight) or remove the rows",
    )
    negative = np.flatnonzero(w < 0)
    if len(negative):
        _add(
            report,
            "error",
            "negative_value",
            f"{_of(len(negative), len(w), 'weight')} negative: {_fmt_array(w, negative)}",
            source=src,
            column=column,
            positions=negative,
            fix="Sample weights must be >= 0; fix or remove the rows",
        )
    elif np.isfinite(w).any() and not (w[np.isfinite(w)] > 0).any():
        _add(
            report,
            "warning",
            "all_zero_weights",
            "every weight is 0, so no row counts",
            source=src,
            column=column,
            count=len(w),
            fix="Check that --weight-col names the right column",
        )


def _check_counts(
    report: ValidationReport,
    df: pd.DataFrame,
    schema: Schema,
    present: set[str],
    src: str | None,
) -> None:
    """Check impression and click counts: whole numbers >= 0, clicks <= impressions.

    ``present`` holds the schema roles whose columns exist in ``df``.
    """
    counts: dict[str, np.ndarray] = {}
    for role in ("impressions", "clicks"):
        col = getattr(schema, role)
        if role not in present or col is None:
            continue
        what = ROLE_FLAGS[role][0]
        v = _numeric_values(report, df[col], what=what, source=src, column=col)
        negative = np.flatnonzero(v < 0)
        if len(negative):
            _add(
                report,
                "error",
                "negative_count",
                f"{_of(len(negative), len(v), what)} negative: {_fmt_array(v, negative)}",
                source=src,
                column=col,
                positions=negative,
                fix="Counts must be whole numbers >= 0; fix or remove the rows",
            )
        fractional = np.flatnonzero(np.isfinite(v) & (v != np.round(v)))
        if len(fractional):
            _add(
                report,
                "error",
                "non_integer_count",
                f"{_of(len(fractional), len(v), what)} not a whole number: "
                f"{_fmt_array(v, fractional)}",
                source=src,
                column=col,
                positions=fractional,
                fix="Counts must be whole numbers; if the column holds rates, pass it as "
                "the label (--label-col, --label-kind ctr) instead",
            )
        counts[role] = v
    if "impressions" in counts and "clicks" in counts:
        imp, clk = counts["impressions"], counts["clicks"]
        over = np.flatnonzero((imp >= 0) & (clk >= 0) & (clk > imp))
        if len(over):
            pairs = ", ".join(f"{_num(clk[p])} > {_num(imp[p])}" for p in over[:_MAX_SHOWN])
            _add(
                report,
                "error",
                "clicks_exceed_impressions",
                f"{len(over)} of {len(imp)} rows {_have(len(over))} more clicks than "
                f"impressions ({pairs}; "
                f"impressions in column '{schema.impressions}')",
                source=src,
                column=schema.clicks,
                positions=over,
                fix="Check that --clicks-col and --impressions-col are not swapped, and "
                "fix or remove the rows",
            )


def _check_propensities(
    report: ValidationReport, series: pd.Series, src: str | None, column: str
) -> None:
    """Check a logging-propensity column: finite numbers in (0, 1]."""
    p = _numeric_values(
        report,
        series,
        what="propensity",
        source=src,
        column=column,
    )
    bad = np.flatnonzero(np.isfinite(p) & ((p <= 0) | (p > 1)))
    if len(bad):
        _add(
            report,
            "error",
            "out_of_range",
            f"{_of(len(bad), len(p), 'propensity', 'propensities')} outside (0, 1]: "
            f"{_fmt_array(p, bad)}",
            source=src,
            column=column,
            positions=bad,
            fix="A propensity is the logging policy's probability of the logged action: "
            "it must be > 0 (importance weights divide by it) and <= 1",
        )


def _check_timestamps(
    report: ValidationReport, ts: pd.Series, src: str | None, column: str
) -> None:
    """Check a timestamp column: present, readable, and all epoch numbers or all dates."""
    missing = _missing_mask(ts)
    miss_pos = np.flatnonzero(missing)
    if len(miss_pos):
        _add(
            report,
            "error",
            "missing_value",
            f"{_of(len(miss_pos), len(ts), 'timestamp')} missing (empty or NaN)",
            source=src,
            column=column,
            positions=miss_pos,
            fix="Fill them in or remove the rows",
        )
    number, date = _parse_timestamps(ts)
    bad = np.flatnonzero(~number & ~date & ~missing)
    if len(bad):
        _add(
            report,
            "error",
            "bad_timestamp",
            f"{_of(len(bad), len(ts), 'timestamp')} neither a number nor a date: "
            f"{_fmt_values(ts, bad)}",
            source=src,
            column=column,
            positions=bad,
            fix="Use epoch seconds or ISO dates such as 2020-01-31T12:00:00",
        )
    if number.any() and date.any():
        # name the rows of the rarer kind: they are the likely mistakes
        odd = np.flatnonzero(number if number.sum() <= date.sum() else date)
        _add(
            report,
            "error",
            "mixed_timestamps",
            f"timestamps mix epoch numbers ({_plural(int(number.sum()), 'row')}) and "
            f"dates ({_plural(int(date.sum()), 'row')}), which cannot be ordered "
            f"together; the rarer kind: {_fmt_values(ts, odd)}",
            source=src,
            column=column,
            positions=odd,
            fix="Write every timestamp the same way: epoch seconds or ISO dates",
        )


def _check_repeats(
    report: ValidationReport, df: pd.DataFrame, schema: Schema, src: str | None
) -> None:
    """Warn about exact duplicate rows and about conflicting ratings of one (user, item)."""
    dup = _duplicate_positions(df)
    if len(dup):
        _add(
            report,
            "warning",
            "duplicate_rows",
            f"{_of(len(dup), len(df), 'row')} an exact copy of an earlier row; copies are "
            "kept and count as separate interactions",
            source=src,
            column=None,
            positions=dup,
            fix="If they are logging artefacts, remove them before loading",
        )
    conflicts = find_label_conflicts(df, schema)
    if conflicts.n_pairs:
        _add(
            report,
            "warning",
            "conflicting_labels",
            describe_label_conflicts(df, schema, conflicts)
            + "; training refuses them unless [data] duplicates says otherwise",
            source=src,
            column=schema.label,
            positions=conflicts.positions,
            fix=FIX_TEXT,
        )


def _hashable(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value


def _duplicate_positions(df: pd.DataFrame) -> np.ndarray:
    """0-based positions of rows equal to an earlier row (cells holding lists compared too)."""
    try:
        return np.flatnonzero(df.duplicated(keep="first").to_numpy())
    except TypeError:  # unhashable cells, e.g. lists read from JSON lines
        hashable = df.apply(
            lambda c: c.map(_hashable) if pd.api.types.is_object_dtype(c.dtype) else c
        )
        return np.flatnonzero(hashable.duplicated(keep="first").to_numpy())


def _check_label(
    report: ValidationReport, series: pd.Series, schema: Schema, source: str | None
) -> None:
    col = str(schema.label)
    y = _numeric_values(
        report,
        series,
        what="label",
        source=source,
        column=col,
        missing_fix="Fill in the label or remove the row; a missing label cannot be "
        "trained or evaluated on",
    )
    finite = np.isfinite(y)
    if schema.label_kind == "rating" and schema.rating_range is not None:
        lo, hi = schema.rating_range
        bad = np.flatnonzero(finite & ((y < lo) | (y > hi)))
        if len(bad):
            _add(
                report,
                "error",
                "out_of_range",
                f"{_of(len(bad), len(y), 'rating')} outside the declared scale "
                f"[{_num(lo)}, {_num(hi)}]: {_fmt_array(y, bad)}",
                source=source,
                column=col,
                positions=bad,
                fix="Fix the rows, or declare the real scale with --rating-min/--rating-max",
            )
    elif schema.label_kind == "click":
        bad = np.flatnonzero(finite & (y != 0) & (y != 1))
        if len(bad):
            _add(
                report,
                "error",
                "not_binary",
                f"{_of(len(bad), len(y), 'click label')} not 0 or 1: {_fmt_array(y, bad)}",
                source=source,
                column=col,
                positions=bad,
                fix="A click label is 0 or 1; for rates in [0, 1] use --label-kind ctr, "
                "for ratings --label-kind rating",
            )
    elif schema.label_kind == "ctr":
        bad = np.flatnonzero(finite & ((y < 0) | (y > 1)))
        if len(bad):
            _add(
                report,
                "error",
                "out_of_range",
                f"{_of(len(bad), len(y), 'CTR label')} outside [0, 1]: {_fmt_array(y, bad)}",
                source=source,
                column=col,
                positions=bad,
                fix="A click-through rate is clicks / impressions, in [0, 1]; for ratings "
                "use --label-kind rating",
            )


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
