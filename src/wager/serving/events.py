"""What the service logs: one row per served item (an impression) and one per feedback event.

These shapes are the contract between the HTTP API (:mod:`wager.serving.app`), which writes
them, and the event store (:mod:`wager.serving.store`), which commits them durably before
the API acknowledges anything. Ids are strings (the API's JSON ids); times are Unix seconds
(float, UTC).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Impression:
    """One item shown in one response of ``POST /v1/recommend``.

    Attributes:
        request_id: the response's id (unique per request).
        user_id: the requesting user (as sent).
        item_id: the item shown.
        position: 1-based rank in the slate.
        score: what the policy ranked by (e.g. mean + beta * std for UCB).
        mean: predicted mean (click probability, rating or relevance score).
        std: predicted std, or None for a point model.
        policy: the policy's name, e.g. "ucb(beta=1.0)".
        propensity: probability the policy had of this choice at this position, in (0, 1].
        arm: the experiment arm that served it ("" outside an experiment).
        model_version: the registry version that predicted it.
        ts: when it was served, Unix seconds.
        model_mean: the model's own mean before the service's online recalibration
            (``wager serve --recalibrate``; equal to ``mean`` without it), or None when
            unknown (the recalibration changed while the request was served).
    """

    request_id: str
    user_id: str
    item_id: str
    position: int
    score: float
    mean: float
    std: float | None
    policy: str
    propensity: float
    arm: str
    model_version: str
    ts: float
    model_mean: float | None = None


@dataclass(frozen=True)
class FeedbackEvent:
    """One outcome of a shown item: a click (0/1) or a rating, tied to its request.

    Attributes:
        event_id: the client's id of the event; the store keeps one event per id
            (idempotent retries).
        request_id: the ``request_id`` of the response that showed the item.
        item_id: the item the event is about.
        click: 0 or 1, or None when the event is a rating.
        rating: the rating, or None when the event is a click.
        ts: when the service received it, Unix seconds.
    """

    event_id: str
    request_id: str
    item_id: str
    click: int | None
    rating: float | None
    ts: float


@dataclass(frozen=True)
class FeedbackResult:
    """What :meth:`EventLog.add_feedback` did with a batch of events.

    Attributes:
        stored: events newly committed (``len(stored_ids)``).
        duplicates: event ids already stored (the earlier event is kept, the new one ignored).
        unknown: events whose (request_id, item_id) was never served, in input order: not
            stored (the API answers 422 naming them).
        stored_ids: the event ids newly committed, in input order (of each id's first
            served event: the one stored), so the API counts per arm only the events this
            call stored and never a duplicate twice.
        placement: event id -> (arm, 1-based slate position) of the impression each stored
            event is about, read from the store (so any server process attributes feedback
            to the arm and slot that served it).

    Raises:
        ValueError: ``stored`` is not the number of ``stored_ids``.
    """

    stored: int
    duplicates: int
    unknown: list[FeedbackEvent] = field(default_factory=list)
    stored_ids: list[str] = field(default_factory=list)
    placement: dict[str, tuple[str, int]] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.stored != len(self.stored_ids):
            raise ValueError(
                f"FeedbackResult: stored = {self.stored} but stored_ids holds "
                f"{len(self.stored_ids)} ids; list every newly committed event id"
            )


class EventLog(Protocol):
    """A durable log of impressions and feedback (``EventStore`` for SQLite / PostgreSQL)."""

    def log_impressions(self, rows: Sequence[Impression]) -> None:
        """Commit ``rows`` in one transaction; return only once it is durable."""
        ...

    def add_feedback(self, events: Sequence[FeedbackEvent]) -> FeedbackResult:
        """Commit the events of ``events`` not yet stored (by event id) whose (request_id,
        item_id) was served, in one transaction; return only once it is durable."""
        ...

    def ping(self) -> bool:
        """True when the database answers (what ``/readyz`` checks)."""
        ...

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key`` (shared by the service's processes), or None."""
        ...

    def set_state(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` durably (e.g. the active model version)."""
        ...

    def delete_state(self, key: str) -> None:
        """Remove ``key`` (nothing when absent)."""
        ...

    def states(self, prefix: str) -> dict[str, str]:
        """Every stored key starting with ``prefix`` and its value."""
        ...

    def served_outcomes(
        self, model_version: str, arm: str, position: int | None, served_before: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n,) model means and (n,) 0/1 clicks of the impressions of (version, arm) at
        ``position`` served before ``served_before`` (what online recalibration fits on)."""
        ...
