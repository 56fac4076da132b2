"""Ids are values as written (issue 13, defect 4), and a column named twice is an error (defect 6).

Before: every loader let pandas parse id cells as numbers, so ``007`` and ``7`` both read
7 and ``7.0`` and ``1e3`` read 7.0 and 1000.0: four users became two ("7" and "1000"),
and a feature table keyed "007" silently joined user 7. A header ``u,i,r,u`` read the
second ``u`` as ``u.1`` and trained on the first one without a word.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wager.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.checks import validate_feature_table, validate_interactions
from wager.data.loaders import load_dataset
from wager.data.loaders.movielens import load_movielens
from wager.data.loaders.obd import load_obd
from wager.data.loaders.table import load_ctr_table, load_table, read_table
from wager.data.schema import Categorical, Schema
from wager.errors import DataError
from wager.pipeline import train_run

RATING = Schema(user="u", item="i", label="r", label_kind="rating", rating_range=(1, 5))
IDS = ["007", "7", "7.0", "1e3"]  # four users as written; pandas made two of them


def _write(path: Path, rows: list[dict]) -> Path:
    """Write rows as the file's extension says; ids are text in every format."""
    df = pd.DataFrame(rows)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        df.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_ids_are_read_as_written(tmp_path: Path, ext: str) -> None:
    rows = [{"u": u, "i": "0042", "r": 3 + k % 2} for k, u in enumerate(IDS)]
    ds = load_table(_write(tmp_path / f"r{ext}", rows), RATING)
    assert ds.interactions["u"].tolist() == IDS  # was [7, 7, 7.0, 1000.0] for CSV
    assert ds.interactions["i"].tolist() == ["0042"] * 4  # was 42
    assert ds.interactions["u"].nunique() == 4


def test_typed_numbers_get_their_plain_text(tmp_path: Path) -> None:
    # a Parquet int column and a JSON number hold values, not spellings: 7 and 7.0 read "7"
    pd.DataFrame({"u": [7, 8], "i": [1.0, 2.0], "r": [4, 5]}).to_parquet(tmp_path / "r.parquet")
    ds = load_table(tmp_path / "r.parquet", RATING)
    assert ds.interactions["u"].tolist() == ["7", "8"]
    assert ds.interactions["i"].tolist() == ["1", "2"]
    (tmp_path / "r.jsonl").write_text('{"u": 7, "i": 1.0, "r": 4}\n{"u": "07", "i": 2, "r": 5}\n')
    assert load_table(tmp_path / "r.jsonl", RATING).interactions["u"].tolist() == ["7", "07"]


def test_feature_table_joins_on_ids_as_written(tmp_path: Path) -> None:
    rows = [{"u": "007", "i": "a", "r": 4}, {"u": "7", "i": "a", "r": 5}]
    path = _write(tmp_path / "r.csv", rows)
    users = _write(tmp_path / "users.csv", [{"u": "007", "seg": "01"}, {"u": "7", "seg": "1"}])
    ds = load_table(path, RATING, user_features_path=users)
    # two users, two feature rows, nothing missing (before: "duplicate_id" 7 in users.csv)
    assert ds.report.ok and not ds.report.warnings
    assert ds.user_features["u"].tolist() == ["007", "7"]
    # the inferred categorical feature keeps its spelling too ("01" and "1" differ)
    assert ds.schema.user_features == (Categorical("seg"),)
    assert ds.user_features["seg"].tolist() == ["01", "1"]
    # a feature row for "7.0" does not stand in for user "7"
    users2 = _write(tmp_path / "users2.csv", [{"u": "007", "seg": "x"}, {"u": "7.0", "seg": "y"}])
    ds2 = load_table(path, RATING, user_features_path=users2)
    (warn,) = ds2.report.warnings
    assert warn.code == "ids_missing_from_features" and "e.g. 7" in warn.message


def test_declared_categorical_context_is_read_as_written(tmp_path: Path) -> None:
    rows = [
        {"u": "a", "i": "b", "r": 4, "zip": "02134"},
        {"u": "a", "i": "c", "r": 5, "zip": "2134"},
    ]
    schema = Schema(
        user="u", item="i", label="r", label_kind="rating", context=(Categorical("zip"),)
    )
    ds = load_table(_write(tmp_path / "r.csv", rows), schema)
    assert ds.interactions["zip"].tolist() == ["02134", "2134"]


