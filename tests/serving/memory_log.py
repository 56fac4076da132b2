"""An in-memory :class:`~wager.serving.events.EventLog` for the API tests: the protocol's
contract (idempotent by event id; feedback about an unserved (request_id, item_id) is not
stored and reported as unknown) without a database."""

from __future__ import annotations

import threading
from collections.abc import Sequence

from wager.serving.events import FeedbackEvent, FeedbackResult, Impression


class MemoryLog:
    """Impressions and feedback kept in lists; ``fail`` makes every call raise (a store that
    is down) and ``ping`` return False."""

    def __init__(self) -> None:
        self.impressions: list[Impression] = []
        self.feedback: dict[str, FeedbackEvent] = {}
        self.fail = False
        self._lock = threading.Lock()

    def log_impressions(self, rows: Sequence[Impression]) -> None:
        if self.fail:
            raise ConnectionError("the test store is down")
        with self._lock:
            self.impressions.extend(rows)

    def add_feedback(self, events: Sequence[FeedbackEvent]) -> FeedbackResult:
        if self.fail:
            raise ConnectionError("the test store is down")
        with self._lock:
            served = {(i.request_id, i.item_id) for i in self.impressions}
            stored = duplicates = 0
            unknown = []
            for e in events:
                if (e.request_id, e.item_id) not in served:
                    unknown.append(e)
                elif e.event_id in self.feedback:
                    duplicates += 1
                else:
                    self.feedback[e.event_id] = e
                    stored += 1
            return FeedbackResult(stored, duplicates, unknown)

    def ping(self) -> bool:
        return not self.fail
