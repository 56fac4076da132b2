"""Tests of wager.data.loaders.table: reading by extension, feature inference, loading."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wager.data.loaders import load_dataset
from wager.data.loaders.table import infer_features, load_ctr_table, load_table, read_table
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text
from wager.errors import DataError

EXPECTED = pd.DataFrame(
    {"user_id": [1, 2, 3], "item_id": ["a", "b", "c"], "rating": [4.0, 5.0, 3.5]}
)
RATING = Schema(label="rating", label_kind="rating", rating_range=(1, 5))


def _codes(exc: pytest.ExceptionInfo[DataError]) -> list[str]:
    return [f.code for f in exc.value.findings]


# ----------------------------------------------------------------------------- read_table


@pytest.mark.parametrize(
    "name, text",
    [
        ("r.csv", "user_id,item_id,rating\n1,a,4.0\n2,b,5.0\n3,c,3.5\n"),
        ("r.csv", "user_id, item_id, rating\n1, a, 4.0\n2, b, 5.0\n3, c, 3.5\n"),
        ("r.csv", "user_id;item_id;rating\n1;a;4.0\n2;b;5.0\n3;c;3.5\n"),
        ("r.tsv", "user_id\titem_id\trating\n1\ta\t4.0\n2\tb\t5.0\n3\tc\t3.5\n"),
        ("r.txt", "user_id|item_id|rating\n1|a|4.0\n2|b|5.0\n3|c|3.5\n"),
        ("r.txt", "user_id item_id rating\n1 a 4.0\n2  b 5.0\n3 c 3.5\n"),
        ("r.jsonl", '{"user_id":1,"item_id":"a","rating":4.0}\n\n'
         '{"user_id":2,"item_id":"b","rating":5.0}\n{"user_id":3,"item_id":"c","rating":3.5}\n'),
        ("r.ndjson", '{"user_id":1,"item_id":"a","rating":4.0}\n'
         '{"user_id":2,"item_id":"b","rating":5.0}\n{"user_id":3,"item_id":"c","rating":3.5}\n'),
        ("r.json", '[{"user_id":1,"item_id":"a","rating":4.0},'
         '{"user_id":2,"item_id":"b","rating":5.0},{"user_id":3,"item_id":"c","rating":3.5}]'),
        ("r.json", '{"user_id":1,"item_id":"a","rating":4.0}\n'
         '{"user_id":2,"item_id":"b","rating":5.0}\n{"user_id":3,"item_id":"c","rating":3.5}\n'),
    ],
)  # fmt: skip
def test_read_text_formats(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    df = read_table(path)
    assert list(df.columns) == ["user_id", "item_id", "rating"]
    assert df["user_id"].tolist() == [1, 2, 3]
    assert df["item_id"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(df["rating"].to_numpy(dtype=float), [4.0, 5.0, 3.5])


def test_read_parquet_and_compressed(tmp_path: Path) -> None:
    EXPECTED.to_parquet(tmp_path / "r.parquet", index=False)
    EXPECTED.to_parquet(tmp_path / "r.pq", index=False)
    with gzip.open(tmp_path / "r.csv.gz", "wt") as fh:
        EXPECTED.to_csv(fh, index=False)
    (tmp_path / "parts").mkdir()
    EXPECTED.iloc[:2].to_parquet(tmp_path / "parts" / "0.parquet", index=False)
    EXPECTED.iloc[2:].to_parquet(tmp_path / "parts" / "1.parquet", index=False)
    for name in ("r.parquet", "r.pq", "r.csv.gz", "parts"):
        df = read_table(tmp_path / name)
        assert df["user_id"].tolist() == [1, 2, 3], name
        assert df["rating"].tolist() == [4.0, 5.0, 3.5], name


def test_read_keeps_json_types(tmp_path: Path) -> None:
    # ids written as strings stay strings ("007" is not the number 7), epochs stay ints
    (tmp_path / "r.jsonl").write_text('{"user_id": "007", "timestamp": 1600000000}\n')
    df = read_table(tmp_path / "r.jsonl")
    assert df["user_id"].tolist() == ["007"]
    assert pd.api.types.is_integer_dtype(df["timestamp"].dtype)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / "nope.csv")
    assert _codes(exc) == ["missing_path"]
    assert exc.value.findings[0].source == str(tmp_path / "nope.csv")
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / "nodir" / "r.csv")
    assert f"the directory '{tmp_path / 'nodir'}' does not exist" in str(exc.value)


def test_directory_where_file_expected(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("x\n1\n")
    with pytest.raises(DataError) as exc:
        read_table(tmp_path)
    assert _codes(exc) == ["not_a_file"]
    assert "holding a.csv" in str(exc.value)


@pytest.mark.parametrize("name", ["r.xlsx", "ratings", "r.parquet.gz"])
def test_unknown_format_lists_supported(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("x")
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / name)
    assert _codes(exc) == ["unknown_format"]
    assert name in str(exc.value)
    assert ".csv, .tsv, .txt, .parquet, .pq, .jsonl, .ndjson, .json" in str(exc.value)


def test_corrupt_files_name_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "r.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / "r.parquet")
    assert _codes(exc) == ["parse_error"]
    assert str(exc.value).startswith(
        f"{tmp_path / 'r.parquet'}: the file cannot be read as Parquet"
    )

    # the header is line 1, so file line 4 is data row 3 (position 2)
    (tmp_path / "r.csv").write_text("a,b\n1,2\n3,4\n5,6,7\n")
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / "r.csv")
    f = exc.value.findings[0]
    assert (f.code, f.rows) == ("parse_error", (2,))
    assert "row 3: line 4 of the file" in f.message

    # JSON lines have no header; the blank line 2 is skipped, so line 4 is data row 3
    (tmp_path / "r.jsonl").write_text('{"a": 1}\n\n{"a": 2}\n{"a": \n')
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / "r.jsonl")
    f = exc.value.findings[0]
    assert (f.code, f.rows) == ("parse_error", (2,))
    assert "line 4 of the file is not a JSON object" in f.message


def test_empty_and_undecodable_files(tmp_path: Path) -> None:
    for name in ("e.csv", "e.jsonl"):
        (tmp_path / name).write_text("")
        with pytest.raises(DataError) as exc:
            read_table(tmp_path / name)
        assert _codes(exc) == ["empty_table"]
    (tmp_path / "l1.csv").write_bytes("name\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError) as exc:
        read_table(tmp_path / "l1.csv")
    assert _codes(exc) == ["bad_encoding"]


# ----------------------------------------------------------------------------- infer_features


def test_infer_features_rules() -> None:
    n = 60
    df = pd.DataFrame(
        {
            "item_id": np.arange(n),
            "price": np.linspace(1.0, 9.0, n),  # float -> Numeric
            "year": 1950 + np.arange(n),  # 60 distinct ints -> Numeric
            "stars": np.arange(n) % 5,  # 5 distinct ints -> Categorical
            "on_sale": np.arange(n) % 2 == 0,  # bool -> Categorical
            "genres": ["Action|Comedy", "Drama"] * (n // 2),  # 50% contain "|" -> Multi
            "blurb": ["a very long tale"] * n,  # 4 words per cell -> Text
            "title": [f"title{i}" for i in range(n)],  # 60 unique one-word names -> Text
            "colour": ["red", "blue", None] * (n // 3),  # few levels -> Categorical
            "tags": [["x", "y"], ["z"]] * (n // 2),  # lists -> Multi
            "rank": [str(i) for i in range(n)],  # numbers stored as text -> Numeric
            "empty": [None] * n,  # no values -> no spec
            "Unnamed: 0": np.arange(n),  # empty header cell (a saved index) -> no spec
        }
    )
    assert infer_features(df, "item_id") == (
        Numeric("price"),
        Numeric("year"),
        Categorical("stars"),
        Categorical("on_sale"),
        MultiCategorical("genres", sep="|"),
        Text("blurb"),
        Text("title"),
        Categorical("colour"),
        MultiCategorical("tags"),
        Numeric("rank"),
    )


def test_infer_features_thresholds() -> None:
    # 1 of 10 cells contains "|" (10% >= 10%) -> multi; 2.9 words on average -> not text
    multi = pd.DataFrame({"k": range(10), "g": ["a|b"] + ["a"] * 9})
    assert infer_features(multi, "k") == (MultiCategorical("g"),)
    words = pd.DataFrame({"k": range(10), "t": ["one two three"] * 9 + ["one, two"]})
    assert infer_features(words, "k") == (Categorical("t"),)  # (9 * 3 + 2) / 10 = 2.9 words


# ----------------------------------------------------------------------------- load_table


def test_load_table_clean(tmp_path: Path) -> None:
    (tmp_path / "r.jsonl").write_text(
        '{"user_id": 1, "item_id": 10, "rating": "4"}\n{"user_id": 2, "item_id": 11, "rating": 5}\n'
    )
    ds = load_table(tmp_path / "r.jsonl", RATING)
    assert ds.report.ok and ds.report.findings == []
    assert ds.source == str(tmp_path / "r.jsonl")
    # the label read as text and numbers is made float64
    assert ds.interactions["rating"].dtype == np.float64
    assert ds.interactions["rating"].tolist() == [4.0, 5.0]
    assert ds.user_features is None and ds.schema == RATING


def test_load_table_infers_feature_specs_and_reports_coverage(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\n1,10,4\n2,11,5\n3,12,3\n")
    (tmp_path / "items.csv").write_text("item_id,price,genres\n10,1.5,A|B\n11,2.5,C\n13,1.0,A\n")
    ds = load_table(tmp_path / "r.csv", RATING, item_features_path=tmp_path / "items.csv")
    assert ds.schema.item_features == (Numeric("price"), MultiCategorical("genres"))
    assert ds.item_features is not None and len(ds.item_features) == 3
    warning = ds.report.warnings[0]
    # item 12 has no row; item 13 never occurs
    assert (warning.code, warning.count) == ("ids_missing_from_features", 1)
    codes = [f.code for f in ds.report.findings if f.severity == "info"]
    assert codes == ["features_inferred", "ids_without_interactions"]


def test_load_table_raises_every_error_of_every_table(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\n1,10,4\n,11,9\n3,12,x\n")
    (tmp_path / "items.csv").write_text("item_id,price\n10,1\n10,2\n")
    schema = Schema(
        label="rating", label_kind="rating", rating_range=(1, 5),
        user_features=(Numeric("age"),), item_features=(Numeric("price"),),
    )  # fmt: skip
    with pytest.raises(DataError) as exc:
        load_table(tmp_path / "r.csv", schema, item_features_path=tmp_path / "items.csv")
    found = [(f.code, f.column, f.rows) for f in exc.value.findings]
    assert found == [
        ("missing_id", "user_id", (1,)),
        ("non_numeric", "rating", (2,)),
        ("out_of_range", "rating", (1,)),
        ("missing_feature_table", None, ()),
        ("duplicate_id", "item_id", (0, 1)),
    ]
    # the report behind the error also keeps the warning about item 11 and 12
    warnings = [f.code for f in exc.value.report.warnings]
    assert warnings == ["ids_missing_from_features"]


def test_load_table_missing_feature_file_is_collected(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\n1,10,4\n2,11,7\n")
    with pytest.raises(DataError) as exc:
        load_table(tmp_path / "r.csv", RATING, user_features_path=tmp_path / "users.csv")
    assert _codes(exc) == ["out_of_range", "missing_path"]


def test_load_table_keeps_duplicates_and_zero_impressions(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,imps,clk\n1,10,3,1\n1,10,3,1\n2,10,0,0\n")
    ds = load_table(tmp_path / "r.csv", Schema(label=None, impressions="imps", clicks="clk"))
    assert len(ds.interactions) == 3
    assert [(f.code, f.rows) for f in ds.report.warnings] == [
        ("duplicate_rows", (1,)),
        ("zero_impressions", (2,)),
    ]
    assert ds.report.dropped == {}


def test_load_dataset_dispatches_table_formats(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\n1,10,4\n")
    assert len(load_dataset(tmp_path / "r.csv", "auto", RATING).interactions) == 1


# ----------------------------------------------------------------------------- load_ctr_table

CTR = Schema(user="segment", label=None, impressions="imps", clicks="clicks")


def test_load_ctr_table_adds_rate_and_drops_zero_impressions(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text(
        "segment,item_id,imps,clicks\na,1,8,2\na,2,0,0\nb,1,5.0,0\nb,2,0,0\nc,3,4,4\n"
    )
    ds = load_ctr_table(tmp_path / "c.csv", CTR)
    df = ds.interactions
    # rows at positions 1 and 3 have 0 impressions; the rest keep their file positions
    assert df.index.tolist() == [0, 2, 4]
    # 2/8, 0/5, 4/4
    np.testing.assert_allclose(df["ctr"].to_numpy(), [0.25, 0.0, 1.0])
    assert df["imps"].dtype == np.int64
    assert (ds.schema.label, ds.schema.label_kind) == ("ctr", "ctr")
    assert ds.report.dropped == {
        "zero impressions in column 'imps' (click-through rate undefined)": 2
    }
    dropped = next(f for f in ds.report.findings if f.code == "rows_dropped")
    assert (dropped.rows, dropped.count) == ((1, 3), 2)


def test_load_ctr_table_errors(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("segment,item_id,imps,clicks,ctr\na,1,8,9,0.5\nb,1,-1,0,0\n")
    with pytest.raises(DataError) as exc:
        load_ctr_table(tmp_path / "c.csv", CTR)
    assert [(f.code, f.column, f.rows) for f in exc.value.findings] == [
        ("column_exists", "ctr", ()),
        ("negative_count", "imps", (1,)),
        ("clicks_exceed_impressions", "clicks", (0,)),
    ]
    with pytest.raises(DataError) as exc:
        load_ctr_table(tmp_path / "c.csv", Schema(user="segment", label=None))
    assert _codes(exc) == ["missing_role", "column_exists"]
    assert "--impressions-col" in str(exc.value)


def test_load_ctr_table_given_label_is_a_rate(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("segment,item_id,imps,clicks,rate\na,1,8,2,0.25\nb,1,4,1,1.5\n")
    schema = Schema(user="segment", label="rate", label_kind="rating", impressions="imps",
                    clicks="clicks")  # fmt: skip
    with pytest.raises(DataError) as exc:
        load_ctr_table(tmp_path / "c.csv", schema)
    assert [(f.code, f.rows) for f in exc.value.findings] == [("out_of_range", (1,))]
    assert "CTR labels are outside [0, 1]" not in str(exc.value)  # 1 of 2: singular
    assert "1 of 2 CTR labels is outside [0, 1]: 1.5" in str(exc.value)


def test_load_ctr_table_all_rows_dropped(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("segment,item_id,imps,clicks\na,1,0,0\n")
    with pytest.raises(DataError) as exc:
        load_ctr_table(tmp_path / "c.csv", CTR)
    assert _codes(exc) == ["empty_after_filtering"]
