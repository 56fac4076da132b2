"""What the service measures: its Prometheus metrics (own registry, names ``wager_*``), online
calibration per arm (:class:`Calibration`; feedback is attributed to the arm and slot of its
impression as the event store reads them back), and the ASGI middleware that counts and
times every request and enforces the body size limit (413)."""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from wager.evaluation.abtest import wilson_interval

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class ServiceMetrics:
    """The Prometheus metrics of one app, in their own registry (names start ``wager_``).

    Predicted vs observed CTR per arm (online calibration): ``wager_predicted_mean_total /
    wager_impressions_total`` against ``wager_feedback_clicks_total / wager_impressions_total``,
    and ready-made per arm and slot in the ``wager_calibration_*`` gauges of
    :class:`Calibration` (``calibration``).
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
        self.calibration = Calibration()
        r.register(self.calibration)
        self._per_arm: dict[str, tuple[Any, Any]] = {}

    def served(self, arm: str, impressions: int, means: Sequence[float | None]) -> None:
        """Count one served slate of ``arm``: its impressions, the sum of its predicted
        means (None where undefined) and its online calibration."""
        children = self._per_arm.get(arm)
        if children is None:  # labels() costs a lock and a tuple per call: keep the children
            children = (self.impressions.labels(arm=arm), self.predicted.labels(arm=arm))
            self._per_arm[arm] = children
        children[0].inc(impressions)
        children[1].inc(sum(m for m in means if m is not None))
        self.calibration.served(arm, means)

    def set_model(self, version: str) -> None:
        """Mark ``version`` as the one served (the only series of ``wager_model_active``)."""
        self.model.clear()
        self.model.labels(version=version).set(1)


#: the slots of :class:`Calibration`: every served position, and rank 1 alone
CALIBRATION_SLOTS = ("all", "top")


class Calibration:
    """Online calibration per experiment arm: the mean predicted CTR of the served
    impressions against their observed CTR (clicks / impressions) and its 95% Wilson
    interval, for every position (slot "all") and for rank 1 alone (slot "top").

    Why a top slot: the served ``mean`` is the model's prediction for the request's context,
    which for a position-aware click model asked for position 1 (the simulator's convention)
    is the top slot's CTR. Lower positions are clicked less (the position effect), so over
    all positions the observed CTR sits below the predicted one by the position bias even
    for a perfectly calibrated model; at rank 1 the two measure the same thing.

    A Prometheus collector (registered in :class:`ServiceMetrics`' registry) exporting, with
    labels ``arm`` and ``slot``: ``wager_calibration_impressions``,
    ``wager_calibration_predicted_ctr``, ``wager_calibration_observed_ctr``,
    ``wager_calibration_observed_ctr_low`` / ``_high`` (95% Wilson interval) and
    ``wager_calibration_within_interval`` (1 when the predicted CTR lies inside it). Arms
    without impressions served by this process export nothing.
    """

    LEVEL = 0.95

    def __init__(self) -> None:
        # (arm, slot) -> [impressions, impressions with a mean, sum of means, clicks]
        self._tally: dict[tuple[str, str], list[float]] = {}
        self._lock = threading.Lock()

    def _row(self, arm: str, slot: str) -> list[float]:
        return self._tally.setdefault((arm, slot), [0.0, 0.0, 0.0, 0.0])

    def served(self, arm: str, means: Sequence[float | None]) -> None:
        """Count one served slate of ``arm``: ``means`` are the predicted means of its items
        in rank order (None where undefined)."""
        if not means:
            return
        with self._lock:
            for slot, part in (("all", means), ("top", means[:1])):
                row = self._row(arm, slot)
                known = [m for m in part if m is not None]
                row[0] += len(part)
                row[1] += len(known)
                row[2] += sum(known)

    def clicked(self, arm: str, top: bool) -> None:
        """Count one stored click of ``arm`` (``top``: on the rank-1 item of its slate)."""
        with self._lock:
            self._row(arm, "all")[3] += 1
            if top:
                self._row(arm, "top")[3] += 1

    def snapshot(self) -> dict[tuple[str, str], dict[str, float]]:
        """(arm, slot) -> impressions, clicks, predicted_ctr (NaN without a mean),
        observed_ctr, low, high, within (1.0 or 0.0), for every (arm, slot) served."""
        with self._lock:
            rows = {key: list(row) for key, row in self._tally.items()}
        out = {}
        for key, (n, n_mean, predicted, clicks) in rows.items():
            if n == 0:
                continue
            clicks = min(clicks, n)  # several click events per impression: never above n
            low, high = wilson_interval(int(clicks), int(n), self.LEVEL)
            pred = predicted / n_mean if n_mean else float("nan")
            out[key] = {
                "impressions": n,
                "clicks": clicks,
                "predicted_ctr": pred,
                "observed_ctr": clicks / n,
                "low": low,
                "high": high,
                "within": float(low <= pred <= high),
            }
        return out

    def describe(self) -> list[Metric]:
        """No fixed series: the registry then calls :meth:`collect` for them."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The ``wager_calibration_*`` gauges (class docstring)."""
        names = {
            "impressions": "Impressions served (arm, slot: all positions or rank 1).",
            "predicted_ctr": "Mean predicted CTR of the served impressions.",
            "observed_ctr": "Observed CTR: stored clicks / impressions.",
            "observed_ctr_low": "Lower end of the observed CTR's 95% Wilson interval.",
            "observed_ctr_high": "Upper end of the observed CTR's 95% Wilson interval.",
            "within_interval": "1 when the predicted CTR lies in the observed CTR's interval.",
        }
        keys = {"observed_ctr_low": "low", "observed_ctr_high": "high", "within_interval": "within"}
        snap = self.snapshot()
        for name, doc in names.items():
            family = GaugeMetricFamily(f"wager_calibration_{name}", doc, labels=["arm", "slot"])
            for (arm, slot), row in sorted(snap.items()):
                family.add_metric([arm, slot], row[keys.get(name, name)])
            yield family


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
