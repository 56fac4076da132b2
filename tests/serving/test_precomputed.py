"""Serving from a precomputed table: the Parquet of ``wager recommend --all-users --out``
read back as per-user candidates (checked against the run's own catalogue and the table's
rows), when the table applies and when the request goes to the model, every start-up check
paired with its message, and the ``wager serve`` flags (``--precomputed``, ``--cache-size``,
``--redis``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner, Result

from serving.tiny_runs import train_registry
from wager.cli import app
from wager.recommender import Recommender
from wager.serving.precomputed import PrecomputedTable
from wager.serving.registry import ModelRegistry

K = 6


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("precomputed"), ("v1", "v2"))


def _cli(*args: str | Path) -> Result:
    return CliRunner().invoke(app, [str(a) for a in args])


def _message(result: Result) -> str:
    return " ".join(re.sub(r"\x1b\[[0-9;]*m", "", result.output).split())


@pytest.fixture(scope="module")
def table(registry_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1's top-K for every user, written by `wager recommend --all-users --out`."""
    out = tmp_path_factory.mktemp("table") / "v1.parquet"
    result = _cli("recommend", registry_dir / "v1", "--all-users", "-k", K, "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def registry(registry_dir: Path) -> ModelRegistry:
    return ModelRegistry(registry_dir, active="v1")


def test_rows_become_the_users_candidates_in_rank_order(table, registry, registry_dir):
    loaded = PrecomputedTable.load(table, registry)
    assert (loaded.version, loaded.exclude_seen, loaded.n_users) == ("v1", True, 30)
    frame = pd.read_parquet(table)
    catalogue = Recommender.load(registry_dir / "v1").scorer_.catalogue
    for user in ("u0", "u7", "u29"):
        rows = frame[frame["user"] == user].sort_values("rank")
        got = loaded.candidates("v1", user, K)
        assert got is not None
        assert catalogue.items[got["items"]].tolist() == rows["item"].tolist()
        assert got["items"].dtype == np.int64 and got["mean"].dtype == np.float64
        np.testing.assert_array_equal(got["mean"], rows["mean"].to_numpy(np.float64))
        np.testing.assert_array_equal(got["std"], rows["std"].to_numpy(np.float64))
        assert not got["mean"].flags.writeable


def test_exclusions_drop_candidates_and_too_few_go_to_the_model(table, registry):
    loaded = PrecomputedTable.load(table, registry)
    full = loaded.candidates("v1", "u3", K)
    assert full is not None
    first = registry.current().recommender.scorer_.catalogue.items[full["items"][0]]
    less = loaded.candidates("v1", "u3", K - 1, exclude=[first, "not-an-item"])
    assert less is not None and less["items"].tolist() == full["items"][1:].tolist()
    assert loaded.candidates("v1", "u3", K, exclude=[first]) is None  # K - 1 left
    assert loaded.candidates("v1", "u3", K + 1) is None


@pytest.mark.parametrize(
    ("version", "user", "kwargs"),
    [
        ("v2", "u1", {}),  # another version is served
        ("v1", "stranger", {}),  # not in the table
        ("v1", "u1", {"context": {"hour": 3}}),  # the table has no context
        ("v1", "u1", {"exclude_seen": False}),  # the table excludes seen items
    ],
)
def test_requests_the_table_does_not_answer_go_to_the_model(table, registry, version, user, kwargs):
    assert PrecomputedTable.load(table, registry).candidates(version, user, 3, **kwargs) is None


def test_an_include_seen_table_answers_include_seen_requests(registry_dir, registry, tmp_path):
    out = tmp_path / "seen.parquet"
    args = ("recommend", registry_dir / "v1", "--all-users", "-k", 12, "--include-seen")
    assert _cli(*args, "--out", out).exit_code == 0
    loaded = PrecomputedTable.load(out, registry)
    assert loaded.exclude_seen is False
    assert loaded.candidates("v1", "u1", 12, exclude_seen=False) is not None
    assert loaded.candidates("v1", "u1", 3) is None


def test_a_model_version_column_names_the_version_served(table, registry_dir, tmp_path):
    frame = pd.read_parquet(table).assign(model_version="v1")
    frame.to_parquet(tmp_path / "t.parquet")
    loaded = PrecomputedTable.load(tmp_path / "t.parquet", ModelRegistry(registry_dir))
    assert loaded.version == "v1"  # while v2 is active


def _bad(table: Path, tmp_path: Path, change: Any) -> Path:
    frame = pd.read_parquet(table)
    change(frame)
    path = tmp_path / "bad.parquet"
    frame.to_parquet(path)
    return path


def _set(column: str, row: int, value: Any) -> Any:
    def change(frame: pd.DataFrame) -> None:
        if column not in frame.columns:
            frame[column] = "v1"
        frame[column] = frame[column].astype(object)
        frame.loc[row, column] = value

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.pop("std"), "column(s) std missing (it has user, "
         "item, rank, score, mean, low, high, confidence, cold_start); a precomputed table "
         "needs user, item, mean, std"),
        (_set("item", 4, "i99"), "column item, row 4: item 'i99' is not in the catalogue of "
         "model version 'v1' (12 items)"),
        (_set("item", 3, None), "column item, row 3: missing value"),
        (_set("mean", 2, float("inf")), "column mean, row 2: inf is not a finite number"),
        (_set("std", 5, -0.5), "column std, row 5: -0.5 is negative"),
        (_set("model_version", 7, "v2"), "column model_version, row 7: 'v2' differs from row "
         "0's 'v1'"),
        (lambda f: f.insert(0, "model_version", "v9"), "column model_version, row 0: model "
         "version 'v9' is not in the registry"),
    ],
)  # fmt: skip
def test_bad_tables_fail_naming_file_column_and_row(table, registry, tmp_path, change, message):
    path = _bad(table, tmp_path, change)
    with pytest.raises(ValueError) as info:
        PrecomputedTable.load(path, registry)
    assert str(info.value).startswith(f"{path}: {message}")


