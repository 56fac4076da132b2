"""Open Bandit Dataset loader on a tiny hand-written policy directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from wager.data.loaders import load_dataset
from wager.data.loaders.obd import load_obd
from wager.data.schema import Categorical, Numeric
from wager.errors import DataError

HEADER = (
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
    "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1\n"
)
ROWS = [
    "0,2019-11-24 00:03:13.442536+00:00,0,1,0,0.5,a,b,c,d,0.0,1.0",
    "1,2019-11-24 00:04:00+00:00,1,2,1,0.25,a,b,c,d,0.0,0.0",
    "2,2019-11-24 00:05:00+00:00,1,3,0,0.25,e,b,c,d,2.0,0.0",
    "3,2019-11-24 00:06:00+00:00,0,1,1,1.0,e,b,c,d,0.0,0.0",
]
ITEMS = (
    ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
    "0,0,-0.5,x,y,z\n1,1,0.25,x,w,z\n"
)


def write_obd(root: Path, rows: list[str] = ROWS, campaign: str = "men") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{campaign}.csv").write_text(HEADER + "\n".join(rows) + "\n")
    (root / "item_context.csv").write_text(ITEMS)
    return root


def _uid(*features: str) -> str:
    return hashlib.blake2b("|".join(features).encode(), digest_size=8).hexdigest()


def test_interactions_columns_and_values(tmp_path: Path) -> None:
    ds = load_obd(write_obd(tmp_path / "random"))
    inter = ds.interactions
    assert inter.columns.tolist() == [
        "user_id",
        "item_id",
        "position",
        "click",
        "propensity_score",
        "timestamp",
        "user-item_affinity_0",
        "user-item_affinity_1",
    ]
    assert inter["item_id"].tolist() == ["0", "1", "1", "0"]  # ids as written
    assert inter["position"].tolist() == [1, 2, 3, 1]
    assert inter["click"].tolist() == [0, 1, 0, 1]  # CTR 2 / 4 = 0.5
    assert inter["propensity_score"].tolist() == [0.5, 0.25, 0.25, 1.0]
    assert inter["user-item_affinity_0"].tolist() == [0.0, 0.0, 2.0, 0.0]
    assert inter["timestamp"].iloc[0] == pd.Timestamp("2019-11-24 00:03:13.442536", tz="UTC")
    # user id = BLAKE2b-64 of the four user features joined by "|": two segments here
    assert (
        inter["user_id"].tolist() == [_uid("a", "b", "c", "d")] * 2 + [_uid("e", "b", "c", "d")] * 2
    )


def test_user_and_item_tables(tmp_path: Path) -> None:
    ds = load_obd(write_obd(tmp_path / "random"))
    users = ds.user_features
    assert users.columns.tolist() == ["user_id", *(f"user_feature_{i}" for i in range(4))]
    assert users["user_id"].tolist() == [_uid("a", "b", "c", "d"), _uid("e", "b", "c", "d")]
    assert users["user_feature_0"].tolist() == ["a", "e"]
    items = ds.item_features
    assert items.columns.tolist() == ["item_id", *(f"item_feature_{i}" for i in range(4))]
    assert items["item_feature_0"].tolist() == [-0.5, 0.25]
    assert items["item_feature_2"].tolist() == ["y", "w"]


def test_schema(tmp_path: Path) -> None:
    s = load_obd(write_obd(tmp_path / "random")).schema
    assert (s.label, s.label_kind, s.propensity, s.timestamp) == (
        "click",
        "click",
        "propensity_score",
        "timestamp",
    )
    assert s.context == (
        Categorical("position"),
        Numeric("user-item_affinity_0"),
        Numeric("user-item_affinity_1"),
    )
    assert s.user_features == tuple(Categorical(f"user_feature_{i}") for i in range(4))
    assert s.item_features == (
        Numeric("item_feature_0"),
        *(Categorical(f"item_feature_{i}") for i in (1, 2, 3)),
    )


def test_dispatcher_and_file_path(tmp_path: Path) -> None:
    root = write_obd(tmp_path / "random")
    assert len(load_dataset(root).interactions) == 4  # auto-detected by item_context.csv
    ds = load_obd(root / "men.csv")
    assert len(ds.interactions) == 4 and ds.source == str(root / "men.csv")


def test_several_campaigns_need_a_choice(tmp_path: Path) -> None:
    root = write_obd(tmp_path / "random")
    write_obd(root, ROWS[:2], campaign="women")
    with pytest.raises(DataError) as err:
        load_obd(root)
    assert err.value.findings[0].code == "ambiguous_campaign"
    assert "men, women" in str(err.value)
    assert len(load_obd(root, campaign="women").interactions) == 2
    with pytest.raises(DataError, match="Did you mean 'men'"):
        load_obd(root, campaign="man")


def test_missing_item_context(tmp_path: Path) -> None:
    root = write_obd(tmp_path / "random")
    (root / "item_context.csv").unlink()
    with pytest.raises(DataError, match=r"'item_context\.csv' is missing"):
        load_obd(root)


def test_missing_column(tmp_path: Path) -> None:
    root = tmp_path / "random"
    write_obd(root)
    text = (root / "men.csv").read_text().replace("propensity_score", "score")
    (root / "men.csv").write_text(text)
    with pytest.raises(DataError) as err:
        load_obd(root)
    assert err.value.findings[0].code == "missing_column"
    assert "'propensity_score'" in str(err.value)


def test_bad_click_and_propensity_name_lines(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[1] = rows[1].replace(",2,1,0.25,", ",2,2,0.25,")  # click 2 on data row 1 -> line 3
    rows[2] = rows[2].replace(",0.25,e", ",0.0,e")  # propensity 0 on data row 2 -> line 4
    with pytest.raises(DataError) as err:
        load_obd(write_obd(tmp_path / "random", rows))
    by_col = {f.column: f for f in err.value.findings}
    assert set(by_col) == {"click", "propensity_score"}
    assert by_col["click"].rows == (1,) and "line 3" in by_col["click"].message
    assert (
        by_col["propensity_score"].rows == (2,) and "line 4" in by_col["propensity_score"].message
    )
    assert "(0, 1]" in by_col["propensity_score"].message
    assert by_col["click"].code == by_col["propensity_score"].code == "bad_value"


def test_bad_timestamp_and_item_id(tmp_path: Path) -> None:
    rows = list(ROWS)
    rows[0] = rows[0].replace("2019-11-24 00:03:13.442536+00:00", "yesterday")
    rows[3] = rows[3].replace("+00:00,0,1,1,", "+00:00,x,1,1,")
    with pytest.raises(DataError) as err:
        load_obd(write_obd(tmp_path / "random", rows))
    by_col = {f.column: f for f in err.value.findings}
    assert set(by_col) == {"item_id", "timestamp"}  # both reported at once
    assert by_col["item_id"].rows == (3,) and "'x'" in by_col["item_id"].message
    assert by_col["item_id"].code == "malformed_line"
    assert by_col["timestamp"].rows == (0,) and "'yesterday'" in by_col["timestamp"].message


def test_unknown_item_warns(tmp_path: Path) -> None:
    rows = [*ROWS, "4,2019-11-24 00:07:00+00:00,7,2,0,0.5,a,b,c,d,0.0,0.0"]
    ds = load_obd(write_obd(tmp_path / "random", rows))
    (w,) = ds.report.warnings
    assert w.code == "missing_feature_row" and "e.g. 7" in w.message and w.count == 1
