"""Feature encoders: fitted on the training split only, saved and loaded with the model.

Index conventions (the model layer relies on them):

- :class:`CategoricalEncoder` -> ``(n,)`` int64; 0 is out-of-vocabulary (OOV: unseen, rare
  below ``min_count``, or missing), known values are 1..V.
- :class:`NumericEncoder` -> ``(n, 2)`` float32: column 0 the standardised value (0 where
  missing), column 1 the 0/1 "was missing" indicator. With ``missing="error"`` a NaN raises.
- :class:`MultiCategoricalEncoder` -> ``(n, L)`` int64 padded with 0; 1 is OOV; known values
  are 2..V+1. ``L`` is the longest cell in the batch (at least 1).
- :class:`TextEncoder` -> ``(n, L)`` int64 padded with 0; hashed word / word n-gram ids in
  1..n_buckets. Stateless: hashing needs no vocabulary, so unseen words still land in a bucket.
- :class:`VectorEncoder` -> ``(n, dim + 1)`` float32: columns 0..dim-1 the (standardised)
  vector, all 0 where missing; column dim the 0/1 "was missing" indicator. Read from a list
  column or from the ``name_0..name_{dim-1}`` columns (see :func:`vector_columns`).

:class:`EntityEncoder` encodes an entity (user or item): its id as a categorical plus the
columns of its feature table, looked up by id. Ids absent from the feature table get the
all-missing row (OOV categories, missing numerics), so they are handled, never a KeyError.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wager.data.schema import (
    Categorical,
    Feature,
    MultiCategorical,
    Numeric,
    Text,
    Vector,
    feature_from_dict,
    feature_to_dict,
)
from wager.errors import DataError, NotFittedError, data_error

OOV = 0
_TOKEN = re.compile(r"\w+", re.UNICODE)


def _as_key(value: Any) -> str | None:
    """Canonical string key of a categorical value (None for missing).

    Integers and integral floats share a key ("3" for 3 and 3.0) so that ids read as
    float from a CSV with gaps still match ids read as int elsewhere.
    """
    if value is None:
        return None
    if isinstance(value, float):
        if np.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, np.floating):
        return _as_key(float(value))
    if isinstance(value, np.integer):
        return str(int(value))
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value)


def categorical_keys(values: pd.Series | pd.Index | Sequence[Any] | np.ndarray) -> pd.Series:
    """Map raw values to canonical string keys (missing -> None), preserving order."""
    s = pd.Series(values).reset_index(drop=True)
    if pd.api.types.is_integer_dtype(s.dtype) and not isinstance(s.dtype, pd.CategoricalDtype):
        return s.astype("int64").astype(str).astype(object)
    if isinstance(s.dtype, pd.StringDtype):  # ids read as text: already their keys
        return s.astype(object).where(s.notna(), None)
    return s.map(_as_key).astype(object)


def _not_fitted(name: str) -> NotFittedError:
    return NotFittedError(f"encoder for '{name}' is not fitted: call fit() first")


@dataclass
class CategoricalEncoder:
    """Encode a categorical column as indices; rare and unseen values share OOV index 0.

    Example:
        >>> enc = CategoricalEncoder(Categorical("color", min_count=2))
        >>> enc = enc.fit(pd.Series(["red", "red", "blue"]))
        >>> enc.transform(pd.Series(["red", "blue", "green"])).tolist()
        [1, 0, 0]
    """

    spec: Categorical
    vocabulary_: list[str] | None = None

    def fit(self, values: pd.Series | Sequence[Any]) -> CategoricalEncoder:
        """Learn the vocabulary: values seen at least ``min_count`` times, most frequent first.

        Args:
            values: (n,) training values; missing values are ignored.
        """
        keys = categorical_keys(values).dropna()
        return self.fit_counts(keys.value_counts(sort=False))

    def fit_counts(self, counts: pd.Series) -> CategoricalEncoder:
        """:meth:`fit` from the values' counts: ``counts`` maps each value's key
        (:func:`categorical_keys`) to its training rows (e.g. summed over a stream)."""
        kept = counts[counts >= self.spec.min_count]
        # frequency descending, ties by key: deterministic across runs
        order = sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))
        self.vocabulary_ = [str(k) for k, _ in order]  # str already; str() types them
        self._lookup = {k: i + 1 for i, k in enumerate(self.vocabulary_)}
        return self

    @property
    def cardinality(self) -> int:
        """Number of distinct indices including OOV (embedding table rows)."""
        if self.vocabulary_ is None:
            raise _not_fitted(self.spec.name)
        return len(self.vocabulary_) + 1

    def transform(self, values: pd.Series | Sequence[Any] | np.ndarray) -> np.ndarray:
        """(n,) int64 indices; 0 for OOV."""
        if self.vocabulary_ is None:
            raise _not_fitted(self.spec.name)
        if not hasattr(self, "_lookup"):
            self._lookup = {k: i + 1 for i, k in enumerate(self.vocabulary_)}
        keys = categorical_keys(values)
        return keys.map(self._lookup).fillna(OOV).to_numpy(dtype=np.int64)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        if self.vocabulary_ is None:
            raise _not_fitted(self.spec.name)
        return {"vocabulary": list(self.vocabulary_)}

    def load_state_dict(self, state: dict[str, Any]) -> CategoricalEncoder:
        """Restore from :meth:`state_dict`."""
        self.vocabulary_ = list(state["vocabulary"])
        self._lookup = {k: i + 1 for i, k in enumerate(self.vocabulary_)}
        return self


@dataclass
class NumericEncoder:
    """Standardise (or bucketise) a numeric column, fitted on training values; NaN explicit.

    Without ``spec.bins`` the output is (value standardised with the training mean and std,
    missing indicator). With bins it is one-hot over the buckets followed by the missing
    indicator (a missing value has no bucket).

    Example:
        >>> enc = NumericEncoder(Numeric("age")).fit(pd.Series([20.0, 40.0]))
        >>> enc.transform(pd.Series([30.0, float("nan")])).tolist()
        [[0.0, 0.0], [0.0, 1.0]]
        >>> enc = NumericEncoder(Numeric("age", bins=(18, 35))).fit(pd.Series([20.0]))
        >>> enc.transform(pd.Series([10.0, 18.0, 60.0])).tolist()
        [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    """

    spec: Numeric
    mean_: float | None = None
    std_: float | None = None
    edges_: list[float] | None = None
    source: str = ""

    def _prepare(self, values: pd.Series | Sequence[Any] | np.ndarray) -> np.ndarray:
        s = pd.Series(values).reset_index(drop=True)
        x = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(x) & s.notna().to_numpy())
        if bad.size:
            raise data_error(
                "non_numeric",
                f"non-numeric values such as {s.iloc[bad[0]]!r}",
                source=self.source or None,
                column=self.spec.name,
                rows=bad,
                fix="Clean the column, or declare it Categorical instead of Numeric.",
            )
        inf = np.flatnonzero(np.isinf(x))
        if inf.size:
            raise data_error(
                "infinite_value",
                "infinite values",
                source=self.source or None,
                column=self.spec.name,
                rows=inf,
                fix="Replace inf with a finite value or NaN.",
            )
        if self.spec.missing == "error":
            nan = np.flatnonzero(np.isnan(x))
            if nan.size:
                raise data_error(
                    "missing_value",
                    "missing values (NaN) with missing='error'",
                    source=self.source or None,
                    column=self.spec.name,
                    rows=nan,
                    fix="Fill them, or use Numeric(missing='indicator').",
                )
        if self.spec.log1p:
            neg = np.flatnonzero(x <= -1)
            if neg.size:
                raise data_error(
                    "log1p_domain",
                    "values <= -1 cannot take log1p",
                    source=self.source or None,
                    column=self.spec.name,
                    rows=neg,
                    fix="Use Numeric(log1p=False) for this column.",
                )
            x = np.log1p(x)
        return x

    def fit(self, values: pd.Series | Sequence[Any] | np.ndarray) -> NumericEncoder:
        """Learn mean and std (std 1 when constant/empty) and, for ``bins=n``, the bucket
        edges (distinct training quantiles at 1/n, ..., (n-1)/n) from the finite values."""
        x = self._prepare(values)
        finite = x[~np.isnan(x)]
        self.mean_ = float(finite.mean()) if finite.size else 0.0
        std = float(finite.std()) if finite.size else 0.0
        self.std_ = std if std > 1e-12 else 1.0
        bins = self.spec.bins
        if isinstance(bins, tuple):
            self.edges_ = [float(b) for b in bins]
        elif bins:
            q = np.quantile(finite, np.arange(1, bins) / bins) if finite.size else np.array([])
            # an edge equal to the minimum would leave the first bucket empty
            self.edges_ = [float(e) for e in np.unique(q) if finite.size and e > finite.min()]
        else:
            self.edges_ = None
        return self

    @property
    def width(self) -> int:
        """Number of output columns: (value, missing), or one per bucket plus missing."""
        if self.edges_ is not None:
            return len(self.edges_) + 2
        return 2

    def transform(self, values: pd.Series | Sequence[Any] | np.ndarray) -> np.ndarray:
        """(n, width) float32: (standardised value, 0 where missing; missing indicator), or
        the one-hot bucket (all zeros where missing) followed by the missing indicator."""
        if self.mean_ is None or self.std_ is None:
            raise _not_fitted(self.spec.name)
        x = self._prepare(values)
        missing = np.isnan(x)
        if self.edges_ is not None:
            out = np.zeros((len(x), self.width), dtype=np.float32)
            bucket = np.searchsorted(np.asarray(self.edges_), x[~missing], side="right")
            out[np.flatnonzero(~missing), bucket] = 1.0
            out[:, -1] = missing
            return out
        z = np.where(missing, 0.0, (x - self.mean_) / self.std_)
        return np.stack([z, missing.astype(np.float64)], axis=1).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        if self.mean_ is None:
            raise _not_fitted(self.spec.name)
        state: dict[str, Any] = {"mean": self.mean_, "std": self.std_}
        if self.edges_ is not None:
            state["edges"] = list(self.edges_)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> NumericEncoder:
        """Restore from :meth:`state_dict`."""
        self.mean_ = float(state["mean"])
        self.std_ = float(state["std"])
        edges = state.get("edges")
        self.edges_ = None if edges is None else [float(e) for e in edges]
        return self


def _split_cells(values: pd.Series | Sequence[Any], sep: str) -> list[list[str]]:
    out: list[list[str]] = []
    for v in pd.Series(values).tolist():
        if isinstance(v, list | tuple | np.ndarray):
            out.append([k for k in (_as_key(x) for x in v) if k])
            continue
        key = _as_key(v)
        out.append([t.strip() for t in key.split(sep) if t.strip()] if key else [])
    return out


def _pad(rows: list[list[int]]) -> np.ndarray:
    width = max([len(r) for r in rows] + [1])
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


@dataclass
class MultiCategoricalEncoder:
    """Encode a multi-valued column ("Action|Comedy") as padded index lists.

    Example:
        >>> enc = MultiCategoricalEncoder(MultiCategorical("genres"))
        >>> enc = enc.fit(pd.Series(["a|b", "a"]))
        >>> enc.transform(pd.Series(["b|a", "z", ""])).tolist()
        [[3, 2], [1, 0], [0, 0]]
    """

    spec: MultiCategorical
    vocabulary_: list[str] | None = None

    def fit(self, values: pd.Series | Sequence[Any]) -> MultiCategoricalEncoder:
        """Learn the vocabulary of individual values seen at least ``min_count`` times."""
        flat = pd.Series([t for cell in _split_cells(values, self.spec.sep) for t in cell])
        counts = flat.value_counts(sort=False)
        kept = counts[counts >= self.spec.min_count]
        order = sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))
        self.vocabulary_ = [str(k) for k, _ in order]  # str already; str() types them
        self._lookup = {k: i + 2 for i, k in enumerate(self.vocabulary_)}
        return self

    @property
    def cardinality(self) -> int:
        """Embedding rows: padding (0), OOV (1) and the vocabulary."""
        if self.vocabulary_ is None:
            raise _not_fitted(self.spec.name)
        return len(self.vocabulary_) + 2

    def transform(self, values: pd.Series | Sequence[Any]) -> np.ndarray:
        """(n, L) int64 padded with 0; 1 for OOV values."""
        if self.vocabulary_ is None:
            raise _not_fitted(self.spec.name)
        if not hasattr(self, "_lookup"):
            self._lookup = {k: i + 2 for i, k in enumerate(self.vocabulary_)}
        lookup = self._lookup
        return _pad(
            [[lookup.get(t, 1) for t in cell] for cell in _split_cells(values, self.spec.sep)]
        )

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        if self.vocabulary_ is None:
            raise _not_fitted(self.spec.name)
        return {"vocabulary": list(self.vocabulary_)}

    def load_state_dict(self, state: dict[str, Any]) -> MultiCategoricalEncoder:
        """Restore from :meth:`state_dict`."""
        self.vocabulary_ = list(state["vocabulary"])
        self._lookup = {k: i + 2 for i, k in enumerate(self.vocabulary_)}
        return self


def text_tokens(text: str, ngram_max: int) -> list[str]:
    """Lower-cased word tokens and word n-grams (up to ``ngram_max``) of ``text``."""
    words = _TOKEN.findall(text.lower())
    out = list(words)
    for n in range(2, ngram_max + 1):
        out += [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    return out


@dataclass
class TextEncoder:
    """Hashed bag of words and word n-grams; stateless (fit only checks the column).

    Bucket of a token = crc32(utf-8 token) mod n_buckets + 1, stable across processes
    (Python's ``hash`` is salted per process and would break saved models).

    Example:
        >>> enc = TextEncoder(Text("title", n_buckets=8, ngram_max=1)).fit(pd.Series(["x"]))
        >>> enc.transform(pd.Series(["Toy Story", None])).shape
        (2, 2)
    """

    spec: Text
    fitted_: bool = False

    def fit(self, values: pd.Series | Sequence[Any]) -> TextEncoder:
        """Nothing to learn; marks the encoder fitted."""
        self.fitted_ = True
        return self

    @property
    def cardinality(self) -> int:
        """Embedding rows: padding (0) and the buckets."""
        return self.spec.n_buckets + 1

    def transform(self, values: pd.Series | Sequence[Any]) -> np.ndarray:
        """(n, L) int64 bucket ids padded with 0, L <= max_tokens."""
        if not self.fitted_:
            raise _not_fitted(self.spec.name)
        rows: list[list[int]] = []
        cache: dict[str, int] = {}
        for v in pd.Series(values).tolist():
            key = _as_key(v)
            toks = text_tokens(key, self.spec.ngram_max)[: self.spec.max_tokens] if key else []
            ids = []
            for t in toks:
                if t not in cache:
                    cache[t] = zlib.crc32(t.encode("utf-8")) % self.spec.n_buckets + 1
                ids.append(cache[t])
            rows.append(ids)
        return _pad(rows)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (none beyond the spec)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> TextEncoder:
        """Restore from :meth:`state_dict`."""
        self.fitted_ = True
        return self


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


@dataclass
class VectorEncoder:
    """Encode a precomputed embedding: standardised entries plus a missing indicator.

    Standardisation statistics (per-entry mean and std) come from the training rows with a
    vector; a missing vector encodes as zeros (the training mean) with indicator 1.

    Example:
        >>> enc = VectorEncoder(Vector("emb", 2))
        >>> enc = enc.fit(pd.DataFrame({"emb": [[0.0, 1.0], [2.0, 3.0]]}))
        >>> enc.transform(pd.DataFrame({"emb_0": [1.0, None], "emb_1": [5.0, None]})).tolist()
        [[0.0, 3.0, 0.0], [0.0, 0.0, 1.0]]
    """

    spec: Vector
    mean_: list[float] | None = None
    std_: list[float] | None = None
    source: str = ""

    def _values(
        self, table: pd.DataFrame | pd.Series | Sequence[Any], source: str | None = None
    ) -> np.ndarray:
        if not isinstance(table, pd.DataFrame):  # the list column itself
            table = pd.DataFrame({self.spec.name: pd.Series(table).reset_index(drop=True)})
        return vector_values(table, self.spec, self.source if source is None else source)

    def fit(self, table: pd.DataFrame | pd.Series | Sequence[Any]) -> VectorEncoder:
        """Learn each entry's mean and std (std 1 where constant) over the present vectors.

        Args:
            table: training rows holding the list column or the ``name_i`` columns, or
                the (n,) list column itself.
        """
        x = self._values(table)
        present = x[~np.isnan(x).any(axis=1)]
        d = self.spec.dim
        if self.spec.standardize and len(present):
            std = present.std(axis=0)
            self.mean_ = [float(v) for v in present.mean(axis=0)]
            self.std_ = [float(v) if v > 1e-12 else 1.0 for v in std]
        else:
            self.mean_, self.std_ = [0.0] * d, [1.0] * d
        return self

    @property
    def width(self) -> int:
        """Number of output columns: ``dim`` entries plus the missing indicator."""
        return self.spec.dim + 1

    def transform(
        self, table: pd.DataFrame | pd.Series | Sequence[Any], source: str | None = None
    ) -> np.ndarray:
        """(n, dim + 1) float32: the standardised vector (0 where missing), then the 0/1
        missing indicator.

        Args:
            table: rows holding the list column or the ``name_i`` columns, or the (n,) list
                column itself.
            source: the table's name for messages (None: the ``source`` given at creation).
        """
        if self.mean_ is None or self.std_ is None:
            raise _not_fitted(self.spec.name)
        x = self._values(table, source)
        missing = np.isnan(x).any(axis=1)
        z = (x - np.asarray(self.mean_)) / np.asarray(self.std_)
        z[missing] = 0.0
        return np.concatenate([z, missing[:, None].astype(np.float64)], axis=1).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state."""
        if self.mean_ is None or self.std_ is None:
            raise _not_fitted(self.spec.name)
        return {"mean": list(self.mean_), "std": list(self.std_)}

    def load_state_dict(self, state: dict[str, Any]) -> VectorEncoder:
        """Restore from :meth:`state_dict`."""
        self.mean_ = [float(v) for v in state["mean"]]
        self.std_ = [float(v) for v in state["std"]]
        return self


Encoder = (
    CategoricalEncoder | NumericEncoder | MultiCategoricalEncoder | TextEncoder | VectorEncoder
)


def _feature_column(table: pd.DataFrame, spec: Feature, source: str) -> pd.Series:
    """The column a (non-vector) spec's encoder reads; a named error when it is absent."""
    if spec.name not in table.columns:
        raise data_error(
            "missing_column",
            "feature column not found",
            source=source or None,
            column=spec.name,
            fix=f"Available columns: {', '.join(map(str, table.columns))}.",
        )
    return table[spec.name]


def make_encoder(spec: Feature, source: str = "") -> Encoder:
    """The encoder class that matches a feature spec."""
    if isinstance(spec, Categorical):
        return CategoricalEncoder(spec)
    if isinstance(spec, Numeric):
        return NumericEncoder(spec, source=source)
    if isinstance(spec, MultiCategorical):
        return MultiCategoricalEncoder(spec)
    if isinstance(spec, Text):
        return TextEncoder(spec)
    if isinstance(spec, Vector):
        return VectorEncoder(spec, source=source)
    raise TypeError(f"not a feature spec: {spec!r}")


@dataclass
class FeatureEncoders:
    """Encoders for a set of columns of one table (e.g. context features of interactions)."""

    specs: tuple[Feature, ...]
    encoders_: dict[str, Encoder] = field(default_factory=dict)

    def fit(self, table: pd.DataFrame, source: str = "") -> FeatureEncoders:
        """Fit one encoder per spec on ``table`` (the training split)."""
        self.encoders_ = {}
        for spec in self.specs:
            if isinstance(spec, Vector):  # a list column or the name_i columns
                self.encoders_[spec.name] = VectorEncoder(spec, source=source).fit(table)
            else:
                column = _feature_column(table, spec, source)
                self.encoders_[spec.name] = make_encoder(spec, source).fit(column)
        return self

    def transform(self, table: pd.DataFrame, source: str = "") -> dict[str, np.ndarray]:
        """Encode every fitted column of ``table``; see the module docstring for shapes.

        Args:
            table: rows holding every spec's column (a vector's list or ``name_i`` columns).
            source: the table's name, for messages.
        """
        if len(self.encoders_) != len(self.specs):
            raise NotFittedError("feature encoders are not fitted: call fit() first")
        out: dict[str, np.ndarray] = {}
        for spec in self.specs:
            enc = self.encoders_[spec.name]
            if isinstance(enc, VectorEncoder):
                out[spec.name] = enc.transform(table, source or None)
            else:
                out[spec.name] = enc.transform(_feature_column(table, spec, source))
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state: specs and every encoder's state."""
        return {
            "specs": [feature_to_dict(s) for s in self.specs],
            "encoders": {n: e.state_dict() for n, e in self.encoders_.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FeatureEncoders:
        """Rebuild fitted encoders from :meth:`state_dict`."""
        specs = tuple(feature_from_dict(s) for s in state["specs"])
        out = cls(specs)
        out.encoders_ = {
            s.name: make_encoder(s).load_state_dict(state["encoders"][s.name]) for s in specs
        }
        return out


@dataclass
class EntityEncoder:
    """Encode users (or items): the id plus the columns of their feature table, by id.

    The id vocabulary is learnt from the training interactions (``min_count`` counts
    interactions); feature vocabularies and statistics from the feature-table rows of the
    entities that occur in training. Ids missing from the feature table get missing features.

    Attributes:
        key: id column name (e.g. "user_id").
        id_spec: categorical spec for the id itself (its ``min_count`` makes rare ids OOV).
        feature_specs: specs for feature-table columns.
    """

    key: str
    id_spec: Categorical
    feature_specs: tuple[Feature, ...] = ()
    id_encoder_: CategoricalEncoder | None = None
    features_: FeatureEncoders | None = None
    table_: pd.DataFrame | None = None

    def fit(
        self,
        interaction_ids: pd.Series,
        table: pd.DataFrame | None = None,
        source: str = "",
        counts: pd.Series | None = None,
    ) -> EntityEncoder:
        """Fit on the training split.

        Args:
            interaction_ids: (n_train,) ids of the training interactions.
            table: feature table with a ``key`` column (one row per id), or None.
            source: name of the feature table, for messages.
            counts: instead of ``interaction_ids``: training interactions per id key
                (:func:`categorical_keys`), e.g. counted over a stream.
        """
        if counts is not None:
            interaction_ids = pd.Series(counts.index, dtype=object)
            self.id_encoder_ = CategoricalEncoder(self.id_spec).fit_counts(counts)
        else:
            self.id_encoder_ = CategoricalEncoder(self.id_spec).fit(interaction_ids)
        self.features_ = FeatureEncoders(self.feature_specs)
        if self.feature_specs:
            if table is None:
                raise data_error(
                    "missing_table",
                    f"features {[s.name for s in self.feature_specs]} were "
                    f"declared but no feature table keyed by '{self.key}' was given",
                    source=source or None,
                    fix="Pass the feature table, or drop the features.",
                )
            indexed = self._index(table, source)
            seen = categorical_keys(pd.Series(interaction_ids).unique())
            train_rows = indexed.loc[indexed.index.intersection(pd.Index(seen.dropna()))]
            self.features_.fit(train_rows.reset_index(), source)
            self.table_ = indexed
        return self

    def add_rows(self, table: pd.DataFrame, source: str = "") -> pd.Index:
        """Add (or replace) feature-table rows after fit, without refitting any encoder.

        The rows are checked first (id column, one row per id, every feature column, values
        the fitted encoders accept: a DataError names the column and rows) and nothing is
        changed when a check fails. An id outside the id vocabulary stays OOV: its features
        alone tell the model what it is. Without feature specs nothing is stored.

        Args:
            table: rows with the ``key`` column and every feature column (extra columns
                are ignored, as in :meth:`fit`).
            source: name of the table, for messages.

        Returns:
            The canonical keys of ``table``'s ids, in table order.
        """
        if self.id_encoder_ is None or self.features_ is None:
            raise NotFittedError(f"encoder for '{self.key}' is not fitted: call fit() first")
        indexed = self.indexed(table, source)
        if self.feature_specs:
            self.features_.transform(indexed.reset_index(drop=True), source)  # value checks
            kept = None if self.table_ is None else self.table_.drop(indexed.index, errors="ignore")
            self.table_ = indexed if kept is None else pd.concat([kept, indexed])
        return indexed.index

    def indexed(self, table: pd.DataFrame, source: str = "") -> pd.DataFrame:
        """``table``'s feature columns (vectors as ``name_i`` columns) indexed by the canonical
        id keys: the form the encoder stores (DataError: no id column, a duplicated id, a
        missing or malformed feature column)."""
        return self._index(table, source)

    def _index(self, table: pd.DataFrame, source: str) -> pd.DataFrame:
        if self.key not in table.columns:
            raise data_error(
                "missing_column",
                "id column not found in the feature table",
                source=source or None,
                column=self.key,
                fix=f"Available columns: {', '.join(map(str, table.columns))}.",
            )
        keys = categorical_keys(table[self.key])
        dup = np.flatnonzero(keys.duplicated(keep="first").to_numpy())
        if dup.size:
            raise data_error(
                "duplicate_id",
                f"duplicate ids such as {keys.iloc[dup[0]]!r}",
                source=source or None,
                column=self.key,
                rows=dup,
                fix="Keep one row per id in the feature table.",
            )
        parts: list[pd.DataFrame] = []
        for spec in self.feature_specs:
            if isinstance(spec, Vector):
                # read and checked once, on the whole table (rows named as the user numbers
                # them), then kept as the name_i columns: fast to look up, plain Parquet
                values = vector_values(table, spec, source)
                names = [f"{spec.name}_{i}" for i in range(spec.dim)]
                parts.append(pd.DataFrame(values, columns=names, index=table.index))
            else:
                parts.append(table[[_feature_column(table, spec, source).name]])
        out = pd.concat(parts, axis=1) if parts else table[[]].copy()
        out.index = pd.Index(keys.to_numpy(), name=self.key)
        return out

    @property
    def n_ids(self) -> int:
        """Rows of the id embedding table (OOV included)."""
        if self.id_encoder_ is None:
            raise NotFittedError(f"encoder for '{self.key}' is not fitted: call fit() first")
        return self.id_encoder_.cardinality

    def cardinalities(self) -> dict[str, int]:
        """Embedding rows per categorical/multi/text field, the id field included."""
        if self.id_encoder_ is None or self.features_ is None:
            raise NotFittedError(f"encoder for '{self.key}' is not fitted: call fit() first")
        out = {self.key: self.id_encoder_.cardinality}
        for name, enc in self.features_.encoders_.items():
            if not isinstance(enc, NumericEncoder | VectorEncoder):
                out[name] = enc.cardinality
        return out

    def transform(self, ids: pd.Series | Sequence[Any] | np.ndarray) -> dict[str, np.ndarray]:
        """Encode ``ids``: {key: (n,) id indices, feature name: encoded feature}.

        Ids absent from the feature table get all-missing features (OOV / NaN).
        """
        if self.id_encoder_ is None or self.features_ is None:
            raise NotFittedError(f"encoder for '{self.key}' is not fitted: call fit() first")
        keys = categorical_keys(ids)
        # encode each distinct id once, then gather: interactions repeat ids many times
        codes, uniques = pd.factorize(keys, use_na_sentinel=False)
        uniq_keys = pd.Series(np.asarray(uniques, dtype=object))
        out = {self.key: self.id_encoder_.transform(uniq_keys)[codes]}
        if self.feature_specs and self.table_ is not None:
            rows = self.table_.reindex(uniq_keys.to_numpy())
            encoded = self.features_.transform(rows.reset_index(drop=True))
            out.update({name: arr[codes] for name, arr in encoded.items()})
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (the feature table itself is saved separately as Parquet)."""
        if self.id_encoder_ is None or self.features_ is None:
            raise NotFittedError(f"encoder for '{self.key}' is not fitted: call fit() first")
        return {
            "key": self.key,
            "id_spec": feature_to_dict(self.id_spec),
            "id_encoder": self.id_encoder_.state_dict(),
            "features": self.features_.state_dict(),
        }

    @classmethod
    def from_state_dict(
        cls, state: dict[str, Any], table: pd.DataFrame | None = None
    ) -> EntityEncoder:
        """Rebuild from :meth:`state_dict` and the saved feature table (indexed by id)."""
        id_spec = feature_from_dict(state["id_spec"])
        assert isinstance(id_spec, Categorical)
        features = FeatureEncoders.from_state_dict(state["features"])
        out = cls(state["key"], id_spec, features.specs)
        out.id_encoder_ = CategoricalEncoder(id_spec).load_state_dict(state["id_encoder"])
        out.features_ = features
        if table is not None:
            table = table.copy()
            table.index = pd.Index(categorical_keys(table.index).to_numpy(), name=state["key"])
        out.table_ = table
        return out


def _field_kind(enc: Encoder) -> tuple[str, int]:
    if isinstance(enc, NumericEncoder):
        return "numeric", enc.width
    if isinstance(enc, VectorEncoder):
        return "vector", enc.width
    if isinstance(enc, CategoricalEncoder):
        return "index", enc.cardinality
    return "bag", enc.cardinality


@dataclass
class InteractionEncoder:
    """Everything needed to turn interaction rows into model inputs, fitted on training data.

    ``transform`` returns a flat dict of numpy arrays keyed "user.<field>", "item.<field>",
    "context.<field>" (see the module docstring for each encoding), plus "label" (n,)
    float32 and "weight" (n,) float32 when the schema has them and the rows hold them, and
    "impressions" (n,) float32 (the impression count behind each aggregated CTR label, as
    :class:`~wager.models.heads.DeepDensityHead` needs) when ``Schema.impressions`` is set
    and the rows hold that column.

    Attributes:
        users: encoder of user ids and user features.
        items: encoder of item ids and item features.
        context: encoders of context columns of the interaction table.
        label: label column (or None), weight: weight column (or None).
        impressions: impression-count column (or None).

    Example:
        >>> from wager.data.schema import Schema
        >>> schema = Schema(label="ctr", label_kind="ctr", impressions="n", clicks="k")
        >>> rows = pd.DataFrame({"user_id": [1, 2], "item_id": [7, 7], "n": [10, 40],
        ...                      "k": [1, 2], "ctr": [0.1, 0.05]})
        >>> enc = InteractionEncoder.from_schema(schema).fit(rows)
        >>> out = enc.transform(rows)
        >>> out["impressions"], out["label"]
        (array([10., 40.], dtype=float32), array([0.1 , 0.05], dtype=float32))
    """

    users: EntityEncoder
    items: EntityEncoder
    context: FeatureEncoders
    label: str | None = None
    weight: str | None = None
    impressions: str | None = None

    @classmethod
    def from_schema(
        cls, schema: Any, user_min_count: int = 1, item_min_count: int = 1
    ) -> InteractionEncoder:
        """Unfitted encoders for a :class:`~wager.data.schema.Schema`.

        Args:
            schema: the data schema.
            user_min_count: training interactions a user id needs for its own embedding.
            item_min_count: training interactions an item id needs for its own embedding.
        """
        return cls(
            users=EntityEncoder(
                schema.user, Categorical(schema.user, user_min_count), tuple(schema.user_features)
            ),
            items=EntityEncoder(
                schema.item, Categorical(schema.item, item_min_count), tuple(schema.item_features)
            ),
            context=FeatureEncoders(tuple(schema.context)),
            label=schema.label,
            weight=schema.weight,
            impressions=schema.impressions,
        )

    def fit(
        self,
        train: pd.DataFrame,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
    ) -> InteractionEncoder:
        """Fit every encoder on the training split only."""
        self.users.fit(train[self.users.key], user_features, "user feature table")
        self.items.fit(train[self.items.key], item_features, "item feature table")
        self.context.fit(train, "interactions")
        return self

    def fit_counts(
        self, user_counts: pd.Series, item_counts: pd.Series, sample: pd.DataFrame
    ) -> InteractionEncoder:
        """Fit from a first pass over streamed training rows: the id vocabularies from the
        exact counts per id key, the context encoders from a uniform ``sample`` of the
        rows (no user / item feature tables)."""
        self.users.fit(pd.Series(dtype=object), counts=user_counts)
        self.items.fit(pd.Series(dtype=object), counts=item_counts)
        self.context.fit(sample, "interactions (a uniform sample of the streamed rows)")
        return self

    def fields(self) -> list[tuple[str, str, int]]:
        """(key, kind, size) of every encoded input.

        kind is "index" (size: embedding rows), "bag" (size: embedding rows), "numeric"
        (size: input width) or "vector" (size: input width, the vector's dim + 1 for the
        missing indicator).
        """
        out: list[tuple[str, str, int]] = []
        for side, ent in (("user", self.users), ("item", self.items)):
            assert ent.id_encoder_ is not None and ent.features_ is not None
            out.append((f"{side}.{ent.key}", "index", ent.id_encoder_.cardinality))
            for name, enc in ent.features_.encoders_.items():
                out.append((f"{side}.{name}", *_field_kind(enc)))
        for name, enc in self.context.encoders_.items():
            out.append((f"context.{name}", *_field_kind(enc)))
        return out

    def unknown_token(self, key: str) -> int:
        """The encoded value that stands for "value not known" in field ``key``.

        0 for index fields (their OOV row) and for hashed text bags (an empty bag: every
        token hashes to a real bucket, so "unknown" is the absence of tokens); 1 for
        multi-valued categorical bags (their OOV token, 0 being padding).

        Raises:
            KeyError: ``key`` is not a categorical field of this encoder.
        """
        side, _, name = key.partition(".")
        if side in ("user", "item"):
            ent = self.users if side == "user" else self.items
            assert ent.features_ is not None
            if name == ent.key:
                return 0
            enc = ent.features_.encoders_.get(name)
        else:
            enc = self.context.encoders_.get(name) if side == "context" else None
        if enc is None or isinstance(enc, NumericEncoder | VectorEncoder):
            raise KeyError(f"{key!r} is not a categorical field of this encoder")
        return 1 if isinstance(enc, MultiCategoricalEncoder) else 0

    def transform_users(self, ids: Any) -> dict[str, np.ndarray]:
        """{"user.<field>": array} for a batch of user ids."""
        return {f"user.{k}": v for k, v in self.users.transform(ids).items()}

    def transform_items(self, ids: Any) -> dict[str, np.ndarray]:
        """{"item.<field>": array} for a batch of item ids."""
        return {f"item.{k}": v for k, v in self.items.transform(ids).items()}

    def transform(self, rows: pd.DataFrame) -> dict[str, np.ndarray]:
        """Encode interaction rows (user, item, context, label, weight, impressions).

        Args:
            rows: interaction rows holding the user and item id columns, every context
                column, and optionally the label, weight and impressions columns.

        Returns:
            {"user.*", "item.*", "context.*": encoded fields (see the module docstring),
            "label": (n,) float32 when the label column is present, "weight": (n,) float32
            row weights when the weight column is present, "impressions": (n,) float32
            impression counts when ``Schema.impressions`` is set and its column is present}.
        """
        out = self.transform_users(rows[self.users.key])
        out.update(self.transform_items(rows[self.items.key]))
        if self.context.specs:
            out.update({f"context.{k}": v for k, v in self.context.transform(rows).items()})
        if self.label is not None and self.label in rows.columns:
            out["label"] = rows[self.label].to_numpy(dtype=np.float32)
        if self.weight is not None and self.weight in rows.columns:
            out["weight"] = rows[self.weight].to_numpy(dtype=np.float32)
        if self.impressions is not None and self.impressions in rows.columns:
            out["impressions"] = rows[self.impressions].to_numpy(dtype=np.float32)
        return out

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready state (feature tables are saved separately)."""
        return {
            "users": self.users.state_dict(),
            "items": self.items.state_dict(),
            "context": self.context.state_dict(),
            "label": self.label,
            "weight": self.weight,
            "impressions": self.impressions,
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict[str, Any],
        user_table: pd.DataFrame | None = None,
        item_table: pd.DataFrame | None = None,
    ) -> InteractionEncoder:
        """Rebuild from :meth:`state_dict` plus the saved feature tables (indexed by id)."""
        return cls(
            users=EntityEncoder.from_state_dict(state["users"], user_table),
            items=EntityEncoder.from_state_dict(state["items"], item_table),
            context=FeatureEncoders.from_state_dict(state["context"]),
            label=state.get("label"),
            weight=state.get("weight"),
            impressions=state.get("impressions"),
        )
