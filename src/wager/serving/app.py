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
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, ConfigDict, Field, model_validator

from wager.errors import WagerError
from wager.policies import Policy, PolicyState, policy_from_name
from wager.recommender import Recommender
from wager.runs import RunError
from wager.serving.auth import ApiKeys, AuthError
from wager.serving.events import EventLog, FeedbackEvent, FeedbackResult, Impression
from wager.serving.registry import ModelRegistry, UnknownVersionError
from wager.uncertainty.conformal import ConformalPrediction

log = logging.getLogger("wager.serving")

Loc = tuple[str | int, ...]
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


class RequestError(WagerError, ValueError):
    """A request the service refuses after validation of its shape: ``status`` (422 unless
    told) with a message naming the field at ``loc`` (e.g. ("body", "k"))."""

    def __init__(self, loc: Loc, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.loc = loc
        self.status = status


class StoreUnavailableError(WagerError, RuntimeError):
    """The event store failed to commit; the request is answered 503 and nothing served."""


# ----------------------------------------------------------------------------- bodies


class _Body(BaseModel):
    """Request bodies: unknown fields are errors, numbers must be finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


ContextValue = str | int | float | bool
PolicyName = Literal["greedy", "ucb", "thompson", "epsilon_greedy"]


class RecommendRequest(_Body):
    """``POST /v1/recommend``: top-k for one user."""

    user_id: str = Field(min_length=1, max_length=512, description="Known or new user id.")
    k: int = Field(10, ge=1, description="Items to return (at most the service's max k).")
    policy: PolicyName = Field("greedy", description="How the k items are picked.")
    beta: float | None = Field(None, ge=0, description="UCB's weight on the std (ucb only).")
    epsilon: float | None = Field(
        None, ge=0, le=1, description="Exploration rate (epsilon_greedy only)."
    )
    context: dict[str, ContextValue] | None = Field(
        None, description="Context column -> value, applied to every candidate."
    )
    exclude: list[str] = Field(
        default_factory=list, description="Item ids never to return (unknown ids are ignored)."
    )
    exclude_seen: bool = Field(True, description="Drop items the user had in training.")
    confidence_level: float = Field(0.9, gt=0, lt=1, description="Level of [low, high].")


class RecommendedItem(BaseModel):
    """One item of a slate; numbers are null where undefined (e.g. std of a point model)."""

    item_id: str
    rank: int
    score: float | None = Field(description="What the policy ranked by (UCB: mean + beta std).")
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    confidence: float | None
    propensity: float | None = Field(description="P(this choice | earlier positions).")


class RecommendResponse(BaseModel):
    """The slate, its request id (to send with feedback) and where it came from."""

    request_id: str
    model_version: str
    arm: str
    policy: str
    cold_start: bool
    items: list[RecommendedItem]


class ScoreRequest(_Body):
    """``POST /v1/score``: predictions for given items of one user."""

    user_id: str = Field(min_length=1, max_length=512)
    item_ids: list[str] = Field(min_length=1, description="Items of the catalogue to score.")
    context: dict[str, ContextValue] | None = None
    confidence_level: float = Field(0.9, gt=0, lt=1)


class ScoredItem(BaseModel):
    """Mean, std and interval of one (user, item) pair; null where undefined."""

    item_id: str
    mean: float | None
    std: float | None
    low: float | None
    high: float | None
    confidence: float | None


class ScoreResponse(BaseModel):
    """The predictions, in the order of ``item_ids``."""

    model_version: str
    cold_start: bool
    items: list[ScoredItem]


class FeedbackItem(_Body):
    """One outcome of a served item: exactly one of ``click`` and ``rating``."""

    event_id: str = Field(min_length=1, max_length=512, description="Idempotency key.")
    request_id: str = Field(min_length=1, max_length=512)
    item_id: str = Field(min_length=1, max_length=512)
    click: Literal[0, 1] | None = None
    rating: float | None = None

    @model_validator(mode="after")
    def _one_outcome(self) -> FeedbackItem:
        if (self.click is None) == (self.rating is None):
            has = "both click and rating" if self.click is not None else "neither"
            raise ValueError(f"give exactly one of click (0 or 1) or rating; this event has {has}")
        return self


class FeedbackRequest(_Body):
    """``POST /v1/feedback``: a batch of events (the whole batch is one transaction)."""

    events: list[FeedbackItem] = Field(min_length=1)


class FeedbackResponse(BaseModel):
    """Events newly stored and event ids already stored (retries)."""

    stored: int
    duplicates: int


class ModelsResponse(BaseModel):
    """The registry's versions (oldest first) and the active one."""

    active: str
    versions: list[str]


class ActivateResponse(BaseModel):
    """The version now served and the one it replaced."""

    active: str
    previous: str


# ----------------------------------------------------------------------------- metrics


class ServiceMetrics:
    """The Prometheus metrics of one app, in their own registry (names start ``wager_``).

    Predicted vs observed CTR per arm (online calibration): ``wager_predicted_mean_total /
    wager_impressions_total`` against ``wager_feedback_clicks_total / wager_impressions_total``.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, per = self.registry, ["endpoint", "method", "status"]
        self.requests = Counter("wager_http_requests", "HTTP requests answered.", per, registry=r)
        self.latency = Histogram(
            "wager_http_request_duration_seconds",
            "Time to answer an HTTP request, seconds.",
            per,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
            registry=r,
        )
        self.impressions = Counter(
            "wager_impressions", "Items served (logged impressions).", ["arm"], registry=r
        )
        self.predicted = Counter(
            "wager_predicted_mean",
            "Sum of the predicted means of served items (expected clicks of a click model).",
            ["arm"],
            registry=r,
        )
        self.feedback = Counter(
            "wager_feedback_events", "Feedback events stored.", ["arm", "kind"], registry=r
        )
        self.clicks = Counter(
            "wager_feedback_clicks", "Stored feedback events with click = 1.", ["arm"], registry=r
        )
        self.duplicates = Counter(
            "wager_feedback_duplicates", "Feedback events already stored (retries).", registry=r
        )
        self.unknown = Counter(
            "wager_feedback_unknown", "Feedback events about items never served.", registry=r
        )
        self.model = Gauge(
            "wager_model_active", "1 for the model version served now.", ["version"], registry=r
        )
        self.activations = Counter(
            "wager_model_activations", "Model versions activated.", registry=r
        )

    def set_model(self, version: str) -> None:
        """Mark ``version`` as the one served (the only series of ``wager_model_active``)."""
        self.model.clear()
        self.model.labels(version=version).set(1)


class _RecentRequests:
    """request id -> arm of the last ``size`` responses, to count feedback per arm."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._arms: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, request_id: str, arm: str) -> None:
        with self._lock:
            self._arms[request_id] = arm
            if len(self._arms) > self.size:
                self._arms.popitem(last=False)

    def arm(self, request_id: str) -> str:
        """The arm, or "unknown" for a request older than the last ``size``."""
        with self._lock:
            return self._arms.get(request_id, "unknown")


class _Observe:
    """ASGI middleware: the body size limit (413) and the request count / latency metrics,
    labelled by the route's path template (``unmatched`` for no route)."""

    def __init__(self, app: Callable[..., Awaitable[None]], metrics: ServiceMetrics, limit: int):
        self.app, self.metrics, self.limit = app, metrics, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self._read_body(scope, receive)
            if body is None:
                await _send_json(observed_send, 413, self._too_large())
                return
            await self.app(scope, _replay(body, receive), observed_send)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            labels = (endpoint, scope.get("method", ""), str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - start)

    def _too_large(self) -> dict[str, Any]:
        return {
            "detail": f"the request body is over the service's limit of {self.limit} bytes; "
            "send fewer items or events per request"
        }

    async def _read_body(self, scope: Scope, receive: Receive) -> list[Message] | None:
        """The request's body messages, or None when they exceed the limit."""
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                return None
        messages: list[Message] = []
        total = 0
        if scope.get("method") in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return messages
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            total += len(message.get("body", b""))
            if total > self.limit:
                return None
            if not message.get("more_body", False):
                return messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    body = JSONResponse(payload).body
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- app


@dataclass
class _Service:
    """What the routes read from ``app.state.service``."""

    registry: ModelRegistry
    events: EventLog
    keys: ApiKeys | None
    limits: Limits
    metrics: ServiceMetrics
    recent: _RecentRequests


_key_header = APIKeyHeader(name="x-api-key", auto_error=False)


def _service(request: Request) -> _Service:
    service: _Service = request.app.state.service
    return service


def _needs(scope: str) -> Any:
    """A dependency letting the request through when its key holds ``scope``."""

    def check(request: Request, key: str | None = Security(_key_header)) -> None:
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
) -> FastAPI:
    """The service's FastAPI app.

    Args:
        registry: the model versions and the active one.
        events: where impressions and feedback are committed (``EventStore``).
        keys: the API keys, or None for no authentication (``wager serve`` allows that only
            on a loopback address or with ``--insecure``).
        limits: request limits (default :class:`Limits`).
    """
    metrics = ServiceMetrics()
    metrics.set_model(registry.active)
    app = FastAPI(
        title="wager",
        summary="Recommendations that know how sure they are.",
        version="1",
    )
    limits = limits or Limits()
    app.state.service = _Service(registry, events, keys, limits, metrics, _RecentRequests())
    app.include_router(_router)
    app.add_middleware(_Observe, metrics=metrics, limit=limits.max_body_bytes)
    for exc_type, handler in _HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    return app


