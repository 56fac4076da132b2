"""The candidate caches: one behaviour suite run on both backends (the in-process LRU and a
real ``redis-server`` started by the ``redis_url`` fixture), then what is particular to each
(LRU eviction order, a Redis that goes away), the key function and the app's wiring
(counters on ``/metrics``, invalidation on activation)."""

from __future__ import annotations

import hashlib
import io
import pickle
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from serving.tiny_runs import train_registry
from wager.serving.app import create_app
from wager.serving.cache import (
    CandidateCache,
    LRUCache,
    RedisCache,
    cached_candidates,
    decode_candidates,
    encode_candidates,
    user_key,
)
from wager.serving.experiments import Experiment
from wager.serving.registry import ModelRegistry
from wager.serving.store import EventStore

Factory = Callable[..., CandidateCache]


def _candidates(n: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "items": rng.permutation(1000)[:n].astype(np.int64),
        "mean": rng.normal(size=n),
        "std": rng.gamma(2.0, size=n),
    }


def _count(registry: CollectorRegistry, what: str, backend: str) -> float:
    value = registry.get_sample_value(f"wager_cache_{what}_total", {"backend": backend})
    return 0.0 if value is None else value


@pytest.fixture(params=["lru", "redis"])
def make_cache(request: pytest.FixtureRequest) -> Factory:
    """Builds a cache of the parametrised backend (its counters on a fresh registry, in the
    attribute ``test_registry``): ``make_cache(ttl_s=None, prefix="wager:")``."""
    url = request.getfixturevalue("redis_url") if request.param == "redis" else ""

    def make(ttl_s: float | None = None, prefix: str = "wager:") -> CandidateCache:
        cache: CandidateCache
        if request.param == "lru":
            cache = LRUCache(100, ttl_s=ttl_s)
        else:
            cache = RedisCache(url, ttl_s=ttl_s or 3600.0, prefix=prefix)
        registry = CollectorRegistry()
        cache.bind_metrics(registry)
        cache.test_registry = registry  # type: ignore[attr-defined]
        return cache

    return make


# ----------------------------------------------------------------------------- both backends


def test_round_trip_is_exact_and_read_only(make_cache):
    cache = make_cache()
    values = _candidates(7)
    values["mean"][0], values["std"][1] = -0.0, np.nan  # undefined std of a point model
    values["mean"][2], values["items"][3] = 1e-310, 2**62  # a subnormal, a huge position
    cache.put("v1", "k", values)
    got = cache.get("v1", "k")
    assert got is not None and set(got) == {"items", "mean", "std"}
    for name in ("items", "mean", "std"):
        assert got[name].dtype == values[name].dtype and got[name].shape == (7,)
        assert got[name].tobytes() == values[name].tobytes()  # bit for bit (NaN, -0.0)
        assert not got[name].flags.writeable
    values["mean"][4] = 99.0  # the caller's arrays are not the cached ones
    assert cache.get("v1", "k")["mean"][4] != 99.0  # type: ignore[index]
    empty = {"items": np.zeros(0, np.int64), "mean": np.zeros(0), "std": np.zeros(0)}
    cache.put("v1", "empty", empty)
    assert cache.get("v1", "empty")["items"].shape == (0,)  # type: ignore[index]


def test_hits_and_misses_are_counted(make_cache):
    cache = make_cache()
    backend, registry = cache.backend, cache.test_registry
    assert cache.get("v1", "k") is None
    cache.put("v1", "k", _candidates())
    assert cache.get("v1", "k") is not None
    assert cache.get("v1", "k") is not None
    assert _count(registry, "misses", backend) == 1.0
    assert _count(registry, "hits", backend) == 2.0
    assert _count(registry, "errors", backend) == 0.0


def test_entries_are_keyed_by_version_and_user_key(make_cache):
    cache = make_cache()
    a, b = _candidates(seed=1), _candidates(seed=2)
    cache.put("v1", "u", a)
    cache.put("v2", "u", b)
    assert cache.get("v1", "u")["mean"].tolist() == a["mean"].tolist()  # type: ignore[index]
    assert cache.get("v2", "u")["mean"].tolist() == b["mean"].tolist()  # type: ignore[index]
    assert cache.get("v3", "u") is None and cache.get("v1", "other") is None
    # a version name holding ':' or '*' never reaches another version's entries
    cache.put("v:1", "u", b)
    cache.invalidate_except("v:1")
    assert cache.get("v1", "u") is None and cache.get("v:1", "u") is not None


def test_invalidate_except_drops_other_versions_only(make_cache):
    cache = make_cache()
    for version in ("v1", "v2", "v3"):
        for user in ("a", "b"):
            cache.put(version, user, _candidates())
    cache.invalidate_except("v2", "v3")
    assert [cache.get("v1", u) for u in ("a", "b")] == [None, None]
    assert all(cache.get(v, u) is not None for v in ("v2", "v3") for u in ("a", "b"))


