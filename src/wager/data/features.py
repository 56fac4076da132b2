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

The encoders of one column each (and :func:`categorical_keys`) live in
:mod:`wager.data.column_encoders`, the reading of vector features in
:mod:`wager.data.vectors`; this module re-exports them, so they can be imported from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from wager.data.column_encoders import OOV as OOV
from wager.data.column_encoders import CategoricalEncoder as CategoricalEncoder
from wager.data.column_encoders import Encoder as Encoder
from wager.data.column_encoders import MultiCategoricalEncoder as MultiCategoricalEncoder
from wager.data.column_encoders import NumericEncoder as NumericEncoder
from wager.data.column_encoders import TextEncoder as TextEncoder
from wager.data.column_encoders import VectorEncoder as VectorEncoder
from wager.data.column_encoders import categorical_keys as categorical_keys
from wager.data.column_encoders import make_encoder as make_encoder
from wager.data.column_encoders import text_tokens as text_tokens
from wager.data.schema import Categorical, Feature, Vector, feature_from_dict, feature_to_dict
from wager.data.vectors import vector_columns as vector_columns
from wager.data.vectors import vector_values as vector_values
from wager.errors import NotFittedError, data_error


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
