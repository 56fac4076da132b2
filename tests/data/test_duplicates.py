"""Conflicting ratings of one (user, item) pair (issue 13, defect 5).

Before: ``u1 rated a 5`` and ``u1 rated a 1`` in one table passed ``wager data validate``
as OK and both rows were trained on. Now validation warns with counts and an example,
and ``[data] duplicates`` chooses: refuse (default), last, mean, keep. Repeated pairs of
click logs and CTR rows are impressions, never conflicts.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wager.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.checks import validate_interactions
from wager.data.dataset import Dataset
from wager.data.duplicates import find_label_conflicts, resolve_duplicates, resolve_label_conflicts
from wager.data.schema import Categorical, Schema
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.data.validate import validate_path
from wager.errors import DataError
from wager.pipeline import load_run_data

RATING = Schema(user="u", item="i", label="r", label_kind="rating", timestamp="ts")

# rows 0..5; pair (u1, a): rows 0, 2, 4 with ratings 5, 1, 3 at ts 30, 10, 20;
# pair (u2, a): rows 1, 5 with 4, 4 (agree: no conflict); pair (u2, b): row 3 alone
TABLE = pd.DataFrame(
    {
        "u": ["u1", "u2", "u1", "u2", "u1", "u2"],
        "i": ["a", "a", "a", "b", "a", "a"],
        "r": [5.0, 4.0, 1.0, 2.0, 3.0, 4.0],
        "ts": [30, 1, 10, 2, 20, 3],
    }
)


def test_conflicts_counted_with_an_example() -> None:
    c = find_label_conflicts(TABLE, RATING)
    assert (c.n_pairs, c.n_rows, c.positions.tolist()) == (1, 3, [0, 2, 4])
    report = validate_interactions(TABLE, RATING, "r.csv")
    (w,) = [f for f in report.warnings if f.code == "conflicting_labels"]
    assert w.rows == (0, 2, 4) and w.count == 3 and w.column == "r"
    assert "1 (user, item) pair has conflicting ratings over 3 rows" in w.message
    assert "e.g. user 'u1', item 'a': 5, 1, 3 (rows 1, 3, 5)" in w.message
    assert '[data] duplicates = "last"' in w.message
    assert report.ok  # a warning: the choice is the run's


@pytest.mark.parametrize(
    ("policy", "labels", "index", "dropped"),
    [
        # latest by timestamp is row 0 (ts 30): its 5 stays, rows 2 and 4 go
        ("last", [5.0, 4.0, 2.0, 4.0], [0, 1, 3, 5], 2),
        # mean (5 + 1 + 3) / 3 = 3 in the latest row (row 0)
        ("mean", [3.0, 4.0, 2.0, 4.0], [0, 1, 3, 5], 2),
        ("keep", [5.0, 4.0, 1.0, 2.0, 3.0, 4.0], [0, 1, 2, 3, 4, 5], 0),
    ],
)
def test_policies(policy: str, labels: list[float], index: list[int], dropped: int) -> None:
    out, report = resolve_label_conflicts(TABLE, RATING, policy, "r.csv")
    assert out["r"].tolist() == labels
    assert out.index.tolist() == index  # file row positions kept
    assert sum(report.dropped.values()) == dropped
    assert report.ok


def test_last_without_timestamp_is_file_order() -> None:
    schema = replace(RATING, timestamp=None)
    out, _ = resolve_label_conflicts(TABLE, schema, "last", "r.csv")
    assert out.index.tolist() == [1, 3, 4, 5] and out.loc[4, "r"] == 3.0  # row 4 is last


def test_last_with_date_timestamps() -> None:
    df = TABLE.assign(
        ts=["2020-01-03", "2020-01-01", "2020-01-05", "2020-01-01", "2020-01-04", "2020-01-02"]
    )
    out, _ = resolve_label_conflicts(df, RATING, "last", "r.csv")
    assert out.loc[2, "r"] == 1.0 and 0 not in out.index and 4 not in out.index


def test_refuse_names_rows_and_choices() -> None:
    out, report = resolve_label_conflicts(TABLE, RATING, "refuse", "r.csv")
    (e,) = report.errors
    assert (e.code, e.rows, e.count) == ("conflicting_labels", (0, 2, 4), 3)
    assert e.message.startswith("r.csv, column 'r', rows 1, 3, 5")
    assert '"last"' in e.message and '"mean"' in e.message and '"keep"' in e.message
    assert out is TABLE


@pytest.mark.parametrize("kind", ["click", "ctr"])
def test_repeated_impressions_are_not_conflicts(kind: str) -> None:
    # the same item shown to the same user twice, clicked once: two impressions
    df = pd.DataFrame({"u": ["u1", "u1"], "i": ["a", "a"], "r": [1.0, 0.0]})
    schema = Schema(user="u", item="i", label="r", label_kind=kind)  # type: ignore[arg-type]
    assert find_label_conflicts(df, schema).n_pairs == 0
    assert not [
        f
        for f in validate_interactions(df, schema, "log.csv").findings
        if f.code == "conflicting_labels"
    ]
    out, report = resolve_label_conflicts(df, schema, "refuse", "log.csv")
    assert report.ok and len(out) == 2


def test_synthetic_click_log_repeats_pairs_without_conflict() -> None:
    world = SyntheticWorld(WorldConfig(seed=0))
    log = world.sample_log(2000, seed=0)
    schema = world.schema()
    pairs = log.duplicated([schema.user, schema.item]).sum()
    assert pairs > 0  # the log does repeat pairs ...
    assert find_label_conflicts(log, schema).n_pairs == 0  # ... and they are impressions


def test_context_tells_pairs_apart() -> None:
    df = pd.DataFrame({"u": ["u1", "u1"], "i": ["a", "a"], "r": [5.0, 1.0], "dev": ["tv", "phone"]})
    schema = Schema(
        user="u", item="i", label="r", label_kind="rating", context=(Categorical("dev"),)
    )
    assert find_label_conflicts(df, schema).n_pairs == 0
    assert find_label_conflicts(df, replace(schema, context=())).n_pairs == 1


def test_ids_as_written_are_different_pairs() -> None:
    df = pd.DataFrame({"u": ["007", "7"], "i": ["a", "a"], "r": [5.0, 1.0]})
    assert find_label_conflicts(df, RATING).n_pairs == 0


def test_folds_are_resolved_too() -> None:
    ds = Dataset(
        interactions=TABLE, schema=RATING, folds={"f1": (TABLE, TABLE.iloc[:1])}, source="ml"
    )
    with pytest.raises(DataError, match="conflicting ratings"):
        resolve_duplicates(ds, "refuse")
    out = resolve_duplicates(ds, "mean")
    assert out.folds["f1"][0]["r"].tolist() == [3.0, 4.0, 2.0, 4.0]
    assert out.report.dropped and sum(out.report.dropped.values()) == 4  # 2 + 2 (train of f1)


# ----------------------------------------------------------------------------- config and runs


def _cfg(path: Path, duplicates: str) -> RunConfig:
    return RunConfig(
        schema=Schema(
            user="u", item="i", label="r", label_kind="rating", rating_range=(1, 5), timestamp="ts"
        ),
        data=DataConfig(
            path=str(path), format="table", split="random", valid_fraction=0, duplicates=duplicates
        ),
        model=ModelConfig(type="biased_mf", dim=2),
        training=TrainConfig(epochs=1),
        seed=0,
    )


@pytest.fixture
def table_with_conflict(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    df = pd.DataFrame(
        {
            "u": [f"u{k % 10}" for k in range(60)],
            "i": [f"i{k // 10}" for k in range(60)],
            "r": rng.integers(1, 6, 60),
            "ts": np.arange(60),
        }
    )
    df = pd.concat(
        [df, pd.DataFrame({"u": ["u0"], "i": ["i0"], "r": [6 - df.loc[0, "r"]], "ts": [99]})]
    )
    path = tmp_path / "r.csv"
    df.to_csv(path, index=False)
    return path


def test_run_refuses_by_default_and_validate_warns(table_with_conflict: Path) -> None:
    assert DataConfig().duplicates == "refuse"
    with pytest.raises(DataError) as err:
        load_run_data(_cfg(table_with_conflict, "refuse"))
    (e,) = err.value.findings
    assert e.code == "conflicting_labels" and e.rows == (0, 60)
    assert "r.csv" in e.message
    report = validate_path(table_with_conflict, "table", _cfg(table_with_conflict, "refuse").schema)
    assert report.ok and [f.code for f in report.warnings] == ["conflicting_labels"]


@pytest.mark.parametrize(("policy", "n_rows"), [("last", 60), ("mean", 60), ("keep", 61)])
def test_run_applies_the_choice(table_with_conflict: Path, policy: str, n_rows: int) -> None:
    rd = load_run_data(_cfg(table_with_conflict, policy))
    assert len(rd.train) + len(rd.test) == n_rows


def test_config_value_checked_and_round_trips(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"\[data\] duplicates = 'first' is invalid: must be one of refuse, last, mean, keep",
    ):
        DataConfig(duplicates="first")
    cfg = _cfg(tmp_path / "r.csv", "mean")
    cfg.save(tmp_path / "run.toml")
    assert RunConfig.load(tmp_path / "run.toml").data.duplicates == "mean"
