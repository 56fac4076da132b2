"""Batched fast-path serving: ``FastPath.score_many`` / ``select_many`` against the one-user
calls, and the ``SlateBatcher`` that groups the requests arriving together.

The reference of a batched result is the same user's own call (itself checked against
``Recommender.recommend`` in ``test_fastpath.py``): same candidates in the same order and,
for the deterministic policies, the same slate, within float rounding of the products."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.test_fastpath import COLUMNS, POLICIES
from wager.policies import PolicyState, policy_from_name
from wager.recommender import Recommender, fastpath
from wager.recommender.fastpath import Ask, FastPath
from wager.serving.app import create_app
from wager.serving.batching import SlateBatcher, SlateJob
from wager.serving.cache import LRUCache
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore

ASKS = [
    Ask("u3", 6),
    Ask("u1", 6, exclude_seen=False, exclude=("i0", "i1")),
    Ask("a-new-user", 6),
    Ask("u3", 6, exclude=("i2",)),  # the same user twice, other exclusions
    Ask("another-new", 3, exclude_seen=False),
]


def _fast(rec: Recommender) -> FastPath:
    fast = FastPath.build(rec)
    assert fast is not None, FastPath.unsupported(rec)
    return fast


def test_score_many_equals_each_users_own_score(rec: Recommender) -> None:
    fast = _fast(rec)
    together = fast.score_many(ASKS)
    for ask, got in zip(ASKS, together, strict=True):
        alone = fast.score(ask.user_id, ask.n_candidates, exclude_seen=ask.exclude_seen,
                           exclude=ask.exclude)  # fmt: skip
        assert got is not None and alone is not None
        assert got.items.tolist() == alone.items.tolist()
        assert got.known == alone.known == ask.user_id.startswith("u")
        a, b = got.prediction, alone.prediction
        np.testing.assert_allclose(a.mean.numpy(), b.mean.numpy(), rtol=0, atol=1e-5)
        assert a.std is not None and b.std is not None
        np.testing.assert_allclose(a.std.numpy(), b.std.numpy(), rtol=0, atol=1e-5)
        iv_a, iv_b = a.interval(0.8), b.interval(0.8)
        np.testing.assert_allclose(iv_a.low.numpy(), iv_b.low.numpy(), rtol=0, atol=1e-5)
        assert not set(ask.exclude) & {str(i) for i in fast.catalogue.items[got.items]}


def test_score_many_in_chunks_equals_one_chunk(
    rec: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalogue too large for one (M, B, I) product is scored a user at a time: same
    candidates and predictions."""
    fast = _fast(rec)
    whole = fast.score_many(ASKS)
    monkeypatch.setattr(fastpath, "CHUNK_ENTRIES", 1)
    chunked = fast.score_many(ASKS)
    for a, b in zip(whole, chunked, strict=True):
        assert a is not None and b is not None
        assert a.items.tolist() == b.items.tolist()
        np.testing.assert_allclose(a.prediction.mean.numpy(), b.prediction.mean.numpy(),
                                   rtol=0, atol=1e-6)  # fmt: skip


def test_users_scored_together_share_one_prediction_sliced_on_demand(rec: Recommender) -> None:
    fast = _fast(rec)
    scored = [s for s in fast.score_many(ASKS) if s is not None]
    joined = scored[0].joined
    assert all(s.joined is joined for s in scored)
    assert [s.start for s in scored] == list(np.cumsum([0] + [len(s.items) for s in scored])[:-1])
    assert sum(len(s.items) for s in scored) == len(joined.mean)
    for one in scored:
        rows = slice(one.start, one.start + len(one.items))
        assert one.prediction.mean.tolist() == joined.mean[rows].tolist()
        assert one.to_dict()["mean"].tolist() == pytest.approx(joined.mean[rows].tolist())


