"""Online recalibration in the service (``wager serve --recalibrate``).

A served click model's predicted CTR drifts from the observed one: a policy picks the items
the model over-estimates (the winner's curse, strongest for greedy, weaker for a policy that
explores), and the traffic differs from the training data. The ``wager_calibration_*``
gauges show it per arm. With ``--recalibrate`` each server process runs a
:class:`Recalibrator`: a thread that every ``every_s`` seconds reads, for each served
(model version, experiment arm) of a click model, the model's own means
(``impressions.model_mean``) and clicks of its impressions from the event store
(``EventStore.served_outcomes``: rank 1 by default, served at least ``delay_s`` seconds ago
so their clicks had time to arrive), and fits an
:class:`~wager.uncertainty.recalibration.OnlineRecalibration` (a Platt map with a prior on
the identity). One map per arm, because the selection bias depends on the policy that
selects. Each request reads its (version, arm)'s map once (:meth:`Recalibrator.map_for`)
and is served through it: the candidates' predictions are recalibrated before the policy
picks (fast and generic path alike), and ``/v1/score`` answers recalibrated numbers.

- Prequential: a slate is served with the map fitted on impressions before it; the
  impression logs the model's own mean beside the served one (the inverse of the map it
  was served with), so fits never feed on their own output.
- Shared: every process fits on the same store, so workers serve (nearly) the same map;
  a restarted service fits on the logs at once (the first refresh runs at start-up).
- Cheap: candidate caches keep the model's own predictions (the map is applied after
  them); a map is replaced only when it moves by more than :data:`MIN_CHANGE` in slope or
  intercept; the interval stretches to 20 times the last refresh's duration, so the reads
  take at most about 5% of a process.
- Visible: ``wager_online_recalibration{version, arm, parameter}`` (slope, intercept,
  impressions, clicks) and ``wager_calibration_model_predicted_ctr`` (the model's own CTR
  beside the served one) in ``/metrics``.

A precomputed table is served as computed offline, so ``wager serve`` refuses
``--recalibrate`` with ``--precomputed``. Versions that are not click models are left alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from wager.serving.periodic import Periodic
from wager.uncertainty.recalibration import DEFAULT_PRIOR, OnlineRecalibration

if TYPE_CHECKING:
    from wager.recommender import Recommender

#: a refit replaces the served map only when its slope or intercept moved more than this
MIN_CHANGE = 0.005


class ServedOutcomes(Protocol):
    """What the recalibrator reads (``EventStore`` implements it)."""

    def served_outcomes(
        self, model_version: str, arm: str, position: int | None, served_before: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n,) model means and (n,) 0/1 clicks of a (version, arm)'s impressions."""
        ...


@dataclass(frozen=True)
class RecalibrationSettings:
    """How the service recalibrates (``wager serve --recalibrate ...``).

    Attributes:
        every_s: seconds between refits (> 0).
        prior: the prior's strength on the identity map, in impressions (> 0).
        delay_s: only impressions served at least this many seconds ago are fitted on (their
            clicks have arrived); >= 0. Set it to the time clicks take to come back.
        position: fit on impressions at this 1-based rank (the slot whose CTR the model
            predicts: 1 for a model asked for position 1), or None for every rank.
    """

    every_s: float = 2.0
    prior: float = DEFAULT_PRIOR
    delay_s: float = 30.0
    position: int | None = 1

    def __post_init__(self) -> None:
        for name, low, strict in (("every_s", 0.0, True), ("prior", 0.0, True),
                                  ("delay_s", 0.0, False)):  # fmt: skip
            value = getattr(self, name)
            ok = isinstance(value, int | float) and math.isfinite(value)
            if not ok or value < low or (strict and value == low):
                bound = "> 0" if strict else ">= 0"
                raise ValueError(f"recalibration {name} must be a number {bound}, got {value!r}")
        if self.position is not None and (
            isinstance(self.position, bool) or not isinstance(self.position, int)
            or self.position < 1
        ):  # fmt: skip
            raise ValueError(
                f"recalibration position must be a 1-based rank or None, got {self.position!r}"
            )


def model_means(
    online: OnlineRecalibration | None, means: list[float | None]
) -> list[float | None]:
    """The model's own means of a slate served through ``online`` with ``means`` (None
    where undefined): the inverse map, or the served means themselves without one."""
    if online is None or online.identity:
        return means
    known = [m for m in means if m is not None]
    own = iter(online.model_mean(np.asarray(known, dtype=np.float64)).tolist())
    return [None if m is None else next(own) for m in means]


def recalibrates(rec: Recommender) -> bool:
    """Whether online recalibration applies to ``rec``: a click model's probabilities."""
    return rec.spec.task == "click"


class Recalibrator:
    """Refits the online recalibration of the served (version, arm) pairs (module
    docstring) and holds the maps the routes apply.

    Args:
        store: where the impressions and clicks are read.
        served: the served (version, arm label, recommender) triples (a callable: they
            change; the arm label is "" outside an experiment).
        settings: the refit's settings.
        publish: called with (version, arm, map) when a pair gets a new map (metrics).
        clock: the time (Unix seconds), replaceable in tests.
    """

    def __init__(
        self,
        store: ServedOutcomes,
        served: Callable[[], Sequence[tuple[str, str, Recommender]]],
        settings: RecalibrationSettings | None = None,
        publish: Callable[[str, str, OnlineRecalibration], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.served = served
        self.settings = settings or RecalibrationSettings()
        self.publish = publish
        self.clock = clock
        self._maps: dict[tuple[str, str], OnlineRecalibration] = {}
        self._last_s = 0.0  # how long the last refresh took
        self._periodic = Periodic(
            "wager-recalibrate", self.refresh,
            lambda: max(self.settings.every_s, 20 * self._last_s),
            "online recalibration: reading the event store failed (the maps are kept)",
        )  # fmt: skip

    def map_for(self, version: str, arm: str) -> OnlineRecalibration | None:
        """The map a request of ``arm`` served by ``version`` is recalibrated with (None:
        none yet, or the identity). One read of an immutable object: a request keeps the
        map it read even when a refit lands meanwhile."""
        return self._maps.get((version, arm))

    def refresh(self) -> dict[tuple[str, str], OnlineRecalibration]:
        """Refit every served (version, arm) of a click model now; returns (version, arm) ->
        the map it is served with after this call (the identity included)."""
        start = time.perf_counter()
        s = self.settings
        fitted_now: dict[tuple[str, str], OnlineRecalibration] = {}
        maps = dict(self._maps)
        for version, arm, rec in self.served():
            key = (version, arm)
            if key in fitted_now or not recalibrates(rec):
                continue
            before = self.clock() - s.delay_s
            means, clicks = self.store.served_outcomes(version, arm, s.position, before)
            fitted = OnlineRecalibration.fit(means, clicks, prior=s.prior)
            current = maps.get(key)
            if current is None or _moved(current, fitted):
                if fitted.identity:
                    maps.pop(key, None)
                else:
                    maps[key] = fitted
                if self.publish is not None:
                    self.publish(version, arm, fitted)
                current = fitted
            fitted_now[key] = current
        self._maps = maps  # one assignment: readers see the old maps or the new ones
        self._last_s = time.perf_counter() - start
        return fitted_now

    def start(self) -> None:
        """Start refitting (a daemon thread)."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop refitting (waits for the thread); the maps installed stay."""
        self._periodic.stop()


def _moved(old: OnlineRecalibration, new: OnlineRecalibration) -> bool:
    return (
        abs(old.slope - new.slope) > MIN_CHANGE or abs(old.intercept - new.intercept) > MIN_CHANGE
    )
