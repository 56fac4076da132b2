"""Schema: which column plays which role, and which features describe users, items, context.

A :class:`Schema` is declarative: it names columns of an interaction table and
of optional user/item feature tables, and gives each feature column a spec
(:class:`Categorical`, :class:`Numeric`, :class:`MultiCategorical`, :class:`Text`,
:class:`Vector`).
Encoders (``wager.data.features``) are fitted from these specs on the training
split only.

Example:
    >>> from wager.data.schema import Schema, Categorical, Numeric
    >>> s = Schema(user="user_id", item="item_id", label="click", label_kind="click",
    ...            user_features=(Categorical("segment"), Numeric("age")))
    >>> s.user_features[0].min_count
    1
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

LabelKind = Literal["rating", "click", "ctr"]
IdDtype = Literal["string", "int"]
ID_DTYPES: tuple[str, ...] = ("string", "int")
"""How loaders read user and item id columns (:attr:`Schema.id_dtype`)."""


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind}.name must be a non-empty column name, got {name!r}")


@dataclass(frozen=True)
class Categorical:
    """A single-valued categorical column (an id, a gender, an occupation).

    Values seen fewer than ``min_count`` times in the training split, and values
    never seen there, map to the out-of-vocabulary index 0. That is how cold-start
    users and items reach the model: through OOV rows (and their other features).

    Attributes:
        name: column name.
        min_count: least number of training occurrences for a value to get its own index (>= 1).
    """

    name: str
    min_count: int = 1

    def __post_init__(self) -> None:
        _check_name("Categorical", self.name)
        if not isinstance(self.min_count, int) or self.min_count < 1:
            raise ValueError(
                f"Categorical('{self.name}').min_count must be an integer >= 1, "
                f"got {self.min_count!r}"
            )


@dataclass(frozen=True)
class Numeric:
    """A numeric column, standardised with training mean and std.

    Missing values (NaN) are handled explicitly: with ``missing="indicator"`` the
    standardised value is set to 0 (the training mean) and a separate 0/1
    "was missing" indicator is produced; with ``missing="error"`` a NaN is an error.
    Infinite values are always an error.

    Attributes:
        name: column name.
        missing: "indicator" or "error".
        log1p: apply log(1 + x) before standardising (for counts, prices); needs x > -1.
        bins: 0 (default) standardises the value. A positive integer n bucketises it into
            n equal-mass buckets whose edges are training quantiles; a sequence of
            increasing boundaries gives explicit buckets (value < b[0], b[0] <= value <
            b[1], ..., value >= b[-1]). A bucketised value is encoded one-hot (one column
            per bucket plus the missing indicator), so the model learns one vector per
            bucket: right for non-monotone effects such as age or release year.
    """

    name: str
    missing: Literal["indicator", "error"] = "indicator"
    log1p: bool = False
    bins: int | tuple[float, ...] = 0

    def __post_init__(self) -> None:
        _check_name("Numeric", self.name)
        if self.missing not in ("indicator", "error"):
            raise ValueError(
                f"Numeric('{self.name}').missing must be 'indicator' or 'error', "
                f"got {self.missing!r}"
            )
        bins = self.bins
        if isinstance(bins, bool) or not isinstance(bins, int | list | tuple):
            raise ValueError(
                f"Numeric('{self.name}').bins must be 0, a number of buckets >= 2 or a list "
                f"of increasing boundaries, got {bins!r}"
            )
        if isinstance(bins, int):
            if bins != 0 and bins < 2:
                raise ValueError(
                    f"Numeric('{self.name}').bins must be 0 (no buckets) or >= 2, got {bins}"
                )
            return
        try:
            edges = tuple(float(b) for b in bins)
        except (TypeError, ValueError):
            raise ValueError(
                f"Numeric('{self.name}').bins must hold numbers, got {bins!r}"
            ) from None
        if (
            not edges
            or any(not a < b for a, b in itertools.pairwise(edges))
            or any(e != e or e in (float("inf"), float("-inf")) for e in edges)
        ):
            raise ValueError(
                f"Numeric('{self.name}').bins must be finite, strictly increasing boundaries, "
                f"got {bins!r}"
            )
        object.__setattr__(self, "bins", edges)


@dataclass(frozen=True)
class MultiCategorical:
    """A multi-valued categorical column, e.g. genres "Action|Comedy".

    Attributes:
        name: column name; each cell is a string of values joined by ``sep``, or a list.
        sep: separator inside a cell.
        min_count: as in :class:`Categorical`, counted per value.
    """

    name: str
    sep: str = "|"
    min_count: int = 1

    def __post_init__(self) -> None:
        _check_name("MultiCategorical", self.name)
        if not self.sep:
            raise ValueError(f"MultiCategorical('{self.name}').sep must be a non-empty string")
        if not isinstance(self.min_count, int) or self.min_count < 1:
            raise ValueError(
                f"MultiCategorical('{self.name}').min_count must be an integer >= 1, "
                f"got {self.min_count!r}"
            )


@dataclass(frozen=True)
class Text:
    """A free-text column (a title, a description): hashed bag of words and word n-grams.

    Attributes:
        name: column name.
        n_buckets: size of the hashing space (>= 2); ids are 1..n_buckets, 0 is padding.
        ngram_max: longest word n-gram hashed (1 = words only).
        max_tokens: tokens kept per cell after n-gram expansion (longer cells are truncated).
    """

    name: str
    n_buckets: int = 4096
    ngram_max: int = 2
    max_tokens: int = 32

    def __post_init__(self) -> None:
        _check_name("Text", self.name)
        if self.n_buckets < 2:
            raise ValueError(f"Text('{self.name}').n_buckets must be >= 2, got {self.n_buckets}")
        if self.ngram_max < 1:
            raise ValueError(f"Text('{self.name}').ngram_max must be >= 1, got {self.ngram_max}")
        if self.max_tokens < 1:
            raise ValueError(f"Text('{self.name}').max_tokens must be >= 1, got {self.max_tokens}")


@dataclass(frozen=True)
class Vector:
    """A precomputed embedding of fixed width: text, image or graph vectors computed elsewhere.

    The vector is read from a list column ``name`` (one list or array of ``dim`` numbers per
    row, e.g. a Parquet ``list<float>`` column) or, when there is no such column, from the
    columns ``name_0``, ..., ``name_{dim-1}`` (one number each, e.g. from a CSV). The model
    projects it linearly to the embedding dimension of the tower it feeds.

    A missing vector (a None / NaN cell, a row whose ``dim`` columns are all empty, or an
    id absent from the feature table) is encoded as the zero vector plus a 0/1 "missing"
    indicator, as :class:`Numeric` encodes a missing value. A vector with only some entries
    missing, of another length than ``dim``, or holding non-numbers or infinities, is an
    error naming the column and rows.

    Attributes:
        name: column name (the list column, or the stem of the ``name_i`` columns).
        dim: number of entries of every vector (>= 1).
        standardize: centre and scale each entry with its mean and std over the training
            rows (fitted on the training split only); False feeds the values as given.

    Example:
        >>> Vector("text_emb", dim=384).dim
        384
    """

    name: str
    dim: int
    standardize: bool = True

    def __post_init__(self) -> None:
        _check_name("Vector", self.name)
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(
                f"Vector('{self.name}').dim must be an integer >= 1 (the number of entries "
                f"of each vector), got {self.dim!r}"
            )
        if not isinstance(self.standardize, bool):
            raise ValueError(
                f"Vector('{self.name}').standardize must be true or false, got {self.standardize!r}"
            )


Feature = Categorical | Numeric | MultiCategorical | Text | Vector
_FEATURE_TYPES: dict[str, type] = {
    "categorical": Categorical,
    "numeric": Numeric,
    "multi_categorical": MultiCategorical,
    "text": Text,
    "vector": Vector,
}


def feature_type_name(spec: Feature) -> str:
    """The lower-case type tag used in TOML/JSON ("categorical", "numeric", ...)."""
    for tag, cls in _FEATURE_TYPES.items():
        if isinstance(spec, cls):
            return tag
    raise TypeError(f"not a feature spec: {spec!r}")


def feature_to_dict(spec: Feature) -> dict[str, Any]:
    """Serialise a feature spec as ``{"type": tag, **fields}``."""
    return {"type": feature_type_name(spec), **asdict(spec)}


def feature_from_dict(data: dict[str, Any]) -> Feature:
    """Inverse of :func:`feature_to_dict`."""
    data = dict(data)
    tag = data.pop("type", None)
    if tag not in _FEATURE_TYPES:
        raise ValueError(f"feature type {tag!r} is unknown; use one of {sorted(_FEATURE_TYPES)}")
    return _FEATURE_TYPES[tag](**data)


@dataclass(frozen=True)
class Schema:
    """Column roles of an interaction table, plus user/item feature tables keyed by id.

    Attributes:
        user: user id column (in interactions and in the user feature table).
        item: item id column (in interactions and in the item feature table).
        label: label column (a rating, a 0/1 click, or an empirical CTR), or None.
        label_kind: "rating" (explicit, bounded by ``rating_range``), "click" (0/1) or
            "ctr" (clicks / impressions in [0, 1]).
        rating_range: inclusive (low, high) for ratings, e.g. (1, 5).
        weight: optional per-row sample weight column (>= 0).
        impressions: optional impression-count column (aggregated CTR data).
        clicks: optional click-count column (aggregated CTR data; <= impressions).
        timestamp: optional timestamp column (numeric epoch seconds or parseable datetimes).
        propensity: optional logging-policy propensity column (in (0, 1]).
        context: context feature specs (columns of the interaction table).
        user_features: specs for columns of the user feature table.
        item_features: specs for columns of the item feature table.
        id_dtype: how the loaders read the user and item id columns (in the interactions
            and in the feature tables alike). "string" (default): ids are the values as
            written, so ``007``, ``7``, ``7.0`` and ``1e3`` are four ids; typed formats
            (Parquet, JSON) give numbers their plain text (7 and 7.0 read "7"). "int":
            ids are integers, compared as numbers (``007`` and ``7`` are one id); a
            value that is not a whole number is an error naming its rows.
    """

    user: str = "user_id"
    item: str = "item_id"
    label: str | None = "label"
    label_kind: LabelKind = "click"
    rating_range: tuple[float, float] | None = None
    weight: str | None = None
    impressions: str | None = None
    clicks: str | None = None
    timestamp: str | None = None
    propensity: str | None = None
    context: tuple[Feature, ...] = field(default_factory=tuple)
    user_features: tuple[Feature, ...] = field(default_factory=tuple)
    item_features: tuple[Feature, ...] = field(default_factory=tuple)
    id_dtype: IdDtype = "string"

    def __post_init__(self) -> None:
        if self.label_kind not in ("rating", "click", "ctr"):
            raise ValueError(
                f"Schema.label_kind must be 'rating', 'click' or 'ctr', got {self.label_kind!r}"
            )
        if self.id_dtype not in ID_DTYPES:
            raise ValueError(
                f"Schema.id_dtype must be 'string' (ids as written) or 'int' (whole-number "
                f"ids), got {self.id_dtype!r}"
            )
        if self.rating_range is not None:
            lo, hi = self.rating_range
            if not lo < hi:
                raise ValueError(
                    "Schema.rating_range must be (low, high) with low < high, "
                    f"got {self.rating_range!r}"
                )
        if (self.impressions is None) != (self.clicks is None):
            raise ValueError(
                "Schema.impressions and Schema.clicks go together: set both (aggregated CTR "
                "data) or neither"
            )
        # tuples, so that the frozen schema is hashable and safe to share
        for name in ("context", "user_features", "item_features"):
            object.__setattr__(self, name, tuple(getattr(self, name)))

    @property
    def interaction_columns(self) -> list[str]:
        """Every column of the interaction table that this schema names."""
        cols = [self.user, self.item]
        for c in (
            self.label,
            self.weight,
            self.impressions,
            self.clicks,
            self.timestamp,
            self.propensity,
        ):
            if c is not None and c not in cols:
                cols.append(c)
        cols += [f.name for f in self.context if f.name not in cols]
        return cols

    def to_dict(self) -> dict[str, Any]:
        """TOML/JSON-ready form (None values omitted, as TOML has no null)."""
        out: dict[str, Any] = {}
        for key in (
            "user",
            "item",
            "label",
            "label_kind",
            "weight",
            "impressions",
            "clicks",
            "timestamp",
            "propensity",
            "id_dtype",
        ):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.rating_range is not None:
            out["rating_range"] = list(self.rating_range)
        for key in ("context", "user_features", "item_features"):
            out[key] = [feature_to_dict(f) for f in getattr(self, key)]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Schema:
        """Inverse of :meth:`to_dict`. Missing optional keys become None."""
        data = dict(data)
        kwargs: dict[str, Any] = {
            k: data.get(k) for k in ("weight", "impressions", "clicks", "timestamp", "propensity")
        }
        kwargs["user"] = data.get("user", "user_id")
        kwargs["item"] = data.get("item", "item_id")
        kwargs["label"] = data.get("label")
        kwargs["label_kind"] = data.get("label_kind", "click")
        kwargs["id_dtype"] = data.get("id_dtype", "string")
        rr = data.get("rating_range")
        kwargs["rating_range"] = tuple(rr) if rr is not None else None
        for key in ("context", "user_features", "item_features"):
            kwargs[key] = tuple(feature_from_dict(f) for f in data.get(key, []))
        return cls(**kwargs)
