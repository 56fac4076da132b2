"""A catalogue that changes without retraining: ``Recommender.add_items`` / ``retire_items``.

- :func:`add_items`: new items join the catalogue from their features. Their ids are not
  in the trained id vocabulary, so the model sees each as the out-of-vocabulary (cold-start)
  id plus its own features: feature-aware models (two-tower item tower, DCN, factorization
  with item features) score it from those features, id-only models (biased_mf, neumf, als)
  through the OOV row; either way with the run's cold-start uncertainty (``[uncertainty]
  cold_start``: "population" makes it wider than a known item's; "learned" warns that it
  may not be). Lists (``recommend``) and the catalogue scores
  of :class:`~wager.recommender.scoring.Scorer` include them at once.
- :func:`retire_items`: retired items leave the catalogue: ``recommend`` (even with explicit
  candidates, which drop them with a warning) and the Scorer's catalogue scores never show
  them again. ``predict`` on a retired item still works, without a warning (logs and
  off-policy evaluation score past items); its id keeps its trained embedding and features.
- Adding back a retired id is how an item returns: it re-enters the catalogue with the
  features given (they replace the old ones), its trained id embedding if it had one, and
  who had seen it before (its seen column is kept while it is retired).
- The run folder keeps the current catalogue: items added (in ``catalogue.npz``, their
  features in ``item_features.parquet``) and retired ids (``catalogue.npz``).
- A later ``fit`` of the same Recommender carries the catalogue over (:func:`carried_over`):
  the feature rows it holds fill in items the new item table lacks (so items added are
  ordinary items of the refit, trained wherever the new data have rows for them), and
  retired ids stay retired until added back.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wager.data.features import categorical_keys
from wager.errors import data_error
from wager.recommender.catalogue import Catalogue

if TYPE_CHECKING:
    from wager.recommender.scoring import Scorer

SOURCE = "add_items(item_features)"


def add_items(scorer: Scorer, item_features: pd.DataFrame) -> list[str]:
    """Add the items of ``item_features`` to the catalogue of ``scorer`` (see the module
    docstring); everything is checked before anything changes.

    Args:
        scorer: the fitted scorer (its encoder stores the features, its catalogue the ids).
        item_features: one row per new item: the schema's item id column and every item
            feature column the run was trained with (None / NaN cells are missing values).

    Returns:
        The canonical keys of the items added, in table order.

    Raises:
        TypeError: ``item_features`` is not a DataFrame.
        DataError: the id column or a feature column is missing, an id is missing or
            repeated or already in the catalogue, or a value does not fit its feature.
    """
    key = scorer.spec.schema.item
    if not isinstance(item_features, pd.DataFrame):
        raise TypeError(
            f"add_items: item_features must be a pandas DataFrame with the '{key}' column and "
            f"the run's item feature columns, got {type(item_features).__name__}"
        )
    if key not in item_features.columns:
        raise data_error(
            "missing_column",
            "the item id column is missing",
            source=SOURCE,
            column=key,
            fix=f"Add it (one row per new item). Columns given: {list(item_features.columns)}.",
        )
    keys = categorical_keys(item_features[key])
    _check_ids(keys, key, scorer.catalogue)
    added = scorer.encoder.items.add_rows(item_features, SOURCE)  # feature checks, then stored
    scorer.catalogue.add(list(added))
    ids = scorer.encoder.items.id_encoder_
    unknown = ids is None or bool((ids.transform(list(added)) == 0).any())  # OOV id rows
    if (
        unknown
        and scorer.spec.members >= 2
        and scorer.spec.config.uncertainty.cold_start != ("population")
    ):
        warnings.warn(
            "add_items: with [uncertainty] cold_start = 'learned' new items are scored with "
            "the out-of-vocabulary rows as trained, whose spread is not guaranteed to be wider "
            "than a known item's; set cold_start = 'population' to give them the spread of "
            "the known population",
            stacklevel=3,
        )
    return [str(k) for k in added]


def _check_ids(keys: pd.Series, column: str, catalogue: Catalogue) -> None:
    """DataError for missing, repeated or catalogue ids among ``keys``."""
    missing = np.flatnonzero(keys.isna().to_numpy())
    if missing.size:
        raise data_error(
            "missing_id",
            "missing item ids (None / NaN)",
            source=SOURCE,
            column=column,
            rows=missing,
            fix="Give every new item an id.",
        )
    repeated = np.flatnonzero(keys.duplicated(keep=False).to_numpy())
    if repeated.size:
        raise data_error(
            "duplicate_id",
            f"item id {keys.iloc[repeated[0]]!r} appears more than once",
            source=SOURCE,
            column=column,
            rows=repeated,
            fix="Keep one row per new item.",
        )
    present = np.flatnonzero(keys.isin(list(catalogue.item_index)).to_numpy())
    if present.size:
        ids = [keys.iloc[i] for i in present[:5]]
        raise data_error(
            "id_in_catalogue",
            f"item ids {ids} are already in the catalogue",
            source=SOURCE,
            column=column,
            rows=present,
            fix="Use a different id, or retire_items() it first (adding it back then "
            "replaces its features).",
        )


def retire_items(scorer: Scorer, item_ids: Sequence[Any] | np.ndarray | pd.Series) -> list[str]:
    """Retire ``item_ids`` from the catalogue of ``scorer`` (see the module docstring).

    Args:
        scorer: the fitted scorer.
        item_ids: ids in the catalogue (ids already retired are left as they are).

    Returns:
        The canonical keys of ``item_ids``, in order.

    Raises:
        TypeError: ``item_ids`` is a single id rather than a list of ids.
        ValueError: an id is missing (None / NaN) or not in the catalogue (named).
    """
    if isinstance(item_ids, str | bytes | int | float) or np.ndim(item_ids) != 1:
        raise TypeError(
            f"retire_items: item_ids must be a list of ids, got {item_ids!r}; "
            "pass [id] to retire one item"
        )
    keys = categorical_keys(list(item_ids))
    missing = np.flatnonzero(keys.isna().to_numpy())
    if missing.size:
        raise ValueError(
            f"retire_items: item_ids[{int(missing[0])}] is missing (None / NaN); pass real ids"
        )
    try:
        scorer.catalogue.retire(list(keys))
    except ValueError as exc:
        raise ValueError(f"retire_items: {exc}") from None
    return [str(k) for k in keys]


def recommendable(catalogue: Catalogue, candidates: np.ndarray) -> np.ndarray:
    """Explicit ``recommend`` candidates (canonical keys) without retired items, with a
    warning naming those dropped (ValueError when none is left)."""
    retired = np.array([c in catalogue.retired_index for c in candidates], dtype=bool)
    if retired.any():
        names = [str(c) for c in candidates[retired][:5]]
        warnings.warn(
            f"recommend: {int(retired.sum())} candidate items are retired and are not "
            f"recommended (e.g. {names}); add_items() brings an item back",
            stacklevel=4,
        )
    if retired.all() and len(candidates):
        raise ValueError(
            "recommend: every candidate item is retired; pass candidates in the catalogue "
            "(Recommender.scorer_.catalogue.items), or add_items() them back"
        )
    return candidates[~retired]


def carried_over(
    previous: Scorer | None, item_features: pd.DataFrame | None
) -> tuple[pd.DataFrame | None, list[str]]:
    """What a refit keeps of the current catalogue: the item table to fit with and the ids
    that stay retired.

    Args:
        previous: the scorer of the last fit / load, or None (a first fit: nothing kept).
        item_features: the item table passed to ``fit``, or None.

    Returns:
        (``item_features`` completed with the stored feature rows of items it lacks and
        the ids of catalogue items with no feature row, in the stored form: ids in the id
        column, vectors as ``name_i`` columns; the retired keys).
    """
    if previous is None:
        return item_features, []
    ent, cat = previous.encoder.items, previous.catalogue
    stored = ent.table_ if ent.table_ is not None else pd.DataFrame(index=pd.Index([]))
    given = None
    if item_features is not None and (ent.feature_specs or ent.key in item_features.columns):
        given = ent.indexed(item_features, "item feature table")
    parts = [] if given is None else [given]
    known = pd.Index([]) if given is None else given.index
    parts.append(stored.loc[~stored.index.isin(known)])
    have = known.append(stored.index)
    ids_only = [k for k in cat.items if k not in have]
    parts.append(pd.DataFrame(index=pd.Index(ids_only, dtype=object)))
    table = pd.concat(parts)
    table.index = pd.Index(np.asarray(table.index, dtype=object), name=ent.key)
    return table.reset_index(), [str(k) for k in cat.retired]
