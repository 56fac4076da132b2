"""The HTTP API of ``wager serve`` (FastAPI): recommendations with confidence, scores,
feedback, the model registry, health and Prometheus metrics.

Endpoints (bodies are pydantic models, so ``/openapi.json`` documents every field):

- ``POST /v1/recommend`` (scope ``recommend``): top-k for one user (unknown users through
  the OOV path) chosen by a policy; every returned item is logged as an
  :class:`~wager.serving.events.Impression` and committed before the response is sent.
- ``POST /v1/score`` (``recommend``): mean, std and interval of given items for one user.
- ``POST /v1/feedback`` (``feedback``): clicks or ratings of served items, idempotent by
  ``event_id``.
- ``GET /v1/models``, ``POST /v1/models/{version}/activate`` (``admin``): the registry.
- ``GET /healthz``, ``GET /readyz``, ``GET /metrics``: open.

Errors: every malformed request gets a 4xx whose ``detail`` names the field (422, the shape
of FastAPI's validation errors: ``[{"loc": [...], "msg": ..., "type": ...}]``); a body over
:attr:`Limits.max_body_bytes` gets 413; no key 401, a key without the scope 403; an unknown
model version 404; an event store that fails 503 (nothing is served unlogged). No NaN or
infinity reaches JSON: an undefined number (e.g. the std of a point model) is ``null``.

This module holds :func:`create_app` and the routes; the bodies are in
:mod:`wager.serving.schemas`, the errors and their responses in :mod:`wager.serving.errors`,
the Prometheus metrics and the request-observing middleware in :mod:`wager.serving.metrics`.
Requests call the active :class:`~wager.recommender.Recommender` concurrently (no lock).
"""

from __future__ import annotations

import gc
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader

from wager.policies import Policy, PolicyState, policy_from_name
from wager.recommender import Recommender
from wager.recommender.fastpath import FastPath, FastSlate
from wager.serving.activation import (
    ACTIVE_KEY,
    ActivationFollower,
    ActivationSupersededError,
    ActivationTimeoutError,
)
from wager.serving.auth import ApiKeys
from wager.serving.batching import SlateBatcher, SlateJob
from wager.serving.cache import CandidateCache
from wager.serving.errors import (
    HANDLERS,
    Loc,
    RequestError,
    StoreUnavailableError,
    commit,
    commit_future,
    error_detail,
)
from wager.serving.events import EventLog, FeedbackEvent, FeedbackResult, Impression
from wager.serving.experiments import Experiment
from wager.serving.groupcommit import GroupCommitter
from wager.serving.metrics import ObserveMiddleware, ServiceMetrics
from wager.serving.precomputed import PrecomputedTable
from wager.serving.process import random_bytes as _random
from wager.serving.process import settle_heap
from wager.serving.recalibration import RecalibrationSettings, Recalibrator, model_means
from wager.serving.registry import ModelRegistry
from wager.serving.schemas import (
    ActivateResponse,
    ContextValue,
    FeedbackRequest,
    FeedbackResponse,
    ModelsResponse,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
)
from wager.uncertainty.conformal import ConformalPrediction
from wager.uncertainty.recalibration import OnlineRecalibration

__all__ = ["Limits", "RequestError", "StoreUnavailableError", "create_app", "settle_heap"]

log = logging.getLogger("wager.serving")

try:  # the serve extra installs it; the stdlib encoder otherwise
    import orjson
