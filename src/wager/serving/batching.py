"""Dynamic batching of ``/v1/recommend``: the fast-path requests that arrive together are
scored and picked together.

One fast-path request costs about 2 ms of Python and small torch calls, most of it fixed
per call (the post-hoc chain on 100 candidates, the policy, the interval), not per row. The
:class:`SlateBatcher` therefore queues each request's :class:`SlateJob` on the event loop
and, once the requests that are ready in the same loop iteration have all queued theirs
(``loop.call_soon``: no timer, so a lone request is not delayed), serves them at once, on
the event loop's thread (a round blocks the loop for a few milliseconds; measured on
ML-100k with wrk, this beat a separate batch thread, whose hand-offs and GIL contention cost
more than they overlapped):

1. each job's candidates: the precomputed table's rows, else the candidate cache's entry,
   else a miss; the misses of one model version are scored by one
   :meth:`FastPath.score_many` (one product, one chain call) and stored in the cache;
2. the jobs with candidates are picked per (model version, k, policy, confidence level,
   online recalibration) by
   one :meth:`FastPath.select_many` (one ``Policy.select`` over the (B, n) candidates, one
   interval and confidence call), with one freshly seeded :class:`PolicyState` per group.

A job whose request the fast path does not take (a context, a catalogue changed since the
version was loaded, every item excluded) resolves to None: the route then calls the model.
An exception while serving a round fails that round's requests only.

Every slate equals the one the request would have got alone (same candidates and, for the
deterministic policies, same items, means, stds, intervals and confidences up to float
rounding); the random policies draw from one generator per group, each request's draws
still independent of the others'.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from wager.policies import Policy, PolicyState
from wager.recommender.fastpath import Ask, FastPath, FastSlate, Scored
from wager.recommender.listing import default_candidates
from wager.serving.cache import CandidateCache, user_key
from wager.serving.precomputed import PrecomputedTable
from wager.uncertainty.recalibration import OnlineRecalibration

__all__ = ["SlateBatcher", "SlateJob"]


@dataclass(frozen=True)
class SlateJob:
    """One request's fast-path work.

    Attributes:
        fast: the fast path of the version serving the request; version: its name;
        user_id, k, exclude_seen, exclude, confidence_level: the request's fields;
        policy: the policy picking the slate; has_context: the request sent a context (the
        fast path has none: the job resolves to None); online: the online recalibration of
        the request's (version, arm), applied to the candidates before the policy picks
        (:mod:`wager.serving.recalibration`), or None.
    """

    fast: FastPath
    version: str
    user_id: str
    k: int
    policy: Policy
    exclude_seen: bool = True
    exclude: tuple[str, ...] = ()
    confidence_level: float = 0.9
    has_context: bool = False
    online: OnlineRecalibration | None = None
    future: asyncio.Future[FastSlate | None] | None = field(default=None, compare=False)


class SlateBatcher:
    """Serves :class:`SlateJob`\\ s in batches on the event loop (see the module docstring).

    Args:
        seed: a fresh random seed per policy group (the service's random source).
        cache: the candidate cache, or None.
        precomputed: the precomputed table, or None.
        max_batch: most jobs served at once (the rest wait for the next round).
    """

    def __init__(
        self,
        seed: Callable[[], int],
        cache: CandidateCache | None = None,
        precomputed: PrecomputedTable | None = None,
        max_batch: int = 64,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.seed = seed
        self.cache = cache
        self.precomputed = precomputed
        self.max_batch = max_batch
        self._pending: list[SlateJob] = []
        self._scheduled = False  # a round is queued on the loop
        self.batches = 0
        """Rounds served (for tests and benchmarks)."""
        self.jobs = 0
        """Jobs served."""

    async def slate(self, job: SlateJob) -> FastSlate | None:
        """The job's slate, or None when the request must go to the model."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[FastSlate | None] = loop.create_future()
        self._pending.append(replace(job, future=future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)  # after the requests ready now have queued theirs
        return await future

    def _flush(self) -> None:
        """Serve the queued jobs (at most ``max_batch``; the rest in the next round)."""
        jobs, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
        if self._pending:
            asyncio.get_running_loop().call_soon(self._flush)
        else:
            self._scheduled = False
        self.batches += 1
        self.jobs += len(jobs)
        try:
            results = self.serve(jobs)
        except Exception as exc:  # the round fails its own requests, nothing else
            for job in jobs:
                assert job.future is not None
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        for job, result in zip(jobs, results, strict=True):
            assert job.future is not None
            if not job.future.done():  # a request cancelled meanwhile is skipped
                job.future.set_result(result)

    def serve(self, jobs: list[SlateJob]) -> list[FastSlate | None]:
        """The slates of ``jobs`` (None where the fast path does not take the request)."""
        scored = self._candidates(jobs)
        groups: dict[tuple[object, ...], list[int]] = {}
        for n, (job, one) in enumerate(zip(jobs, scored, strict=True)):
            if one is not None:
                key = (id(job.fast), job.k, repr(job.policy), job.confidence_level,
                       id(job.online))  # fmt: skip
                groups.setdefault(key, []).append(n)
        out: list[FastSlate | None] = [None] * len(jobs)
        for members in groups.values():
            first = jobs[members[0]]
            state = PolicyState.seeded(self.seed())
            picked = [one for n in members if (one := scored[n]) is not None]
            slates = first.fast.select_many(
                picked, first.k, first.policy, state, first.confidence_level, first.online
            )
            for n, slate in zip(members, slates, strict=True):
                out[n] = slate
        return out

    def _candidates(self, jobs: list[SlateJob]) -> list[Scored | None]:
        """Each job's scored candidates: table, cache, or one ``score_many`` per version.

        Table rows and, with a cache, a version's candidates (hits, and misses once computed
        and stored, served as a later hit would be) are served from their entries through
        one :meth:`FastPath.from_dicts` per version."""
        out: list[Scored | None] = [None] * len(jobs)
        misses: dict[int, list[int]] = {}
        entries: dict[int, dict[int, Mapping[str, np.ndarray]]] = {}  # id(fast) -> job -> entry
        keys: dict[int, str] = {}
        for n, job in enumerate(jobs):
            fast = job.fast
            if job.has_context or fast.catalogue.version != fast.version:
                continue
            if self.precomputed is not None:
                found = self.precomputed.candidates(
                    job.version, job.user_id, job.k, exclude_seen=job.exclude_seen,
                    exclude=job.exclude,
                )  # fmt: skip
                if found is not None:
                    entries.setdefault(id(fast), {})[n] = found
                    continue
            if self.cache is not None:
                keys[n] = user_key(job.user_id, None, job.exclude_seen, exclude=job.exclude,
                                   candidates=default_candidates(job.k))  # fmt: skip
                hit = self.cache.get(job.version, keys[n])
                if hit is not None:
                    entries.setdefault(id(fast), {})[n] = hit
                    continue
            misses.setdefault(id(fast), []).append(n)
        for members in misses.values():
            fast = jobs[members[0]].fast
            asks = [
                Ask(jobs[n].user_id, default_candidates(jobs[n].k), jobs[n].exclude_seen,
                    jobs[n].exclude)
                for n in members
            ]  # fmt: skip
            for n, computed in zip(members, fast.score_many(asks), strict=True):
                if computed is None or self.cache is None:
                    out[n] = computed
                    continue
                as_dict = computed.to_dict()
                self.cache.put(jobs[n].version, keys[n], as_dict)
                entries.setdefault(id(fast), {})[n] = as_dict
        for of_version in entries.values():
            order = sorted(of_version)
            fast = jobs[order[0]].fast
            known = [fast.known(jobs[n].user_id) for n in order]
            served = fast.from_dicts([of_version[n] for n in order], known)
            for n, scored in zip(order, served, strict=True):
                out[n] = scored
        return out
