"""MovieLens loader: the three layouts on tiny hand-written fixtures, and every error path."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.data.loaders import load_dataset
from wager.data.loaders.movielens import GENRES_100K, detect_layout, load_movielens
from wager.data.schema import Categorical, MultiCategorical, Numeric, Text
from wager.errors import DataError


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


U_DATA = "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\t4\t881250951\n3\t30\t1\t881250952\n"
TOY_STORY_FLAGS = _flags("Animation", "Children's", "Comedy")
U_ITEM_LINES = [
    f"10|Toy Story (1995)|01-Jan-1995||http://x/10|{TOY_STORY_FLAGS}",
    f"20|Café (1996)|15-Mar-1996||http://x/20|{_flags()}",
    f"30|unknown||||{_flags('unknown')}",
]
U_USER = "1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|L9G2B\n"


def write_100k(root: Path, *, u_data: str = U_DATA, folds: bool = True) -> Path:
    """A 3-user, 3-item 100k directory; u.item in latin-1 (the é in 'Café')."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "u.data").write_text(u_data)
    (root / "u.item").write_bytes(("\n".join(U_ITEM_LINES) + "\n").encode("latin-1"))
    (root / "u.user").write_text(U_USER)
    if folds:
        (root / "u1.base").write_text("1\t10\t5\t881250949\n1\t20\t3\t881250950\n")
        (root / "u1.test").write_text("2\t10\t4\t881250951\n")
        (root / "ua.base").write_text("3\t30\t1\t881250952\n")  # no ua.test: fold left out
    return root


def write_1m(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.dat").write_text(
        "1::10::5::978300760\n2::10::3::978300761\n2::20::4::978300762\n"
    )
    (root / "movies.dat").write_bytes(
        "10::Toy Story (1995)::Animation|Children's|Comedy\n"
        "20::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
        "30::Café Society (1995)::Drama\n".encode("latin-1")
    )
    (root / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    return root


def write_latest(root: Path, ratings: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "ratings.csv").write_text(
        ratings
        or "userId,movieId,rating,timestamp\n1,10,4.0,964982703\n1,20,0.5,964981247\n"
        "2,10,3.5,964982224\n"
    )
    (root / "movies.csv").write_text(
        'movieId,title,genres\n10,"American President, The (1995)",Comedy|Drama|Romance\n'
        "20,Some Series (2006–2007) ,(no genres listed)\n30,Untitled,Drama\n",
        encoding="utf-8",
    )
    return root


# ----------------------------------------------------------------------------- 100k


def test_100k_interactions_items_users(tmp_path: Path) -> None:
    ds = load_movielens(write_100k(tmp_path / "ml-100k"))
    inter = ds.interactions
    assert inter.columns.tolist() == ["user_id", "item_id", "rating", "timestamp"]
    assert [str(t) for t in inter.dtypes] == ["int64", "int64", "float64", "int64"]
    assert inter["user_id"].tolist() == [1, 1, 2, 3]
    assert inter["item_id"].tolist() == [10, 20, 10, 30]
    # mean rating (5 + 3 + 4 + 1) / 4 = 3.25
    assert inter["rating"].mean() == pytest.approx(3.25)
    assert inter["timestamp"].tolist() == [881250949, 881250950, 881250951, 881250952]

    items = ds.item_features.set_index("item_id")
    assert items.loc[10, "genres"] == "Animation|Children's|Comedy"
    assert items.loc[20, "genres"] == ""  # no flag set
    assert items.loc[30, "genres"] == "unknown"
    assert items.loc[20, "title"] == "Café (1996)"  # latin-1 decoded
    assert items.loc[10, "release_date"] == pd.Timestamp("1995-01-01")
    assert items.loc[20, "release_year"] == 1996.0
    assert pd.isna(items.loc[30, "release_date"]) and math.isnan(items.loc[30, "release_year"])

    users = ds.user_features.set_index("user_id")
    assert users.loc[2, "age"] == 53 and users.loc[2, "gender"] == "F"
    assert users.loc[3, "occupation"] == "writer" and users.loc[3, "zip"] == "L9G2B"
    assert str(ds.user_features["age"].dtype) == "int64"


def test_100k_schema_and_folds(tmp_path: Path) -> None:
    ds = load_movielens(write_100k(tmp_path / "ml-100k"))
    s = ds.schema
    assert (s.label, s.label_kind, s.rating_range, s.timestamp) == (
        "rating",
        "rating",
        (1.0, 5.0),
        "timestamp",
    )
    assert s.item_features == (
        Text("title"),
        MultiCategorical("genres", sep="|"),
        Numeric("release_year", bins=15),
    )
    assert s.user_features == (
        Numeric("age", bins=(18, 25, 35, 45, 50, 56)),
        Categorical("gender"),
        Categorical("occupation"),
        Categorical("zip"),
    )
    assert list(ds.folds) == ["u1"]
    train, test = ds.folds["u1"]
    assert train.columns.tolist() == test.columns.tolist() == ds.interactions.columns.tolist()
    assert (len(train), len(test)) == (2, 1)
    assert test.iloc[0].tolist() == [2, 10, 4.0, 881250951]
    codes = [f.code for f in ds.report.warnings]
    assert codes == ["incomplete_fold"] and "ua.test" in ds.report.warnings[0].message
    assert ds.report.ok


def test_100k_genre_names_from_u_genre(tmp_path: Path) -> None:
    root = write_100k(tmp_path / "ml-100k", folds=False)
    names = list(GENRES_100K)
    names[4] = "Kids"  # u.genre wins over the standard names
    (root / "u.genre").write_text("".join(f"{n}|{i}\n" for i, n in enumerate(names)) + "\n")
    ds = load_movielens(root)
    assert ds.item_features["genres"].iloc[0] == "Animation|Kids|Comedy"


def test_100k_accepts_rating_file_path_and_dispatcher(tmp_path: Path) -> None:
    root = write_100k(tmp_path / "ml-100k", folds=False)
    ds = load_movielens(root / "u.data")  # a rating file stands for its directory
    assert len(ds.interactions) == 4 and ds.source == str(root)
    assert len(load_dataset(root).interactions) == 4  # format "auto" -> movielens
    assert detect_layout(root) == "100k"


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 10**6),
            st.integers(1, 10**6),
            st.integers(1, 5),
            st.integers(0, 2**31 - 1),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_100k_round_trip_any_ratings(rows: list[tuple[int, int, int, int]]) -> None:
    """Whatever valid u.data is written, the same numbers come back in the same order."""
    with tempfile.TemporaryDirectory() as tmp:
        text = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows)
        ds = load_movielens(write_100k(Path(tmp) / "ml", u_data=text, folds=False))
        got = ds.interactions.to_numpy()
        np.testing.assert_array_equal(got, np.asarray(rows, dtype=np.float64))


