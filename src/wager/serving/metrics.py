"""What the service measures: its Prometheus metrics (own registry, names ``wager_*``), online
calibration per arm (:class:`Calibration`; feedback is attributed to the arm and slot of its
impression as the event store reads them back), and the ASGI middleware that counts and
times every request and enforces the body size limit (413).

Several worker processes (``wager serve --workers N``) share their metrics through
prometheus_client's multiprocess mode: with the environment variable
``PROMETHEUS_MULTIPROC_DIR`` naming an empty folder before the processes start, every
counter, histogram and gauge keeps its value in a file per process there, and
:meth:`ServiceMetrics.exposition` in any worker reports the sums over all of them (the
calibration gauges derived from the summed tallies)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from typing import Any, ClassVar

from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from wager.evaluation.abtest import wilson_interval
from wager.uncertainty.recalibration import OnlineRecalibration

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: the environment variable that turns on prometheus_client's multiprocess mode: a folder,
#: empty when the first worker starts, for the workers' metric files
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


class ServiceMetrics:
    """The Prometheus metrics of one app, in their own registry (names start ``wager_``).

    Predicted vs observed CTR per arm (online calibration): ``wager_predicted_mean_total /
    wager_impressions_total`` against ``wager_feedback_clicks_total / wager_impressions_total``,
    and ready-made per arm and slot in the ``wager_calibration_*`` gauges of
    :class:`Calibration` (``calibration``).

    The mode is decided at construction, as prometheus_client decides it: with
    ``PROMETHEUS_MULTIPROC_DIR`` set (it must be set before the process imports
    prometheus_client), :meth:`exposition` reports every worker's metrics summed, and
    ``wager_model_active`` carries a ``pid`` label per live worker (each says which version
    it serves); without it, this process's registry as it is. (In multiprocess mode a
    process keeps one value per series: two ``ServiceMetrics`` in one process share them.)

    Example:
        >>> m = ServiceMetrics()
        >>> m.set_model("v1")
        >>> m.served("control", 2, [0.25, None])
        >>> b'wager_impressions_total{arm="control"} 2.0' in m.exposition()
        True
    """

    #: the media type of :meth:`exposition` (Prometheus text format)
    content_type: ClassVar[str] = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        #: the workers' metric folder in multiprocess mode, None in single-process mode
        self.multiprocess_dir = _multiprocess_dir()
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
            "wager_model_active",
            "1 for the model version served now (per live worker: label pid).",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )
        self.activations = Counter(
            "wager_model_activations", "Model versions activated.", registry=r
        )
        self.calibration = Calibration(r)
        self.recalibration = Gauge(
            "wager_online_recalibration",
            "The online recalibration map of a served version and experiment arm: slope, "
            "intercept, and the impressions and clicks it was fitted on (wager serve "
            "--recalibrate).",
            ["version", "arm", "parameter"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self._per_arm: dict[str, tuple[Any, Any]] = {}
        self._version: str | None = None
        self._workers: CollectorRegistry | None = None
        if self.multiprocess_dir is not None:
            self._workers = CollectorRegistry()
            self._workers.register(_AllWorkers(self.multiprocess_dir))

    def served(
        self,
        arm: str,
        impressions: int,
        means: Sequence[float | None],
        model_means: Sequence[float | None] | None = None,
    ) -> None:
        """Count one served slate of ``arm``: its impressions, the sum of its predicted
        means (None where undefined) and its online calibration (``model_means``: the
        model's own means before online recalibration, None: the same as ``means``)."""
        children = self._per_arm.get(arm)
        if children is None:  # labels() costs a lock and a tuple per call: keep the children
            children = (self.impressions.labels(arm=arm), self.predicted.labels(arm=arm))
            self._per_arm[arm] = children
        children[0].inc(impressions)
        children[1].inc(sum(m for m in means if m is not None))
        self.calibration.served(arm, means, model_means)

    def set_recalibration(self, version: str, arm: str, fitted: OnlineRecalibration) -> None:
        """Export the online recalibration map ``arm`` is served with by ``version``."""
        for name in ("slope", "intercept", "impressions", "clicks"):
            child = self.recalibration.labels(version=version, arm=arm, parameter=name)
            child.set(getattr(fitted, name))

    def close(self) -> None:
        """At a server process's end: in multiprocess mode, drop its live gauges (its
        ``wager_model_active`` series) from what the other workers export; otherwise
        nothing. (A process killed without it leaves its series until the folder goes.)"""
        if self.multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self.multiprocess_dir)

    def set_model(self, version: str) -> None:
        """Mark ``version`` as the one served (the only series of ``wager_model_active`` in
        single-process mode; in multiprocess mode the previous version's value in this
        process's file is set to 0 first, so no stale 1 survives)."""
        if self._version is not None and self._version != version:
            self.model.labels(version=self._version).set(0)
        self.model.clear()
        self.model.labels(version=version).set(1)
        self._version = version

    def exposition(self) -> bytes:
        """The metrics in Prometheus text format (media type :attr:`content_type`): this
        process's registry in single-process mode; in multiprocess mode every worker's
        counters, histograms and gauges summed from their files (gauges per pid), and the
        ``wager_calibration_*`` gauges derived from the summed tallies. In multiprocess
        mode only prometheus_client's metric objects reach the files: another custom
        collector registered on :attr:`registry` would not be exported."""
        return generate_latest(self._workers if self._workers is not None else self.registry)


