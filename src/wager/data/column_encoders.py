"""Encoders of one column each, and the canonical keys that categorical values are matched by.

Each encoder is fitted on the training values of one column and turns that column into a
model input (:mod:`wager.data.features` re-exports everything here and documents the
index conventions):

- :class:`CategoricalEncoder` -> ``(n,)`` int64; :data:`OOV` (0) for unseen, rare or
  missing values, known values 1..V;
- :class:`NumericEncoder` -> ``(n, 2)`` float32 (standardised value, missing indicator), or
  ``(n, buckets + 1)`` one-hot buckets plus the indicator when the spec has ``bins``;
- :class:`MultiCategoricalEncoder` -> ``(n, L)`` int64 padded with 0, 1 for OOV;
- :class:`TextEncoder` -> ``(n, L)`` int64 hashed word / n-gram buckets padded with 0;
- :class:`VectorEncoder` -> ``(n, dim + 1)`` float32 (standardised vector, missing indicator).

:func:`categorical_keys` maps raw values to the string keys every encoder (and the data
checks) compare by: 3, 3.0 and "3" are one key. :func:`make_encoder` picks the encoder of
a feature spec. Several columns of a table, and users, items and interactions, are
encoded by the classes of :mod:`wager.data.features`.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wager.data.schema import Categorical, Feature, MultiCategorical, Numeric, Text, Vector
from wager.data.vectors import vector_values
from wager.errors import NotFittedError, data_error

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