def test_id_na_is_an_id_not_a_missing_value(tmp_path: Path) -> None:
    # "NA" (Namibia), "null" and "None" are ids; only an empty cell is a missing id
    (tmp_path / "r.csv").write_text("u,i,r\nNA,null,4\nNone,x,5\n,x,3\n")
    with pytest.raises(DataError) as err:
        load_table(tmp_path / "r.csv", RATING)
    (f,) = err.value.findings
    assert (f.code, f.column, f.rows) == ("missing_id", "u", (2,))


def test_ctr_table_ids_as_written(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("seg,item,n,k\n01,007,10,1\n1,7,20,2\n")
    schema = Schema(user="seg", item="item", label=None, impressions="n", clicks="k")
    ds = load_ctr_table(tmp_path / "c.csv", schema)
    assert ds.interactions["seg"].tolist() == ["01", "1"]
    assert ds.interactions["item"].tolist() == ["007", "7"]
    assert ds.interactions["ctr"].tolist() == [0.1, 0.1]


# ----------------------------------------------------------------------------- id_dtype = "int"


def test_int_ids_compare_as_numbers(tmp_path: Path) -> None:
    rows = [{"u": u, "i": "0042", "r": 4} for u in IDS]
    schema = Schema(user="u", item="i", label="r", label_kind="rating", id_dtype="int")
    ds = load_table(_write(tmp_path / "r.csv", rows), schema)
    assert ds.interactions["u"].dtype == "int64"
    assert ds.interactions["u"].tolist() == [7, 7, 7, 1000]  # as declared: whole numbers
    assert ds.interactions["i"].tolist() == [42] * 4


@pytest.mark.parametrize(
    ("cells", "rows", "shown"),
    [
        (["1", "7.5", "2"], (1,), "'7.5'"),
        (["abc", "1", "x"], (0, 2), "'abc', 'x'"),
        (["1", "inf", "2"], (1,), "'inf'"),
    ],
)
def test_int_ids_must_be_whole_numbers(
    tmp_path: Path, cells: list[str], rows: tuple[int, ...], shown: str
) -> None:
    rows_in = [{"u": c, "i": "1", "r": 4} for c in cells]
    schema = Schema(user="u", item="i", label="r", label_kind="rating", id_dtype="int")
    with pytest.raises(DataError) as err:
        load_table(_write(tmp_path / "r.csv", rows_in), schema)
    (f,) = err.value.findings
    assert (f.code, f.column, f.rows) == ("non_integer_id", "u", rows)
    assert shown in f.message and "id_dtype = 'string'" in f.message
    assert "r.csv" in f.message


def test_int_ids_feature_table_duplicates_as_numbers() -> None:
    table = pd.DataFrame({"u": ["007", "7"], "seg": ["a", "b"]})
    report = validate_feature_table(table, "u", (), "users.csv", None, "user", id_dtype="int")
    (f,) = report.errors
    assert f.code == "duplicate_id" and f.rows == (0, 1)  # 007 and 7 are one user here
    assert validate_feature_table(table, "u", (), "users.csv", None, "user").ok  # as written


def test_schema_id_dtype_round_trip_and_bad_value() -> None:
    s = Schema(id_dtype="int")
    assert Schema.from_dict(s.to_dict()) == s
    assert Schema.from_dict({}).id_dtype == "string"
    with pytest.raises(ValueError, match=r"Schema\.id_dtype must be 'string'.*got 'float'"):
        Schema(id_dtype="float")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- fixed layouts


def test_movielens_declares_int_ids_and_recommend_finds_user_42(tmp_path: Path) -> None:
    root = tmp_path / "ml"
    root.mkdir()
    lines = [
        f"{u}\t{i}\t{1 + (u + i) % 5}\t{881250949 + 10 * u + i}"
        for u in (1, 42)
        for i in (10, 20, 30)
    ]
    (root / "u.data").write_text("\n".join(lines) + "\n")
    (root / "u.item").write_text(
        "".join(f"{i}|M{i} (1995)|01-Jan-1995||x|{'|'.join('0' * 19)}\n" for i in (10, 20, 30))
    )
    (root / "u.user").write_text("1|24|M|technician|85711\n42|53|F|other|02134\n")
    ds = load_movielens(root)
    assert ds.schema.id_dtype == "int"
    assert ds.interactions["user_id"].dtype == "int64"
    assert ds.user_features["zip"].tolist() == ["85711", "02134"]  # text, as written
    cfg = RunConfig(
        data=DataConfig(path=str(root), format="movielens", split="random", valid_fraction=0),
        model=ModelConfig(type="biased_mf", dim=2),
        training=TrainConfig(epochs=1, batch_size=8),
        seed=0,
    )
    rec, _ = train_run(cfg)
    # the CLI passes --user 42 as the text "42": it must find user 42, not a cold start
    assert rec.predict(["42"], [10]).mean.shape == (1,)
    known = rec.recommend(["42"], k=1)
    cold = rec.recommend(["nobody"], k=1)
    assert known["user"].tolist() == ["42"]
    assert float(known["std"].iloc[0]) != pytest.approx(float(cold["std"].iloc[0]))


def test_obd_ids_and_hashed_features_as_written(tmp_path: Path) -> None:
    root = tmp_path / "random"
    root.mkdir()
    (root / "men.csv").write_text(
        ",timestamp,item_id,position,click,propensity_score,user_feature_0\n"
        "0,2019-11-24 00:03:13+00:00,007,1,0,0.5,0012\n"
        "1,2019-11-24 00:04:00+00:00,7,2,1,0.5,12\n"
    )
    (root / "item_context.csv").write_text(
        ",item_id,item_feature_0,item_feature_1\n0,007,0.5,01\n1,7,0.25,1\n"
    )
    ds = load_obd(root)
    assert ds.interactions["item_id"].tolist() == ["007", "7"]
    assert ds.user_features["user_feature_0"].tolist() == ["0012", "12"]  # two segments
    assert ds.interactions["user_id"].nunique() == 2
    assert ds.item_features["item_feature_1"].tolist() == ["01", "1"]
    assert ds.report.ok and not ds.report.warnings  # both items have their feature row


# ----------------------------------------------------------------------------- defect 6


def _dup_csv(p: Path) -> Path:
    p.write_text("u,i,r,u\n1,2,3,4\n")
    return p


def _dup_tsv(p: Path) -> Path:
    p.write_text("u\ti\tr\tu\n1\t2\t3\t4\n")
    return p


def _dup_jsonl(p: Path) -> Path:
    p.write_text('{"u": 1, "i": 2, "r": 3}\n{"u": 1, "i": 2, "r": 3, "u": 4}\n')
    return p


def _dup_parquet(p: Path) -> Path:
    table = pa.table(
        [pa.array([1]), pa.array([2]), pa.array([3]), pa.array([4])], ["u", "i", "r", "u"]
    )
    pq.write_table(table, p)
    return p


@pytest.mark.parametrize(
    ("name", "make", "expected"),
    [
        ("r.csv", _dup_csv, "column 'u': the header names this column 2 times (columns 1, 4)"),
        ("r.tsv", _dup_tsv, "column 'u': the header names this column 2 times (columns 1, 4)"),
        ("r.parquet", _dup_parquet, "column 'u': the header names this column 2 times"),
        ("r.jsonl", _dup_jsonl, "column 'u', row 2: an object names this key more than once"),
    ],
)
def test_column_named_twice_is_an_error(tmp_path: Path, name: str, make, expected: str) -> None:
    path = make(tmp_path / name)
    with pytest.raises(DataError) as err:
        read_table(path)  # before: CSV gave columns u, i, r, u.1; JSON kept the last u
    (f,) = err.value.findings
    assert f.code == "duplicate_column" and f.column == "u"
    assert f.message.startswith(str(path)) and expected in f.message
    with pytest.raises(DataError, match=r"names this"):
        load_dataset(path, "table", RATING)


def test_feature_table_and_obd_column_named_twice(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("u,i,r\n1,2,3\n")
    (tmp_path / "users.csv").write_text("u,seg,seg\n1,a,b\n")
    with pytest.raises(DataError) as err:
        load_table(tmp_path / "r.csv", RATING, user_features_path=tmp_path / "users.csv")
    (f,) = err.value.findings
    assert (f.code, f.column) == ("duplicate_column", "seg") and "users.csv" in f.message
    root = tmp_path / "random"
    root.mkdir()
    (root / "men.csv").write_text(",timestamp,item_id,click,click\n0,2019-11-24,1,0,1\n")
    (root / "item_context.csv").write_text(",item_id\n0,1\n")
    with pytest.raises(DataError) as err:
        load_obd(root)
    (f,) = err.value.findings
    assert (f.code, f.column) == ("duplicate_column", "click") and "men.csv" in f.message


def test_frame_with_column_named_twice() -> None:
    df = pd.DataFrame([[1, 2, 3, 4]], columns=["u", "i", "r", "r"])
    (f,) = validate_interactions(df, RATING, "frame").errors
    assert (f.code, f.column) == ("duplicate_column", "r") and "columns 3, 4" in f.message
