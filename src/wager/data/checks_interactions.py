"""The checks of an interaction table's role columns, one function per role.

The label (ratings on the declared scale, clicks 0 or 1, CTRs in [0, 1]), sample weights,
impression and click counts, propensities, timestamps, and repeated rows (exact
duplicates; conflicting ratings of one (user, item) pair). Each adds its findings to the
report it is given; :func:`wager.data.checks.validate_interactions` runs them once it has
checked that their columns exist.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from wager.data.checks_common import (
    _MAX_SHOWN,
    ROLE_FLAGS,
    _add,
    _fmt_array,
    _fmt_values,
    _have,
    _missing_mask,
    _num,
    _numeric_values,
    _of,
    _plural,
)
from wager.data.duplicates import FIX_TEXT, describe_label_conflicts, find_label_conflicts
from wager.data.schema import Schema
from wager.errors import ValidationReport


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
