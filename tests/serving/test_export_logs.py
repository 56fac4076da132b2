"""``wager export-logs`` and the ``wager`` log format: served through the real app into a
real event store (SQLite; PostgreSQL for the export), exported, read back by the loader,
``wager ope --format wager`` and ``wager train``; every value checked against what the
HTTP responses and the posted feedback say (worked out here, not read from the store)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from serving.tiny_runs import N_USERS, train_registry
from wager.cli import app
from wager.data.loaders.event_log import EVENT_LOG_COLUMNS, load_event_log
from wager.errors import DataError
from wager.serving.app import create_app
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore

K = 3
USERS = [f"u{u}" for u in range(12)] + ["new-user"]  # 12 known users and a cold one


def _invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("export"), ("v1",))


def _serve_day(registry_dir: Path, store: EventStore) -> tuple[list[dict[str, Any]], dict]:
    """One tiny simulated day: a response per user of USERS (epsilon-greedy, k=3), then
    feedback: user n clicks its rank-(n % 3 + 1) item; every 4th user's rank-1 item gets a
    0-click then a 1-click (two events); every 5th user's rank-2 item gets two ratings
    (the later one, 2.0, is kept). Returns (the responses, expected click / rating / count
    per (request_id, item_id))."""
    client = TestClient(create_app(ModelRegistry(registry_dir), store, None))
    responses, events, expected = [], [], {}
    for n, user in enumerate(USERS):
        body = {"user_id": user, "k": K, "policy": "epsilon_greedy", "epsilon": 0.5}
        r = client.post("/v1/recommend", json={**body, "exclude_seen": False})
        assert r.status_code == 200, r.text
        out = r.json()
        responses.append(out)
        rid, items = out["request_id"], [i["item_id"] for i in out["items"]]
        clicked = items[n % K]
        events.append({"event_id": f"c{n}", "request_id": rid, "item_id": clicked, "click": 1})
        expected[(rid, clicked)] = {"click": 1.0, "rating": math.nan, "event_count": 1}
        if n % 4 == 0 and clicked != items[0]:
            for e, c in ((f"z{n}", 0), (f"o{n}", 1)):
                events.append({"event_id": e, "request_id": rid, "item_id": items[0], "click": c})
            expected[(rid, items[0])] = {"click": 1.0, "rating": math.nan, "event_count": 2}
        if n % 5 == 0 and items[1] != clicked:
            for e, rating in ((f"r{n}a", 4.5), (f"r{n}b", 2.0)):
                event = {"event_id": e, "request_id": rid, "item_id": items[1], "rating": rating}
                events.append(event)
                r = client.post("/v1/feedback", json={"events": [event]})  # ordered in time
                assert r.status_code == 200, r.text
            expected[(rid, items[1])] = {"click": math.nan, "rating": 2.0, "event_count": 2}
    clicks = [e for e in events if "click" in e]
    r = client.post("/v1/feedback", json={"events": clicks})
    assert r.status_code == 200 and r.json() == {"stored": len(clicks), "duplicates": 0}
    return responses, expected


def _expected_rows(responses: list[dict[str, Any]], expected: dict) -> pd.DataFrame:
    rows = []
    for out in responses:
        for item in out["items"]:
            fb = expected.get(
                (out["request_id"], item["item_id"]),
                {"click": math.nan, "rating": math.nan, "event_count": 0},
            )
            rows.append(
                {
                    "request_id": out["request_id"],
                    "user_id": out["user_id"],
                    "item_id": item["item_id"],
                    "position": item["rank"],
                    "score": item["score"],
                    "mean": item["mean"],
                    "std": item["std"],
                    "policy": out["policy"],
                    "propensity": item["propensity"],
                    "arm": out["arm"],
                    "model_version": out["model_version"],
                    **fb,
                    # the log holds clicks: label = click, 0 where no click event
                    "label": 0.0 if math.isnan(fb["click"]) else fb["click"],
                }
            )
    return pd.DataFrame(rows)


@pytest.fixture
def exported(registry_dir: Path, tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """(the exported Parquet file of a served day, the expected rows in serving order)."""
    db = tmp_path / "events.db"
    with EventStore.sqlite(db) as store:
        responses, expected = _serve_day(registry_dir, store)
    for out, user in zip(responses, USERS, strict=True):
        out["user_id"] = user
    out_file = tmp_path / "logs.parquet"
    result = _invoke("export-logs", "--db", f"sqlite:///{db}", "--out", out_file, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    rows = _expected_rows(responses, expected)
    assert summary["impressions"] == len(rows) == K * len(USERS)
    assert summary["requests"] == len(USERS) and summary["label"] == "click"
    assert summary["feedback_events"] == sum(v["event_count"] for v in expected.values())
    return out_file, rows


def test_export_writes_one_row_per_impression_with_its_feedback(exported):
    out_file, rows = exported
    got = pd.read_parquet(out_file)
    assert list(got.columns) == list(EVENT_LOG_COLUMNS)
    assert str(got["position"].dtype) == "int64" and str(got["event_count"].dtype) == "int64"
    assert set(got["policy"]) == {"epsilon_greedy(epsilon=0.5)"}
    assert set(got["model_version"]) == {"v1"}
    for col in ("request_id", "user_id", "item_id", "policy", "arm", "model_version"):
        assert got[col].tolist() == rows[col].tolist(), col
    assert got["position"].tolist() == rows["position"].tolist()
    assert got["event_count"].tolist() == rows["event_count"].tolist()
    for col in ("score", "mean", "std", "propensity", "click", "rating", "label"):
        np.testing.assert_allclose(
            got[col].to_numpy(float), rows[col].to_numpy(float), rtol=1e-12, err_msg=col
        )
    assert got["ts"].between(1.7e9, 4.0e9).all()  # Unix seconds
    # no online recalibration: the model's own mean is the served one
    np.testing.assert_allclose(got["model_mean"].to_numpy(float), rows["mean"].to_numpy(float))
    assert not list(out_file.parent.glob(".logs.parquet*"))  # no temporary file left
    db = f"sqlite:///{out_file.parent / 'events.db'}"
    again = _invoke("export-logs", "--db", db, "--out", out_file, "--overwrite")
    assert again.exit_code == 0, again.output
    pd.testing.assert_frame_equal(pd.read_parquet(out_file), got)


def test_loader_reads_the_export_as_logged_feedback(exported):
    out_file, rows = exported
    log = load_event_log(out_file)
    item_ids = sorted(set(rows["item_id"]))
    assert log.item_ids.tolist() == item_ids and log.n_positions == K
    assert log.item_ids[log.action].tolist() == rows["item_id"].tolist()
    np.testing.assert_array_equal(log.position, rows["position"].to_numpy() - 1)
    # reward = click, and 0 for impressions without any feedback (or with ratings only)
    np.testing.assert_array_equal(log.reward, rows["click"].fillna(0.0).to_numpy())
    np.testing.assert_allclose(log.propensity, rows["propensity"].to_numpy(), rtol=1e-12)
    assert log.user_ids is not None and log.user_ids.tolist() == rows["user_id"].tolist()
    assert log.request is not None
    np.testing.assert_array_equal(log.request, np.repeat(np.arange(len(USERS)), K))
    assert log.source == str(out_file)


def test_an_export_without_model_mean_still_loads(exported, tmp_path):
    """Files exported before the model_mean column existed."""
    out_file, rows = exported
    older = tmp_path / "older.parquet"
    pd.read_parquet(out_file).drop(columns="model_mean").to_parquet(older)
    log = load_event_log(older)
    np.testing.assert_allclose(log.propensity, rows["propensity"].to_numpy(), rtol=1e-12)


def test_ope_estimates_from_the_export(exported, tmp_path):
    out_file, rows = exported
    result = _invoke(
        "ope", "--logs", out_file, "--format", "wager", "--policy-logs", out_file,
        "--members", "2", "--folds", "2", "--bootstrap", "20", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    # the evaluated policy's own log is this one: its on-policy value is the mean reward
    assert got["on_policy"] == pytest.approx(rows["label"].mean(), rel=1e-12)
    assert {"ips", "snips", "dm", "dr"} <= set(got["estimates"])
    for e in got["estimates"].values():
        assert math.isfinite(e["value"]) and e["low"] <= e["value"] <= e["high"]
    # IPS of the logging policy's own context-free distribution: sum of w * r / n, w =
    # pi_e(a, p) / propensity, pi_e(a, p) = count(a, p) / count(p) (the log's frequencies)
    log = load_event_log(out_file)
    counts = np.zeros((log.n_actions, log.n_positions))
    np.add.at(counts, (log.action, log.position), 1.0)
    pi = counts[log.action, log.position] / counts.sum(axis=0)[log.position]
    ips = float(np.mean(pi / log.propensity * log.reward))
    assert got["estimates"]["ips"]["value"] == pytest.approx(ips, rel=1e-9)


def test_ope_of_a_wager_policy_on_a_run_from_the_export(exported, registry_dir):
    out_file, _ = exported
    result = _invoke(
        "ope", "--logs", out_file, "--format", "wager", "--policy", "greedy", "--run",
        registry_dir / "v1", "--members", "2", "--folds", "2", "--bootstrap", "20", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert got["on_policy"] is None and {"ips", "dm", "dr"} <= set(got["estimates"])
    for e in got["estimates"].values():
        assert math.isfinite(e["value"])


def test_wager_train_reads_the_export_as_a_table(exported, tmp_path):
    out_file, _ = exported
    toml = tmp_path / "train.toml"
    toml.write_text(
        f"""seed = 0