# ----------------------------------------------------------------------------- errors


def _detail(loc: Sequence[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": list(loc), "msg": msg, "type": kind}


async def _on_validation(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 without echoing the input (which may hold NaN, not JSON)."""
    assert isinstance(exc, RequestValidationError)
    errors = [_detail(e["loc"], e["msg"], e["type"]) for e in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


async def _on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return JSONResponse({"detail": [_detail(exc.loc, str(exc))]}, status_code=exc.status)


async def _on_auth(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def _on_unknown_version(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _on_run_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": f"{exc} (the active version is unchanged)"}, status_code=409)


async def _on_store(request: Request, exc: Exception) -> Response:
    return JSONResponse({"detail": str(exc)}, status_code=503)


async def _on_value_error(request: Request, exc: Exception) -> Response:
    """A ValueError from inside wager (e.g. a context value a feature cannot take): the
    request's fault, reported with its message instead of a 500."""
    log.info("request refused: %s", exc)
    return JSONResponse({"detail": [_detail(["body"], str(exc))]}, status_code=422)


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]] = {
    RequestValidationError: _on_validation,
    RequestError: _on_request_error,
    AuthError: _on_auth,
    UnknownVersionError: _on_unknown_version,
    RunError: _on_run_error,
    StoreUnavailableError: _on_store,
    ValueError: _on_value_error,
    WagerError: _on_value_error,
}


# ----------------------------------------------------------------------------- helpers


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


def _commit(action: Callable[[], Any], what: str) -> Any:
    """Run a store call; any failure becomes :class:`StoreUnavailableError` (503)."""
    try:
        return action()
    except Exception as exc:  # the store's driver errors are not wager's to enumerate
        log.exception("event store failed while %s", what)
        raise StoreUnavailableError(
            f"the event store failed while {what} ({type(exc).__name__}); nothing was "
            "acknowledged, retry later"
        ) from exc


# ----------------------------------------------------------------------------- routes

_router = APIRouter()


@_router.post("/v1/recommend", response_model=RecommendResponse, dependencies=[_needs("recommend")])
def recommend(body: RecommendRequest, request: Request) -> RecommendResponse:
    """Top-k items for one user with confidence and propensities; every item is logged as
    an impression (committed) before the response is sent.

    Exclusions are applied before the policy picks (the candidates are the catalogue less
    ``exclude``), so the propensities are those of the slate actually served.
    """
    service = _service(request)
    if body.k > service.limits.max_k:
        raise RequestError(("body", "k"), f"k must be <= {service.limits.max_k}, got {body.k}")
    if len(body.exclude) > service.limits.max_exclude:
        raise RequestError(
            ("body", "exclude"),
            f"exclude holds {len(body.exclude)} ids; at most {service.limits.max_exclude}",
        )
    policy = _policy(body)
    version, rec = service.registry.current()
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
            state=PolicyState.seeded(secrets.randbits(63)),
        )
    except ValueError as exc:
        raise _check_context(exc, body.context) from exc
    response = _slate(frame, body, version, rec)
    _log_slate(service, response, body)
    return response


