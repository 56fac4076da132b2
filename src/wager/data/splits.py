"""Train/test splits of an interaction table, each checked for cold start and emptiness.

Every split partitions the rows of the input table: no row is in both parts and
none is lost. Both parts keep the input's index (and its row order), so
``train.index`` and ``test.index`` together are exactly ``df.index``.

Splits never raise for what they find in the result (an empty part, users or
items that appear only in test): that goes into :attr:`Split.report`, which is
what ``wager data validate --split`` prints. Call ``split.report.raise_if_errors()``
before training on a split you did not inspect. Bad arguments (a missing
timestamp column, a fraction outside (0, 1), an unknown fold) raise
:class:`~wager.errors.DataError` at once.

Example:
    >>> import pandas as pd
    >>> from wager.data.schema import Schema
    >>> df = pd.DataFrame({"user_id": ["a", "a", "b", "b"], "item_id": [1, 2, 1, 2],
    ...                    "ts": [1, 2, 3, 4]})
    >>> s = temporal_split(df, Schema(timestamp="ts"), test_fraction=0.25)
    >>> s.test.index.tolist()
    [3]
    >>> s.report.ok
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from wager.data.dataset import Dataset
from wager.data.schema import Schema
from wager.errors import ValidationReport, data_error, make_finding, suggest

#: Names :func:`split_dataset` understands besides a dataset's own fold names.
SPLIT_METHODS = ("random", "temporal", "leave-last-out")

_MAX_IDS_SHOWN = 5


@dataclass
class Split:
    """A train/test split and what checking it found.

    Attributes:
        train: training rows, with the input table's index and columns.
        test: test rows, with the input table's index and columns.
        name: how the split was made ("random", "temporal", "leave-last-out" or a fold name).
        report: findings of :func:`check_split` plus any the split itself made
            (e.g. users kept wholly in train by :func:`leave_last_out`).
    """

    train: pd.DataFrame
    test: pd.DataFrame
    name: str
    report: ValidationReport


# ----------------------------------------------------------------------------- helpers


def _src(source: str) -> str | None:
    return source or None


def _format_ids(ids: Sequence[Any], total: int | None = None) -> str:
    """Render the first few ids as "'u9', 'u10' (and 3 more)"; ``total`` counts them all."""
    n = len(ids) if total is None else total
    shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in ids[:_MAX_IDS_SHOWN])
    if n > min(len(ids), _MAX_IDS_SHOWN):
        shown += f" (and {n - min(len(ids), _MAX_IDS_SHOWN)} more)"
    return shown


def _require_columns(df: pd.DataFrame, columns: Sequence[str], source: str, role: str) -> None:
    for col in columns:
        if col not in df.columns:
            raise data_error(
                "missing_column",
                f"the {role} needs column '{col}', which the table does not have",
                source=_src(source),
                column=col,
                fix=(
                    f"Name the right column in the schema.{suggest(col, map(str, df.columns))} "
                    f"Columns present: {', '.join(map(str, df.columns))}."
                ),
            )


def _check_fraction(test_fraction: float, source: str) -> None:
    if not (isinstance(test_fraction, int | float) and 0.0 < float(test_fraction) < 1.0):
        raise data_error(
            "bad_test_fraction",
            f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}",
            source=_src(source),
            fix="Pass e.g. test_fraction=0.2 (20% of the rows go to test).",
        )


def _timestamp_keys(df: pd.DataFrame, schema: Schema, source: str, method: str) -> pd.Series:
    """The timestamp column as a numeric or datetime64 Series, checked for missing values.

    Text columns are read as numbers when every value is one (epoch seconds), else as
    datetimes. Any value that is missing or cannot be read is an error naming its rows.
    """
    col = schema.timestamp
    if col is None:
        raise data_error(
            "missing_timestamp",
            f"the {method} split needs a timestamp column, and the schema names none",
            source=_src(source),
            fix=(
                "Pass --timestamp-col NAME (Schema(timestamp=NAME) in Python), or use "
                "--split random."
            ),
        )
    _require_columns(df, [col], source, f"{method} split")
    raw = df[col]
    missing = raw.isna().to_numpy()
    if pd.api.types.is_bool_dtype(raw) or not (
        pd.api.types.is_numeric_dtype(raw) or pd.api.types.is_datetime64_any_dtype(raw)
    ):
        as_num = pd.to_numeric(raw, errors="coerce")
        if not (as_num.isna().to_numpy() & ~missing).any():
            ts = as_num
        else:
            ts = pd.to_datetime(raw, errors="coerce", format="mixed")
            bad = np.flatnonzero(ts.isna().to_numpy() & ~missing)
            if len(bad):
                raise data_error(
                    "bad_timestamp",
                    f"{len(bad)} timestamps are neither numbers nor dates "
                    f"(e.g. {raw.iloc[bad[0]]!r})",
                    source=_src(source),
                    column=col,
                    rows=bad,
                    fix="Use epoch seconds or ISO dates such as 2020-01-31T12:00:00.",
                )
    else:
        ts = raw
    bad = np.flatnonzero(missing)
    if len(bad):
        raise data_error(
            "missing_timestamp_values",
            f"{len(bad)} rows have no timestamp, so the {method} split cannot place them",
            source=_src(source),
            column=col,
            rows=bad,
            fix="Fill in or remove those rows before splitting, or use --split random.",
        )
    return ts


def _sort_keys(ts: pd.Series) -> np.ndarray:
    """Timestamps as a NumPy array that sorts in time order (int64 ns for datetimes)."""
    if pd.api.types.is_datetime64_any_dtype(ts):
        return pd.DatetimeIndex(ts).asi8
    if pd.api.types.is_integer_dtype(ts):
        return ts.to_numpy(dtype=np.int64)
    return ts.to_numpy(dtype=np.float64)


def _finish(
    df: pd.DataFrame,
    test_mask: np.ndarray,
    schema: Schema,
    name: str,
    source: str,
    report: ValidationReport | None = None,
) -> Split:
    train = df[~test_mask]
    test = df[test_mask]
    full = report if report is not None else ValidationReport()
    full.extend(check_split(train, test, schema, source=source))
    full.add(
        make_finding(
            "info",
            "split_sizes",
            f"split '{name}': {len(train)} train rows, {len(test)} test rows",
            source=_src(source),
        )
    )
    return Split(train=train, test=test, name=name, report=full)


# ----------------------------------------------------------------------------- checks


def check_split(
    train: pd.DataFrame, test: pd.DataFrame, schema: Schema, source: str = ""
) -> ValidationReport:
    """Check a split for empty parts and for users/items that appear only in test.

    Args:
        train: training interactions with the ``schema.user`` and ``schema.item`` columns.
        test: test interactions with the same columns.
        schema: names the user and item columns.
        source: the file or table the split came from, used in messages.

    Returns:
        A report with an error for an empty train or test part (or a missing id column)
        and a warning, with counts and the first few ids, for users and for items
        that occur in test but never in train (cold start: they reach the model
        through the out-of-vocabulary path).
    """
    report = ValidationReport()
    src = _src(source)
    for part, frame, fix in (
        ("train", train, "Lower test_fraction, or choose a later cutoff."),
        ("test", test, "Raise test_fraction, or choose an earlier cutoff."),
    ):
        if len(frame) == 0:
            report.add(
                make_finding(
                    "error",
                    f"empty_{part}",
                    f"the {part} part of the split has no rows",
                    source=src,
                    count=0,
                    fix=fix,
                )
            )
    for role, col in (("users", schema.user), ("items", schema.item)):
        absent = [name for name, f in (("train", train), ("test", test)) if col not in f.columns]
        if absent:
            report.add(
                make_finding(
                    "error",
                    "missing_column",
                    f"the {' and '.join(absent)} part of the split has no {role} column",
                    source=src,
                    column=col,
                    fix="Name the right column in the schema.",
                )
            )
            continue
        test_ids = test[col]
        only_test = pd.Index(test_ids.unique()).difference(pd.Index(train[col].unique()))
        if len(only_test) == 0:
            continue
        ids = sorted(only_test.tolist(), key=lambda v: (str(type(v)), v))
        n_rows = int(test_ids.isin(only_test).sum())
        report.add(
            make_finding(
                "warning",
                f"cold_start_{role}",
                f"{len(ids)} {role} appear only in test ({n_rows} test rows), "
                f"e.g. {_format_ids(ids)}; they are cold-start in test and go through the "
                "out-of-vocabulary path",
                source=src,
                column=col,
                count=len(ids),
            )
        )
    return report


# ----------------------------------------------------------------------------- splits


def random_split(
    df: pd.DataFrame,
    schema: Schema,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    source: str = "",
) -> Split:
    """Split rows uniformly at random, with exact sizes.

    ``n_test = round(test_fraction * len(df))`` rows (Python rounding, halves to even)
    are the first ``n_test`` positions of ``np.random.default_rng(seed).permutation(len(df))``;
    the rest are train. Both parts keep the input's index and row order.

    Args:
        df: interaction table, (n_rows, n_columns).
        schema: names the user and item columns (for :func:`check_split`).
        test_fraction: share of rows in test, in (0, 1).
        seed: seed of the permutation; the same seed gives the same split.
        source: file or table name used in messages.

    Returns:
        The split, named "random".

    Raises:
        DataError: ``test_fraction`` outside (0, 1).
    """
    _check_fraction(test_fraction, source)
    n = len(df)
    n_test = round(test_fraction * n)
    perm = np.random.default_rng(seed).permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[perm[:n_test]] = True
    return _finish(df, mask, schema, "random", source)


def temporal_split(
    df: pd.DataFrame,
    schema: Schema,
    *,
    test_fraction: float = 0.2,
    cutoff: Any = None,
    source: str = "",
) -> Split:
    """Split at one global time: rows with ``timestamp >= cutoff`` are test, earlier rows train.

    Ties: every row whose timestamp equals the cutoff goes to **test**, so
    ``max(train timestamps) < min(test timestamps)`` always holds.

    With ``cutoff=None`` the cutoff is the distinct timestamp (other than the earliest,
    so that train is not empty) whose test part is closest in size to
    ``round(test_fraction * len(df))`` rows; between two equally close ones, the
    earlier cutoff (larger test part) wins. Heavy ties can make the test share
    differ from ``test_fraction``; the sizes are in the report.

    Args:
        df: interaction table with the ``schema.timestamp`` column (numbers such as
            epoch seconds, or datetimes).
        schema: names the timestamp, user and item columns.
        test_fraction: wanted share of rows in test, in (0, 1); unused when ``cutoff`` is given.
        cutoff: explicit cutoff, comparable with the timestamp column (a number, or a
            date string / Timestamp for datetime columns).
        source: file or table name used in messages.

    Returns:
        The split, named "temporal"; the report records the cutoff used.

    Raises:
        DataError: no timestamp column in the schema (pass ``--timestamp-col``), a
            missing or unreadable timestamp, a cutoff that cannot be compared with the
            column, a bad ``test_fraction``, or a single distinct timestamp.
    """
    ts = _timestamp_keys(df, schema, source, "temporal")
    report = ValidationReport()
    if cutoff is None:
        _check_fraction(test_fraction, source)
        keys = _sort_keys(ts)
        uniq = np.unique(keys)
        if len(uniq) < 2:
            raise data_error(
                "single_timestamp",
                "every row has the same timestamp, so no time cut can separate train from test",
                source=_src(source),
                column=schema.timestamp,
                fix="Use --split random, or check that the timestamp column is the right one.",
            )
        n = len(keys)
        target = round(test_fraction * n)
        test_sizes = n - np.searchsorted(np.sort(keys), uniq[1:], side="left")
        j = int(np.argmin(np.abs(test_sizes - target)))
        cut_key = uniq[1:][j]
        mask = keys >= cut_key
        shown = ts[mask].min()
    else:
        try:
            mask = (ts >= cutoff).to_numpy(dtype=bool)
        except (TypeError, ValueError) as exc:
            raise data_error(
                "bad_cutoff",
                f"cutoff {cutoff!r} cannot be compared with the timestamps ({exc})",
                source=_src(source),
                column=schema.timestamp,
                fix="Give a number for numeric timestamps, or a date such as 2020-01-31 "
                "for datetime timestamps.",
            ) from None
        shown = cutoff
    report.add(
        make_finding(
            "info",
            "temporal_cutoff",
            f"temporal split at {shown}: rows with timestamp >= the cutoff are test",
            source=_src(source),
            column=schema.timestamp,
        )
    )
    return _finish(df, np.asarray(mask, dtype=bool), schema, "temporal", source, report)


def leave_last_out(df: pd.DataFrame, schema: Schema, *, n: int = 1, source: str = "") -> Split:
    """Put each user's ``n`` latest interactions in test, the rest in train.

    Ties in timestamp are broken by row order: of two rows with the same timestamp,
    the one further down the table counts as later. Users with ``n`` or fewer
    interactions stay wholly in train (they would have nothing left to train on);
    their number is reported as a "users_kept_in_train" warning.

    Args:
        df: interaction table with the ``schema.user`` and ``schema.timestamp`` columns.
        schema: names the user, item and timestamp columns.
        n: interactions per user moved to test (>= 1).
        source: file or table name used in messages.

    Returns:
        The split, named "leave-last-out".

    Raises:
        DataError: no timestamp column (pass ``--timestamp-col``), a missing or
            unreadable timestamp, a missing user column, or ``n < 1``.
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise data_error(
            "bad_n",
            f"leave_last_out needs n >= 1 interactions per user in test, got {n!r}",
            source=_src(source),
            fix="Pass n=1 to hold out each user's latest interaction.",
        )
    _require_columns(df, [schema.user], source, "leave-last-out split")
    keys = _sort_keys(_timestamp_keys(df, schema, source, "leave-last-out"))
    users, uniques = pd.factorize(df[schema.user], use_na_sentinel=False)
    pos = np.arange(len(df))
    # stable order: by user, then timestamp, then original row position
    order = np.lexsort((pos, keys, users))
    sorted_users = users[order]
    counts = np.bincount(users, minlength=int(users.max()) + 1 if len(users) else 0)
    # rank from the end within each user: 0 = latest
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_users)) + 1]
    rank_from_start = pos - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    rank_from_end = counts[sorted_users] - 1 - rank_from_start
    in_test_sorted = (rank_from_end < n) & (counts[sorted_users] > n)
    mask = np.zeros(len(df), dtype=bool)
    mask[order[in_test_sorted]] = True

    report = ValidationReport()
    few = np.flatnonzero(counts <= n)
    if len(few):
        examples = [uniques[int(u)] for u in few[:_MAX_IDS_SHOWN]]
        n_rows = int(counts[few].sum())
        report.add(
            make_finding(
                "warning",
                "users_kept_in_train",
                f"{len(few)} users have {n} or fewer interactions ({n_rows} rows), e.g. "
                f"{_format_ids(examples, len(few))}; "
                "they stay wholly in train and are not evaluated",
                source=_src(source),
                column=schema.user,
                count=len(few),
            )
        )
    return _finish(df, mask, schema, "leave-last-out", source, report)