def _multiprocess_dir() -> str | None:
    """The folder named by ``PROMETHEUS_MULTIPROC_DIR`` (None when it is unset), checked:
    a folder that exists, and prometheus_client's values kept in files there."""
    path = os.environ.get(MULTIPROC_DIR)
    if path is None:
        return None
    if not os.path.isdir(path):
        raise ValueError(
            f"the environment variable {MULTIPROC_DIR}={path!r} is not a folder: in "
            "prometheus_client's multiprocess mode every worker keeps its metric values in "
            "files there; create the folder (empty) before the server starts, or unset the "
            "variable for one process's metrics"
        )
    # prometheus_client picks file-backed values when it is imported, if the variable is set
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"the environment variable {MULTIPROC_DIR}={path!r} was set after prometheus_client "
            "was imported, so this process keeps its metric values in memory and the other "
            "workers' /metrics would miss them; set it before the process starts (as wager "
            "serve --workers does) or unset it"
        )
    return path


class _AllWorkers:
    """A collector: every worker's metrics summed from the files in ``path``
    (:class:`MultiProcessCollector`) and the calibration gauges derived from them."""

    def __init__(self, path: str) -> None:
        self._files = MultiProcessCollector(None, path)

    def describe(self) -> list[Metric]:
        """No fixed series: the registry then calls :meth:`collect` for them."""
        return []

    def collect(self) -> list[Metric]:
        """The summed families, then the ``wager_calibration_*`` gauges."""
        families = list(self._files.collect())
        return [*families, *calibration_gauges(families)]


#: the slots of :class:`Calibration`: every served position, and rank 1 alone
CALIBRATION_SLOTS = ("all", "top")

#: the confidence level of the calibration gauges' Wilson interval
CALIBRATION_LEVEL = 0.95

#: the counters of :class:`Calibration`, labelled arm and slot, whose names start
#: ``wager_calibration_tally_``: name -> help
CALIBRATION_TALLIES = {
    "impressions": "Impressions served (arm, slot: all positions or rank 1).",
    "meaned": "Impressions served with a predicted mean.",
    "predicted": "Sum of the predicted means of the served impressions.",
    "clicks": "Stored clicks on the served impressions.",
    "model_meaned": "Impressions served with the model's own mean known.",
    "model_predicted": "Sum of the model's own means (before online recalibration).",
}