except ImportError:  # pragma: no cover - an environment without the extra's orjson
    orjson = None  # type: ignore[assignment]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger requests get a 4xx naming the limit.

    Attributes:
        max_k: largest ``k`` of ``/v1/recommend``.
        max_exclude: most ids in ``exclude`` of ``/v1/recommend``.
        max_score_items: most ``item_ids`` of one ``/v1/score`` call.
        max_feedback_events: most ``events`` of one ``/v1/feedback`` call.
        max_body_bytes: largest request body in bytes (413 above it).
    """

    max_k: int = 1000
    max_exclude: int = 10_000
    max_score_items: int = 10_000
    max_feedback_events: int = 10_000
    max_body_bytes: int = 1_000_000


# ----------------------------------------------------------------------------- app


@dataclass
class _Service:
    """What the routes read from ``app.state.service``."""

    registry: ModelRegistry
    events: EventLog
    keys: ApiKeys | None
    limits: Limits
    metrics: ServiceMetrics
    experiment: Experiment | None = None
    cache: CandidateCache | None = None
    precomputed: PrecomputedTable | None = None
    committer: GroupCommitter | None = None
    batcher: SlateBatcher | None = None
    seeds: Callable[[], int] | None = None
    """Where each slate's policy seed comes from (default: os.urandom)."""
    follower: ActivationFollower | None = None
    """Keeps this process on the stored active version (several server processes)."""
    recalibrator: Recalibrator | None = None
    """Refits the served click models' online recalibration (``--recalibrate``)."""

    def __post_init__(self) -> None:
        if self.committer is None:
            self.committer = GroupCommitter(self.events)
        if self.seeds is None:
            self.seeds = _random.seed
        if self.batcher is None:
            self.batcher = SlateBatcher(self.seeds, self.cache, self.precomputed)

    def served_arms(self) -> list[tuple[str, str]]:
        """The (model version, arm label) pairs requests are served as now ("" outside an
        experiment)."""
        if self.experiment is None:
            return [(self.registry.active, "")]
        return [
            (a.model_version or self.registry.active, self.experiment.label(a))
            for a in self.experiment.arms
        ]

    def online(self, version: str, arm: str) -> OnlineRecalibration | None:
        """The online recalibration a request of ``arm`` served by ``version`` gets."""
        return None if self.recalibrator is None else self.recalibrator.map_for(version, arm)

    def served_versions(self) -> tuple[str, ...]:
        """The versions requests may be served from: the active one and the arms' pins."""
        pinned = [] if self.experiment is None else [a.model_version for a in self.experiment.arms]
        return (self.registry.active, *(v for v in pinned if v is not None))


_key_header = APIKeyHeader(name="x-api-key", auto_error=False)


def _service(request: Request) -> _Service:
    service: _Service = request.app.state.service
    return service


def _needs(scope: str) -> Any:
    """A dependency letting the request through when its key holds ``scope``."""

    async def check(request: Request, key: str | None = Security(_key_header)) -> None:
        keys = _service(request).keys
        if keys is not None:
            keys.check(key, scope)

    return Depends(check)