def test_from_dicts_equals_from_dict_one_by_one(rec: Recommender) -> None:
    fast = _fast(rec)
    scored = [s for s in fast.score_many(ASKS) if s is not None]
    dicts = [s.to_dict() for s in scored]
    known = [s.known for s in scored]
    together = fast.from_dicts(dicts, known)
    for d, flag, got in zip(dicts, known, together, strict=True):
        alone = fast.from_dict(d, flag)
        assert got.items.tolist() == alone.items.tolist() and got.known == alone.known
        a, b = got.prediction, alone.prediction
        assert type(a) is type(b)
        np.testing.assert_array_equal(a.mean.numpy(), b.mean.numpy())
        assert a.std is not None and b.std is not None
        np.testing.assert_array_equal(a.std.numpy(), b.std.numpy())
        iv_a, iv_b = a.interval(0.8), b.interval(0.8)
        np.testing.assert_allclose(iv_a.low.numpy(), iv_b.low.numpy(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(iv_a.high.numpy(), iv_b.high.numpy(), rtol=0, atol=1e-6)


def test_select_many_of_users_from_different_batches_in_any_order(rec: Recommender) -> None:
    """Candidates scored in separate calls (or from cache entries) and picked together, out
    of their scoring order: each slate still equals the user's own."""
    fast = _fast(rec)
    policy = policy_from_name("ucb", beta=1.0)
    first = fast.score_many(ASKS[:2])
    second = fast.from_dicts([s.to_dict() for s in fast.score_many(ASKS[2:4])], [False] * 2)
    scored = [second[1], first[1], second[0], first[0]]
    assert all(s is not None for s in scored)
    together = fast.select_many(scored, 4, policy, PolicyState.seeded(0), 0.8)  # type: ignore[arg-type]
    for one, got in zip(scored, together, strict=True):
        alone = fast.select(one, 4, policy, PolicyState.seeded(0), 0.8)  # type: ignore[arg-type]
        assert got.items.tolist() == alone.items.tolist() and got.known == alone.known
        for column in COLUMNS:
            np.testing.assert_allclose(getattr(got, column), getattr(alone, column), atol=1e-6)


def test_cached_candidates_keep_the_users_known_flag(rec: Recommender) -> None:
    """A round served from cache entries (hits, and misses stored then served as entries)
    flags the cold-start user as unknown and the known one as known."""
    fast = _fast(rec)
    batcher = SlateBatcher(lambda: 7, cache=LRUCache(100))
    jobs = [_job(rec, "u3"), _job(rec, "a-new-user")]
    first = batcher.serve(jobs)  # misses: computed, stored, served as entries
    again = batcher.serve(jobs)  # hits
    for slates in (first, again):
        assert [s.known for s in slates] == [True, False]  # type: ignore[union-attr]
    assert fast.known("u3") and not fast.known("a-new-user")
    for a, b in zip(first, again, strict=True):
        assert a is not None and b is not None
        assert a.items.tolist() == b.items.tolist()


def test_score_many_of_nothing_and_of_an_all_excluded_user(rec: Recommender) -> None:
    fast = _fast(rec)
    assert fast.score_many([]) == []
    everything = tuple(str(i) for i in fast.catalogue.items)
    out = fast.score_many([Ask("u3", 4, exclude=everything), Ask("u3", 4)])
    assert out[0] is None and out[1] is not None and len(out[1].items) == 4


@pytest.mark.parametrize(("name", "params"), POLICIES[:2])  # greedy and UCB: deterministic
def test_select_many_equals_each_users_own_select(
    rec: Recommender, name: str, params: dict[str, float]
) -> None:
    fast = _fast(rec)
    policy = policy_from_name(name, **params)
    scored = [s for s in fast.score_many(ASKS[:4]) if s is not None]
    together = fast.select_many(scored, 4, policy, PolicyState.seeded(0), 0.8)
    for one, got in zip(scored, together, strict=True):
        alone = fast.select(one, 4, policy, PolicyState.seeded(0), 0.8)
        assert got.items.tolist() == alone.items.tolist() and got.known == alone.known
        for column in COLUMNS:
            np.testing.assert_allclose(getattr(got, column), getattr(alone, column), atol=1e-6)


@pytest.mark.parametrize(("name", "params"), POLICIES[2:])  # epsilon-greedy and Thompson
def test_select_many_of_a_random_policy_gives_valid_slates(
    rec: Recommender, name: str, params: dict[str, float]
) -> None:
    """Several users picked at once, candidate lists of different lengths among them (the
    5th has 3): each slate is k distinct candidates with propensities in (0, 1]."""
    fast = _fast(rec)
    scored = [s for s in fast.score_many(ASKS) if s is not None]
    slates = fast.select_many(scored, 3, policy_from_name(name, **params),
                              PolicyState.seeded(1), 0.8)  # fmt: skip
    for one, slate in zip(scored, slates, strict=True):
        assert len(set(slate.positions.tolist())) == len(slate.positions) == 3
        assert set(slate.positions.tolist()) <= set(one.items.tolist())
        assert ((slate.propensity > 0) & (slate.propensity <= 1)).all()


def _job(rec: Recommender, user: str, **kw: object) -> SlateJob:
    fields = {"k": 4, "policy": policy_from_name("greedy"), **kw}
    return SlateJob(_fast(rec), "v1", user, **fields)  # type: ignore[arg-type]


def test_batcher_serves_concurrent_requests_in_one_round(rec: Recommender) -> None:
    """Requests ready together become one round; each gets its own slate; a request with a
    context gets None (the route then calls the model)."""
    batcher = SlateBatcher(lambda: 7)
    fast = _fast(rec)
    jobs = [_job(rec, u) for u in ("u1", "u3", "a-new-user")] + [_job(rec, "u1", has_context=True)]

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.slate(j) for j in jobs))

    slates = asyncio.run(main())
    assert batcher.batches == 1 and batcher.jobs == 4
    assert slates[3] is None
    for job, slate in zip(jobs[:3], slates[:3], strict=True):
        alone = fast.recommend(job.user_id, 4, policy=job.policy, state=PolicyState.seeded(0))
        assert alone is not None and slate is not None
        assert slate.items.tolist() == alone.items.tolist()  # type: ignore[attr-defined]


