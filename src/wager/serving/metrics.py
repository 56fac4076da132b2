"""What the service measures: its Prometheus metrics (own registry, names ``wager_*``), the
request id -> experiment arm memory that attributes feedback to arms, and the ASGI
middleware that counts and times every request and enforces the body size limit (413)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


class RecentRequests:
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


class ObserveMiddleware:
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
    """A ``receive`` that hands out the already-read ``messages`` first, then reads on."""
    pending = list(messages)

    async def replayed() -> Message:
        return pending.pop(0) if pending else await receive()

    return replayed


async def _send_json(send: Send, status: int, payload: dict[str, Any]) -> None:
    """Answer with ``payload`` as JSON and ``status`` straight through ASGI."""
    body = JSONResponse(payload).body
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