def create_app(
    registry: ModelRegistry,
    events: EventLog,
    keys: ApiKeys | None,
    *,
    limits: Limits | None = None,
    experiment: Experiment | None = None,
    cache: CandidateCache | None = None,
    precomputed: PrecomputedTable | None = None,
    seed: int | None = None,
    settle: bool = False,
    follow_s: float | None = None,
    recalibration: RecalibrationSettings | None = None,
) -> FastAPI:
    """The service's FastAPI app.

    Args:
        registry: the model versions and the active one.
        events: where impressions and feedback are committed (``EventStore``).
        keys: the API keys, or None for no authentication (``wager serve`` allows that only
            on a loopback address or with ``--insecure``).
        limits: request limits (default :class:`Limits`).
        experiment: an A/B experiment (:class:`~wager.serving.experiments.Experiment`): each
            user is assigned an arm by hashing, and the arm's model version and policy serve
            the user's requests (a request's own policy fields are then ignored); every
            impression is logged with its arm, "experiment/arm". Each arm's pinned version
            is loaded here, so a missing version fails before the first request.
        cache: the candidate cache (:mod:`wager.serving.cache`; its hit / miss / error
            counters join this app's metrics); entries of versions no longer served are
            dropped on every activation.
        precomputed: a precomputed recommendations table (:mod:`wager.serving.precomputed`)
            serving its users while its model version is the one a request is served from.
        seed: seeds the random policies' draws (one seed per slate from a generator seeded
            here), so one client's sequence of requests gets the same slates on every run;
            None draws each slate's seed from os.urandom. Request ids stay random.
        settle: call :func:`settle_heap` when the server starts (the app's lifespan), as
            ``wager serve`` does; process-wide, so off for a library user's app.
        follow_s: share the active version with other server processes through the event
            store (``wager serve --workers N``): activations are stored, and the stored
            version is read every ``follow_s`` seconds and followed
            (:mod:`wager.serving.activation`). None: this process alone decides.
        recalibration: recalibrate the served click models online from the logged clicks
            (:mod:`wager.serving.recalibration`; refits start with the app's lifespan), or
            None. Not with a precomputed table (its rows are served as computed).
    """
    if recalibration is not None and precomputed is not None:
        raise ValueError(
            "online recalibration cannot be combined with a precomputed table: the table's "
            "predictions were computed offline and are served as they are; drop one of "
            "--recalibrate and --precomputed"
        )
    if experiment is not None:
        for arm in experiment.arms:
            registry.get(arm.model_version)
    metrics = ServiceMetrics()
    metrics.set_model(registry.active)
    app = FastAPI(
        title="wager",
        summary="Recommendations that know how sure they are.",
        version="1",
        # FastAPI's own OpenTelemetry hooks took about a tenth of the route's profiled time
        # with no provider configured; the service exports Prometheus metrics instead
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        lifespan=_lifespan,
    )
    limits = limits or Limits()
    if cache is not None:
        cache.bind_metrics(metrics.registry)
    if cache is not None or precomputed is not None:
        _warn_without_fast_path(registry)
    seeds = None
    if seed is not None:
        draws = random.Random(seed)
        seeds = partial(draws.getrandbits, 63)
    service = _Service(
        registry, events, keys, limits, metrics, experiment, cache, precomputed,
        seeds=seeds,
    )  # fmt: skip
    if follow_s is not None:
        service.follower = ActivationFollower(
            events,
            lambda: registry.active,
            partial(_activate_here, service),
            every_s=follow_s,
        )
    if recalibration is not None:
        service.recalibrator = Recalibrator(
            events,
            lambda: [(v, a, registry.get(v)[1]) for v, a in service.served_arms()],
            recalibration,
            metrics.set_recalibration,
        )
    app.state.service = service
    app.state.settle = settle
    app.include_router(_router)
    app.add_middleware(ObserveMiddleware, metrics=metrics, limit=limits.max_body_bytes)
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    return app


# ----------------------------------------------------------------------------- helpers


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start-up and shut-down of a served app: :func:`settle_heap` when asked, the
    activation follower (first sync before the first request), the online recalibration
    (first refit before the first request); at the end, with several
    workers, this process's live metrics."""
    service: _Service = app.state.service
    if service.follower is not None:
        service.follower.sync()
        service.follower.start()
    if service.recalibrator is not None:
        try:  # a restarted service serves what the logs say at once
            service.recalibrator.refresh()
        except Exception as exc:  # the store hiccupped: start uncorrected, refit at the tick
            log.warning("online recalibration: the first refit failed: %s", exc)
        service.recalibrator.start()
    if app.state.settle:
        settle_heap()
    try:
        yield
    finally:
        if service.follower is not None:
            service.follower.stop()
        if service.recalibrator is not None:
            service.recalibrator.stop()
        service.metrics.close()


def _warn_without_fast_path(registry: ModelRegistry) -> None:
    """A candidate cache and a precomputed table serve only through the fast path: say so
    at start-up when the active version has none (its requests all go to the model)."""
    version, rec = registry.current()
    if registry.fast_path(rec) is None:
        log.warning(
            "model version %s has no fast path (%s): the candidate cache and the precomputed "
            "table are not used for it; every request is scored by the model",
            version,
            FastPath.unsupported(rec),
        )


def _json_response(payload: dict[str, Any]) -> Response:
    """``JSONResponse(payload)``, encoded by orjson when installed (the ``serve`` extra has
    it; a tenth of the stdlib encoder's time for a top-10 slate). Same JSON: compact UTF-8,
    shortest float repr."""
    if orjson is None:
        return JSONResponse(payload)
    return Response(orjson.dumps(payload), media_type="application/json")


