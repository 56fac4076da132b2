"""Tests of wager.data.splits: partition (no leakage), sizes, ordering, reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.data.dataset import Dataset
from wager.data.schema import Schema
from wager.data.splits import (
    Split,
    check_split,
    leave_last_out,
    predefined_split,
    random_split,
    split_dataset,
    temporal_split,
)
from wager.errors import DataError

SCHEMA = Schema(user="user_id", item="item_id", label="rating", label_kind="rating", timestamp="ts")


def make_table(n: int, seed: int = 0, n_users: int = 7, n_items: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{k}" for k in rng.integers(0, n_users, n)],
            "item_id": [f"i{k}" for k in rng.integers(0, n_items, n)],
            "rating": rng.integers(1, 6, n),
            "ts": rng.integers(0, 50, n),
        }
    )


def assert_partition(split: Split, df: pd.DataFrame) -> None:
    train_idx, test_idx = set(split.train.index), set(split.test.index)
    assert not train_idx & test_idx, "a row is in both train and test"
    assert train_idx | test_idx == set(df.index), "a row was lost"
    assert len(split.train) + len(split.test) == len(df)
    # rows are unchanged copies of the input rows
    pd.testing.assert_frame_equal(pd.concat([split.train, split.test]).sort_index(), df)


# ----------------------------------------------------------------------------- random


def test_random_split_exact_sizes_and_partition() -> None:
    df = make_table(103)
    split = random_split(df, SCHEMA, test_fraction=0.2, seed=3)
    # round(0.2 * 103) = round(20.6) = 21 test rows, 103 - 21 = 82 train rows
    assert len(split.test) == 21
    assert len(split.train) == 82
    assert split.name == "random"
    assert_partition(split, df)


def test_random_split_rounds_half_to_even() -> None:
    df = make_table(10)
    # round(0.25 * 10) = round(2.5) = 2 (Python rounds halves to even)
    assert len(random_split(df, SCHEMA, test_fraction=0.25).test) == 2
    # round(0.35 * 10) = round(3.5) = 4
    assert len(random_split(df, SCHEMA, test_fraction=0.35).test) == 4


def test_random_split_matches_seeded_permutation() -> None:
    df = make_table(40)
    df.index = pd.RangeIndex(100, 140)  # a non-default index survives
    split = random_split(df, SCHEMA, test_fraction=0.3, seed=7)
    # reference: the first round(0.3 * 40) = 12 positions of the seeded permutation
    positions = np.sort(np.random.default_rng(7).permutation(40)[:12])
    assert split.test.index.tolist() == (positions + 100).tolist()
    assert_partition(split, df)


def test_random_split_determinism() -> None:
    df = make_table(60)
    a = random_split(df, SCHEMA, seed=1)
    b = random_split(df, SCHEMA, seed=1)
    c = random_split(df, SCHEMA, seed=2)
    assert a.test.index.equals(b.test.index)
    assert not a.test.index.equals(c.test.index)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_random_split_rejects_bad_fraction(fraction: float) -> None:
    with pytest.raises(DataError, match="test_fraction must lie strictly between 0 and 1"):
        random_split(make_table(10), SCHEMA, test_fraction=fraction)


def test_random_split_reports_empty_test() -> None:
    # round(0.01 * 10) = 0 test rows: an error in the report, not an exception
    split = random_split(make_table(10), SCHEMA, test_fraction=0.01, source="r.csv")
    assert [f.code for f in split.report.errors] == ["empty_test"]
    assert split.report.errors[0].message.startswith("r.csv: ")
    with pytest.raises(DataError, match="test part of the split has no rows"):
        split.report.raise_if_errors()


# ----------------------------------------------------------------------------- temporal


def test_temporal_split_cut_and_order() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["a", "b"] * 5,
            "item_id": list("vwxyzvwxyz"),
            "ts": [10, 9, 8, 7, 6, 5, 4, 3, 2, 1],
        }
    )
    split = temporal_split(df, SCHEMA, test_fraction=0.3)
    # target round(0.3 * 10) = 3 test rows -> cutoff 8: timestamps 8, 9, 10 (rows 0, 1, 2)
    assert split.test.index.tolist() == [0, 1, 2]
    assert split.train["ts"].max() < split.test["ts"].min()
    assert_partition(split, df)
    assert any(f.code == "temporal_cutoff" and "at 8" in f.message for f in split.report.findings)


def test_temporal_split_ties_go_to_test() -> None:
    df = pd.DataFrame(
        {"user_id": list("abcabc"), "item_id": list("xyzzyx"), "ts": [1, 2, 3, 3, 3, 4]}
    )
    split = temporal_split(df, SCHEMA, test_fraction=0.5)
    # target round(0.5 * 6) = 3. Cutoffs and their test sizes: 2 -> 5, 3 -> 4, 4 -> 1;
    # distances to 3: 2, 1, 2 -> cutoff 3, and all three rows at ts == 3 are in test.
    assert sorted(split.test["ts"].tolist()) == [3, 3, 3, 4]
    assert split.train["ts"].max() < split.test["ts"].min()


def test_temporal_split_explicit_cutoff() -> None:
    df = make_table(50, seed=4)
    split = temporal_split(df, SCHEMA, cutoff=30)
    assert split.test.index.tolist() == df.index[df["ts"] >= 30].tolist()
    assert_partition(split, df)


def test_temporal_split_datetime_strings() -> None:
    df = pd.DataFrame(
        {
            "user_id": ["a", "b", "a", "b"],
            "item_id": ["x", "x", "y", "y"],
            "ts": ["2021-03-01", "2020-01-05", "2021-01-01T10:00:00", "2020-06-30"],
        }
    )
    split = temporal_split(df, SCHEMA, test_fraction=0.5)
    # sorted: 2020-01-05, 2020-06-30, 2021-01-01, 2021-03-01 -> last two (rows 0, 2) are test
    assert split.test.index.tolist() == [0, 2]
    assert temporal_split(df, SCHEMA, cutoff="2021-02-01").test.index.tolist() == [0]


def test_temporal_split_needs_timestamp_flag() -> None:
    schema = Schema(user="user_id", item="item_id", label="rating", label_kind="rating")
    with pytest.raises(DataError, match="--timestamp-col"):
        temporal_split(make_table(10), schema, source="x.csv")
    with pytest.raises(DataError, match="--timestamp-col"):
        leave_last_out(make_table(10), schema)


def test_temporal_split_missing_timestamp_rows() -> None:
    df = pd.DataFrame(
        {"user_id": list("abcd"), "item_id": list("wxyz"), "ts": [1.0, np.nan, 3.0, np.nan]}
    )
    with pytest.raises(DataError, match=r"t\.csv, column 'ts', rows 2, 4: 2 rows have no"):
        temporal_split(df, SCHEMA, source="t.csv")


def test_temporal_split_single_timestamp_and_bad_cutoff() -> None:
    df = pd.DataFrame({"user_id": list("ab"), "item_id": list("xy"), "ts": [5, 5]})
    with pytest.raises(DataError, match="same timestamp"):
        temporal_split(df, SCHEMA)
    with pytest.raises(DataError, match="cannot be compared"):
        temporal_split(
            pd.DataFrame(
                {"user_id": ["a"], "item_id": ["x"], "ts": pd.to_datetime(["2020-01-01"])}
            ),
            SCHEMA,
            cutoff=object(),
        )


# ----------------------------------------------------------------------------- leave-last-out

LLO = pd.DataFrame(
    {
        "user_id": ["a", "b", "a", "c", "b", "a"],
        "item_id": ["x", "y", "z", "x", "z", "y"],
        "ts": [5, 2, 1, 7, 2, 3],
    },
    index=[100, 101, 102, 103, 104, 105],
)


def test_leave_last_out_n1() -> None:
    split = leave_last_out(LLO, SCHEMA, n=1)
    # a: ts 5 (idx 100), 1, 3 -> latest is idx 100.
    # b: ts 2 (idx 101) and 2 (idx 104) tie -> the later row (idx 104) counts as later.
    # c: a single interaction -> stays in train, reported.
    assert split.test.index.tolist() == [100, 104]
    assert split.name == "leave-last-out"
    assert_partition(split, LLO)
    kept = [f for f in split.report.warnings if f.code == "users_kept_in_train"]
    assert len(kept) == 1 and kept[0].count == 1
    assert "1 users have 1 or fewer interactions (1 rows), e.g. 'c'" in kept[0].message


def test_leave_last_out_n2() -> None:
    split = leave_last_out(LLO, SCHEMA, n=2)
    # a has 3 > 2 rows: latest two are ts 5 (idx 100) and ts 3 (idx 105).
    # b (2 rows) and c (1 row) have <= 2 and stay wholly in train: 2 users, 3 rows.
    assert split.test.index.tolist() == [100, 105]
    kept = next(f for f in split.report.warnings if f.code == "users_kept_in_train")
    assert kept.count == 2
    assert "(3 rows), e.g. 'b', 'c'" in kept.message


def test_leave_last_out_rejects_bad_n() -> None:
    with pytest.raises(DataError, match="n >= 1"):
        leave_last_out(LLO, SCHEMA, n=0)


def test_leave_last_out_matches_groupby_reference() -> None:
    df = make_table(300, seed=11)
    split = leave_last_out(df, SCHEMA, n=2)
    # reference with pandas: stable sort by ts, the last 2 rows of every user with > 2 rows
    ordered = df.sort_values("ts", kind="stable")
    sizes = df.groupby("user_id")["ts"].transform("size")
    last = ordered.groupby("user_id").tail(2).index
    expected = sorted(i for i in last if sizes[i] > 2)
    assert split.test.index.tolist() == expected
    assert_partition(split, df)


# ----------------------------------------------------------------------------- check_split


def test_check_split_cold_start_counts() -> None:
    train = pd.DataFrame({"user_id": ["u1", "u2", "u1"], "item_id": ["i1", "i2", "i2"]})
    test = pd.DataFrame({"user_id": ["u1", "u9", "u9", "u2"], "item_id": ["i1", "i2", "i7", "i1"]})
    report = check_split(train, test, SCHEMA, source="ml.csv")
    assert report.ok
    by_code = {f.code: f for f in report.warnings}
    assert set(by_code) == {"cold_start_users", "cold_start_items"}
    users, items = by_code["cold_start_users"], by_code["cold_start_items"]
    # users only in test: {u9} (2 test rows); items only in test: {i7} (1 test row)
    assert users.count == 1 and users.column == "user_id"
    assert "1 users appear only in test (2 test rows), e.g. 'u9'" in users.message
    assert items.count == 1 and items.column == "item_id"
    assert "1 items appear only in test (1 test rows), e.g. 'i7'" in items.message
    assert "out-of-vocabulary path" in users.message
    assert users.message.startswith("ml.csv, column 'user_id': ")


def test_check_split_many_cold_users_shows_first_few() -> None:
    train = pd.DataFrame({"user_id": ["a"], "item_id": ["x"]})
    test = pd.DataFrame({"user_id": [f"n{k}" for k in range(8)], "item_id": ["x"] * 8})
    f = check_split(train, test, SCHEMA).warnings[0]
    # 8 cold users, sorted: n0..n7; 5 shown, 3 more
    assert f.count == 8
    assert "'n0', 'n1', 'n2', 'n3', 'n4' (and 3 more)" in f.message


def test_check_split_empty_parts_are_errors() -> None:
    empty = pd.DataFrame({"user_id": [], "item_id": []})
    some = pd.DataFrame({"user_id": ["a"], "item_id": ["x"]})
    assert [f.code for f in check_split(empty, some, SCHEMA).errors] == ["empty_train"]
    assert [f.code for f in check_split(some, empty, SCHEMA).errors] == ["empty_test"]
    missing = check_split(some.rename(columns={"item_id": "it"}), some, SCHEMA)
    assert [f.code for f in missing.errors] == ["missing_column"]


# ------------------------------------------------------------------------ predefined / dispatch


def make_dataset() -> Dataset:
    df = make_table(40, seed=2)
    folds = {"u1": (df.iloc[:30], df.iloc[30:]), "u2": (df.iloc[10:], df.iloc[:10])}
    return Dataset(interactions=df, schema=SCHEMA, source="ml-100k", folds=folds)


def test_predefined_split_returns_fold() -> None:
    ds = make_dataset()
    split = predefined_split(ds, "u2")
    assert split.name == "u2"
    pd.testing.assert_frame_equal(split.train, ds.interactions.iloc[10:])
    pd.testing.assert_frame_equal(split.test, ds.interactions.iloc[:10])
    assert split.report.ok


def test_predefined_split_unknown_lists_folds() -> None:
    with pytest.raises(DataError, match=r"folds available: u1, u2\).*Did you mean 'u1'"):
        predefined_split(make_dataset(), "u11")
    no_folds = Dataset(interactions=make_table(5), schema=SCHEMA)
    with pytest.raises(DataError, match="folds available: none"):
        predefined_split(no_folds, "u1")


def test_split_dataset_dispatch() -> None:
    ds = make_dataset()
    a = split_dataset(ds, "random", seed=5, test_fraction=0.25)
    b = random_split(ds.interactions, SCHEMA, seed=5, test_fraction=0.25)
    assert a.test.index.equals(b.test.index)
    assert split_dataset(ds, "temporal").name == "temporal"
    assert split_dataset(ds, "leave-last-out").name == "leave-last-out"
    assert split_dataset(ds, "u1").test.index.tolist() == list(range(30, 40))
    with pytest.raises(DataError, match=r"random, temporal, leave-last-out, u1, u2\..*'random'"):
        split_dataset(ds, "randm")


# ----------------------------------------------------------------------------- properties


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 60),
    seed=st.integers(0, 10_000),
    fraction=st.floats(0.05, 0.95),
)
def test_every_split_partitions_rows(n: int, seed: int, fraction: float) -> None:
    df = make_table(n, seed=seed, n_users=4, n_items=5)
    df.index = pd.RangeIndex(n) * 3 + 1  # an index that is not 0..n-1
    r = random_split(df, SCHEMA, test_fraction=fraction, seed=seed)
    assert_partition(r, df)
    assert len(r.test) == round(fraction * n)
    llo = leave_last_out(df, SCHEMA, n=1)
    assert_partition(llo, df)
    # every user with >= 2 rows has exactly one test row, holding that user's max ts
    sizes = df.groupby("user_id").size()
    assert sorted(llo.test["user_id"]) == sorted(sizes.index[sizes >= 2])
    for _, row in llo.test.iterrows():
        assert row["ts"] == df.loc[df["user_id"] == row["user_id"], "ts"].max()
    if df["ts"].nunique() >= 2:
        t = temporal_split(df, SCHEMA, test_fraction=fraction)
        assert_partition(t, df)
        assert t.train["ts"].max() < t.test["ts"].min()
