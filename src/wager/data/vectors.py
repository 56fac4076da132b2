"""Vector features read and checked: where a :class:`~wager.data.schema.Vector` lives.

A vector feature (a precomputed embedding) is stored either as one list column ``name``
(one list of ``dim`` numbers per row, e.g. a Parquet list column) or spread over the
columns ``name_0 .. name_{dim-1}``. :func:`vector_columns` says which form a table uses;
:func:`vector_values` reads the vectors as an ``(n, dim)`` float64 array (all-NaN rows for
missing vectors) and raises a :class:`~wager.errors.DataError` naming the column and rows
of any malformed vector.

Used by :class:`~wager.data.column_encoders.VectorEncoder`, by
:class:`~wager.data.features.EntityEncoder` and by the data checks
(:mod:`wager.data.checks`); :mod:`wager.data.features` re-exports both functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from wager.data.schema import Vector
from wager.errors import DataError, data_error


def vector_columns(spec: Vector, columns: Iterable[Any], source: str = "") -> list[str]:
    """The columns that hold a :class:`~wager.data.schema.Vector`: ``[name]`` or its family.

    A column named ``spec.name`` is a list column; otherwise the vector is spread over
    ``name_0``, ..., ``name_{dim-1}``, which must all exist, and no ``name_i`` with
    ``i >= dim`` may exist (that would be a vector of another width).

    Args:
        spec: the vector feature.
        columns: the table's column names.
        source: the table's name, for messages.

    Returns:
        ``[spec.name]`` for a list column, else the ``dim`` family columns in order.

    Raises:
        DataError: both forms are present, neither is, or the family has gaps or more
            than ``dim`` columns; the message names the columns.

    Example:
        >>> vector_columns(Vector("emb", 2), ["id", "emb_0", "emb_1"])
        ['emb_0', 'emb_1']
    """
    names = [str(c) for c in columns]
    stem = re.compile(rf"{re.escape(spec.name)}_(0|[1-9][0-9]*)")
    family = {int(m.group(1)): c for c in names if (m := stem.fullmatch(c))}
    if spec.name in names:
        if family:
            raise data_error(
                "ambiguous_vector",
                f"Vector('{spec.name}') could be read from the list column '{spec.name}' or "
                f"from the columns {spec.name}_0, ...; both are present",
                source=source or None,
                column=spec.name,
                fix=f"Keep one form: drop the list column or the '{spec.name}_i' columns.",
            )
        return [spec.name]
    expected = [f"{spec.name}_{i}" for i in range(spec.dim)]
    if not family:
        raise data_error(
            "missing_column",
            f"Vector('{spec.name}', dim={spec.dim}) needs a list column '{spec.name}' or the "
            f"columns {expected[0]} .. {expected[-1]}, and neither is present",
            source=source or None,
            column=spec.name,
            fix=f"Available columns: {', '.join(names)}.",
        )
    extra = sorted(i for i in family if i >= spec.dim)
    if extra:
        raise data_error(
            "vector_dim",
            f"Vector('{spec.name}') declares dim={spec.dim}, but the table has "
            f"{len(family)} columns {spec.name}_0 .. {spec.name}_{max(family)}",
            source=source or None,
            column=family[extra[0]],
            fix=f"Declare Vector('{spec.name}', dim={max(family) + 1}) if the vectors have "
            f"{max(family) + 1} entries, or drop the extra columns.",
        )
    absent = [c for c in expected if c not in names]
    if absent:
        raise data_error(
            "missing_column",
            f"Vector('{spec.name}', dim={spec.dim}) is read from {expected[0]} .. "
            f"{expected[-1]}; missing: {', '.join(absent[:5])}"
            + (" ..." if len(absent) > 5 else ""),
            source=source or None,
            column=absent[0],
            fix="Add the missing columns, or declare the dim the table has.",
        )
    return expected


def _vector_error(
    code: str, problem: str, source: str, column: str, rows: np.ndarray, fix: str
) -> DataError:
    return data_error(code, problem, source=source or None, column=column, rows=rows, fix=fix)


def _list_cells(series: pd.Series, spec: Vector, source: str) -> np.ndarray:
    """(n, dim) float64 from a list column; all-NaN rows where the cell is missing."""
    n, d = len(series), spec.dim
    out = np.full((n, d), np.nan)
    wrong: list[int] = []
    wrong_len = 0
    not_list: list[int] = []
    not_number: list[int] = []
    for i, cell in enumerate(series.tolist()):
        if cell is None or cell is pd.NA or (isinstance(cell, float) and np.isnan(cell)):
            continue
        if isinstance(cell, str | bytes) or not isinstance(cell, Sequence | np.ndarray):
            not_list.append(i)
            continue
        try:
            arr = np.asarray(cell, dtype=np.float64)
        except (TypeError, ValueError):
            not_number.append(i)
            continue
        if arr.ndim != 1 or arr.shape[0] != d:
            if not wrong:
                wrong_len = int(arr.size) if arr.ndim == 1 else -1
            wrong.append(i)
            continue
        if np.isnan(arr).all():  # [nan, ..., nan] is a missing vector, as a NaN cell is
            continue
        out[i] = arr
    fix_form = (
        f"Store one list of {d} numbers per row (a Parquet list column), or the columns "
        f"{spec.name}_0 .. {spec.name}_{d - 1}."
    )
    if not_list:
        first = series.iloc[not_list[0]]
        raise _vector_error(
            "not_a_vector",
            f"Vector('{spec.name}') cells must be lists of numbers, got "
            f"{type(first).__name__} values such as {_short(first)}",
            source,
            spec.name,
            np.asarray(not_list),
            fix_form,
        )
    if not_number:
        first = series.iloc[not_number[0]]
        raise _vector_error(
            "non_numeric",
            f"Vector('{spec.name}') holds non-numeric entries, e.g. {_short(first)}",
            source,
            spec.name,
            np.asarray(not_number),
            "Clean the vectors: numbers only.",
        )
    if wrong:
        got = (
            "a nested list"
            if wrong_len < 0
            else f"{wrong_len} entr{'y' if wrong_len == 1 else 'ies'}"
        )
        raise _vector_error(
            "vector_dim",
            f"Vector('{spec.name}') expects {d} entries per vector; the first of these "
            f"rows has {got}",
            source,
            spec.name,
            np.asarray(wrong),
            f"Give every vector {d} entries (a missing vector is None), or declare the dim "
            "the vectors have.",
        )
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def vector_values(table: pd.DataFrame, spec: Vector, source: str = "") -> np.ndarray:
    """Read and check a vector feature: (n, dim) float64, all-NaN rows for missing vectors.

    Args:
        table: rows holding the list column ``spec.name`` or the ``name_i`` columns.
        spec: the vector feature.
        source: the table's name, for messages.

    Raises:
        DataError: naming the column and rows of vectors of another length, non-numeric
            or infinite entries, or vectors with only some entries missing.
    """
    cols = vector_columns(spec, table.columns, source)
    d = spec.dim
    if cols == [spec.name]:
        values = _list_cells(table[spec.name].reset_index(drop=True), spec, source)
        where = [spec.name] * d
    else:
        parts = []
        for c in cols:
            col = table[c].reset_index(drop=True)
            x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            bad = np.flatnonzero(np.isnan(x) & col.notna().to_numpy())
            if bad.size:
                raise _vector_error(
                    "non_numeric",
                    f"Vector('{spec.name}') holds non-numeric values such as "
                    f"{_short(col.iloc[bad[0]])}",
                    source,
                    c,
                    bad,
                    "Clean the column: numbers only.",
                )
            parts.append(x)
        values = np.stack(parts, axis=1) if parts else np.zeros((len(table), 0))
        where = cols
    inf = np.isinf(values)
    if inf.any():
        rows, dims = np.nonzero(inf)
        raise _vector_error(
            "infinite_value",
            f"Vector('{spec.name}') holds infinite entries",
            source,
            where[int(dims[0])],
            np.unique(rows),
            "Replace inf with a finite value (or make the whole vector missing).",
        )
    nan = np.isnan(values)
    partial = np.flatnonzero(nan.any(axis=1) & ~nan.all(axis=1))
    if partial.size:
        dim = int(np.flatnonzero(nan[partial[0]])[0])
        raise _vector_error(
            "partial_vector",
            f"Vector('{spec.name}') has vectors with some entries missing (the first misses "
            f"entry {dim})",
            source,
            where[dim],
            partial,
            "Give all entries of a vector, or none (a missing vector is encoded as such).",
        )
    return values
