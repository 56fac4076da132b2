"""One active model version for several server processes (``wager serve --workers N``).

Each worker process loads its own models, so an activation that reaches one worker must
reach the others. The event store is the shared truth: the activation route activates the
version in its own process (loaded and verified in full, as with one process), then stores
it under :data:`ACTIVE_KEY` (``EventStore.set_state``). Every process runs an
:class:`ActivationFollower`: a thread that reads the key every ``every_s`` seconds and,
when it names another version than the one served, activates it locally through the same
callback as the route (so in-flight requests finish on the old version and none fails).
Workers therefore serve the new version within about ``every_s`` plus one load after the
route answered.

The route and the follower take the same lock, so a follower never sees the gap between a
local activation and its store write (it would undo it). An activation whose store write
fails answers 503: the store still names the old version, and the followers (this process's
included) return to it. A version the store names that cannot be activated (deleted from the
registry, unreadable) is logged once and the process keeps serving what it has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from wager.serving.periodic import Periodic

log = logging.getLogger("wager.serving")

ACTIVE_KEY = "active_version"
"""The ``service_state`` key naming the version every process serves."""


class SharedState(Protocol):
    """What the follower reads and the route writes (``EventStore`` implements it)."""

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        ...

    def set_state(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` durably."""
        ...


class ActivationFollower:
    """Keeps this process on the version the shared state names (module docstring).

    Args:
        state: the shared state (the event store).
        active: the version this process serves now (a callable: it changes).
        activate: activates a version in this process (what the route does, less the
            store write); raises when the version cannot be served.
        every_s: seconds between reads of the shared state.
    """

    def __init__(
        self,
        state: SharedState,
        active: Callable[[], str],
        activate: Callable[[str], None],
        every_s: float = 0.5,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0 seconds, got {every_s}")
        self.state = state
        self.active = active
        self.activate = activate
        self.every_s = every_s
        self.lock = threading.Lock()
        """Held by :meth:`sync` and by the route around its activation and store write."""
        self._periodic = Periodic(
            "wager-follow", self.sync, lambda: self.every_s,
            "reading the active model version from the event store",
        )  # fmt: skip
        self._failed: str | None = None  # the version last found unservable (logged once)

    def sync(self) -> bool:
        """Activate the version the shared state names when it is not the one served;
        True when it activated one."""
        with self.lock:
            wanted = self.state.get_state(ACTIVE_KEY)
            if wanted is None or wanted == self.active() or wanted == self._failed:
                return False
            try:
                self.activate(wanted)
            except Exception as exc:  # the version cannot be served here: say so once
                self._failed = wanted
                log.error("cannot follow the activation of model version %s: %s", wanted, exc)
                return False
            self._failed = None
            log.info("model version %s activated (following another worker)", wanted)
            return True

    def start(self) -> None:
        """Start following (a daemon thread reading every ``every_s`` seconds)."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop following (waits for the thread)."""
        self._periodic.stop()