def test_a_failed_round_fails_its_requests_only(
    rec: Recommender, monkeypatch: pytest.MonkeyPatch
) -> None:
    batcher = SlateBatcher(lambda: 7)
    real = batcher.serve
    calls = {"n": 0}

    def flaky(jobs: list[SlateJob]) -> list[object]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("scoring broke")
        return real(jobs)  # type: ignore[return-value]

    monkeypatch.setattr(batcher, "serve", flaky)

    async def main() -> tuple[list[object], object]:
        first = await asyncio.gather(*(batcher.slate(_job(rec, u)) for u in ("u1", "u3")),
                                     return_exceptions=True)  # fmt: skip
        return first, await batcher.slate(_job(rec, "u1"))

    first, later = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "scoring broke" in str(e) for e in first)
    assert later is not None and len(later.items) == 4  # type: ignore[attr-defined]


def test_max_batch_splits_a_burst_into_rounds(rec: Recommender) -> None:
    batcher = SlateBatcher(lambda: 7, max_batch=2)
    with pytest.raises(ValueError, match="max_batch"):
        SlateBatcher(lambda: 7, max_batch=0)

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.slate(_job(rec, f"u{n}")) for n in range(5)))

    slates = asyncio.run(main())
    assert batcher.batches == 3 and batcher.jobs == 5 and all(s is not None for s in slates)


def test_route_answers_concurrent_requests_like_single_ones(
    fast_registry: Path, rec: Recommender, sqlite_store: EventStore
) -> None:
    """Through the app: concurrent UCB requests (batched) give each user the slate a lone
    request gets, and every served item is logged."""
    import httpx

    app = create_app(ModelRegistry(fast_registry), sqlite_store, None)
    users = ["u1", "u2", "u3", "new-1", "new-2"]
    body = {"k": 4, "policy": "ucb", "beta": 1.0}

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await asyncio.gather(
                *(client.post("/v1/recommend", json={"user_id": u, **body}) for u in users)
            )

    responses = asyncio.run(main())
    batcher = app.state.service.batcher
    assert batcher.batches < len(users)  # at least two requests shared a round
    single = TestClient(app)
    for user, r in zip(users, responses, strict=True):
        assert r.status_code == 200, r.text
        alone = single.post("/v1/recommend", json={"user_id": user, **body}).json()
        got = r.json()
        assert [i["item_id"] for i in got["items"]] == [i["item_id"] for i in alone["items"]]
        for column in COLUMNS:
            np.testing.assert_allclose([i[column] for i in got["items"]],
                                       [i[column] for i in alone["items"]], atol=1e-5)  # fmt: skip
        logged = sqlite_store.impressions_frame().query(f"request_id == '{got['request_id']}'")
        assert logged["item_id"].tolist() == [i["item_id"] for i in got["items"]]


def test_settle_heap_freezes_a_serving_process_and_activation_settles_it_again(
    fast_registry: Path, tmp_path: Path
) -> None:
    """Process-wide, so in a child process: a plain app (start-up and activation) leaves the
    collector alone; a settle=True app's start-up freezes the loaded objects and sets the
    young threshold to 20,000, and an activation freezes again (the count stays > 0)."""
    code = f"""
import gc, json
from fastapi.testclient import TestClient
from wager.serving.app import create_app
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore
registry = ModelRegistry({str(fast_registry)!r})
store = EventStore("sqlite:///{tmp_path / "events.db"}")
with TestClient(create_app(registry, store, None)) as plain:  # a library user's app
    assert plain.post("/v1/models/v1/activate").status_code == 200
before = gc.get_freeze_count()
with TestClient(create_app(registry, store, None, settle=True)) as client:
    settled = gc.get_freeze_count()
    assert client.post("/v1/models/v1/activate").status_code == 200
print(json.dumps([before, settled, gc.get_freeze_count(), gc.get_threshold()[0]]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    before, settled, after, threshold = json.loads(done.stdout.strip().splitlines()[-1])
    assert before == 0 and settled > 10_000 and after > 10_000 and threshold == 20_000


def test_a_seeded_app_repeats_its_random_slates(fast_registry: Path, tmp_path: Path) -> None:
    """seed= makes one client's sequence of random (here epsilon-greedy) slates repeatable
    (the closed-loop tests rely on it)."""

    def run(seed: int | None, name: str) -> list[list[str]]:
        store = EventStore(f"sqlite:///{tmp_path / f'{name}.db'}")
        try:
            client = TestClient(create_app(ModelRegistry(fast_registry), store, None, seed=seed))
            out = []
            for n in range(6):
                body = {"user_id": f"u{n}", "k": 4, "policy": "epsilon_greedy", "epsilon": 0.5}
                out.append(
                    [i["item_id"] for i in client.post("/v1/recommend", json=body).json()["items"]]
                )
            return out
        finally:
            store.close()

    first, again, other = run(11, "a"), run(11, "b"), run(12, "c")
    assert first == again
    assert first != other  # 6 slates of 4 with epsilon 0.5 over 12 items: equal by chance ~never