def _num(value: Any) -> float | None:
    """A finite float, or None (NaN, infinity and missing values are null in JSON)."""
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _policy(body: RecommendRequest) -> Policy:
    """The request's policy; a missing or misplaced parameter names its field."""
    try:
        return policy_from_name(body.policy, beta=body.beta, epsilon=body.epsilon)
    except ValueError as exc:
        field = "beta" if "beta" in str(exc) else "epsilon" if "epsilon" in str(exc) else "policy"
        raise RequestError(("body", field), str(exc)) from None


def _check_context(exc: ValueError, context: dict[str, ContextValue] | None) -> RequestError:
    field: Loc = ("body", "context") if context and "context" in str(exc) else ("body",)
    return RequestError(field, str(exc))


def _ranking_score(policy: str, beta: float | None, mean: float, std: float) -> float:
    """What the policy ranked by: mean + beta std for UCB (mean when std is undefined), the
    mean for the others (Thompson's draw is not kept by the policy)."""
    if policy == "ucb" and beta is not None and math.isfinite(std):
        return mean + beta * std
    return mean


#: the per-item fields of a fast-path slate in the response, in response order
_FAST_COLUMNS = ("mean", "std", "low", "high", "confidence", "propensity")
_FAST_FIELDS = ("score", *_FAST_COLUMNS)

# ----------------------------------------------------------------------------- routes

_router = APIRouter()


@_router.post("/v1/recommend", response_model=RecommendResponse, dependencies=[_needs("recommend")])
async def recommend(body: RecommendRequest, request: Request) -> Any:
    """Top-k items for one user with confidence and propensities; every item is logged as
    an impression (committed) before the response is sent.

    Exclusions are applied before the policy picks (the candidates are the catalogue less
    ``exclude``), so the propensities are those of the slate actually served. Models with a
    fast path (:class:`~wager.recommender.fastpath.FastPath`, built with each version) are
    scored on the event loop together with the requests that arrive at the same time
    (:class:`~wager.serving.batching.SlateBatcher`: 2-3.5 ms a round for 1-4 requests on
    ML-100k); the others run ``Recommender.recommend`` in the thread pool. Impressions go
    through the group commit (one transaction for the requests waiting at the same time);
    the response is written as built (no re-validation: its shape is
    :class:`RecommendResponse`, which the OpenAPI schema publishes).
    """
    service = _service(request)
    if body.k > service.limits.max_k:
        raise RequestError(("body", "k"), f"k must be <= {service.limits.max_k}, got {body.k}")
    if len(body.exclude) > service.limits.max_exclude:
        raise RequestError(
            ("body", "exclude"),
            f"exclude holds {len(body.exclude)} ids; at most {service.limits.max_exclude}",
        )
    arm = ""
    pinned: str | None = None
    if service.experiment is not None:
        chosen = service.experiment.assign(body.user_id)
        arm, pinned = service.experiment.label(chosen), chosen.model_version
        params = {"beta": None, "epsilon": None, **chosen.params}
        body = body.model_copy(update={"policy": chosen.policy, **params})
    policy = _policy(body)
    version, rec = service.registry.get(pinned)
    online = service.online(version, arm)  # read once: the slate is served and logged with it
    fast = service.registry.fast_path(rec)
    slate = None
    if fast is not None:
        assert service.batcher is not None
        job = SlateJob(fast, version, body.user_id, body.k, policy, body.exclude_seen,
                       tuple(sorted(set(body.exclude))), body.confidence_level,
                       bool(body.context), online)  # fmt: skip
        slate = await service.batcher.slate(job)
    if slate is not None:
        payload = _fast_payload(slate, body, version, arm)
    else:
        assert service.seeds is not None
        state = PolicyState.seeded(service.seeds())
        payload = await run_in_threadpool(
            _generic_payload, body, version, rec, arm, policy, state, online
        )
    response = _json_response(payload)  # encoded before the commit wait, sent right after
    await _log_slate(service, payload, body, online)
    return response


