"""Tests of wager.data.checks and wager.data.validate: code, column, rows (0-based), counts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.data.checks import ReportedDataError, validate_feature_table, validate_interactions
from wager.data.schema import Categorical, Numeric, Schema
from wager.data.validate import validate_path
from wager.errors import ValidationReport, make_finding

RATING = Schema(label="rating", label_kind="rating", rating_range=(1, 5))


def _frame(**columns: list) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    base = {"user_id": list(range(n)), "item_id": [i % 3 for i in range(n)]}
    base.update(columns)
    return pd.DataFrame(base)


def _only(report: ValidationReport, severity: str = "error"):
    found = [f for f in report.findings if f.severity == severity]
    assert len(found) == 1, [f.message for f in report.findings]
    return found[0]


# ----------------------------------------------------------------------------- columns


def test_misspelt_label_column_names_flag_and_suggests() -> None:
    df = _frame(rating=[4, 5])
    report = validate_interactions(df, Schema(label="ratng", label_kind="rating"), "r.csv")
    f = _only(report)
    assert (f.code, f.column, f.source) == ("missing_column", "ratng", "r.csv")
    assert "Did you mean 'rating'?" in f.message
    assert "--label-col" in f.message
    assert "columns present: user_id, item_id, rating" in f.message


def test_every_missing_role_is_reported_at_once() -> None:
    df = _frame(rating=[4, 5])
    schema = Schema(
        user="uid", item="iid", label="rating", label_kind="rating", weight="w",
        impressions="imps", clicks="clk", timestamp="time", propensity="prop",
        context=(Numeric("hour"),),
    )  # fmt: skip
    report = validate_interactions(df, schema, "r.csv")
    missing = {f.column: f.message for f in report.errors if f.code == "missing_column"}
    assert set(missing) == {"uid", "iid", "w", "imps", "clk", "time", "prop", "hour"}
    for col, flag in [("uid", "--user-col"), ("iid", "--item-col"), ("w", "--weight-col"),
                      ("imps", "--impressions-col"), ("clk", "--clicks-col"),
                      ("time", "--timestamp-col"), ("prop", "--propensity-col"),
                      ("hour", "Schema.context")]:  # fmt: skip
        assert flag in missing[col]
    assert "Did you mean 'user_id'?" in missing["uid"]


def test_headerless_file_gets_a_header_hint() -> None:
    # a file without header read with one: the first data row became the column names
    df = pd.DataFrame([[2, 30, 5]], columns=["196", "242", "3"])
    report = validate_interactions(df, Schema(user="user", item="item", label=None), "u.txt")
    assert [f.column for f in report.errors] == ["user", "item"]
    for f in report.errors:
        assert "its names look like data: add a header line" in f.message
        assert "Did you mean" not in f.message


def test_same_user_and_item_column_is_an_error() -> None:
    report = validate_interactions(
        _frame(label=[1, 0]), Schema(user="user_id", item="user_id"), "t"
    )
    assert [f.code for f in report.errors] == ["same_column"]


def test_empty_table() -> None:
    df = pd.DataFrame({"user_id": [], "item_id": [], "rating": []})
    f = _only(validate_interactions(df, RATING, "r.csv"))
    assert f.code == "empty_table"
    assert f.message.startswith("r.csv: the table has no data rows")


# ----------------------------------------------------------------------------- ids, labels


def test_missing_ids_name_rows() -> None:
    df = pd.DataFrame(
        {"user_id": ["a", None, "b", "  ", "c"], "item_id": [1.0, 2.0, np.nan, 4.0, 5.0],
         "rating": [1, 2, 3, 4, 5]}
    )  # fmt: skip
    report = validate_interactions(df, RATING, "r.csv")
    by_col = {f.column: f for f in report.errors}
    assert set(by_col) == {"user_id", "item_id"}
    # None at position 1 and the blank string at position 3
    assert (by_col["user_id"].code, by_col["user_id"].rows, by_col["user_id"].count) == (
        "missing_id", (1, 3), 2)  # fmt: skip
    assert "rows 2, 4" in by_col["user_id"].message
    assert "2 of 5 user ids are missing" in by_col["user_id"].message
    assert by_col["item_id"].rows == (2,)


def test_label_problems_each_reported_with_rows_and_values() -> None:
    labels = ["4", "five", None, "inf", "7", "0", "3.5", "x"]
    report = validate_interactions(_frame(rating=labels), RATING, "r.csv")
    found = {f.code: f for f in report.errors}
    assert set(found) == {"non_numeric", "missing_value", "infinite_value", "out_of_range"}
    assert found["non_numeric"].rows == (1, 7)
    assert "'five', 'x'" in found["non_numeric"].message
    assert found["missing_value"].rows == (2,)
    assert found["infinite_value"].rows == (3,)
    # 7 and 0 lie outside [1, 5]; 3.5 is inside
    assert found["out_of_range"].rows == (4, 5)
    assert "2 of 8 ratings are outside the declared scale [1, 5]: 7, 0" in found[
        "out_of_range"].message  # fmt: skip
    assert all(f.column == "rating" and f.source == "r.csv" for f in report.errors)


def test_rating_without_declared_scale_is_not_range_checked() -> None:
    schema = Schema(label="rating", label_kind="rating")
    assert validate_interactions(_frame(rating=[-3.0, 100.0]), schema, "r").ok


def test_click_labels_must_be_binary() -> None:
    schema = Schema(label="clicked", label_kind="click")
    f = _only(validate_interactions(_frame(clicked=[0, 1, 2, 1, -1, 0.5]), schema, "c"))
    assert (f.code, f.rows, f.count) == ("not_binary", (2, 4, 5), 3)
    assert "not 0 or 1: 2, -1, 0.5" in f.message
    # booleans are 0/1
    assert validate_interactions(_frame(clicked=[True, False]), schema, "c").ok


def test_ctr_labels_in_unit_interval() -> None:
    schema = Schema(label="ctr", label_kind="ctr")
    f = _only(validate_interactions(_frame(ctr=[0.0, 1.0, 1.01, -0.2, 0.5]), schema, "c"))
    assert (f.code, f.rows) == ("out_of_range", (2, 3))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([1.0, 3.0, 5.0, 0.0, 6.0, np.nan, np.inf]), min_size=1,
                max_size=30))  # fmt: skip
def test_reported_rows_are_first_offending_positions(values: list[float]) -> None:
    y = np.array(values)
    report = validate_interactions(_frame(rating=list(y)), RATING, "r.csv")
    found = {f.code: f for f in report.errors}
    expected = {
        "missing_value": np.flatnonzero(np.isnan(y)),
        "infinite_value": np.flatnonzero(np.isinf(y)),
        "out_of_range": np.flatnonzero(np.isfinite(y) & ((y < 1) | (y > 5))),
    }
    for code, pos in expected.items():
        if len(pos) == 0:
            assert code not in found
        else:
            assert found[code].rows == tuple(pos[:5].tolist())
            assert found[code].count == len(pos)


# ----------------------------------------------------------------------------- other roles


def test_weights() -> None:
    schema = Schema(label=None, weight="w")
    f = _only(validate_interactions(_frame(w=[1.0, -0.5, 2.0, -3.0]), schema, "t"))
    assert (f.code, f.rows, f.count) == ("negative_value", (1, 3), 2)
    report = validate_interactions(_frame(w=[1.0, np.nan]), schema, "t")
    assert [(f.code, f.rows) for f in report.errors] == [("missing_value", (1,))]
    w = _only(validate_interactions(_frame(w=[0.0, 0.0]), schema, "t"), "warning")
    assert w.code == "all_zero_weights"


def test_counts() -> None:
    schema = Schema(label=None, impressions="imps", clicks="clk")
    df = _frame(imps=[10, -1, 5, 4.5, 3, 2], clk=[2, 0, 6, 1, -2, 2])
    found = {(f.code, f.column): f for f in validate_interactions(df, schema, "c").errors}
    assert set(found) == {
        ("negative_count", "imps"),
        ("negative_count", "clk"),
        ("non_integer_count", "imps"),
        ("clicks_exceed_impressions", "clk"),
    }
    assert found[("negative_count", "imps")].rows == (1,)
    assert found[("negative_count", "clk")].rows == (4,)
    assert found[("non_integer_count", "imps")].rows == (3,)
    # only row 2 (6 > 5): the rows with negative counts are reported as such, not here
    assert found[("clicks_exceed_impressions", "clk")].rows == (2,)
    assert "(6 > 5;" in found[("clicks_exceed_impressions", "clk")].message


def test_propensity_range_is_half_open() -> None:
    schema = Schema(label=None, propensity="p")
    f = _only(validate_interactions(_frame(p=[1.0, 0.0, 0.3, 1.2, 1e-9]), schema, "t"))
    # 1.0 and 1e-9 are inside (0, 1]; 0 and 1.2 are not
    assert (f.code, f.column, f.rows) == ("out_of_range", "p", (1, 3))


def test_timestamps() -> None:
    schema = Schema(label=None, timestamp="ts")
    df = _frame(ts=["2021-01-02", "2021-01-02 10:00", "soon", None, "2021-01-03T10:00:00"])
    found = {f.code: f for f in validate_interactions(df, schema, "t").errors}
    assert set(found) == {"bad_timestamp", "missing_value"}
    assert found["bad_timestamp"].rows == (2,)
    assert "'soon'" in found["bad_timestamp"].message
    assert found["missing_value"].rows == (3,)
    assert validate_interactions(_frame(ts=[1.6e9, 1.7e9]), schema, "t").ok
    # positions, not index labels, are reported
    shuffled = _frame(ts=["2021-01-02", "soon"]).set_axis([7, 7])
    assert _only(validate_interactions(shuffled, schema, "t")).rows == (1,)
    assert validate_interactions(_frame(ts=["1600000000", "1700000000"]), schema, "t").ok
    dates = pd.to_datetime(pd.Series(["2021-01-02", None]))
    found = {f.code: f.rows for f in validate_interactions(_frame(ts=dates), schema, "t").errors}
    assert found == {"missing_value": (1,)}


def test_mixed_timestamp_kinds_name_the_rarer_kind() -> None:
    schema = Schema(label=None, timestamp="ts")
    df = _frame(ts=["2021-01-02", "1609459200", "2021-01-03", "2021-01-04"])
    f = _only(validate_interactions(df, schema, "t"))
    # 1 epoch number against 3 dates: the number (position 1) is named
    assert (f.code, f.rows) == ("mixed_timestamps", (1,))
    assert "epoch numbers (1 row) and dates (3 rows)" in f.message


def test_numeric_context_feature() -> None:
    schema = Schema(label=None, context=(Numeric("hour", missing="error"), Categorical("dev")))
    df = _frame(hour=["1", "x", None, "inf"], dev=["a", None, "b", "c"])
    found = {f.code: f for f in validate_interactions(df, schema, "t").errors}
    assert {c: found[c].rows for c in found} == {
        "non_numeric": (1,), "missing_value": (2,), "infinite_value": (3,)
    }  # fmt: skip


def test_duplicate_rows_are_a_warning() -> None:
    df = pd.DataFrame({"user_id": [1, 1, 2, 1], "item_id": [5, 5, 6, 5], "label": [1, 1, 0, 1]})
    report = validate_interactions(df, Schema(), "t")
    assert report.ok
    w = _only(report, "warning")
    # rows 1 and 3 repeat row 0
    assert (w.code, w.rows, w.count) == ("duplicate_rows", (1, 3), 2)


def test_duplicate_rows_with_list_cells() -> None:
    # JSON lines can hold lists, which pandas cannot hash; they are compared all the same
    df = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 5, 5], "tags": [["a"], ["b"], ["a"]]})
    w = _only(validate_interactions(df, Schema(label=None), "t.jsonl"), "warning")
    assert (w.code, w.rows) == ("duplicate_rows", (2,))


# ----------------------------------------------------------------------------- feature tables


def test_feature_table_duplicate_and_missing_ids() -> None:
    items = pd.DataFrame({"item_id": [1, 2, 1, 3, 2.0, None], "price": [1, 2, 3, 4, 5, 6]})
    report = validate_feature_table(items, "item_id", [Numeric("price")], "items.csv", None, "item")
    found = {f.code: f for f in report.errors}
    assert set(found) == {"duplicate_id", "missing_id"}
    # ids 1 (rows 0, 2) and 2 (rows 1, 4: 2 and 2.0 are the same id)
    assert (found["duplicate_id"].rows, found["duplicate_id"].count) == ((0, 1, 2, 4), 4)
    assert "rows 1, 2, 3, 5" in found["duplicate_id"].message
    assert found["missing_id"].rows == (5,)


def test_feature_table_missing_key_and_columns() -> None:
    users = pd.DataFrame({"userid": [1, 2], "agee": [30, 40]})
    report = validate_feature_table(users, "user_id", [Numeric("age")], "users.csv", None, "user")
    found = {f.column: f for f in report.errors}
    assert set(found) == {"user_id", "age"}
    assert "Did you mean 'userid'?" in found["user_id"].message
    assert "--user-col" in found["user_id"].message
    assert "Did you mean 'agee'?" in found["age"].message


def test_feature_table_numeric_values() -> None:
    users = pd.DataFrame({"user_id": [1, 2, 3, 4], "age": ["31", "old", np.inf, None]})
    report = validate_feature_table(users, "user_id", [Numeric("age")], "u", None, "user")
    assert {f.code: f.rows for f in report.errors} == {"non_numeric": (1,), "infinite_value": (2,)}
    info = [f for f in report.findings if f.code == "missing_feature_values"]
    assert info[0].count == 1


def test_feature_coverage_counts() -> None:
    # 943 users interact; 37 of them have no feature row; 12 feature rows are never used
    interaction_ids = pd.Series(np.repeat(np.arange(943), 2))
    table_ids = np.r_[np.arange(37, 943), np.arange(1000, 1012)]
    users = pd.DataFrame({"user_id": table_ids, "age": np.arange(len(table_ids))})
    report = validate_feature_table(
        users, "user_id", [Numeric("age")], "data/users.csv", interaction_ids, "user"
    )
    assert report.ok
    w = _only(report, "warning")
    assert (w.code, w.count) == ("ids_missing_from_features", 37)
    assert (
        "37 of 943 user ids in the interactions have no row in users.csv (e.g. 0, 1, 2, 3, 4 "
        "(and 32 more)); they are handled as out-of-vocabulary"
    ) in w.message
    info = [f for f in report.findings if f.code == "ids_without_interactions"]
    # 943 - 37 + 12 = 918 ids in the table
    assert info[0].count == 12
    assert "12 of 918 user ids in users.csv never occur" in info[0].message


def test_feature_coverage_matches_ids_across_types() -> None:
    # ids read as int from one file and as text from another are the same ids
    items = pd.DataFrame({"item_id": ["1", "2", "3"], "genre": ["a", "b", "c"]})
    report = validate_feature_table(
        items, "item_id", [Categorical("genre")], "items.jsonl", pd.Series([1, 2, 3.0]), "item"
    )
    assert report.findings == []


# ----------------------------------------------------------------------------- validate_path


def test_validate_path_never_raises_for_data(tmp_path: Path) -> None:
    report = validate_path(tmp_path / "nope.csv", "table", RATING)
    assert [f.code for f in report.errors] == ["missing_path"]
    (tmp_path / "r.xls").write_text("x")
    report = validate_path(tmp_path / "r.xls", "auto", RATING)
    assert [f.code for f in report.errors] == ["unknown_format"]
    report = validate_path(tmp_path / "r.xls", "excel", RATING)
    assert [f.code for f in report.errors] == ["unknown_format"]


def test_validate_path_keeps_warnings_next_to_errors(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,rating\n1,10,4\n2,12,9\n")
    (tmp_path / "items.csv").write_text("item_id,genre\n10,a\n11,b\n")
    report = validate_path(
        tmp_path / "r.csv", "table", RATING, item_features_path=tmp_path / "items.csv"
    )
    assert [(f.code, f.rows) for f in report.errors] == [("out_of_range", (1,))]
    assert [(f.code, f.count) for f in report.warnings] == [("ids_missing_from_features", 1)]


def test_validate_path_propensity(tmp_path: Path) -> None:
    (tmp_path / "r.csv").write_text("user_id,item_id,label,p\n1,10,1,0.5\n2,12,0,0\n")
    report = validate_path(tmp_path / "r.csv", "table", Schema(propensity="p"))
    assert [(f.code, f.column, f.rows) for f in report.errors] == [("out_of_range", "p", (1,))]


def test_validate_path_split_reports_cold_users(tmp_path: Path) -> None:
    # every user has one row, so the user of the one test row (round(0.2 * 5) = 1)
    # occurs only in test, whatever the seed
    (tmp_path / "r.csv").write_text(
        "user_id,item_id,rating\n1,10,4\n2,10,3\n3,10,5\n4,11,2\n5,11,1\n"
    )
    for seed in (0, 1):
        report = validate_path(tmp_path / "r.csv", "table", RATING, split="random", seed=seed)
        assert report.ok
        cold = [f for f in report.warnings if f.code == "cold_start_users"]
        assert cold[0].count == 1
    report = validate_path(tmp_path / "r.csv", "table", RATING, split="randm")
    assert [f.code for f in report.errors] == ["unknown_split"]


def test_validate_path_empty_after_filtering(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("seg,item_id,imps,clicks\na,1,0,0\nb,1,0,0\nc,2,0,0\n")
    schema = Schema(user="seg", label=None, impressions="imps", clicks="clicks")
    report = validate_path(tmp_path / "c.csv", "ctr", schema)
    assert [f.code for f in report.errors] == ["empty_after_filtering"]
    assert report.dropped == {"zero impressions in column 'imps' (click-through rate undefined)": 3}


def test_reported_data_error_carries_the_whole_report() -> None:
    report = ValidationReport()
    report.add(make_finding("warning", "w", "a warning"))
    report.add(make_finding("error", "e", "an error"))
    exc = ReportedDataError(report)
    assert str(exc) == "an error"
    assert [f.code for f in exc.findings] == ["e"]
    assert exc.report is report
