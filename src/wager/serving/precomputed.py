"""Serving from a precomputed recommendations table (``wager serve --precomputed FILE``).

The table is the Parquet file that ``wager recommend RUN --all-users -k K --out FILE``
writes: one row per (user, item) with columns ``user``, ``item``, ``rank``, ``mean``,
``std`` (and ``score``, ``low``, ``high``, ``confidence``, ``cold_start``, ``propensity``,
which are not read). A column ``model_version`` is optional; when present it names the
registry version the table was computed with (one value for every row). Without it the
table claims the version active when the service starts.

Each user's rows become that user's candidates (catalogue positions, mean, std, in rank
order) for the request's policy, while the request is served from the claimed version,
asks for no context, for as many ``exclude_seen`` as the table was built with (inferred: a
table holding any item its user had in training was built with ``--include-seen``) and for
at most as many items as the user's rows less the request's exclusions. Every other request
(users absent from the table, another version after an activation, ...) goes to the model.
Build the table with a larger ``-k`` (e.g. 100) to leave a policy such as UCB or Thompson
room to explore.

Everything is checked when the service starts (:meth:`PrecomputedTable.load`), each error
naming the file, the column and the first offending row: the required columns, missing
values, means that are not finite, negative stds, item ids outside the claimed version's
catalogue, a (user, item) pair twice, and a model version column that is not one registry
version.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from wager.data.features import categorical_keys
from wager.serving.cache import Candidates
from wager.serving.registry import ModelRegistry

__all__ = ["REQUIRED_COLUMNS", "PrecomputedTable"]

#: the columns the service reads
REQUIRED_COLUMNS = ("user", "item", "mean", "std")
VERSION_COLUMN = "model_version"


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


@dataclass(frozen=True)
class PrecomputedTable:
    """Per-user candidates read from a precomputed recommendations table.

    Attributes:
        path: the file read.
        version: the model version the table was computed with (and is served under).
        exclude_seen: whether the table excludes the items users had in training.
        n_users: users in the table.
    """

    path: Path
    version: str
    exclude_seen: bool
    _slices: Mapping[str, tuple[int, int]]
    _items: np.ndarray
    _mean: np.ndarray
    _std: np.ndarray
    _item_index: Mapping[Any, int]

    @property
    def n_users(self) -> int:
        return len(self._slices)

    @classmethod
    def load(cls, path: str | Path, registry: ModelRegistry) -> PrecomputedTable:
        """Read and check the table at ``path`` against the version it claims.

        Args:
            path: a Parquet file written by ``wager recommend ... --out FILE.parquet``.
            registry: the service's registry; the claimed version (the ``model_version``
                column, else the active version) is loaded from it for the catalogue.

        Raises:
            ValueError: the file is missing or not Parquet, or a check fails; the message
                names the file, the column and the first offending row (0-based).
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(
                f"{path}: no such file; give the Parquet file that `wager recommend RUN "
                "--all-users --out FILE.parquet` wrote"
            )
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise ValueError(
                f"{path}: not a readable Parquet file ({type(exc).__name__}: {exc}); give the "
                "file that `wager recommend RUN --all-users --out FILE.parquet` wrote"
            ) from None
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(
                f"{path}: column(s) {', '.join(missing)} missing (it has "
                f"{', '.join(map(str, frame.columns))}); a precomputed table needs "
                f"{', '.join(REQUIRED_COLUMNS)}, as `wager recommend --out` writes"
            )
        version = _claimed_version(path, frame, registry)
        rec = registry.get(version).recommender
        catalogue = rec.scorer_.catalogue
        users, items, mean, std = _checked_columns(path, frame)
        positions = np.array([catalogue.item_index.get(i, -1) for i in items], dtype=np.int64)
        if (positions < 0).any():
            row = _first(positions < 0)
            raise ValueError(
                f"{path}: column item, row {row}: item {items[row]!r} is not in the catalogue "
                f"of model version {version!r} ({catalogue.n_items} items); recompute the "
                "table with `wager recommend` on that version's run"
            )
        pairs = pd.DataFrame({"user": users, "item": positions})
        twice = pairs.duplicated().to_numpy()
        if twice.any():
            row = _first(twice)
            raise ValueError(
                f"{path}: columns user, item, row {row}: user {users[row]!r} has item "
                f"{items[row]!r} twice; a table holds each (user, item) once"
            )
        codes = pd.factorize(users)[0]  # users in order of first appearance, rows by rank
        if "rank" in frame.columns:
            order = np.lexsort((frame["rank"].to_numpy(), codes))
        else:
            order = np.argsort(codes, kind="stable")
        users, positions, mean, std = users[order], positions[order], mean[order], std[order]
        seen = _seen_pairs(catalogue, users, positions)
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
        ends = np.r_[starts[1:], len(users)]
        slices = {str(users[s]): (int(s), int(e)) for s, e in zip(starts, ends, strict=True)}
        for array in (positions, mean, std):
            array.flags.writeable = False
        return cls(path, version, not seen.any(), slices, positions, mean, std,
                   catalogue.item_index)  # fmt: skip

    def candidates(
        self,
        version: str,
        user_id: str,
        k: int,
        *,
        context: Mapping[str, Any] | None = None,
        exclude_seen: bool = True,
        exclude: Collection[str] = (),
    ) -> Candidates | None:
        """The user's candidates (positions, mean, std in rank order, read-only, less the
        ``exclude``d item ids), or None when the request must go to the model: another
        version, a context, another ``exclude_seen``, a user absent from the table, or fewer
        than ``k`` candidates left."""
        if version != self.version or context or exclude_seen != self.exclude_seen:
            return None
        span = self._slices.get(str(user_id))
        if span is None:
            return None
        items = self._items[span[0] : span[1]]
        mean, std = self._mean[span[0] : span[1]], self._std[span[0] : span[1]]
        if exclude:
            dropped = [self._item_index[i] for i in exclude if i in self._item_index]
            keep = ~np.isin(items, np.asarray(dropped, dtype=np.int64))
            items, mean, std = items[keep], mean[keep], std[keep]
            for array in (items, mean, std):
                array.flags.writeable = False
        if len(items) < k:
            return None
        return {"items": items, "mean": mean, "std": std}