def _generic_payload(
    body: RecommendRequest, version: str, rec: Recommender, arm: str, policy: Policy,
    state: PolicyState, online: OnlineRecalibration | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The response of ``rec.recommend`` (models without a fast path, or a context)."""
    items = None
    if body.exclude:
        dropped = set(body.exclude)
        items = [i for i in rec.scorer_.catalogue.items if str(i) not in dropped]
    try:
        frame = rec.recommend(
            [body.user_id],
            body.k,
            items=items,
            exclude_seen=body.exclude_seen,
            context=body.context,
            confidence_level=body.confidence_level,
            policy=policy,
            state=state,
            online=online,
        )
    except ValueError as exc:
        raise _check_context(exc, body.context) from exc
    return _slate(frame, body, version, rec, arm).model_dump()


def _fast_payload(
    slate: FastSlate, body: RecommendRequest, version: str, arm: str
) -> dict[str, Any]:
    """The response (a :class:`RecommendResponse` as a dict) of a fast-path slate: every
    float column at once, NaN and infinity as None (as :func:`_num`)."""
    ucb = body.policy == "ucb" and body.beta is not None
    std = np.where(np.isfinite(slate.std), slate.std, 0.0)
    score = slate.mean + std * (body.beta if ucb else 0.0)  # as _ranking_score
    grid = np.stack([score, *(getattr(slate, name) for name in _FAST_COLUMNS)])  # (7, k)
    rows: list[list[float | None]] = grid.T.tolist()
    if not np.isfinite(grid).all():
        for n, c in zip(*np.nonzero(~np.isfinite(grid.T)), strict=True):
            rows[n][c] = None
    ids = [str(i) for i in slate.items.tolist()]
    items = [
        {"item_id": item_id, "rank": n + 1, **dict(zip(_FAST_FIELDS, row, strict=True))}
        for n, (item_id, row) in enumerate(zip(ids, rows, strict=True))
    ]
    return {
        "request_id": _random.request_id(),
        "model_version": version,
        "arm": arm,
        "policy": slate.policy,
        "cold_start": not slate.known,
        "items": items,
    }


def _slate(
    frame: Any, body: RecommendRequest, version: str, rec: Recommender, arm: str = ""
) -> RecommendResponse:
    """The response of ``rec.recommend``'s frame (one user's rows, in slate order)."""
    out = []
    for row in frame.itertuples(index=False):
        mean = float(row.mean)
        std = float(row.std)
        out.append(
            RecommendedItem(
                item_id=str(row.item),
                rank=int(row.rank),
                score=_num(_ranking_score(body.policy, body.beta, mean, std)),
                mean=_num(mean),
                std=_num(std),
                low=_num(row.low),
                high=_num(row.high),
                confidence=_num(row.confidence),
                propensity=_num(row.propensity),
            )
        )
    return RecommendResponse(
        request_id=_random.request_id(),
        model_version=version,
        arm=arm,
        policy=str(frame.attrs.get("policy", {}).get("name", body.policy)),
        cold_start=not bool(rec.known_users([body.user_id])[0]),
        items=out,
    )


async def _log_slate(
    service: _Service,
    response: dict[str, Any],
    body: RecommendRequest,
    online: OnlineRecalibration | None,
) -> None:
    """Commit one impression per served item (group commit: this request waits for the
    transaction holding its rows), then count them. ``online`` is the recalibration the slate
    was served with: the model's own means (:func:`model_means`) are logged as
    ``model_mean``."""
    ts = time.time()
    request_id, arm = response["request_id"], response["arm"]
    items = response["items"]
    means = [item["mean"] for item in items]
    own = model_means(online, means)
    rows = [
        Impression(
            request_id=request_id,
            user_id=body.user_id,
            item_id=item["item_id"],
            position=item["rank"],
            score=item["score"] if item["score"] is not None else float("nan"),
            mean=item["mean"] if item["mean"] is not None else float("nan"),
            std=item["std"],
            policy=response["policy"],
            propensity=item["propensity"] if item["propensity"] is not None else 1.0,
            arm=arm,
            model_version=response["model_version"],
            ts=ts,
            model_mean=model_mean,
        )
        for item, model_mean in zip(items, own, strict=True)
    ]
    if rows:
        assert service.committer is not None
        await commit_future(service.committer.submit_async(rows), "logging impressions")
    service.metrics.served(arm, len(rows), means, own)


@_router.post("/v1/score", response_model=ScoreResponse, dependencies=[_needs("recommend")])
def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Mean, std, interval and confidence of catalogue items for one user (by the active
    version; with online recalibration, through the map of the user's arm)."""
    service = _service(request)
    if len(body.item_ids) > service.limits.max_score_items:
        raise RequestError(
            ("body", "item_ids"),
            f"item_ids holds {len(body.item_ids)} ids; at most {service.limits.max_score_items}",
        )
    version, rec = service.registry.current()
    index = rec.scorer_.catalogue.item_index
    unknown = [i for i in body.item_ids if i not in index]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:20]) + (" ..." if len(unknown) > 20 else "")
        raise RequestError(
            ("body", "item_ids"),
            f"{len(unknown)} item id(s) not in the model's catalogue: {shown}",
        )
    users = [body.user_id] * len(body.item_ids)
    try:
        pred = rec.predict(users, body.item_ids, body.context)
        arm = (
            ""
            if service.experiment is None
            else service.experiment.label(service.experiment.assign(body.user_id))
        )
        online = service.online(version, arm)
        pred = pred if online is None else online.apply(pred)
        conf = rec.relevance_confidence(pred)
    except ValueError as exc:
        raise _check_context(exc, body.context) from exc
    iv = None
    if pred.std is not None or isinstance(pred, ConformalPrediction):
        iv = pred.interval(body.confidence_level)

    def column(t: Any) -> list[float | None]:
        return [None] * len(users) if t is None else [_num(x) for x in t.cpu().tolist()]

    mean, std = column(pred.mean), column(pred.std)
    low, high = column(None if iv is None else iv.low), column(None if iv is None else iv.high)
    confidence = column(conf)
    items = [
        ScoredItem(item_id=i, mean=mean[n], std=std[n], low=low[n], high=high[n],
                   confidence=confidence[n])
        for n, i in enumerate(body.item_ids)
    ]  # fmt: skip
    cold = not bool(rec.known_users([body.user_id])[0])
    return ScoreResponse(model_version=version, cold_start=cold, items=items)


