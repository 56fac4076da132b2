"""Catalogue: the items a fitted recommender knows, its users and what each user has seen.

Rows of the seen matrix are the known users (training and validation history), columns the
catalogue items, in catalogue order; ids are canonical string keys
(:func:`~wager.data.features.categorical_keys`). Saved as arrays (``catalogue.npz``), not
JSON lists.

The catalogue changes without retraining (:mod:`wager.recommender.changes`): :meth:`add`
appends items at the end; :meth:`retire` moves items out of it (their columns of the seen
matrix and their counts are kept aside, so an item added back is itself again). Whatever
enumerates the catalogue (lists, catalogue scores, evaluation) sees only the items in it.

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
from dataclasses import dataclass, field
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
        retired: (n_retired,) object array of retired item keys (never in ``items``).
        retired_counts: (n_retired,) float64 their training rows (positives).
        retired_seen: (n_users, n_retired) 0/1 float32 CSR: their seen-matrix columns.
        version: counts the changes since the catalogue was built (caches of encoded
            catalogue items key on it).
    """

    items: np.ndarray
    item_counts: np.ndarray
    users: np.ndarray
    seen: sp.csr_matrix
    label_mean: float = 0.0
    retired: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    retired_counts: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float64))
    retired_seen: sp.csr_matrix | None = None
    version: int = 0

    def __post_init__(self) -> None:
        if self.retired_seen is None:
            self.retired_seen = sp.csr_matrix(
                (len(self.users), len(self.retired)), dtype=np.float32
            )
        self._reindex()

    def _reindex(self) -> None:
        self.item_index: dict[Any, int] = {k: i for i, k in enumerate(self.items)}
        self.user_index: dict[Any, int] = {k: i for i, k in enumerate(self.users)}
        self.retired_index: dict[Any, int] = {k: i for i, k in enumerate(self.retired)}

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

    @classmethod
    def from_counts(
        cls,
        item_counts: pd.Series,
        users: Sequence[Any],
        more_items: Sequence[Any] = (),
        label_mean: float = 0.0,
    ) -> Catalogue:
        """The catalogue of streamed training rows (:mod:`wager.data.streaming`): the items
        of ``item_counts`` (training rows per item key) then ``more_items`` (e.g. the
        validation rows' items, count 0), the users ``users``, and no seen matrix (it
        would grow with the data: recommend() then excludes nothing by itself)."""
        extra = pd.Index(pd.unique(np.asarray(list(more_items), dtype=object)))
        items = pd.Index(item_counts.index).append(extra.difference(item_counts.index))
        counts = item_counts.reindex(items, fill_value=0).to_numpy(dtype=np.float64)
        keys = np.asarray(pd.unique(np.asarray(list(users), dtype=object)), dtype=object)
        return cls(
            np.asarray(items, dtype=object),
            counts,
            keys,
            sp.csr_matrix((len(keys), len(items)), dtype=np.float32),
            label_mean,
        )

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

    # ------------------------------------------------------------------ changes
    def add(self, keys: Sequence[str]) -> None:
        """Append items (canonical keys, distinct, none in the catalogue) at the end; a
        retired key comes back with its counts and seen column.

        Raises:
            ValueError: a key is already in the catalogue or repeated (named).
        """
        keys = [str(k) for k in keys]
        present = [k for k in keys if k in self.item_index]
        if present or len(set(keys)) < len(keys):
            what = present or [k for k in keys if keys.count(k) > 1]
            raise ValueError(f"item ids {what[:5]} are already in the catalogue or repeated")
        assert self.retired_seen is not None
        back = np.array([self.retired_index.get(k, -1) for k in keys], dtype=np.int64)
        cols = sp.hstack(
            [self.retired_seen, sp.csr_matrix((self.n_users, 1), dtype=np.float32)], format="csc"
        )[:, np.where(back >= 0, back, len(self.retired))]
        counts = np.append(self.retired_counts, 0.0)[np.where(back >= 0, back, -1)]
        stay = np.setdiff1d(np.arange(len(self.retired)), back[back >= 0])
        self.items = np.concatenate([self.items, np.asarray(keys, dtype=object)])
        self.item_counts = np.concatenate([self.item_counts, counts])
        self.seen = sp.hstack([self.seen, cols], format="csr")
        self._drop_retired(stay)

    def retire(self, keys: Sequence[str], missing_ok: bool = False) -> None:
        """Move items out of the catalogue (their counts and seen columns kept aside).
        Retiring a retired item again changes nothing.

        Args:
            keys: canonical item keys.
            missing_ok: record keys outside the catalogue as retired (a refit carrying its
                retired ids over) instead of raising.

        Raises:
            ValueError: a key is neither in the catalogue nor retired (the first few named),
                or no item would be left.
        """
        keys = list(dict.fromkeys(str(k) for k in keys if str(k) not in self.retired_index))
        unknown = [k for k in keys if k not in self.item_index]
        if unknown and not missing_ok:
            raise ValueError(
                f"item ids {unknown[:5]} ({len(unknown)} in all) are not in the catalogue; "
                "retire only items it holds (Recommender.scorer_.catalogue.items)"
            )
        if keys and len(keys) >= self.n_items and not missing_ok:
            raise ValueError(
                f"retiring {len(keys)} items would leave the catalogue empty (nothing to "
                "recommend); add items first, or retire fewer"
            )
        assert self.retired_seen is not None
        rows = np.array([self.item_index.get(k, -1) for k in keys], dtype=np.int64)
        out = np.zeros(self.n_items, dtype=bool)
        out[rows[rows >= 0]] = True
        seen = sp.hstack([self.seen, sp.csr_matrix((self.n_users, 1), dtype=np.float32)], "csc")
        self.retired = np.concatenate([self.retired, np.asarray(keys, dtype=object)])
        self.retired_counts = np.concatenate(
            [self.retired_counts, np.append(self.item_counts, 0.0)[rows]]
        )
        self.retired_seen = sp.hstack([self.retired_seen, seen[:, rows]], format="csr")
        self.items, self.item_counts = self.items[~out], self.item_counts[~out]
        self.seen = self.seen.tocsc()[:, np.flatnonzero(~out)].tocsr()
        self._drop_retired(np.arange(len(self.retired)))

    def _drop_retired(self, keep: np.ndarray) -> None:
        """Keep the retired entries at positions ``keep``; re-index; count the change."""
        assert self.retired_seen is not None
        self.retired = np.asarray(self.retired[keep], dtype=object)
        self.retired_counts = self.retired_counts[keep]
        self.retired_seen = self.retired_seen.tocsc()[:, keep].tocsr()
        self._reindex()
        self.version += 1

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """Write the catalogue as arrays (``np.savez``, no pickled objects) to ``path``."""
        seen = self.seen.tocsr()
        assert self.retired_seen is not None
        retired = self.retired_seen.tocsr()
        with open(path, "wb") as fh:
            np.savez(
                fh,
                items=np.asarray([str(i) for i in self.items], dtype=np.str_),
                item_counts=self.item_counts,
                users=np.asarray([str(u) for u in self.users], dtype=np.str_),
                seen_indptr=seen.indptr.astype(np.int64),
                seen_indices=seen.indices.astype(np.int64),
                label_mean=np.float64(self.label_mean),
                retired=np.asarray([str(i) for i in self.retired], dtype=np.str_),
                retired_counts=self.retired_counts,
                retired_indptr=retired.indptr.astype(np.int64),
                retired_indices=retired.indices.astype(np.int64),
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
                if "retired" not in z.files:  # written before catalogues changed
                    return cls(items, z["item_counts"], users, seen, float(z["label_mean"]))
                retired = np.asarray(z["retired"].tolist(), dtype=object)
                r_indices = z["retired_indices"]
                r_seen = sp.csr_matrix(
                    (np.ones(len(r_indices), dtype=np.float32), r_indices, z["retired_indptr"]),
                    shape=(len(users), len(retired)),
                )
                return cls(
                    items, z["item_counts"], users, seen, float(z["label_mean"]),
                    retired, z["retired_counts"], r_seen,
                )  # fmt: skip
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{path}: not a readable catalogue ({exc}); retrain the run") from exc