# ----------------------------------------------------------------------------- 1M and latest


def test_1m_layout(tmp_path: Path) -> None:
    ds = load_movielens(write_1m(tmp_path / "ml-1m"))
    assert ds.interactions["rating"].tolist() == [5.0, 3.0, 4.0]  # mean 12 / 3 = 4
    assert ds.interactions["timestamp"].tolist() == [978300760, 978300761, 978300762]
    items = ds.item_features.set_index("item_id")
    # a single ':' inside a title survives the '::' separator
    assert items.loc[20, "title"] == "Star Wars: Episode IV - A New Hope (1977)"
    assert items.loc[20, "genres"] == "Action|Sci-Fi"
    assert items.loc[20, "release_year"] == 1977.0
    assert items.loc[30, "title"] == "Café Society (1995)"
    users = ds.user_features.set_index("user_id")
    # occupation codes 10 and 16 of the ml-1m README; age is the group's lower bound
    assert users.loc[1, "occupation"] == "K-12 student"
    assert users.loc[2, "occupation"] == "self-employed"
    assert users["age"].tolist() == [1, 56]
    assert ds.schema.rating_range == (1.0, 5.0)
    assert ds.folds == {}
    assert detect_layout(tmp_path / "ml-1m") == "1m"


def test_latest_layout(tmp_path: Path) -> None:
    ds = load_movielens(write_latest(tmp_path / "ml-latest-small"))
    # mean (4 + 0.5 + 3.5) / 3 = 8 / 3
    assert ds.interactions["rating"].mean() == pytest.approx(8 / 3)
    assert ds.schema.rating_range == (0.5, 5.0)
    assert ds.user_features is None and ds.schema.user_features == ()
    items = ds.item_features.set_index("item_id")
    assert items.loc[10, "title"] == "American President, The (1995)"
    assert items.loc[10, "release_year"] == 1995.0
    assert items.loc[20, "genres"] == ""  # "(no genres listed)"
    assert items.loc[20, "release_year"] == 2006.0  # "(2006–2007)" with a trailing space
    assert math.isnan(items.loc[30, "release_year"])


def test_latest_rating_outside_half_star_range(tmp_path: Path) -> None:
    root = write_latest(
        tmp_path / "ml", "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,20,0.25,2\n1,30,5.5,3\n"
    )
    with pytest.raises(DataError) as err:
        load_movielens(root)
    (f,) = err.value.findings
    assert f.code == "rating_out_of_range" and f.column == "rating"
    assert f.rows == (1, 2) and f.count == 2
    assert "lines 3, 4" in f.message  # header is line 1
    assert "[0.5, 5]" in f.message and "ratings.csv" in f.message