def test_entries_expire_after_the_ttl(make_cache):
    cache = make_cache(ttl_s=0.3)
    cache.put("v1", "k", _candidates())
    assert cache.get("v1", "k") is not None
    time.sleep(0.6)
    assert cache.get("v1", "k") is None


def test_values_are_never_pickled(make_cache):
    cache = make_cache()
    objects = {"items": np.array([1, "x"], dtype=object), "mean": np.zeros(2), "std": np.zeros(2)}
    with pytest.raises(ValueError, match=r"candidates\['items'\] must be a 1-d int64 array"):
        cache.put("v1", "k", objects)
    with pytest.raises(ValueError, match=r"candidates\['mean'\] must be a 1-d float64 array"):
        cache.put("v1", "k", {**_candidates(3), "mean": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="must share one shape"):
        cache.put("v1", "k", {**_candidates(3), "std": np.zeros(4)})
    with pytest.raises(ValueError, match="exactly the keys items, mean, std"):
        cache.put("v1", "k", {"items": np.zeros(1, np.int64), "mean": np.zeros(1)})
    assert cache.get("v1", "k") is None


def test_cached_candidates_computes_once_per_key(make_cache):
    cache = make_cache()
    calls: list[int] = []

    def compute() -> dict[str, np.ndarray]:
        calls.append(1)
        return _candidates(4)

    first = cached_candidates(cache, "v1", "k", compute)
    second = cached_candidates(cache, "v1", "k", compute)
    assert len(calls) == 1 and first["items"].tolist() == second["items"].tolist()
    cached_candidates(cache, "v2", "k", compute)
    assert len(calls) == 2
    cached_candidates(None, "v1", "k", compute)  # no cache: computed every time
    assert len(calls) == 3


# ----------------------------------------------------------------------------- the codec


def test_encoding_is_three_npy_records_without_pickle():
    values = _candidates(3)
    data = encode_candidates(values)
    buffer = io.BytesIO(data)
    for name in ("items", "mean", "std"):  # read back independently with numpy's own reader
        np.testing.assert_array_equal(np.load(buffer, allow_pickle=False), values[name])
    assert buffer.tell() == len(data)
    got = decode_candidates(data)
    np.testing.assert_array_equal(got["std"], values["std"])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pickle.dumps(_candidates(2)), "not a cached candidates entry"),
        (b"", "not a cached candidates entry"),
        (encode_candidates(_candidates(2)) + b"x", "1 bytes after the arrays"),
    ],
)
def test_decoding_refuses_anything_but_the_three_records(data, message):
    with pytest.raises(ValueError, match=message):
        decode_candidates(data)


def test_decoding_refuses_a_pickled_object_array():
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"not a cached candidates entry.*allow_pickle=False"):
        decode_candidates(buffer.getvalue() * 3)


# ----------------------------------------------------------------------------- LRU


def test_lru_evicts_the_least_recently_used_entry():
    cache = LRUCache(3)
    for key in ("a", "b", "c"):
        cache.put("v1", key, _candidates())
    assert cache.get("v1", "a") is not None  # a is now the most recently used
    cache.put("v1", "d", _candidates())  # evicts b
    assert cache.get("v1", "b") is None
    cache.put("v1", "c", _candidates())  # re-putting c makes it recent: next evicted is a
    cache.put("v1", "e", _candidates())
    assert [cache.get("v1", k) is not None for k in "acde"] == [False, True, True, True]
    assert len(cache) == 3


