"""Dataset summary (describe) and the `wager data info` command (its rendering: test_cli_render)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wager.cli import app
from wager.data.dataset import Dataset
from wager.data.info import describe
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text
from wager.errors import ValidationReport


def rating_dataset() -> Dataset:
    inter = pd.DataFrame(
        {
            "user_id": [1, 1, 2, 3],
            "item_id": [10, 20, 10, 30],
            "rating": [5.0, 3.0, 4.0, 1.0],
            "timestamp": [0, 86400, 3600, 7200],
        }
    )
    users = pd.DataFrame({"user_id": [1, 2, 3], "age": [24, 53, 23], "gender": ["M", "F", "M"]})
    items = pd.DataFrame(
        {
            "item_id": [10, 20, 30],
            "title": ["Toy Story (1995)", "Café (1996)", "unknown"],
            "genres": ["Animation|Children's|Comedy", "", "unknown"],
            "release_date": pd.to_datetime(["1995-01-01", "1996-03-15", None]),
        }
    )
    schema = Schema(
        label="rating",
        label_kind="rating",
        rating_range=(1, 5),
        timestamp="timestamp",
        user_features=(Numeric("age"), Categorical("gender")),
        item_features=(Text("title"), MultiCategorical("genres")),
    )
    report = ValidationReport()
    report.drop("blank line", 2, source="u.data")
    folds = {"u1": (inter.iloc[:3], inter.iloc[3:])}
    return Dataset(inter, schema, users, items, source="tiny", report=report, folds=folds)


def test_counts_density_and_label() -> None:
    s = describe(rating_dataset())
    assert (s["n_interactions"], s["n_users"], s["n_items"], s["n_pairs"]) == (4, 3, 3, 4)
    # 4 observed pairs of 3 * 3 cells
    assert s["density"] == pytest.approx(4 / 9) and s["sparsity"] == pytest.approx(5 / 9)
    label = s["label"]
    assert (label["column"], label["kind"], label["min"], label["max"]) == (
        "rating",
        "rating",
        1,
        5,
    )
    # mean (5+3+4+1)/4 = 3.25; squared deviations 3.0625+0.0625+0.5625+5.0625 = 8.75,
    # sample std sqrt(8.75 / 3) = 1.70783
    assert label["mean"] == pytest.approx(3.25)
    assert label["std"] == pytest.approx(math.sqrt(8.75 / 3))
    assert label["value_counts"] == {"1": 1, "3": 1, "4": 1, "5": 1}
    assert label["rating_range"] == [1.0, 5.0]
    assert "n_clicks" not in s and "positions" not in s


def test_timestamps_features_folds_report() -> None:
    s = describe(rating_dataset())
    ts = s["timestamp"]
    assert (ts["min_epoch_s"], ts["max_epoch_s"]) == (0, 86400)
    assert (ts["min"], ts["max"]) == ("1970-01-01T00:00:00+00:00", "1970-01-02T00:00:00+00:00")
    users = {f["name"]: f for f in s["user_features"]}
    # ages 24, 53, 23: min 23, max 53, mean 100/3
    assert (users["age"]["type"], users["age"]["min"], users["age"]["max"]) == ("numeric", 23, 53)
    assert users["age"]["mean"] == pytest.approx(100 / 3)
    assert users["gender"]["n_unique"] == 2
    assert users["gender"]["top"][0] == {"value": "M", "count": 2}
    items = {f["name"]: f for f in s["item_features"]}
    genres = items["genres"]
    # distinct single genres: Animation, Children's, Comedy, unknown; 3 + 0 + 1 per row
    assert (genres["type"], genres["n_unique"], genres["n_empty"]) == ("multi_categorical", 4, 1)
    assert genres["mean_values_per_row"] == pytest.approx(4 / 3)
    # title tokens: 3, 2, 1 -> mean 2, max 3
    title = items["title"]
    assert (title["type"], title["mean_tokens"], title["max_tokens"], title["n_unique"]) == (
        "text",
        2.0,
        3,
        3,
    )
    date = items["release_date"]
    assert (date["type"], date["in_schema"], date["missing"]) == ("datetime", False, 1)
    assert date["min"] == "1995-01-01T00:00:00+00:00"
    assert s["context"] == []
    assert s["folds"] == {"u1": {"n_train": 3, "n_test": 1}}
    assert s["report"]["dropped"] == {"blank line": 2}
    assert s["report"]["findings"][0]["code"] == "rows_dropped"
    assert s["layout"] == "table"
    json.dumps(s, allow_nan=False)  # plain, strict JSON


def click_dataset() -> Dataset:
    inter = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "b", "b"],
            "item_id": [0, 1, 1, 0, 0],
            "position": [1, 2, 3, 1, 2],
            "click": [0, 1, 0, 1, 0],
            "propensity_score": [0.5, 0.25, 0.25, 1.0, 0.5],
            "timestamp": pd.to_datetime(
                [
                    "2019-11-24 00:00:00",
                    "2019-11-24 00:00:01",
                    "2019-11-24 00:00:02",
                    "2019-11-24 00:00:03",
                    "2019-11-25 00:00:00",
                ],
                utc=True,
            ),
            "aff": [0.0, 1.0, np.nan, 2.0, 3.0],
        }
    )
    schema = Schema(
        label="click",
        label_kind="click",
        timestamp="timestamp",
        propensity="propensity_score",
        context=(Categorical("position"), Numeric("aff")),
    )
    return Dataset(inter, schema, source="clicks")


def test_click_data() -> None:
    s = describe(click_dataset())
    # 2 clicks in 5 impressions
    assert (s["n_impressions"], s["n_clicks"], s["ctr"]) == (5, 2, pytest.approx(0.4))
    # pairs (a,0) (a,1) (b,1) (b,0): 4 of 2 * 2 cells
    assert s["n_pairs"] == 4 and s["density"] == 1.0
    pos = s["positions"]
    assert (pos["count"], pos["values"]) == (3, [1, 2, 3])
    # position 1: clicks 0, 1 -> 0.5; position 2: 1, 0 -> 0.5; position 3: 0 -> 0
    assert pos["ctr_by_position"] == {"1": 0.5, "2": 0.5, "3": 0.0}
    assert (s["propensity"]["min"], s["propensity"]["max"]) == (0.25, 1.0)
    assert s["propensity"]["mean"] == pytest.approx(2.5 / 5)
    assert s["label"]["value_counts"] == {"0": 3, "1": 2}
    assert s["timestamp"]["max"] == "2019-11-25T00:00:00+00:00"
    ctx = {f["name"]: f for f in s["context"]}
    assert ctx["position"]["n_unique"] == 3
    # aff: 0, 1, 2, 3 present, mean 1.5, one missing
    assert (ctx["aff"]["missing"], ctx["aff"]["mean"]) == (1, 1.5)
    json.dumps(s, allow_nan=False)


def test_aggregated_ctr_totals() -> None:
    inter = pd.DataFrame(
        {
            "user_id": ["x", "y"],
            "item_id": [1, 1],
            "impressions": [10, 30],
            "clicks": [1, 2],
            "ctr": [0.1, 2 / 30],
        }
    )
    schema = Schema(label="ctr", label_kind="ctr", impressions="impressions", clicks="clicks")
    s = describe(Dataset(inter, schema, source="agg"))
    # pooled CTR = (1 + 2) / (10 + 30) = 0.075
    assert (s["n_impressions"], s["n_clicks"], s["ctr"]) == (40, 3, pytest.approx(0.075))
    assert s["layout"] == "ctr"


# ----------------------------------------------------------------------------- CLI


def _flags(*names: str) -> str:
    from wager.data.loaders.movielens import GENRES_100K

    return "|".join("1" if g in names else "0" for g in GENRES_100K)


def _write_100k(root: Path) -> Path:
    root.mkdir()
    (root / "u.data").write_text("1\t10\t5\t1\n1\t20\t3\t2\n2\t10\t4\t3\n3\t30\t1\t4\n")
    (root / "u.item").write_text(
        f"10|A (1995)|01-Jan-1995||u|{_flags('Action', 'Comedy')}\n"
        f"20|B (1996)|01-Jan-1996||u|{_flags('Drama')}\n"
        f"30|C (1997)|01-Jan-1997||u|{_flags('Comedy')}\n"
    )
    (root / "u.user").write_text("1|24|M|writer|1\n2|53|F|other|2\n3|23|M|writer|3\n")
    return root


def test_cli_data_info_json(tmp_path: Path) -> None:
    root = _write_100k(tmp_path / "ml-100k")
    result = CliRunner().invoke(app, ["data", "info", str(root), "--json"])
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["layout"], s["n_users"], s["n_items"], s["n_interactions"]) == (
        "movielens-100k",
        3,
        3,
        4,
    )
    assert s["label"]["mean"] == pytest.approx(3.25)
    genres = next(f for f in s["item_features"] if f["name"] == "genres")
    assert genres["n_unique"] == 3  # Action, Comedy, Drama
    occupation = next(f for f in s["user_features"] if f["name"] == "occupation")
    assert occupation["n_unique"] == 2


def test_cli_data_info_error(tmp_path: Path) -> None:
    root = _write_100k(tmp_path / "ml-100k")
    (root / "u.item").unlink()
    result = CliRunner().invoke(app, ["data", "info", str(root), "--json"])
    assert result.exit_code == 1
    out = json.loads(result.stdout)
    error = out["error"]
    assert out["ok"] is False and error["findings"][0]["code"] == "missing_file"
    assert "u.item" in error["message"] and error["path"].endswith("u.item")