def test_latest_bad_header(tmp_path: Path) -> None:
    root = write_latest(tmp_path / "ml", "user,movie,rating,timestamp\n1,10,4.0,1\n")
    with pytest.raises(DataError, match="expected 'userId,movieId,rating,timestamp'"):
        load_movielens(root)


# ----------------------------------------------------------------------------- errors


def test_missing_u_item_is_named(tmp_path: Path) -> None:
    root = write_100k(tmp_path / "ml-100k", folds=False)
    (root / "u.item").unlink()
    with pytest.raises(DataError) as err:
        load_movielens(root)
    (f,) = err.value.findings
    assert f.code == "missing_file"
    assert "'u.item' is missing" in f.message and "100k" in f.message
    assert f.source == str(root / "u.item")


def test_missing_users_dat_names_1m_layout(tmp_path: Path) -> None:
    root = write_1m(tmp_path / "ml-1m")
    (root / "users.dat").unlink()
    with pytest.raises(DataError, match=r"'users\.dat' is missing; the MovieLens 1m layout"):
        load_movielens(root)


def test_no_rating_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"u\.data for 100k, ratings\.dat for 1M"):
        load_movielens(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_movielens(tmp_path / "nope")


def test_malformed_value_names_file_column_and_line(tmp_path: Path) -> None:
    bad = "1\t10\t5\t881250949\n1\t20\t3\t881250950\n2\t10\tfour\t881250951\n"
    root = write_100k(tmp_path / "ml", u_data=bad, folds=False)
    with pytest.raises(DataError) as err:
        load_movielens(root)
    (f,) = err.value.findings
    assert (f.code, f.column, f.rows) == ("malformed_line", "rating", (2,))
    assert "u.data" in f.message and "line 3" in f.message and "'four'" in f.message


def test_too_many_fields_names_line(tmp_path: Path) -> None:
    bad = "1\t10\t5\t881250949\n1\t20\t3\t881250950\t99\n"
    root = write_100k(tmp_path / "ml", u_data=bad, folds=False)
    with pytest.raises(DataError) as err:
        load_movielens(root)
    msg = str(err.value)
    assert "u.data" in msg and "line 2" in msg and "4 expected" in msg


def test_empty_id_and_range_errors_reported_together(tmp_path: Path) -> None:
    # line 1: empty user id; line 2: too few fields (timestamp empty)
    bad = "\t10\t5\t881250949\n1\t20\t3\n"
    root = write_100k(tmp_path / "ml", u_data=bad, folds=False)
    with pytest.raises(DataError) as err:
        load_movielens(root)
    by_col = {f.column: f for f in err.value.findings}
    assert set(by_col) == {"user_id", "timestamp"}
    assert by_col["user_id"].rows == (0,) and "found empty" in by_col["user_id"].message
    assert by_col["timestamp"].rows == (1,) and "line 2" in by_col["timestamp"].message


def test_rating_out_of_range_100k(tmp_path: Path) -> None:
    bad = "1\t10\t5\t1\n1\t20\t0\t2\n2\t10\t6\t3\n"
    root = write_100k(tmp_path / "ml", u_data=bad, folds=False)
    with pytest.raises(DataError) as err:
        load_movielens(root)
    (f,) = err.value.findings
    assert f.code == "rating_out_of_range" and f.rows == (1, 2)
    assert "rows 2, 3" in f.message and "lines 2, 3" in f.message


def test_duplicate_item_and_bad_genre_flag(tmp_path: Path) -> None:
    root = write_100k(tmp_path / "ml", folds=False)
    lines = [*U_ITEM_LINES, U_ITEM_LINES[0]]
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError, match="item_id 10 appears more than once"):
        load_movielens(root)
    lines = [U_ITEM_LINES[0].replace("|0|0|0|1|1|1|", "|0|0|0|2|1|1|"), *U_ITEM_LINES[1:]]
    (root / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    with pytest.raises(DataError) as err:
        load_movielens(root)
    (f,) = err.value.findings
    assert f.column == "genre_3" and f.rows == (0,) and "0/1 genre flag" in f.message


def test_ids_missing_from_feature_tables_warn(tmp_path: Path) -> None:
    root = write_100k(tmp_path / "ml", u_data="1\t10\t5\t1\n4\t99\t3\t2\n", folds=False)
    ds = load_movielens(root)
    warned = {f.source: f for f in ds.report.warnings}
    assert (
        warned[str(root / "u.item")].count == 1
        and "e.g. 99" in warned[str(root / "u.item")].message
    )
    assert warned[str(root / "u.user")].count == 1


def test_blank_lines_dropped_and_counted(tmp_path: Path) -> None:
    root = write_100k(tmp_path / "ml", u_data="1\t10\t5\t1\n\n2\t10\t4\t2\n", folds=False)
    ds = load_movielens(root)
    assert len(ds.interactions) == 2
    assert ds.report.dropped == {"blank line": 1}