def predefined_split(dataset: Dataset, name: str) -> Split:
    """Use a fold that ships with the data (e.g. MovieLens 100k "u1".."u5", "ua", "ub").

    Args:
        dataset: a dataset whose ``folds`` holds ``name``.
        name: the fold's name.

    Returns:
        The fold's (train, test) frames as given, checked by :func:`check_split`.

    Raises:
        DataError: ``name`` is not one of ``dataset.folds``; the message lists them.
    """
    if name not in dataset.folds:
        available = sorted(dataset.folds)
        listing = ", ".join(available) if available else "none"
        raise data_error(
            "unknown_fold",
            f"the dataset has no predefined fold '{name}' (folds available: {listing})",
            source=_src(dataset.source),
            fix=(
                f"Pick one of the folds listed.{suggest(name, available)}"
                if available
                else "This dataset ships no folds; use --split random, temporal or leave-last-out."
            ),
        )
    train, test = dataset.folds[name]
    report = check_split(train, test, dataset.schema, source=dataset.source)
    report.add(
        make_finding(
            "info",
            "split_sizes",
            f"split '{name}': {len(train)} train rows, {len(test)} test rows",
            source=_src(dataset.source),
        )
    )
    return Split(train=train, test=test, name=name, report=report)


def split_dataset(
    dataset: Dataset, name: str, *, seed: int = 0, test_fraction: float = 0.2
) -> Split:
    """Split a dataset by method name or predefined fold name.

    Args:
        dataset: the loaded dataset.
        name: "random", "temporal", "leave-last-out" (n=1), or a key of ``dataset.folds``.
        seed: seed of the random split.
        test_fraction: share of rows in test for "random" and "temporal".

    Returns:
        The split; see the function each name maps to.

    Raises:
        DataError: ``name`` is none of the above; the message lists every choice.
    """
    df, schema, source = dataset.interactions, dataset.schema, dataset.source
    if name == "random":
        return random_split(df, schema, test_fraction=test_fraction, seed=seed, source=source)
    if name == "temporal":
        return temporal_split(df, schema, test_fraction=test_fraction, source=source)
    if name == "leave-last-out":
        return leave_last_out(df, schema, n=1, source=source)
    if name in dataset.folds:
        return predefined_split(dataset, name)
    choices = [*SPLIT_METHODS, *sorted(dataset.folds)]
    raise data_error(
        "unknown_split",
        f"split '{name}' is not known",
        source=_src(source),
        fix=f"Use one of: {', '.join(choices)}.{suggest(name, choices)}",
    )