def test_a_pair_twice_is_named(table, registry, tmp_path):
    frame = pd.read_parquet(table)
    frame = pd.concat([frame, frame.iloc[[2]]], ignore_index=True)
    frame.to_parquet(tmp_path / "dup.parquet")
    with pytest.raises(ValueError) as info:
        PrecomputedTable.load(tmp_path / "dup.parquet", registry)
    row, user, item = len(frame) - 1, frame["user"][2], frame["item"][2]
    assert str(info.value) == (
        f"{tmp_path / 'dup.parquet'}: columns user, item, row {row}: user {user!r} has item "
        f"{item!r} twice; a table holds each (user, item) once"
    )


def test_missing_and_unreadable_files_are_named(registry, tmp_path):
    with pytest.raises(ValueError, match=f"^{re.escape(str(tmp_path / 'no.parquet'))}: no such"):
        PrecomputedTable.load(tmp_path / "no.parquet", registry)
    (tmp_path / "x.parquet").write_text("user,item\n")
    with pytest.raises(ValueError, match=r"x\.parquet: not a readable Parquet file"):
        PrecomputedTable.load(tmp_path / "x.parquet", registry)


# ----------------------------------------------------------------------------- wager serve


@pytest.fixture(autouse=True)
def _no_env_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WAGER_API_KEYS", raising=False)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--cache-size", "0"], "error: --cache-size must be >= 1 entries, got 0"),
        (["--redis", "http://u:pw@h:1"], "error: --redis http://u:***@h:1: not a Redis URL; "
         "use redis://HOST:PORT/DB"),
        (["--cache-size", "5", "--redis", "redis://h"], "error: give --cache-size N "
         "(in-process) or --redis URL, not both"),
    ],
)  # fmt: skip
def test_bad_cache_flags_are_refused(registry_dir, flags, message):
    result = _cli("serve", registry_dir, *flags)
    assert result.exit_code == 2
    assert _message(result).startswith(message)


def test_a_bad_precomputed_table_stops_the_start(registry_dir, table, tmp_path):
    path = _bad(table, tmp_path, _set("item", 0, "nope"))
    result = _cli("serve", registry_dir, "--precomputed", path)
    assert result.exit_code == 2
    assert _message(result).startswith(
        f"error: --precomputed: {path}: column item, row 0: item 'nope' is not in the catalogue "
        "of model version 'v2'"
    )


def _fake_uvicorn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda service, **kw: seen.update(app=service))
    return seen


@pytest.mark.parametrize("backend", ["lru", "redis"])
def test_serve_wires_the_cache_and_the_table(
    registry_dir, table, tmp_path, monkeypatch, request, backend
):
    seen = _fake_uvicorn(monkeypatch)
    frame = pd.read_parquet(table).assign(model_version="v1")
    frame.to_parquet(tmp_path / "t.parquet")
    if backend == "lru":
        flags = ["--cache-size", "10"]
    else:
        flags = ["--redis", request.getfixturevalue("redis_url")]
    db = f"sqlite:///{tmp_path / 'events.db'}"
    args = ("serve", registry_dir, "--db", db, "--precomputed", tmp_path / "t.parquet")
    result = _cli(*args, *flags)
    assert result.exit_code == 0, result.output
    service = seen["app"].state.service
    assert service.precomputed.version == "v1" and service.precomputed.n_users == 30
    service.cache.put("v1", "u", {"items": np.zeros(1, np.int64), "mean": np.zeros(1),
                                  "std": np.zeros(1)})  # fmt: skip
    client = TestClient(seen["app"])
    assert client.post("/v1/models/v2/activate").status_code == 200
    assert service.cache.get("v1", "u") is None  # v1 is no longer served
    assert f'wager_cache_misses_total{{backend="{backend}"}} 1.0' in client.get("/metrics").text