[schema]
user = "user_id"
item = "item_id"
label = "label"
label_kind = "click"
[data]
path = "{out_file}"
format = "table"
split = "random"
test_fraction = 0.2
valid_fraction = 0.1
[model]
type = "biased_mf"
dim = 4
[training]
epochs = 2
batch_size = 16
"""
    )
    result = _invoke("train", toml, "--out", tmp_path / "run", "--json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run").is_dir()


def test_export_from_postgresql(registry_dir, postgres_store, tmp_path):
    responses, expected = _serve_day(registry_dir, postgres_store)
    for out, user in zip(responses, USERS, strict=True):
        out["user_id"] = user
    url = postgres_store.url
    out_file = tmp_path / "pg.parquet"
    result = _invoke("export-logs", "--db", url, "--out", out_file, "--json")
    assert result.exit_code == 0, result.output
    got, rows = pd.read_parquet(out_file), _expected_rows(responses, expected)
    assert got[["request_id", "item_id", "position"]].values.tolist() == (
        rows[["request_id", "item_id", "position"]].values.tolist()
    )
    np.testing.assert_allclose(got["label"].to_numpy(), rows["label"].to_numpy())
    assert got["event_count"].tolist() == rows["event_count"].tolist()


# ----------------------------------------------------------------------------- bad input


def test_ratings_only_log_has_rating_labels_and_unrated_rows_are_refused(registry_dir, tmp_path):
    db = tmp_path / "events.db"
    with EventStore.sqlite(db) as store:
        client = TestClient(create_app(ModelRegistry(registry_dir), store, None))
        out = client.post("/v1/recommend", json={"user_id": "u3", "k": 2}).json()
        rid, first = out["request_id"], out["items"][0]["item_id"]
        event = {"event_id": "e", "request_id": rid, "item_id": first, "rating": 3.5}
        assert client.post("/v1/feedback", json={"events": [event]}).status_code == 200
    out_file = tmp_path / "r.parquet"
    assert _invoke("export-logs", "--db", f"sqlite:///{db}", "--out", out_file).exit_code == 0
    got = pd.read_parquet(out_file)
    np.testing.assert_array_equal(got["label"].to_numpy(), [3.5, np.nan])  # rating, unknown
    with pytest.raises(DataError, match=r"column 'rating', row 2.*no rating.*Rate every"):
        load_event_log(out_file)


def test_export_of_an_empty_store_says_nothing_was_served(tmp_path):
    EventStore.sqlite(tmp_path / "events.db").close()
    result = _invoke(
        "export-logs", "--db", f"sqlite:///{tmp_path / 'events.db'}", "--out",
        tmp_path / "x.parquet", "--json",
    )  # fmt: skip
    assert result.exit_code == 1
    assert "nothing has been served yet" in json.loads(result.stdout)["error"]["message"]
    assert not (tmp_path / "x.parquet").exists()


def test_export_never_creates_a_schema_in_a_foreign_database(tmp_path, fresh_postgres_url):
    import sqlalchemy as sa

    result = _invoke(
        "export-logs", "--db", fresh_postgres_url, "--out", tmp_path / "x.parquet", "--json"
    )
    assert result.exit_code == 1
    assert "holds no wager event store" in json.loads(result.stdout)["error"]["message"]
    engine = sa.create_engine(fresh_postgres_url)
    try:
        with engine.connect() as conn:
            assert sa.inspect(conn).get_table_names() == []  # nothing written
    finally:
        engine.dispose()
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d: ["--db", "mysql://x", "--out", d / "a.parquet"], "--db mysql://x: not an"),
        (
            lambda d: ["--db", f"sqlite:///{d / 'none.db'}", "--out", d / "a.parquet"],
            "no such SQLite database file",
        ),
        (
            lambda d: ["--db", f"sqlite:///{d / 'events.db'}", "--out", d / "a.csv"],
            "end in .parquet",
        ),
        (
            lambda d: ["--db", f"sqlite:///{d / 'events.db'}", "--out", d / "no" / "a.parquet"],
            "the folder",
        ),
        (
            lambda d: ["--db", f"sqlite:///{d / 'events.db'}", "--out", d / "old.parquet"],
            "already exists: pass --overwrite",
        ),
    ],
)
def test_bad_export_flags_are_named(tmp_path, make_args, message):
    EventStore.sqlite(tmp_path / "events.db").close()
    (tmp_path / "old.parquet").write_text("x")
    result = _invoke("export-logs", *make_args(tmp_path), "--json")
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    flag = "--db" if "--db" in message or "SQLite" in message else "--out"
    assert error["flag"] == flag
    assert message in error["message"]


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text("not parquet"), "not a readable Parquet file"),
        (
            lambda p: pd.DataFrame({"request_id": ["r"]}).to_parquet(p),
            "columns 'user_id', 'item_id'",
        ),
        (lambda p: None, "no such file or directory"),
    ],
)
def test_loader_names_bad_files(tmp_path, write, message):
    path = tmp_path / "logs.parquet"
    write(path)
    with pytest.raises(DataError, match=message):
        load_event_log(path)


def test_ope_refuses_campaign_with_the_wager_format(exported):
    out_file, _ = exported
    result = _invoke(
        "ope", "--logs", out_file, "--format", "wager", "--policy-logs", out_file,
        "--campaign", "men", "--json",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--campaign is for --format obd" in json.loads(result.stdout)["error"]["message"]


assert N_USERS >= 12  # USERS are known users of the tiny runs