@_router.post(
    "/v1/feedback",
    response_model=FeedbackResponse,
    dependencies=[_needs("feedback")],
    responses={422: {"description": "Bad events, or events about items never served."}},
)
def feedback(body: FeedbackRequest, request: Request) -> Any:
    """Store clicks / ratings of served items, idempotent by ``event_id``.

    The batch is one transaction. Events whose (request_id, item_id) was never served are
    not stored and the answer is 422 listing them (with ``stored`` / ``duplicates`` of the
    rest, which are committed): resending the whole batch is safe, as stored events come
    back as duplicates.
    """
    service = _service(request)
    if len(body.events) > service.limits.max_feedback_events:
        raise RequestError(
            ("body", "events"),
            f"events holds {len(body.events)} events; at most "
            f"{service.limits.max_feedback_events} per call",
        )
    ts = time.time()
    events = [
        FeedbackEvent(e.event_id, e.request_id, e.item_id, e.click, e.rating, ts)
        for e in body.events
    ]
    result: FeedbackResult = commit(lambda: service.events.add_feedback(events), "storing feedback")
    _count_feedback(service, events, result)
    if not result.unknown:
        return FeedbackResponse(stored=result.stored, duplicates=result.duplicates)
    position: dict[str, int] = {}
    for n, e in enumerate(events):
        position.setdefault(e.event_id, n)
    detail = [
        error_detail(
            ("body", "events", position[e.event_id]),
            f"request {e.request_id!r} never served item {e.item_id!r}: send feedback only "
            "for items of a /v1/recommend response, with its request_id",
            "unknown_impression",
        )
        for e in result.unknown
    ]
    payload = {"detail": detail, "stored": result.stored, "duplicates": result.duplicates}
    return JSONResponse(payload, status_code=422)