_GAUGES = {  # name after wager_calibration_ -> (help, key of the snapshot row)
    "impressions": ("Impressions served (arm, slot: all positions or rank 1).", "impressions"),
    "predicted_ctr": ("Mean predicted CTR of the served impressions.", "predicted_ctr"),
    "model_predicted_ctr": (
        "Mean of the model's own predicted CTR (before online recalibration).",
        "model_predicted_ctr",
    ),
    "observed_ctr": ("Observed CTR: stored clicks / impressions.", "observed_ctr"),
    "observed_ctr_low": ("Lower end of the observed CTR's 95% Wilson interval.", "low"),
    "observed_ctr_high": ("Upper end of the observed CTR's 95% Wilson interval.", "high"),
    "within_interval": ("1 when the predicted CTR lies in the observed CTR's interval.", "within"),
}


def calibration_snapshot(families: Iterable[Metric]) -> dict[tuple[str, str], dict[str, float]]:
    """Online calibration from the samples of the ``wager_calibration_tally_*`` counters
    among ``families`` (any collected metric families: one registry's, or every worker's
    summed by :class:`MultiProcessCollector`; other families are ignored, samples of one
    (arm, slot) are added up).

    Returns:
        (arm, slot) -> impressions, clicks (at most the impressions), predicted_ctr (NaN
        without a mean), model_predicted_ctr (the model's own, before online
        recalibration; NaN when unknown), observed_ctr, low, high (95% Wilson interval),
        within (1.0 or 0.0), for every (arm, slot) with impressions.
    """
    column = {f"wager_calibration_tally_{name}": i for i, name in enumerate(CALIBRATION_TALLIES)}
    tally: dict[tuple[str, str], list[float]] = {}
    for family in families:
        i = column.get(family.name)
        if i is None:
            continue
        for sample in family.samples:
            if sample.name == family.name + "_total":
                key = (sample.labels["arm"], sample.labels["slot"])
                tally.setdefault(key, [0.0] * len(column))[i] += sample.value
    out = {}
    for key, (n, n_mean, predicted, clicks, n_model, model) in sorted(tally.items()):
        if n == 0:
            continue
        clicks = min(clicks, n)  # several click events per impression: never above n
        low, high = wilson_interval(int(clicks), int(n), CALIBRATION_LEVEL)
        pred = predicted / n_mean if n_mean else float("nan")
        out[key] = {
            "impressions": n,
            "clicks": clicks,
            "predicted_ctr": pred,
            "model_predicted_ctr": model / n_model if n_model else float("nan"),
            "observed_ctr": clicks / n,
            "low": low,
            "high": high,
            "within": float(low <= pred <= high),
        }
    return out


def calibration_gauges(families: Iterable[Metric]) -> list[GaugeMetricFamily]:
    """The ``wager_calibration_*`` gauges (see :class:`Calibration`) of
    :func:`calibration_snapshot` ``(families)``, labelled arm and slot."""
    snap = calibration_snapshot(families)
    gauges = []
    for name, (doc, key) in _GAUGES.items():
        family = GaugeMetricFamily(f"wager_calibration_{name}", doc, labels=["arm", "slot"])
        for (arm, slot), row in snap.items():
            family.add_metric([arm, slot], row[key])
        gauges.append(family)
    return gauges


