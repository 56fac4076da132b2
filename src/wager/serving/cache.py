"""Candidate caches of the service: one user's scored candidates under one model version.

A value is what the scoring of ``/v1/recommend`` produces before a policy picks the slate,
a :data:`Candidates` dict: ``"items"`` (int64 catalogue positions), ``"mean"`` and ``"std"``
(float64), each of shape (n,). Caching them (not slates) keeps every policy exact: UCB ranks
the cached mean and std, Thompson draws afresh from them on every request.

Keys are ``(model_version, user key)``; :func:`user_key` folds everything that changes the
candidates (user id, context, ``exclude_seen``, the candidate count) into one stable string.
Two backends with the same semantics:

- :class:`LRUCache`: in the process, bounded by entries, least recently used evicted first.
- :class:`RedisCache`: a Redis server by URL, shared by replicas; keys start with a prefix
  (default ``"wager:"``) so several services can share a server, and every entry has a TTL.
  A Redis that fails or goes away never fails a request: the lookup is a miss, the error is
  counted (``wager_cache_errors_total``) and Redis is skipped for ``down_for_s`` seconds.

Both return read-only arrays and never unpickle: values travel as ``np.save(...,
allow_pickle=False)`` bytes and are read with ``np.load(..., allow_pickle=False)``, checked
for the three keys, their dtypes and one shared shape (a malformed entry is an error and a
miss). Activating a version calls :meth:`CandidateCache.invalidate_except` with the versions
still served (the new active one and any an experiment arm pins): entries of other versions
are dropped.

Metrics (``wager_cache_hits_total``, ``wager_cache_misses_total``,
``wager_cache_errors_total``, label ``backend``) live on a registry given by
:meth:`CandidateCache.bind_metrics` (``create_app`` binds the app's ``ServiceMetrics``).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter

from wager._optional import require

__all__ = [
    "CacheMetrics",
    "CandidateCache",
    "Candidates",
    "LRUCache",
    "RedisCache",
    "cached_candidates",
    "decode_candidates",
    "encode_candidates",
    "user_key",
]

#: one user's scored candidates: items (int64 positions), mean, std (float64), shape (n,)
Candidates = dict[str, np.ndarray]

_DTYPES = {"items": np.dtype(np.int64), "mean": np.dtype(np.float64), "std": np.dtype(np.float64)}


def _checked(candidates: Mapping[str, Any]) -> Candidates:
    """``candidates`` as read-only arrays of the right dtypes and one (n,) shape.

    Raises:
        ValueError: a key is missing or extra, an array is not 1-d, the shapes differ, or
            a dtype is not the one of the key (naming the key).
    """
    if set(candidates) != set(_DTYPES):
        raise ValueError(
            f"candidates must have exactly the keys items, mean, std; got {sorted(candidates)}"
        )
    out: Candidates = {}
    for name, dtype in _DTYPES.items():
        array = np.asarray(candidates[name])
        if array.dtype != dtype or array.ndim != 1:
            raise ValueError(
                f"candidates[{name!r}] must be a 1-d {dtype} array, got {array.ndim}-d "
                f"{array.dtype}"
            )
        if array.flags.writeable or isinstance(array.base, np.ndarray):
            array = array.copy()  # nobody else holds a writeable view of a cached array
        array.flags.writeable = False
        out[name] = array
    sizes = {len(a) for a in out.values()}
    if len(sizes) != 1:
        shapes = {k: v.shape for k, v in out.items()}
        raise ValueError(f"candidates' arrays must share one shape (n,), got {shapes}")
    return out


def encode_candidates(candidates: Mapping[str, np.ndarray]) -> bytes:
    """Bytes of ``candidates``: three ``.npy`` records (items, mean, std) one after the
    other, written with ``allow_pickle=False`` (an object array cannot be written)."""
    checked = _checked(candidates)
    buffer = io.BytesIO()
    for name in _DTYPES:
        np.save(buffer, checked[name], allow_pickle=False)
    return buffer.getvalue()


def decode_candidates(data: bytes) -> Candidates:
    """The candidates :func:`encode_candidates` wrote (read-only arrays), read with
    ``allow_pickle=False``.

    Raises:
        ValueError: ``data`` is not three ``.npy`` records of the expected dtypes and one
            shape, or has bytes after them.
    """
    buffer = io.BytesIO(data)
    try:
        arrays = {name: np.load(buffer, allow_pickle=False) for name in _DTYPES}
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not a cached candidates entry ({len(data)} bytes): {exc}") from None
    if buffer.tell() != len(data):
        raise ValueError(
            f"not a cached candidates entry: {len(data) - buffer.tell()} bytes after the arrays"
        )
    return _checked(arrays)


def user_key(
    user_id: str,
    context: Mapping[str, Any] | None = None,
    exclude_seen: bool = True,
    **params: Any,
) -> str:
    """The cache key part of one user's request: a SHA-256 (hex) of everything that changes
    the candidates, so a different context, ``exclude_seen`` or extra parameter (e.g.
    ``candidates=100``, the candidate count) is a different entry.

    Stable across processes and machines (canonical JSON: sorted keys, no whitespace), which
    the Redis backend shared by replicas needs. A missing and an empty context are the same.
    """
    payload = {
        "user": str(user_id),
        "context": dict(context or {}),
        "exclude_seen": bool(exclude_seen),
        "params": params,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class CacheMetrics:
    """The cache's Prometheus counters on ``registry``, labelled ``backend`` (``lru`` or
    ``redis``), each series present (at 0) from the start."""

    def __init__(self, registry: CollectorRegistry, backend: str) -> None:
        def counter(name: str, doc: str) -> Any:
            return Counter(name, doc, ["backend"], registry=registry).labels(backend=backend)

        self.hits = counter("wager_cache_hits", "Candidate cache lookups answered.")
        self.misses = counter(
            "wager_cache_misses", "Candidate cache lookups not answered (candidates computed)."
        )
        self.errors = counter(
            "wager_cache_errors",
            "Candidate cache operations that failed (served by computing instead).",
        )


class CandidateCache:
    """The interface of the candidate caches (see the module docstring for the semantics).

    Subclasses implement :meth:`_get`, :meth:`_put` and :meth:`invalidate_except`; the
    public :meth:`get` and :meth:`put` count hits, misses and errors.
    """

    backend = "base"

    def __init__(self) -> None:
        self._metrics = CacheMetrics(CollectorRegistry(), self.backend)

    def bind_metrics(self, registry: CollectorRegistry) -> None:
        """Count hits, misses and errors on ``registry`` from now on (the app's
        ``ServiceMetrics.registry``; called once per app)."""
        self._metrics = CacheMetrics(registry, self.backend)

    def get(self, version: str, key: str) -> Candidates | None:
        """The candidates of ``key`` under ``version``, or None (a miss; also after an
        error, which is counted and logged by the backend)."""
        found = self._get(version, key)
        counter = self._metrics.misses if found is None else self._metrics.hits
        counter.inc()
        return found

    def put(self, version: str, key: str, candidates: Mapping[str, np.ndarray]) -> None:
        """Store ``candidates`` (checked: three 1-d arrays of one shape and the right dtypes;
        a ``ValueError`` otherwise) as the entry of ``key`` under ``version``."""
        self._put(version, key, _checked(candidates))

    def _error(self) -> None:
        self._metrics.errors.inc()

    def _get(self, version: str, key: str) -> Candidates | None:
        raise NotImplementedError

    def _put(self, version: str, key: str, candidates: Candidates) -> None:
        raise NotImplementedError

    def invalidate_except(self, *versions: str) -> None:
        """Drop every entry whose model version is not one of ``versions``."""
        raise NotImplementedError


class LRUCache(CandidateCache):
    """Candidates in this process, at most ``max_entries``, least recently used evicted
    first; thread-safe (one lock). Entries hold read-only arrays, returned without a copy.

    Args:
        max_entries: entries kept (>= 1).
        ttl_s: seconds an entry lives (None: until evicted or invalidated).
    """

    backend = "lru"

    def __init__(self, max_entries: int, ttl_s: float | None = None) -> None:
        super().__init__()
        if max_entries < 1:
            raise ValueError(f"the LRU cache needs max_entries >= 1, got {max_entries}")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError(f"ttl_s must be > 0 seconds or None, got {ttl_s}")
        self.max_entries, self.ttl_s = max_entries, ttl_s
        self._entries: OrderedDict[tuple[str, str], tuple[float, Candidates]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _get(self, version: str, key: str) -> Candidates | None:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get((version, key))
            if entry is None:
                return None
            if entry[0] <= now:
                del self._entries[(version, key)]
                return None
            self._entries.move_to_end((version, key))
            return entry[1]

    def _put(self, version: str, key: str, candidates: Candidates) -> None:
        expires = time.monotonic() + self.ttl_s if self.ttl_s is not None else float("inf")
        with self._lock:
            self._entries[(version, key)] = (expires, candidates)
            self._entries.move_to_end((version, key))
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def invalidate_except(self, *versions: str) -> None:
        keep = set(versions)
        with self._lock:
            for entry in [k for k in self._entries if k[0] not in keep]:
                del self._entries[entry]


class RedisCache(CandidateCache):
    """Candidates on a Redis server, shared by every replica using the same ``prefix``.

    Keys are ``prefix + "c:" + quote(version) + ":" + key`` (the version percent-encoded, so
    no version name reaches into another's keys); values the bytes of
    :func:`encode_candidates`, each with a TTL. Every Redis failure (refused connection,
    timeout, a malformed value) is counted in ``wager_cache_errors_total`` and answered as a
    miss (or a dropped put); after a failure Redis is skipped for ``down_for_s`` seconds, so
    a server that went away costs requests nothing but the recomputation.

    Args:
        url: ``redis://[:PASSWORD@]HOST:PORT/DB`` (or ``rediss://``, ``unix://``).
        ttl_s: seconds an entry lives (> 0).
        prefix: start of every key this cache writes or deletes.
        timeout_s: socket connect / read timeout of each command, seconds.
        down_for_s: seconds to skip Redis after a failure (0: retry on every call).

    Raises:
        ValueError: a URL Redis cannot parse or a non-positive ``ttl_s`` / ``timeout_s``.
        MissingExtraError: the ``redis`` package is missing (extra ``[serve]``).
    """

    backend = "redis"

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 3600.0,
        prefix: str = "wager:",
        timeout_s: float = 0.1,
        down_for_s: float = 1.0,
    ) -> None:
        super().__init__()
        redis = require("redis", "serve", "the Redis candidate cache (--redis)")
        if not ttl_s > 0 or not timeout_s > 0:
            raise ValueError(f"ttl_s and timeout_s must be > 0 seconds, got {ttl_s}, {timeout_s}")
        try:
            self._client = redis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
            )
        except ValueError as exc:
            raise ValueError(
                f"--redis {url!r} is not a Redis URL ({exc}); use redis://HOST:PORT/DB"
            ) from None
        self._redis_error: type[Exception] = redis.RedisError
        self.ttl_ms = max(1, round(ttl_s * 1000))
        self.prefix, self.down_for_s = prefix, down_for_s
        self._down_until = 0.0

    def _key(self, version: str, key: str) -> str:
        return f"{self.prefix}c:{urllib.parse.quote(version, safe='')}:{key}"

    def _call(self, action: Callable[[], Any]) -> tuple[bool, Any]:
        """(True, result) of ``action``, or (False, None) after an error (counted) or while
        Redis is skipped after one."""
        if time.monotonic() < self._down_until:
            return False, None
        try:
            return True, action()
        except (self._redis_error, OSError):
            self._error()
            self._down_until = time.monotonic() + self.down_for_s
            return False, None

    def _get(self, version: str, key: str) -> Candidates | None:
        ok, data = self._call(lambda: self._client.get(self._key(version, key)))
        if not ok or data is None:
            return None
        try:
            return decode_candidates(data)
        except ValueError:
            self._error()
            return None

    def _put(self, version: str, key: str, candidates: Candidates) -> None:
        data = encode_candidates(candidates)
        self._call(lambda: self._client.set(self._key(version, key), data, px=self.ttl_ms))

    def invalidate_except(self, *versions: str) -> None:
        keep = tuple(f"{self.prefix}c:{urllib.parse.quote(v, safe='')}:" for v in versions)
        pattern = _glob_escape(self.prefix) + "c:*"

        def drop() -> int:
            stale = [
                name
                for name in self._client.scan_iter(match=pattern, count=1000)
                if not name.decode().startswith(keep)
            ]
            for start in range(0, len(stale), 1000):
                self._client.delete(*stale[start : start + 1000])
            return len(stale)

        self._call(drop)

    def close(self) -> None:
        """Close the connections to the server."""
        self._client.close()


def _glob_escape(text: str) -> str:
    """``text`` as a literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def cached_candidates(
    cache: CandidateCache | None,
    version: str,
    key: str,
    compute: Callable[[], Mapping[str, np.ndarray]],
) -> Candidates:
    """The candidates of ``key`` under ``version``: from ``cache`` when it holds them, else
    ``compute()`` (then stored). Without a cache, ``compute()``. The result's arrays are
    read-only; a cache that fails is a miss, never an error of the request."""
    if cache is None:
        return _checked(compute())
    found = cache.get(version, key)
    if found is not None:
        return found
    computed = _checked(compute())
    cache.put(version, key, computed)
    return computed