def _claimed_version(path: Path, frame: pd.DataFrame, registry: ModelRegistry) -> str:
    """The ``model_version`` column's one value (a registry version), else the active one."""
    if VERSION_COLUMN not in frame.columns:
        return registry.active
    values = frame[VERSION_COLUMN]
    if values.isna().any():
        row = _first(values.isna().to_numpy())
        raise ValueError(f"{path}: column {VERSION_COLUMN}, row {row}: missing model version")
    text = values.astype(str).to_numpy()
    if len(text) and (text != text[0]).any():
        row = _first(text != text[0])
        raise ValueError(
            f"{path}: column {VERSION_COLUMN}, row {row}: {text[row]!r} differs from row 0's "
            f"{text[0]!r}; a table holds the recommendations of one model version"
        )
    version = str(text[0]) if len(text) else registry.active
    if version not in registry.versions():
        raise ValueError(
            f"{path}: column {VERSION_COLUMN}, row 0: model version {version!r} is not in the "
            f"registry {registry.path} (versions: {', '.join(registry.versions())})"
        )
    return version


def _checked_columns(
    path: Path, frame: pd.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(user keys, item keys, mean, std) of the table: no missing ids, finite means and
    non-negative (or NaN: undefined) stds, as float64."""
    for column in ("user", "item", "mean"):
        bad = frame[column].isna().to_numpy()
        if bad.any():
            raise ValueError(f"{path}: column {column}, row {_first(bad)}: missing value")
    users = categorical_keys(frame["user"]).to_numpy(dtype=object)
    items = categorical_keys(frame["item"]).to_numpy(dtype=object)
    numbers = {}
    for column in ("mean", "std"):
        try:
            numbers[column] = frame[column].to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            raise ValueError(
                f"{path}: column {column} must hold numbers, got {frame[column].dtype}"
            ) from None
    mean, std = numbers["mean"], numbers["std"]
    if not np.isfinite(mean).all():
        row = _first(~np.isfinite(mean))
        raise ValueError(f"{path}: column mean, row {row}: {mean[row]} is not a finite number")
    if (std < 0).any():
        row = _first(std < 0)
        raise ValueError(f"{path}: column std, row {row}: {std[row]} is negative")
    return users, items, mean, std


def _seen_pairs(catalogue: Any, users: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """(n,) bool: which (user, item position) rows are items the user had in training."""
    rows = np.array([catalogue.user_index.get(u, -1) for u in users], dtype=np.int64)
    known = rows >= 0
    out = np.zeros(len(users), dtype=bool)
    if known.any():
        out[known] = np.asarray(catalogue.seen[rows[known], positions[known]]).ravel() > 0
    return out