def _count_feedback(service: _Service, events: list[FeedbackEvent], result: FeedbackResult) -> None:
    """Per-arm counts of the events this call stored (``result.stored_ids``: each stored
    event once, a duplicate or a retry never again)."""
    m = service.metrics
    m.duplicates.inc(result.duplicates)
    m.unknown.inc(len(result.unknown))
    unknown = set(result.unknown)
    first: dict[str, FeedbackEvent] = {}  # the event the store keeps for each id
    for e in events:
        if e not in unknown:
            first.setdefault(e.event_id, e)
    for event_id in result.stored_ids:
        e = first[event_id]
        arm, position = result.placement.get(event_id, ("unknown", 0))
        m.feedback.labels(arm=arm, kind="click" if e.click is not None else "rating").inc()
        if e.click == 1:
            m.clicks.labels(arm=arm).inc()
            m.calibration.clicked(arm, top=position == 1)


@_router.get("/v1/models", response_model=ModelsResponse, dependencies=[_needs("admin")])
def models(request: Request) -> ModelsResponse:
    """The registry's versions and the one served now."""
    registry = _service(request).registry
    return ModelsResponse(active=registry.active, versions=registry.versions())


@_router.post(
    "/v1/models/{version}/activate",
    response_model=ActivateResponse,
    dependencies=[_needs("admin")],
    responses={404: {"description": "No such version."}, 409: {"description": "Unreadable."}},
)
def activate(version: str, request: Request) -> ActivateResponse:
    """Serve ``version`` from now on: loaded in full first, then swapped atomically
    (requests in flight finish on the old version). With several server processes the
    version is then stored for the others to follow, and the answer waits until every live
    process serves it (:mod:`wager.serving.activation`): a request sent after the answer
    gets the new version from any process. A failed store write answers 503 and every
    process returns to the stored version; processes that do not follow in time answer 503
    too, with the previous version stored and served again; an activation replaced by a
    later one while it waited answers 409."""
    service = _service(request)
    previous = service.registry.active
    follower = service.follower
    with follower.lock if follower is not None else nullcontext():
        _activate_here(service, version)
        if follower is not None:
            commit(lambda: service.events.set_state(ACTIVE_KEY, version),
                   "storing the active model version")  # fmt: skip
            follower.beat()
            _wait_for_processes(service, follower, version, previous)
    service.metrics.activations.inc()
    log.info("model version %s activated (was %s)", version, previous)
    return ActivateResponse(active=version, previous=previous)


def _wait_for_processes(
    service: _Service, follower: ActivationFollower, version: str, previous: str
) -> None:
    """Wait until every live server process serves ``version``; undo the activation when
    some do not in time (see :func:`activate`)."""
    try:
        follower.wait_for(version)
    except ActivationSupersededError as exc:
        raise RequestError(("path", "version"), str(exc), status=409) from exc
    except ActivationTimeoutError as exc:
        log.error("%s", exc)
        _activate_here(service, previous)
        commit(lambda: service.events.set_state(ACTIVE_KEY, previous),
               "storing the previous model version again")  # fmt: skip
        follower.beat()
        raise StoreUnavailableError(str(exc)) from exc


def _activate_here(service: _Service, version: str) -> None:
    """Activate ``version`` in this process: the registry swap, the model gauge, the cache
    entries of versions no longer served, and the collector settled again if it was."""
    service.registry.activate(version)
    service.metrics.set_model(version)
    if service.cache is not None:
        service.cache.invalidate_except(*service.served_versions())
    if gc.get_freeze_count():  # a process settled by settle_heap: settle the new version too
        settle_heap()


@_router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@_router.get("/readyz", responses={503: {"description": "Not ready."}})
def readyz(request: Request) -> Any:
    """Ready when a model is loaded and the event store answers."""
    service = _service(request)
    version = service.registry.active
    try:
        store = bool(service.events.ping())
    except Exception:  # a store that cannot even be pinged is not ready
        log.exception("event store ping failed")
        store = False
    payload = {"status": "ready" if store else "not ready", "model_version": version,
               "event_store": store}  # fmt: skip
    return JSONResponse(payload, status_code=200 if store else 503)


@_router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus text format of this app's metrics."""
    m = _service(request).metrics  # every worker's metrics summed under --workers N
    return Response(m.exposition(), media_type=m.content_type)
