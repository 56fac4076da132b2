"""Config-driven runs: the validation rows come from the training split only, overrides,
feature switches, and row accounting of ``train_run``.

The table has 400 rows whose timestamps are a permutation of 0..399, so every split has a
closed form: with ``test_fraction = 0.2`` the temporal test part is ts >= 320 (80 rows);
with ``valid_fraction = 0.25`` the validation rows are the latest quarter of the other
320 rows, 240 <= ts < 320 (80 rows), and training keeps ts < 240 (240 rows).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wager.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.pipeline import evaluate_run, load_run_data, train_run
from wager.runs import RunDirectory

N_USERS, N_ITEMS, PER_USER = 40, 30, 10
N_ROWS = N_USERS * PER_USER
SCHEMA = Schema(
    user="user_id",
    item="item_id",
    label="rating",
    label_kind="rating",
    rating_range=(1.0, 5.0),
    timestamp="ts",
)


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(1)
    users = np.repeat([f"u{u}" for u in range(N_USERS)], PER_USER)
    items = np.concatenate([rng.choice(N_ITEMS, PER_USER, replace=False) for _ in range(N_USERS)])
    df = pd.DataFrame(
        {
            "user_id": users,
            "item_id": [f"i{i}" for i in items],
            "rating": rng.integers(1, 6, N_ROWS),
            "ts": rng.permutation(N_ROWS),
        }
    )
    path = tmp_path_factory.mktemp("pipeline") / "ratings.csv"
    df.to_csv(path, index=False)
    return path


def _config(path: Path | None, **data: object) -> RunConfig:
    return RunConfig(
        schema=SCHEMA,
        data=DataConfig(
            path=None if path is None else str(path),
            format="table",
            **data,  # type: ignore[arg-type]
        ),
        model=ModelConfig(type="biased_mf", dim=2),
        training=TrainConfig(epochs=1, batch_size=128),
        seed=0,
    )


def _ts(frame: pd.DataFrame | None) -> set[int]:
    assert frame is not None
    return set(frame["ts"].tolist())


def _assert_partition(rd, n_rows: int) -> None:
    parts = [rd.train, rd.test] + ([rd.valid] if rd.valid is not None else [])
    index = pd.Index(np.concatenate([p.index.to_numpy() for p in parts]))
    assert index.is_unique, "a row is in two parts"
    assert len(index) == n_rows, "a row was lost"


def test_temporal_validation_rows_are_the_latest_training_rows(table):
    rd = load_run_data(_config(table, split="temporal", valid_fraction=0.25))
    _assert_partition(rd, N_ROWS)
    assert _ts(rd.test) == set(range(320, 400))
    assert _ts(rd.valid) == set(range(240, 320))
    assert _ts(rd.train) == set(range(240))
    assert rd.split == "temporal"


def test_random_validation_rows_come_from_the_training_split(table):
    cfg = _config(table, split="random", test_fraction=0.2, valid_fraction=0.1)
    rd = load_run_data(cfg)
    _assert_partition(rd, N_ROWS)
    # reference: random_split's documented rule, applied twice with the run seed (0):
    # test = first round(0.2 * 400) = 80 positions of permutation(400); validation = first
    # round(0.1 * 320) = 32 positions of permutation(320) over the remaining rows, in order
    df = pd.read_csv(table)
    perm = np.random.default_rng(0).permutation(N_ROWS)
    test_idx = np.sort(perm[:80])
    rest = np.setdiff1d(np.arange(N_ROWS), test_idx)
    valid_idx = np.sort(rest[np.random.default_rng(0).permutation(len(rest))[:32]])
    assert rd.test.index.tolist() == df.index[test_idx].tolist()
    assert rd.valid is not None
    assert rd.valid.index.tolist() == valid_idx.tolist()
    assert len(rd.train) == N_ROWS - 80 - 32


def test_leave_last_out_validation_rows_are_each_users_second_latest(table):
    rd = load_run_data(_config(table, split="leave-last-out"))
    _assert_partition(rd, N_ROWS)
    df = pd.read_csv(table)
    # every user has 10 rows with distinct ts: the latest is test, the second latest valid
    order = df.groupby("user_id")["ts"].rank(ascending=False)
    assert _ts(rd.test) == set(df.loc[order == 1, "ts"])
    assert _ts(rd.valid) == set(df.loc[order == 2, "ts"])
    assert len(rd.valid) == len(rd.test) == N_USERS


def test_zero_valid_fraction_gives_no_validation_rows(table):
    rd = load_run_data(_config(table, split="temporal", valid_fraction=0.0))
    assert rd.valid is None
    assert _ts(rd.train) == set(range(320))
    _assert_partition(rd, N_ROWS)


def test_data_dir_and_split_override_the_config(table):
    cfg = _config(None, split="random")
    with pytest.raises(ValueError, match=r"\[data\] path is not set.*--data-dir"):
        load_run_data(cfg)
    rd = load_run_data(cfg, data_dir=table, split="temporal")
    assert rd.split == "temporal"
    assert rd.source == str(table)
    assert _ts(rd.test) == set(range(320, 400))
    # data_dir wins over a path that is set (here one that does not exist)
    rd2 = load_run_data(_config(table.parent / "missing.csv"), data_dir=table)
    assert len(rd2.train) + len(rd2.valid) + len(rd2.test) == N_ROWS


@pytest.mark.parametrize(("user_features", "item_features"), [(False, True), (True, False)])
def test_feature_switches_drop_tables_and_schema_features(user_features, item_features):
    cfg = RunConfig(
        data=DataConfig(
            format="synthetic",
            synthetic_rows=1000,
            split="random",
            user_features=user_features,
            item_features=item_features,
        )
    )
    rd = load_run_data(cfg)
    assert (rd.user_features is not None) == user_features
    assert (rd.item_features is not None) == item_features
    assert bool(rd.schema.user_features) == user_features
    assert bool(rd.schema.item_features) == item_features
    assert rd.schema.context  # the position context is not a user/item feature: kept
    _assert_partition(rd, 1000)


def test_synthetic_data_keeps_features_by_default():
    rd = load_run_data(RunConfig(data=DataConfig(format="synthetic", synthetic_rows=1000)))
    assert rd.user_features is not None and rd.item_features is not None
    assert rd.schema.user_features and rd.schema.item_features
    assert rd.source == "synthetic world"


def test_train_run_accounts_for_every_row_and_saves_overrides(table, tmp_path):
    cfg = _config(None, split="random", valid_fraction=0.1)
    out = tmp_path / "run"
    rec, metrics = train_run(cfg, data_dir=table, split="temporal", out=out)
    assert metrics["n_train"] + metrics["n_valid"] + metrics["n_test"] == N_ROWS
    # temporal: 80 test rows; round(0.1 * 320) = 32 validation rows
    assert (metrics["n_train"], metrics["n_valid"], metrics["n_test"]) == (288, 32, 80)
    assert metrics["split"] == "temporal" and metrics["model"] == "biased_mf"
    assert metrics["epochs"] == 1 and math.isfinite(metrics["rmse"])
    # the overrides are saved, so that `wager evaluate` finds the same data and split
    saved = RunConfig.load(out / "config.toml")
    assert saved.data.path == str(table) and saved.data.split == "temporal"
    assert saved.schema == rec.config.schema
    again = evaluate_run(out)
    assert again["split"] == "temporal" and again["n_test"] == 80
    # plots of a later evaluation go to their own subfolder, recorded in the manifest
    assert again["plots_dir"] == str(out / "evaluation-temporal")
    assert RunDirectory(out).verify()  # the run still verifies after the evaluation
    for key in ("rmse", "mae", "ndcg@10", "recall@10", "coverage@10"):
        assert again[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_train_run_without_out_writes_nothing(table, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _rec, metrics = train_run(_config(table, split="random"))
    assert metrics["n_train"] + metrics["n_valid"] + metrics["n_test"] == N_ROWS
    assert list(tmp_path.iterdir()) == []