def test_lru_is_bounded_under_concurrent_use():
    cache = LRUCache(50)
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for n in range(400):
                key = str((offset + n) % 120)
                if cache.get("v1", key) is None:
                    cache.put("v1", key, _candidates(3, seed=n))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t * 7,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(cache) == 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_entries": 0}, "max_entries >= 1, got 0"),
        ({"max_entries": 5, "ttl_s": 0.0}, "ttl_s must be > 0 seconds or None, got 0.0"),
    ],
)
def test_lru_refuses_bad_sizes(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LRUCache(**kwargs)


# ----------------------------------------------------------------------------- Redis


def test_redis_keys_carry_the_prefix_and_a_ttl(redis_url):
    cache = RedisCache(redis_url, ttl_s=120.0, prefix="svc-a:")
    cache.put("v1", "k", _candidates())
    client = redis.Redis.from_url(redis_url)
    assert [k.decode() for k in client.keys("*")] == ["svc-a:c:v1:k"]
    assert 0 < client.pttl("svc-a:c:v1:k") <= 120_000


def test_redis_services_sharing_a_server_keep_their_entries(redis_url):
    a = RedisCache(redis_url, prefix="wager:a:")
    b = RedisCache(redis_url, prefix="wager:b:")
    a.put("v1", "k", _candidates(seed=1))
    b.put("v1", "k", _candidates(seed=2))
    a.invalidate_except("v2")  # a activates v2: b's v1 entries stay
    assert a.get("v1", "k") is None
    assert b.get("v1", "k")["mean"].tolist() == _candidates(seed=2)["mean"].tolist()  # type: ignore[index]


def test_redis_entry_that_is_a_pickle_is_a_counted_error_not_an_unpickle(redis_url):
    cache = RedisCache(redis_url)
    registry = CollectorRegistry()
    cache.bind_metrics(registry)
    redis.Redis.from_url(redis_url).set("wager:c:v1:k", pickle.dumps(_candidates()))
    assert cache.get("v1", "k") is None
    assert _count(registry, "errors", "redis") == 1.0
    assert _count(registry, "misses", "redis") == 1.0


def test_redis_that_goes_away_is_a_miss_with_the_error_counted(redis_server):
    cache = RedisCache(redis_server.url, down_for_s=0.0)
    registry = CollectorRegistry()
    cache.bind_metrics(registry)
    cache.put("v1", "k", _candidates())
    assert cache.get("v1", "k") is not None
    redis_server.stop()
    start = time.perf_counter()
    assert cache.get("v1", "k") is None
    cache.put("v1", "k", _candidates())  # dropped, not raised
    cache.invalidate_except("v2")  # likewise
    computed = cached_candidates(cache, "v1", "k", lambda: _candidates(2))
    assert time.perf_counter() - start < 2.0
    assert computed["items"].tolist() == _candidates(2)["items"].tolist()
    assert _count(registry, "errors", "redis") == 5.0  # get, put, invalidate, get, put
    assert _count(registry, "misses", "redis") == 2.0
    assert _count(registry, "hits", "redis") == 1.0


def test_redis_is_skipped_for_a_while_after_an_error(redis_server):
    cache = RedisCache(redis_server.url, down_for_s=60.0)
    registry = CollectorRegistry()
    cache.bind_metrics(registry)
    redis_server.stop()
    assert cache.get("v1", "k") is None and cache.get("v1", "k") is None
    assert _count(registry, "errors", "redis") == 1.0  # the second lookup did not try
    assert _count(registry, "misses", "redis") == 2.0


def test_redis_refuses_a_url_of_another_scheme():
    with pytest.raises(ValueError, match=r"--redis 'http://x' is not a Redis URL"):
        RedisCache("http://x")


# ----------------------------------------------------------------------------- user key


def test_user_key_is_the_sha256_of_the_canonical_request():
    text = '{"context":{},"exclude_seen":true,"params":{},"user":"42"}'
    assert user_key("42") == hashlib.sha256(text.encode()).hexdigest()
    assert user_key("42", None) == user_key("42", {})
    assert user_key("42", {"a": 1, "b": "x"}) == user_key("42", {"b": "x", "a": 1})
    keys = {
        user_key("42"),
        user_key("43"),
        user_key("42", {"a": 1}),
        user_key("42", {"a": 2}),
        user_key("42", exclude_seen=False),
        user_key("42", candidates=100),
    }
    assert len(keys) == 6


# ----------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_registry(tmp_path_factory.mktemp("cache"), ("v1", "v2", "v3"))


def test_activation_drops_entries_of_versions_no_longer_served(
    registry_dir, sqlite_store: EventStore, tmp_path: Path
):
    toml = tmp_path / "exp.toml"
    toml.write_text(
        '[experiment]\nname = "e"\nsalt = "s"\n[[experiment.arms]]\nname = "a"\nshare = 0.5\n'
        'policy = "greedy"\nmodel_version = "v1"\n[[experiment.arms]]\nname = "b"\n'
        'share = 0.5\npolicy = "greedy"\n'
    )
    cache = LRUCache(100)
    app = create_app(
        ModelRegistry(registry_dir), sqlite_store, None, cache=cache,
        experiment=Experiment.load(toml),
    )  # fmt: skip
    client = TestClient(app)
    for version in ("v1", "v2", "v3"):
        cache.put(version, "u", _candidates())
    assert client.post("/v1/models/v2/activate").status_code == 200
    # v2 is active, arm "a" pins v1: v3's entries go
    assert [cache.get(v, "u") is not None for v in ("v1", "v2", "v3")] == [True, True, False]
    text = client.get("/metrics").text
    assert 'wager_cache_hits_total{backend="lru"} 2.0' in text
    assert 'wager_cache_misses_total{backend="lru"} 1.0' in text
    assert 'wager_cache_errors_total{backend="lru"} 0.0' in text


def test_a_cache_on_a_model_without_fast_path_is_announced_at_start(
    registry_dir, sqlite_store: EventStore, caplog: pytest.LogCaptureFixture
):
    """The tiny runs use population cold start, which the fast path does not represent: the
    start-up log says the cache is not used, and why; requests still answer."""
    with caplog.at_level("WARNING", logger="wager.serving"):
        app = create_app(ModelRegistry(registry_dir), sqlite_store, None, cache=LRUCache(10))
    (record,) = [r for r in caplog.records if "no fast path" in r.getMessage()]
    assert record.getMessage() == (
        'model version v3 has no fast path (cold_start = "population"): the candidate cache '
        "and the precomputed table are not used for it; every request is scored by the model"
    )
    assert TestClient(app).post("/v1/recommend", json={"user_id": "u1", "k": 3}).status_code == 200
