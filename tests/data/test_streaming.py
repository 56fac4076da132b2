"""Interaction rows streamed from Parquet (``wager.data.streaming``).

References: pandas on the whole table (counts, sums, the rows of each split), the Poisson(1)
and binomial laws for the hashed draws (tolerances of 5 standard errors), and exact
set equality for what the shuffle buffer lets through.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.data.features import CategoricalEncoder, InteractionEncoder
from wager.data.schema import Categorical, Numeric, Schema
from wager.data.streaming import (
    ParquetSource,
    ShuffleBuffer,
    epoch_batches,
    memory_plan,
    row_uniforms,
    scan,
    split_codes,
    train_batch_count,
)
from wager.errors import DataError
from wager.uncertainty.ensemble import row_bootstrap_weights

SCHEMA = Schema(
    user="user_id",
    item="item_id",
    label="rating",
    label_kind="rating",
    rating_range=(1, 5),
    context=(Numeric("hour"), Categorical("device")),
)
COLUMNS = ["user_id", "item_id", "rating", "hour", "device"]


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": [f"u{x}" for x in rng.integers(0, 40, n)],
            "item_id": [f"i{x}" for x in rng.integers(0, 25, n)],
            "rating": rng.integers(1, 6, n).astype(float),
            "hour": rng.integers(0, 24, n),
            "device": rng.choice(["ios", "android", "web"], n),
        }
    )


def _write(folder: Path, df: pd.DataFrame, parts: int, group_rows: int) -> None:
    """``parts`` files in nested folders (sorted paths keep the table's order)."""
    bounds = np.linspace(0, len(df), parts + 1).astype(int)
    for k in range(parts):
        sub = folder / f"day={k:02d}"
        sub.mkdir(parents=True, exist_ok=True)
        df.iloc[bounds[k] : bounds[k + 1]].to_parquet(
            sub / f"part-{k}.parquet", row_group_size=group_rows
        )


def test_a_folder_of_part_files_is_numbered_in_path_order(tmp_path: Path) -> None:
    df = _table(1000)
    _write(tmp_path, df, parts=3, group_rows=128)
    (tmp_path / ".hidden").mkdir()
    df.head(5).to_parquet(tmp_path / ".hidden" / "x.parquet")  # skipped, as are _files
    df.head(5).to_parquet(tmp_path / "_metadata.parquet")
    src = ParquetSource(tmp_path, COLUMNS)
    assert src.n_rows == 1000 and len(src.files) == 3
    starts = [g.start for g in src.row_groups]
    assert starts == sorted(starts) and starts[0] == 0
    back = pd.concat([src.read(g) for g in src.row_groups])
    assert back.index.tolist() == list(range(1000))
    pd.testing.assert_frame_equal(back.reset_index(drop=True), df)
    shuffled = src.ordered(seed=3)
    assert sorted(g.start for g in shuffled) == starts and shuffled != src.row_groups
    assert src.ordered(seed=3) == shuffled


def test_source_errors_name_the_file_and_the_column(tmp_path: Path) -> None:
    _table(50).drop(columns="rating").to_parquet(tmp_path / "a.parquet")
    with pytest.raises(DataError, match="rating") as err:
        ParquetSource(tmp_path, COLUMNS)
    assert str(tmp_path / "a.parquet") in str(err.value)
    (tmp_path / "a.parquet").unlink()
    with pytest.raises(DataError, match="no Parquet files"):
        ParquetSource(tmp_path, COLUMNS)
    (tmp_path / "b.parquet").write_text("user_id,item_id\n1,2\n")
    with pytest.raises(DataError, match="cannot be read as Parquet") as err:
        ParquetSource(tmp_path, COLUMNS)
    assert "b.parquet" in str(err.value)
    with pytest.raises(DataError, match="no such file"):
        ParquetSource(tmp_path / "nowhere", COLUMNS)


def test_split_shares_follow_the_fractions_and_depend_on_the_row_number_only() -> None:
    rows = np.arange(200_000)
    codes = split_codes(rows, seed=4, valid_fraction=0.1, test_fraction=0.2)
    n = len(rows)
    for code, p in ((2, 0.2), (1, 0.8 * 0.1), (0, 0.8 * 0.9)):
        share = float((codes == code).mean())
        assert abs(share - p) < 5 * math.sqrt(p * (1 - p) / n), (code, share)
    # a row's split does not depend on the rows around it
    assert np.array_equal(split_codes(rows[::7], 4, 0.1, 0.2), codes[::7])
    assert not np.array_equal(split_codes(rows, 5, 0.1, 0.2), codes)  # the seed matters
    u = row_uniforms(rows, 0, 1)
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 5 * math.sqrt(1 / 12 / n)


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 50), min_size=1, max_size=12),
    capacity=st.integers(0, 60),
    batch=st.integers(1, 17),
)
def test_shuffle_buffer_lets_every_row_through_once_in_full_batches(
    sizes: list[int], capacity: int, batch: int
) -> None:
    buffer = ShuffleBuffer(capacity, batch, np.random.default_rng(0))
    out, start = [], 0
    for n in sizes:
        rows = np.arange(start, start + n)
        start += n
        out += list(buffer.add({"row": rows, "x": rows * 2.0}))
        assert len(buffer) <= capacity + batch  # never more than it must keep
    out += list(buffer.drain())
    got = np.concatenate([b["row"] for b in out]) if out else np.empty(0)
    assert sorted(got.tolist()) == list(range(start))
    assert all(np.array_equal(b["x"], b["row"] * 2.0) for b in out)  # rows stay whole
    lengths = [len(b["row"]) for b in out]
    assert all(n == batch for n in lengths[:-1])
    assert len(lengths) == train_batch_count(start, batch)


