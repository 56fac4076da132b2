"""The serving fast path (``wager.recommender.fastpath``) against ``Recommender.recommend``,
the recommend route on a fast-path model, and the group commit of impressions.

The reference of every fast-path slate is the generic path itself, called with the same
policy, seeded state, exclusions and confidence level: same items in the same order, and
mean, std, low, high, confidence and propensity within 1e-5."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from serving.tiny_runs import ratings, train_registry
from wager.cli import app as cli_app
from wager.evaluation import ranking
from wager.policies import Policy, PolicyState, policy_from_name
from wager.recommender import Recommender
from wager.recommender.fastpath import FastPath, FastSlate, top_of_row
from wager.serving.app import create_app
from wager.serving.cache import LRUCache
from wager.serving.events import Impression
from wager.serving.groupcommit import GroupCommitter
from wager.serving.precomputed import PrecomputedTable
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore

COLUMNS = ("mean", "std", "low", "high", "confidence", "propensity")
POLICIES: list[tuple[str, dict[str, float]]] = [
    ("greedy", {}),
    ("ucb", {"beta": 1.0}),
    ("epsilon_greedy", {"epsilon": 0.3}),
    ("thompson", {}),
]


def _generic(
    rec: Recommender, user: str, policy: Policy, seed: int, exclude: Sequence[str], seen: bool
) -> pd.DataFrame:
    items = None
    if exclude:
        items = [i for i in rec.scorer_.catalogue.items if str(i) not in set(exclude)]
    return rec.recommend([user], 4, items=items, exclude_seen=seen, policy=policy,
                         state=PolicyState.seeded(seed), confidence_level=0.8)  # fmt: skip


def _assert_same(frame: pd.DataFrame, slate: FastSlate) -> None:
    assert [str(i) for i in frame["item"]] == [str(i) for i in slate.items]
    for column in COLUMNS:
        np.testing.assert_allclose(getattr(slate, column), frame[column].to_numpy(float),
                                   rtol=0, atol=1e-5, err_msg=column)  # fmt: skip


@pytest.mark.parametrize(("name", "params"), POLICIES)
@pytest.mark.parametrize("user", ["u3", "a-new-user"])
@pytest.mark.parametrize(("exclude", "seen"), [((), True), (("i0", "i5", "nope"), False)])
def test_fast_path_slate_equals_recommend(
    rec: Recommender,
    name: str,
    params: dict[str, float],
    user: str,
    exclude: tuple[str, ...],
    seen: bool,
) -> None:
    fast = FastPath.build(rec)
    assert fast is not None, FastPath.unsupported(rec)
    policy = policy_from_name(name, **params)
    for seed in (0, 1, 2):
        frame = _generic(rec, user, policy, seed, exclude, seen)
        state = PolicyState.seeded(seed)
        slate = fast.recommend(user, 4, policy=policy, state=state, exclude=exclude,
                               exclude_seen=seen, confidence_level=0.8)  # fmt: skip
        assert slate is not None
        _assert_same(frame, slate)
        assert slate.policy == frame.attrs["policy"]["name"]
        assert slate.known == (user == "u3")
        assert not set(exclude) & {str(i) for i in slate.items}


def test_exclude_seen_drops_the_users_training_items(rec: Recommender) -> None:
    fast = FastPath.build(rec)
    assert fast is not None
    rated = set(ratings().query("user_id == 'u3'")["item_id"])  # its 5 of the 12 items
    slate = fast.recommend("u3", 12, policy=policy_from_name("greedy"),
                           state=PolicyState.seeded(0))  # fmt: skip
    assert slate is not None
    shown = {str(i) for i in slate.items}
    assert not shown & rated and len(shown) == 12 - len(rated)


def test_scored_candidates_round_trip_through_the_cache_dict(rec: Recommender) -> None:
    """to_dict() holds int64 positions and float64 mean / std; the slate picked from the
    dict (greedy and UCB read mean and std only) equals the one picked from the scores."""
    fast = FastPath.build(rec)
    assert fast is not None
    scored = fast.score("u3", 100)
    assert scored is not None
    d = scored.to_dict()
    assert set(d) == {"items", "mean", "std"}
    assert d["items"].dtype == np.int64 and d["mean"].dtype == np.float64
    assert d["std"].dtype == np.float64 and d["mean"].shape == d["items"].shape
    back = fast.from_dict(d, known=True)
    for name, params in POLICIES[:2]:
        policy = policy_from_name(name, **params)
        a = fast.select(scored, 4, policy, PolicyState.seeded(0), 0.8)
        b = fast.select(back, 4, policy, PolicyState.seeded(0), 0.8)
        assert list(a.items) == list(b.items)
        for column in COLUMNS:
            np.testing.assert_allclose(getattr(b, column), getattr(a, column), atol=1e-6)


def test_a_model_without_fast_path_falls_back_and_still_answers(
    tmp_path: Path, sqlite_store: EventStore
) -> None:
    """cold_start = "population" (the tiny serving runs) is not representable: the registry
    builds no fast path and the route answers through Recommender.recommend."""
    registry = ModelRegistry(train_registry(tmp_path))
    rec = registry.current().recommender
    assert FastPath.unsupported(rec) == 'cold_start = "population"'
    assert registry.fast_path(rec) is None
    client = TestClient(create_app(registry, sqlite_store, None))
    r = client.post("/v1/recommend", json={"user_id": "u1", "k": 3, "exclude_seen": False})
    assert r.status_code == 200, r.text
    frame = rec.recommend(["u1"], 3, exclude_seen=False, policy=policy_from_name("greedy"),
                          state=PolicyState.seeded(0))  # fmt: skip
    assert [i["item_id"] for i in r.json()["items"]] == [str(i) for i in frame["item"]]


def test_route_serves_the_fast_path_slate_and_logs_it(
    fast_registry: Path, rec: Recommender, sqlite_store: EventStore
) -> None:
    registry = ModelRegistry(fast_registry)
    assert registry.fast_path(registry.current().recommender) is not None
    client = TestClient(create_app(registry, sqlite_store, None))
    for user in ("u3", "a-new-user"):
        body = {"user_id": user, "k": 4, "policy": "ucb", "beta": 1.0, "exclude": ["i0"],
                "confidence_level": 0.8}  # fmt: skip
        r = client.post("/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        out = r.json()
        frame = _generic(rec, user, policy_from_name("ucb", beta=1.0), 0, ["i0"], True)
        assert [i["item_id"] for i in out["items"]] == [str(i) for i in frame["item"]]
        for column in COLUMNS:
            got = [i[column] for i in out["items"]]
            np.testing.assert_allclose(got, frame[column].to_numpy(float), atol=1e-5)
        # UCB's score is mean + beta std
        for item in out["items"]:
            assert item["score"] == pytest.approx(item["mean"] + item["std"], abs=1e-9)
        assert out["cold_start"] == (user != "u3") and out["policy"] == "ucb(beta=1.0)"
        logged = sqlite_store.impressions_frame().query(f"request_id == '{out['request_id']}'")
        assert logged["item_id"].tolist() == [i["item_id"] for i in out["items"]]


def _metric(client: TestClient, name: str) -> float:
    """The value of one unlabelled-by-us series in /metrics (backend="lru")."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_route_with_a_cache_serves_the_same_slate_from_the_cached_candidates(
    fast_registry: Path, rec: Recommender, sqlite_store: EventStore
) -> None:
    """Miss then hit: both answers equal the generic path's greedy slate (items, mean, std,
    interval, confidence), and the cache counts one miss and one hit per user."""
    registry = ModelRegistry(fast_registry)
    client = TestClient(create_app(registry, sqlite_store, None, cache=LRUCache(100)))
    greedy = policy_from_name("greedy")
    for n, user in enumerate(("u3", "a-new-user")):
        frame = _generic(rec, user, greedy, 0, ["i0"], True)
        for _ in range(2):
            body = {"user_id": user, "k": 4, "exclude": ["i0"], "confidence_level": 0.8}
            out = client.post("/v1/recommend", json=body).json()
            assert [i["item_id"] for i in out["items"]] == [str(i) for i in frame["item"]]
            for column in COLUMNS:
                got = [i[column] for i in out["items"]]
                np.testing.assert_allclose(got, frame[column].to_numpy(float), atol=1e-5)
            assert out["cold_start"] == (user != "u3")
        assert _metric(client, "wager_cache_misses_total") == n + 1
        assert _metric(client, "wager_cache_hits_total") == n + 1
    # another exclusion is another entry: a miss, and i1 is never served
    out = client.post("/v1/recommend", json={"user_id": "u3", "k": 4, "exclude": ["i1"]}).json()
    assert "i1" not in [i["item_id"] for i in out["items"]]
    assert _metric(client, "wager_cache_misses_total") == 3