class Calibration:
    """Online calibration per experiment arm: the mean predicted CTR of the served
    impressions against their observed CTR (clicks / impressions) and its 95% Wilson
    interval, for every position (slot "all") and for rank 1 alone (slot "top").

    Why a top slot: the served ``mean`` is the model's prediction for the request's context,
    which for a position-aware click model asked for position 1 (the simulator's convention)
    is the top slot's CTR. Lower positions are clicked less (the position effect), so over
    all positions the observed CTR sits below the predicted one by the position bias even
    for a perfectly calibrated model; at rank 1 the two measure the same thing.

    The tallies are Prometheus counters labelled ``arm`` and ``slot`` (so several worker
    processes add up, see :class:`ServiceMetrics`): ``wager_calibration_tally_impressions``,
    ``_meaned`` (impressions with a predicted mean), ``_predicted`` (sum of the means),
    ``_clicks``, and ``_model_meaned`` / ``_model_predicted`` for the model's own means
    before online recalibration (``wager serve --recalibrate``). A Prometheus collector too
    (registered with them on ``registry``) exporting, with labels ``arm`` and ``slot``, the
    gauges :func:`calibration_gauges` derives from them: ``wager_calibration_impressions``,
    ``wager_calibration_predicted_ctr``, ``wager_calibration_model_predicted_ctr`` (the
    model's own, so the recalibration's effect stays visible),
    ``wager_calibration_observed_ctr``, ``wager_calibration_observed_ctr_low`` / ``_high``
    (95% Wilson interval) and ``wager_calibration_within_interval`` (1 when the predicted
    CTR lies inside it). Arms without impressions export no gauges.

    Example:
        >>> cal = Calibration(CollectorRegistry())
        >>> cal.served("control", [0.2, None, 0.4])
        >>> cal.clicked("control", top=True)
        >>> row = cal.snapshot()[("control", "all")]
        >>> row["impressions"], round(row["predicted_ctr"], 6), round(row["observed_ctr"], 6)
        (3.0, 0.3, 0.333333)
    """

    LEVEL = CALIBRATION_LEVEL

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        """Make the tally counters.

        Args:
            registry: where the tally counters and this collector are registered (None:
                nowhere; the counters still count, and in multiprocess mode reach the files).
        """
        self._counters = [
            Counter(f"wager_calibration_tally_{name}", doc, ["arm", "slot"], registry=registry)
            for name, doc in CALIBRATION_TALLIES.items()
        ]
        # arm -> per slot (all, top): the (impressions, meaned, predicted, clicks) children
        self._arms: dict[str, tuple[tuple[Any, ...], ...]] = {}
        if registry is not None:
            registry.register(self)

    def _children(self, arm: str) -> tuple[tuple[Any, ...], ...]:
        children = self._arms.get(arm)
        if children is None:  # labels() costs a lock and a tuple per call: keep the children
            children = tuple(
                tuple(c.labels(arm=arm, slot=slot) for c in self._counters)
                for slot in CALIBRATION_SLOTS
            )
            self._arms[arm] = children
        return children

    def served(
        self,
        arm: str,
        means: Sequence[float | None],
        model_means: Sequence[float | None] | None = None,
    ) -> None:
        """Count one served slate of ``arm``: ``means`` are the predicted means of its items
        in rank order (None where undefined), ``model_means`` the model's own before online
        recalibration (None: the same as ``means``)."""
        if not means:
            return
        every, top = self._children(arm)
        every[0].inc(len(means))
        top[0].inc()
        own = means if model_means is None else model_means
        for offset, column in ((1, means), (4, own)):
            known = [m for m in column if m is not None]
            if known:
                every[offset].inc(len(known))
                every[offset + 1].inc(sum(known))
            if column[0] is not None:
                top[offset].inc()
                top[offset + 1].inc(column[0])

    def clicked(self, arm: str, top: bool) -> None:
        """Count one stored click of ``arm`` (``top``: on the rank-1 item of its slate)."""
        every, first = self._children(arm)
        every[3].inc()
        if top:
            first[3].inc()

    def snapshot(self) -> dict[tuple[str, str], dict[str, float]]:
        """:func:`calibration_snapshot` of this process's tallies: (arm, slot) ->
        impressions, clicks, predicted_ctr (NaN without a mean), observed_ctr, low, high,
        within (1.0 or 0.0), for every (arm, slot) served."""
        return calibration_snapshot(self._tallies())

    def _tallies(self) -> Iterator[Metric]:
        return itertools.chain.from_iterable(c.collect() for c in self._counters)

    def describe(self) -> list[Metric]:
        """No fixed series: the registry then calls :meth:`collect` for them."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The ``wager_calibration_*`` gauges (class docstring) of this process's tallies."""
        yield from calibration_gauges(self._tallies())


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