def test_shuffle_buffer_mixes_rows_across_row_groups() -> None:
    buffer = ShuffleBuffer(1000, 100, np.random.default_rng(0))
    out = []
    for g in range(10):  # ten groups of 200 rows, each group's rows in its own range
        out += list(buffer.add({"row": np.arange(g * 200, (g + 1) * 200)}))
    out += list(buffer.drain())
    first = out[0]["row"] // 200
    assert len(set(first.tolist())) > 2  # the first batch already mixes several groups


def test_epoch_batches_are_the_training_rows_and_repeat_per_epoch(tmp_path: Path) -> None:
    df = _table(3000)
    _write(tmp_path, df, parts=2, group_rows=300)
    src = ParquetSource(tmp_path, COLUMNS)

    def encode(rows: pd.DataFrame) -> dict[str, np.ndarray]:
        return {"rating": rows["rating"].to_numpy()}

    def epoch(e: int) -> list[dict[str, np.ndarray]]:
        return list(
            epoch_batches(
                src, encode, seed=1, epoch=e, valid_fraction=0.1, test_fraction=0.2,
                buffer_rows=500, batch_rows=64,
            )
        )  # fmt: skip

    codes = split_codes(np.arange(3000), 1, 0.1, 0.2)
    train = np.flatnonzero(codes == 0)
    first, again, second = epoch(0), epoch(0), epoch(1)
    rows = np.concatenate([b["row"] for b in first])
    assert sorted(rows.tolist()) == train.tolist()
    assert len(first) == train_batch_count(len(train), 64)
    for b in first:
        assert np.array_equal(b["rating"], df["rating"].to_numpy()[b["row"]])
    assert all(np.array_equal(a["row"], b["row"]) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(rows, np.concatenate([b["row"] for b in second]))


def test_scan_counts_and_splits_as_pandas_does(tmp_path: Path) -> None:
    df = _table(5000, seed=2)
    _write(tmp_path, df, parts=3, group_rows=400)
    src = ParquetSource(tmp_path, COLUMNS)
    found = scan(src, SCHEMA, seed=7, valid_fraction=0.1, test_fraction=0.15, sample_rows=800)
    codes = split_codes(np.arange(5000), 7, 0.1, 0.15)
    train = df[codes == 0]
    assert (found.rows, found.train_rows) == (5000, len(train))
    pd.testing.assert_series_equal(
        found.user_counts.sort_index(),
        train["user_id"].value_counts().sort_index(),
        check_names=False,
    )
    assert found.item_counts.sum() == len(train)
    assert found.label_mean == pytest.approx(train["rating"].mean())
    assert found.valid is not None
    assert found.valid.index.tolist() == np.flatnonzero(codes == 1).tolist()
    assert found.test.index.tolist() == np.flatnonzero(codes == 2).tolist()
    # the sample: 800 training rows, those with the smallest hashed keys
    keys = row_uniforms(train.index.to_numpy(), 7, 2)
    expected = np.sort(train.index.to_numpy()[np.argsort(keys)[:800]])
    assert found.sample.index.tolist() == expected.tolist()


def test_scan_reports_a_bad_row_group_by_file(tmp_path: Path) -> None:
    df = _table(600)
    df.loc[450, "rating"] = 9.0  # outside rating_range
    _write(tmp_path, df, parts=2, group_rows=100)
    src = ParquetSource(tmp_path, COLUMNS)
    with pytest.raises(DataError, match="rating") as err:
        scan(src, SCHEMA, seed=0, valid_fraction=0.1, test_fraction=0.1, sample_rows=10)
    assert "part-1.parquet" in str(err.value) and "row group 1" in str(err.value)


def test_vocabularies_from_counts_equal_those_fitted_in_memory() -> None:
    df = _table(2000, seed=3)
    counts = pd.Series(df["user_id"].value_counts().to_dict())
    spec = Categorical("user_id", min_count=50)
    a = CategoricalEncoder(spec).fit(df["user_id"])
    b = CategoricalEncoder(spec).fit_counts(counts.sample(frac=1.0, random_state=0))
    assert a.vocabulary_ == b.vocabulary_ and 0 < len(a.vocabulary_ or []) < 40
    enc_a = InteractionEncoder.from_schema(SCHEMA, 20, 1).fit(df)
    enc_b = InteractionEncoder.from_schema(SCHEMA, 20, 1).fit_counts(
        df["user_id"].value_counts(), df["item_id"].value_counts(), df
    )
    assert enc_a.fields() == enc_b.fields()
    for key, value in enc_a.transform(df).items():
        assert np.array_equal(value, enc_b.transform(df)[key]), key


def test_row_bootstrap_counts_are_poisson_one_and_fixed_per_row() -> None:
    rows = np.arange(100_000)
    w = row_bootstrap_weights(torch.ones(len(rows)), rows, 3, True, seed=0)
    assert w.shape == (3, len(rows))
    for m in range(3):
        counts = w[m].numpy()
        assert abs(counts.mean() - 1) < 5 * math.sqrt(1 / len(rows))  # Poisson(1): var 1
        assert abs(counts.var() - 1) < 5 * math.sqrt(3 / len(rows))  # var of s^2 ~ 3/n
        assert abs((counts == 0).mean() - math.exp(-1)) < 0.01
    assert not torch.equal(w[0], w[1])  # members draw independently
    again = row_bootstrap_weights(torch.full((50,), 2.0), rows[100:150], 3, True, seed=0)
    assert torch.equal(again, 2.0 * w[:, 100:150])  # the same row, the same count
    plain = row_bootstrap_weights(torch.ones(4), rows[:4], 2, False, seed=0)
    assert torch.equal(plain, torch.ones(2, 4))


def test_memory_plan_by_hand(tmp_path: Path) -> None:
    df = _table(1000)
    df.to_parquet(tmp_path / "t.parquet", row_group_size=250)
    src = ParquetSource(tmp_path / "t.parquet", COLUMNS)
    plan = memory_plan(
        src, valid_fraction=0.1, test_fraction=0.2, buffer_rows=400, batch_rows=50,
        sample_rows=300, encoded_row_bytes=40,
    )  # fmt: skip
    row = 80 + 80 + 8 + 8 + 80  # two id strings, two numbers, one text feature
    assert plan == {
        "row_group": 2 * 250 * row,
        "shuffle_buffer": 2 * (400 + 250 + 50) * 40,
        "held_out": int(1000 * (0.2 + 0.8 * 0.1) * row),
        "sample": 300 * row,
    }
