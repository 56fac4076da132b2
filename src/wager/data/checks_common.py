"""Building blocks of the data checks: findings, how values are shown, shared column checks.

:mod:`wager.data.checks` (which re-exports :data:`ROLE_FLAGS` and
:func:`column_name_report`) and :mod:`wager.data.checks_interactions` build their reports
from these: how a message shows cell values (strings quoted, 7 not 7.0, the first 5 values
then "(and k more)"), adding a finding with its first rows (0-based positions) and its
count, which cells count as missing (NaN, None, blank strings), and the checks that
interaction and feature tables share: a column that must hold finite numbers, id columns,
feature columns against their specs, and the header (every column named once).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from wager.data.schema import Feature, Numeric, Vector
from wager.data.vectors import vector_values
from wager.errors import (
    DataError,
    Severity,
    ValidationReport,
    make_finding,
    suggest,
)

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