def _slate(frame: Any, body: RecommendRequest, version: str, rec: Recommender) -> RecommendResponse:
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
        request_id=uuid.uuid4().hex,
        model_version=version,
        arm="",
        policy=str(frame.attrs.get("policy", {}).get("name", body.policy)),
        cold_start=not bool(rec.known_users([body.user_id])[0]),
        items=out,
    )


def _log_slate(service: _Service, response: RecommendResponse, body: RecommendRequest) -> None:
    """Commit one impression per served item, then count them."""
    ts = time.time()
    rows = [
        Impression(
            request_id=response.request_id,
            user_id=body.user_id,
            item_id=item.item_id,
            position=item.rank,
            score=item.score if item.score is not None else float("nan"),
            mean=item.mean if item.mean is not None else float("nan"),
            std=item.std,
            policy=response.policy,
            propensity=item.propensity if item.propensity is not None else 1.0,
            arm=response.arm,
            model_version=response.model_version,
            ts=ts,
        )
        for item in response.items
    ]
    if rows:
        _commit(lambda: service.events.log_impressions(rows), "logging impressions")
    service.recent.put(response.request_id, response.arm)
    service.metrics.impressions.labels(arm=response.arm).inc(len(rows))
    predicted = sum(item.mean for item in response.items if item.mean is not None)
    service.metrics.predicted.labels(arm=response.arm).inc(predicted)


@_router.post("/v1/score", response_model=ScoreResponse, dependencies=[_needs("recommend")])
def score(body: ScoreRequest, request: Request) -> ScoreResponse:
    """Mean, std, interval and confidence of catalogue items for one user."""
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
    result: FeedbackResult = _commit(
        lambda: service.events.add_feedback(events), "storing feedback"
    )
    _count_feedback(service, events, result)
    if not result.unknown:
        return FeedbackResponse(stored=result.stored, duplicates=result.duplicates)
    position: dict[str, int] = {}
    for n, e in enumerate(events):
        position.setdefault(e.event_id, n)
    detail = [
        _detail(
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
        arm = service.recent.arm(e.request_id)
        m.feedback.labels(arm=arm, kind="click" if e.click is not None else "rating").inc()
        if e.click == 1:
            m.clicks.labels(arm=arm).inc()


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
    (requests in flight finish on the old version)."""
    service = _service(request)
    previous = service.registry.active
    service.registry.activate(version)
    service.metrics.set_model(version)
    service.metrics.activations.inc()
    log.info("model version %s activated (was %s)", version, previous)
    return ActivateResponse(active=version, previous=previous)


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
    registry = _service(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