def test_route_serves_a_precomputed_users_slate_from_the_table(
    fast_registry: Path, sqlite_store: EventStore, tmp_path: Path
) -> None:
    """A user in the table gets the table's rows (greedy: its first k in rank order, with its
    means) without scoring: the cache sees no request; a user absent from it goes to the
    model (and the cache)."""
    table = tmp_path / "top.parquet"
    result = CliRunner().invoke(
        cli_app, ["recommend", str(fast_registry / "v1"), "--all-users", "-k", "8",
                  "--out", str(table)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    registry = ModelRegistry(fast_registry)
    loaded = PrecomputedTable.load(table, registry)
    client = TestClient(create_app(registry, sqlite_store, None, cache=LRUCache(10),
                                   precomputed=loaded))  # fmt: skip
    rows = pd.read_parquet(table).query("user == 'u3'").sort_values("rank")
    out = client.post("/v1/recommend", json={"user_id": "u3", "k": 4}).json()
    assert [i["item_id"] for i in out["items"]] == rows["item"].astype(str).tolist()[:4]
    np.testing.assert_allclose([i["mean"] for i in out["items"]], rows["mean"][:4], atol=1e-6)
    assert _metric(client, "wager_cache_misses_total") == 0
    client.post("/v1/recommend", json={"user_id": "someone-new", "k": 4})
    assert _metric(client, "wager_cache_misses_total") == 1


# ----------------------------------------------------------------------------- group commit


def _rows(request_id: str, n: int) -> list[Impression]:
    return [
        Impression(request_id, "u1", f"i{i}", i + 1, 1.0, 1.0, 0.1, "greedy", 1.0, "", "v1", 1e9)
        for i in range(n)
    ]


class _SlowLog:
    """An EventLog recording each transaction's size; each commit takes 20 ms, so the
    requests arriving meanwhile queue up for the next group."""

    def __init__(self, fail: bool = False) -> None:
        self.sizes: list[int] = []
        self.fail = fail
        self.started = threading.Event()

    def log_impressions(self, rows: Sequence[Impression]) -> None:
        self.started.set()
        threading.Event().wait(0.02)
        self.sizes.append(len(rows))
        if self.fail:
            raise RuntimeError("disk full")

    def add_feedback(self, events: Sequence[Any]) -> Any:
        raise NotImplementedError

    def ping(self) -> bool:
        return True


def test_group_commit_commits_concurrent_batches_together(sqlite_store: EventStore) -> None:
    slow = _SlowLog()
    committer = GroupCommitter(slow)
    first = committer.submit(_rows("r0", 3))
    slow.started.wait(5)
    # 10 batches of 3 rows arrive while the first transaction commits: one group of 30
    futures = [committer.submit(_rows(f"r{n}", 3)) for n in range(1, 11)]
    for f in [first, *futures]:
        assert f.result(timeout=10) is None
    assert slow.sizes == [3, 30]
    # and against the real store: every row stored once
    real = GroupCommitter(sqlite_store)
    futures = [real.submit(_rows(f"s{n}", 5)) for n in range(20)]
    for f in futures:
        f.result(timeout=30)
    stored = sqlite_store.impressions_frame()
    assert len(stored) == 100 and stored[["request_id", "item_id"]].duplicated().sum() == 0


def test_a_failed_group_commit_fails_every_request_of_the_group() -> None:
    slow = _SlowLog(fail=True)
    committer = GroupCommitter(slow)
    first = committer.submit(_rows("r0", 1))
    slow.started.wait(5)
    rest = [committer.submit(_rows(f"r{n}", 2)) for n in range(1, 4)]
    for f in [first, *rest]:
        with pytest.raises(RuntimeError, match="disk full"):
            f.result(timeout=10)
    assert slow.sizes == [1, 6]


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.sampled_from([-np.inf, -1.0, 0.0, 0.5, 0.5, 2.0]), min_size=1,
                    max_size=40),
    n=st.integers(1, 45),
)  # fmt: skip
def test_top_of_row_equals_top_k_from_scores(values: list[float], n: int) -> None:
    """Ties (many equal scores) and -inf entries: the same positions in the same order as the
    batch top-k of the evaluation module, less its -1 slots."""
    row = np.asarray(values, dtype=np.float32)
    reference = ranking.top_k_from_scores(torch.as_tensor(row[None, :]), n)[0]
    np.testing.assert_array_equal(top_of_row(row, n), reference[reference >= 0])
