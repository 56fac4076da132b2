"""Conflicting labels: the same (user, item) pair rated differently, found and resolved.

An explicit rating is one person's opinion of one item, so two rows of the same pair with
different ratings contradict each other: a re-rating, a merge of two exports, or a join
gone wrong. Which label is right is the user's call, so wager reports the conflict
(:func:`find_label_conflicts`, a warning of ``wager data validate``) and applies the
choice of ``[data] duplicates`` before a run is split (:func:`resolve_label_conflicts`):

- "refuse" (default): an error naming the pairs and rows;
- "last": keep the latest row of each conflicting pair (by the timestamp column, file
  order among equal timestamps or without one);
- "mean": keep one row per conflicting pair (the latest) whose label is the mean;
- "keep": keep every row; each counts as an interaction of its own.

Only label kind "rating" is checked. A click log (kind "click") and aggregated CTR rows
(kind "ctr") repeat pairs legitimately: the same item shown to the same user again is a
new impression, clicked or not (Open Bandit, the synthetic world), and CTR rows of one
pair differ by context. Pairs are also told apart by the context feature columns: the
same item rated in two contexts is two observations, not a conflict. Rows that repeat a
pair with the *same* rating are not conflicts either (they are counted as exact
duplicates by :func:`wager.data.checks.validate_interactions` when every column agrees).

Example:
    >>> import pandas as pd
    >>> from wager.data.schema import Schema
    >>> s = Schema(user="u", item="i", label="r", label_kind="rating")
    >>> df = pd.DataFrame({"u": ["a", "a", "b"], "i": ["x", "x", "x"], "r": [4.0, 2.0, 5.0]})
    >>> find_label_conflicts(df, s).n_pairs
    1
    >>> out, report = resolve_label_conflicts(df, s, "mean", "r.csv")
    >>> out["r"].tolist()
    [3.0, 5.0]
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from wager.data.dataset import Dataset
from wager.data.features import categorical_keys
from wager.data.schema import Schema
from wager.errors import ValidationReport, make_finding

__all__ = [
    "DUPLICATE_POLICIES",
    "FIX_TEXT",
    "LabelConflicts",
    "describe_label_conflicts",
    "find_label_conflicts",
    "resolve_duplicates",
    "resolve_label_conflicts",
]

DUPLICATE_POLICIES: tuple[str, ...] = ("refuse", "last", "mean", "keep")
"""Values of ``[data] duplicates``: what to do with conflicting ratings of one pair."""

_MAX_SHOWN = 5
FIX_TEXT = (
    'Choose in the run config: [data] duplicates = "last" (keep the latest rating of each '
    'pair), "mean" (average them) or "keep" (every row counts); or remove the rows'
)


@dataclass(frozen=True)
class LabelConflicts:
    """Rows whose (user, item[, context]) pair carries more than one distinct rating.

    Attributes:
        positions: (n_rows,) 0-based row positions of every row of a conflicting pair,
            ascending.
        groups: (n_rows,) pair number of each of those rows (equal for rows of one pair).
        n_pairs: number of conflicting pairs.
    """

    positions: np.ndarray
    groups: np.ndarray
    n_pairs: int

    @property
    def n_rows(self) -> int:
        """Number of rows in conflicting pairs."""
        return len(self.positions)


def _key_columns(df: pd.DataFrame, schema: Schema) -> list[str]:
    cols = [schema.user, schema.item, *(f.name for f in schema.context)]
    return [c for c in dict.fromkeys(cols) if c in df.columns]


def find_label_conflicts(df: pd.DataFrame, schema: Schema) -> LabelConflicts:
    """Find pairs with conflicting ratings (label kind "rating" only; see the module doc).

    Args:
        df: the interaction table.
        schema: its roles; ``label_kind`` decides whether repeated pairs can conflict.

    Returns:
        The conflicts; ``n_pairs == 0`` when there are none (always for clicks and CTRs).
    """
    none = LabelConflicts(np.zeros(0, np.int64), np.zeros(0, np.int64), 0)
    label = schema.label
    if schema.label_kind != "rating" or label is None or label not in df.columns or len(df) == 0:
        return none
    if schema.user not in df.columns or schema.item not in df.columns:
        return none
    keys = pd.DataFrame(
        {str(i): categorical_keys(df[c]).to_numpy() for i, c in enumerate(_key_columns(df, schema))}
    )
    group = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy()
    y = pd.to_numeric(df[label], errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    distinct = pd.Series(y).groupby(group).transform("nunique").to_numpy()
    positions = np.flatnonzero(distinct > 1)
    return LabelConflicts(positions, group[positions], len(np.unique(group[positions])))


def _example(df: pd.DataFrame, schema: Schema, conflicts: LabelConflicts) -> str:
    """The first conflicting pair, e.g. "user '7', item 'a': 4, 5 (rows 1, 2)"."""
    first = conflicts.positions[conflicts.groups == conflicts.groups[0]]
    row = df.iloc[int(first[0])]
    labels = ", ".join(_fmt(df[schema.label].iloc[int(p)]) for p in first[:_MAX_SHOWN])
    rows = ", ".join(str(int(p) + 1) for p in first[:_MAX_SHOWN])
    return f"user {_fmt(row[schema.user])}, item {_fmt(row[schema.item])}: {labels} (rows {rows})"


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def describe_label_conflicts(df: pd.DataFrame, schema: Schema, conflicts: LabelConflicts) -> str:
    """The problem text shared by the warning and the refusal: counts and an example."""
    pairs = "pair has" if conflicts.n_pairs == 1 else "pairs have"
    return (
        f"{conflicts.n_pairs} (user, item) {pairs} conflicting ratings over "
        f"{conflicts.n_rows} rows, e.g. {_example(df, schema, conflicts)}"
    )


def _order(df: pd.DataFrame, schema: Schema) -> np.ndarray:
    """Sort keys of the rows in time: the timestamp when there is one, then file order."""
    n = len(df)
    position = np.arange(n)
    col = schema.timestamp
    if col is None or col not in df.columns:
        return position
    raw = df[col]
    if pd.api.types.is_datetime64_any_dtype(raw):
        ts = pd.DatetimeIndex(raw).asi8.astype("float64")
    else:
        ts = pd.to_numeric(raw, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        if np.isnan(ts).all() and raw.notna().any():
            dates = pd.to_datetime(raw, errors="coerce", format="mixed", utc=True)
            ts = np.where(dates.isna(), np.nan, pd.DatetimeIndex(dates).asi8).astype("float64")
    ts = np.where(np.isnan(ts), -np.inf, ts)
    return np.lexsort((position, ts))  # positions in time order, file order breaking ties


def resolve_label_conflicts(
    df: pd.DataFrame, schema: Schema, policy: str, source: str
) -> tuple[pd.DataFrame, ValidationReport]:
    """Apply a ``[data] duplicates`` policy to the conflicting pairs of ``df``.

    Args:
        df: the interaction table (its index is kept for the rows that stay).
        schema: its roles.
        policy: one of :data:`DUPLICATE_POLICIES`.
        source: the file or table name used in messages.

    Returns:
        (the table, a report): with "refuse", an error naming the rows (the table is
        unchanged); with "last" / "mean", the rows left out counted as dropped; with
        "keep", an info finding. An empty report when there is no conflict.

    Raises:
        ValueError: an unknown policy.
    """
    if policy not in DUPLICATE_POLICIES:
        raise ValueError(
            f"duplicates = {policy!r} is not known: use one of {', '.join(DUPLICATE_POLICIES)}"
        )
    report = ValidationReport()
    conflicts = find_label_conflicts(df, schema)
    if conflicts.n_pairs == 0:
        return df, report
    text = describe_label_conflicts(df, schema, conflicts)
    rows = conflicts.positions[:_MAX_SHOWN].tolist()
    if policy == "refuse":
        report.add(
            make_finding(
                "error",
                "conflicting_labels",
                text,
                source=source or None,
                column=schema.label,
                rows=rows,
                count=conflicts.n_rows,
                fix=FIX_TEXT,
            )
        )
        return df, report
    if policy == "keep":
        report.add(
            make_finding(
                "info",
                "conflicting_labels",
                f'{text}; every row is kept ([data] duplicates = "keep")',
                source=source or None,
                column=schema.label,
                rows=rows,
                count=conflicts.n_rows,
            )
        )
        return df, report
    # "last" / "mean": one row per conflicting pair, the latest in time
    order = _order(df, schema)
    rank = np.empty(len(df), dtype=np.int64)
    rank[order] = np.arange(len(df))
    in_time = np.lexsort((rank[conflicts.positions], conflicts.groups))
    by_time, groups = conflicts.positions[in_time], conflicts.groups[in_time]
    is_last = np.r_[groups[1:] != groups[:-1], True]
    kept, dropped = by_time[is_last], by_time[~is_last]
    out = df
    if policy == "mean":
        y = pd.to_numeric(df[schema.label], errors="coerce").to_numpy(dtype="float64")
        means = pd.Series(y[by_time]).groupby(groups).mean()
        out = df.copy()
        out[schema.label] = y
        label_col = out.columns.get_loc(schema.label)
        assert isinstance(label_col, int)  # column names are unique: loading refuses repeats
        out.iloc[kept, label_col] = means.loc[groups[is_last]].to_numpy()
    keep_mask = np.ones(len(df), dtype=bool)
    keep_mask[dropped] = False
    out = out.iloc[np.flatnonzero(keep_mask)]
    how = (
        "latest rating of each pair kept"
        if policy == "last"
        else "ratings of each pair averaged into its latest row"
    )
    report.drop(
        f'conflicting ratings of one (user, item) pair ({how}; [data] duplicates = "{policy}")',
        len(dropped),
        source=source or None,
        rows=np.sort(dropped)[:_MAX_SHOWN].tolist(),
    )
    return out, report


def resolve_duplicates(dataset: Dataset, policy: str) -> Dataset:
    """Apply ``[data] duplicates`` to a dataset's interactions and to each predefined fold.

    Args:
        dataset: the loaded dataset (its schema decides the label kind).
        policy: one of :data:`DUPLICATE_POLICIES`.

    Returns:
        The dataset with conflicts resolved; what was dropped is counted in its report.

    Raises:
        DataError: with "refuse" and a conflict, naming the file, rows and the choices.
    """
    report = ValidationReport()
    report.extend(dataset.report)
    source = dataset.source
    interactions, found = resolve_label_conflicts(
        dataset.interactions, dataset.schema, policy, source
    )
    report.extend(found)
    folds = {}
    for name, (train, test) in dataset.folds.items():
        parts = []
        for part, frame in (("train", train), ("test", test)):
            resolved, found = resolve_label_conflicts(
                frame, dataset.schema, policy, f"{source} (fold {name}, {part})"
            )
            report.extend(found)
            parts.append(resolved)
        folds[name] = (parts[0], parts[1])
    report.raise_if_errors()
    return replace(dataset, interactions=interactions, folds=folds, report=report)
