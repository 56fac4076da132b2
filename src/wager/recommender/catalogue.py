"""Catalogue: the items a fitted recommender knows, its users and what each user has seen.

Rows of the seen matrix are the known users (training and validation history), columns the
catalogue items, in catalogue order; ids are canonical string keys
(:func:`~wager.data.features.categorical_keys`). Saved as arrays (``catalogue.npz``), not
JSON lists.

Example:
    >>> import pandas as pd
    >>> from wager.data.schema import Schema
    >>> rows = pd.DataFrame({"user_id": [1, 1, 2], "item_id": ["a", "b", "a"],
    ...                      "rating": [5, 3, 4]})
    >>> cat = Catalogue.fit(rows, rows, None, Schema(label="rating", label_kind="rating"))
    >>> list(cat.items), cat.seen.toarray().tolist()
    (['a', 'b'], [[1.0, 1.0], [1.0, 0.0]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from wager.data.features import categorical_keys
from wager.data.schema import Schema

FILE = "catalogue.npz"


@dataclass
class Catalogue:
    """Known items and users of a fitted recommender.

    Attributes:
        items: (n_items,) object array of item keys, in catalogue order.
        item_counts: (n_items,) float64 training rows (positives) per item.
        users: (n_users,) object array of known user keys (seen-matrix row order).
        seen: (n_users, n_items) 0/1 float32 CSR: what recommend() excludes.
        label_mean: mean training label (rating models start their bias there; 0 otherwise).
    """

    items: np.ndarray
    item_counts: np.ndarray
    users: np.ndarray
    seen: sp.csr_matrix
    label_mean: float = 0.0

    def __post_init__(self) -> None:
        self.item_index: dict[Any, int] = {k: i for i, k in enumerate(self.items)}
        self.user_index: dict[Any, int] = {k: i for i, k in enumerate(self.users)}

    @classmethod
    def fit(
        cls,
        history: pd.DataFrame,
        fit_rows: pd.DataFrame,
        item_features: pd.DataFrame | None,
        schema: Schema,
        clicks_only: bool = False,
        label_mean: float = 0.0,
    ) -> Catalogue:
        """Items and users of ``history`` (plus the feature table's items), per-item counts of
        ``fit_rows`` and the seen matrix of ``history``.

        Args:
            history: training (and validation) rows: known users, items and seen pairs.
            fit_rows: the rows the model is fitted on (positives for ranking models).
            item_features: item feature table keyed by ``schema.item`` (its items join the
                catalogue), or None.
            schema: column names.
            clicks_only: click logs: only clicked impressions count as seen.
            label_mean: see the attribute.
        """
        items = categorical_keys(history[schema.item]).dropna()
        if item_features is not None and schema.item in item_features.columns:
            items = pd.concat([items, categorical_keys(item_features[schema.item]).dropna()])
        item_keys = np.asarray(pd.unique(items.to_numpy()), dtype=object)
        users = np.asarray(
            pd.unique(categorical_keys(history[schema.user]).dropna().to_numpy()), dtype=object
        )
        index = {k: i for i, k in enumerate(item_keys)}
        fit_items = categorical_keys(fit_rows[schema.item]).map(index).to_numpy()
        counts = np.bincount(fit_items.astype(np.int64), minlength=len(item_keys))
        cat = cls(
            item_keys,
            counts.astype(np.float64),
            users,
            sp.csr_matrix((len(users), len(item_keys)), dtype=np.float32),
            label_mean,
        )
        cat.seen = cat.seen_matrix(history, schema, clicks_only)
        return cat

    @property
    def n_items(self) -> int:
        """Catalogue size."""
        return len(self.items)

    @property
    def n_users(self) -> int:
        """Known users."""
        return len(self.users)

    def seen_matrix(
        self, rows: pd.DataFrame, schema: Schema, clicks_only: bool = False
    ) -> sp.csr_matrix:
        """(known users, items) 0/1 CSR of what ``rows`` count as seen: every rated /
        interacted item, but with ``clicks_only`` only clicked ones (an impression without
        a click may be shown again). Users / items outside the catalogue are skipped."""
        interacted = rows
        if clicks_only and schema.label is not None:
            interacted = rows[rows[schema.label].to_numpy(dtype=float) > 0]
        r = categorical_keys(interacted[schema.user]).map(self.user_index).to_numpy()
        c = categorical_keys(interacted[schema.item]).map(self.item_index).to_numpy()
        ok = ~(pd.isna(r) | pd.isna(c))
        seen = sp.csr_matrix(
            (
                np.ones(int(ok.sum()), dtype=np.float32),
                (r[ok].astype(np.int64), c[ok].astype(np.int64)),
            ),
            shape=(self.n_users, self.n_items),
        )
        seen.data[:] = 1.0  # duplicates count once
        return seen

    def seen_rows(
        self, user_ids: Sequence[Any], seen: sp.csr_matrix | None = None
    ) -> sp.csr_matrix:
        """(n_users, n_items) CSR of each user's seen items (empty row: unknown user).

        Args:
            user_ids: users, in output row order.
            seen: the (known users, items) matrix to read; default :attr:`seen`.
        """
        seen = self.seen if seen is None else seen
        n = seen.shape[0]
        idx = np.fromiter(
            (self.user_index.get(k, n) for k in categorical_keys(list(user_ids))),
            dtype=np.int64,
            count=len(user_ids),
        )
        padded = sp.vstack([seen, sp.csr_matrix((1, seen.shape[1]))], format="csr")
        return padded[idx]

    def known_users(self, user_ids: Sequence[Any]) -> np.ndarray:
        """(n,) bool: which users are in the catalogue's history (False = cold start)."""
        return np.array([k in self.user_index for k in categorical_keys(list(user_ids))])

    def item_rows(self, item_ids: Sequence[Any] | pd.Series) -> np.ndarray:
        """(n,) float catalogue rows of ``item_ids`` (NaN for items outside the catalogue)."""
        return categorical_keys(item_ids).map(self.item_index).to_numpy(dtype=np.float64)

    def relevant_lists(
        self, rows: pd.DataFrame, schema: Schema, threshold: float | None
    ) -> tuple[list[Any], list[np.ndarray]]:
        """Users of ``rows`` (first-seen order) and each one's relevant catalogue rows
        (label >= ``threshold`` when given; items outside the catalogue skipped)."""
        if threshold is not None and schema.label is not None and schema.label in rows.columns:
            rows = rows[rows[schema.label].to_numpy(dtype=float) >= threshold]
        ukeys = categorical_keys(rows[schema.user])
        icol = categorical_keys(rows[schema.item]).map(self.item_index)
        frame = pd.DataFrame({"u": ukeys.to_numpy(), "i": icol.to_numpy()}).dropna()
        users, relevant = [], []
        for u, g in frame.groupby("u", sort=False):
            users.append(u)
            relevant.append(np.unique(g["i"].to_numpy(dtype=np.int64)))
        return users, relevant

    def popularity(self) -> np.ndarray:
        """(n_items,) share of known users who have seen each item."""
        return np.asarray(self.seen.getnnz(axis=0), dtype=np.float64) / max(self.n_users, 1)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """Write the catalogue as arrays (``np.savez``, no pickled objects) to ``path``."""
        seen = self.seen.tocsr()
        with open(path, "wb") as fh:
            np.savez(
                fh,
                items=np.asarray([str(i) for i in self.items], dtype=np.str_),
                item_counts=self.item_counts,
                users=np.asarray([str(u) for u in self.users], dtype=np.str_),
                seen_indptr=seen.indptr.astype(np.int64),
                seen_indices=seen.indices.astype(np.int64),
                label_mean=np.float64(self.label_mean),
            )

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        """Read a catalogue written by :meth:`save` (ValueError names a malformed file)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                items = np.asarray(z["items"].tolist(), dtype=object)
                users = np.asarray(z["users"].tolist(), dtype=object)
                indices, indptr = z["seen_indices"], z["seen_indptr"]
                seen = sp.csr_matrix(
                    (np.ones(len(indices), dtype=np.float32), indices, indptr),
                    shape=(len(users), len(items)),
                )
                return cls(items, z["item_counts"], users, seen, float(z["label_mean"]))
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable catalogue ({exc}); retrain the run") from exc
