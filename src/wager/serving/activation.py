"""One active model version for several server processes (``wager serve --workers N``).

Each worker process loads its own models, so an activation that reaches one worker must
reach the others. The event store is the shared truth: the activation route activates the
version in its own process (loaded and verified in full, as with one process), then stores
it under :data:`ACTIVE_KEY` (``EventStore.set_state``). Every process runs an
:class:`ActivationFollower`: a thread that reads the key every ``every_s`` seconds and,
when it names another version than the one served, activates it locally through the same
callback as the route (so in-flight requests finish on the old version and none fails).

An activation is atomic across the processes: each follower also writes a heartbeat
(:data:`WORKER_PREFIX` + its id: the version it serves, when, and its ``every_s``) when
its version changes and at least every :func:`beat_every_s`, and the route answers only
once every live process (a heartbeat younger than :func:`stale_after_s`) reports the new
version, which takes about ``every_s`` plus one load.
So a request sent after the route answered is served by the new version, whichever process
takes it. A process that has not followed within :data:`ACTIVATION_TIMEOUT_S` (it cannot
load the version) makes the route undo the activation: the previous version is stored again
(every process returns to it) and the route answers 503 naming the process. A process that
stops removes its heartbeat; one that dies stops counting once its heartbeat is stale.

The route and the follower take the same lock, so a follower never sees the gap between a
local activation and its store write (it would undo it). An activation whose store write
fails answers 503: the store still names the old version, and the followers (this process's
included) return to it. A version the store names that cannot be activated (deleted from the
registry, unreadable) is logged once and the process keeps serving what it has.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from wager.serving.periodic import Periodic

log = logging.getLogger("wager.serving")

ACTIVE_KEY = "active_version"
"""The ``service_state`` key naming the version every process serves."""

WORKER_PREFIX = "worker/"
"""``service_state`` keys of the processes' heartbeats: ``worker/HOST:PID:RANDOM``."""

ACTIVATION_TIMEOUT_S = 30.0
"""Seconds the activation route waits for every live process to serve the new version."""


def beat_every_s(every_s: float) -> float:
    """Seconds between the unchanged heartbeats of a process reading every ``every_s``
    seconds (a heartbeat is a durable write: at most one a second; a changed version is
    written at once)."""
    return max(every_s, 1.0)


def stale_after_s(every_s: float) -> float:
    """Age (seconds) after which the heartbeat of a process reading every ``every_s``
    seconds no longer counts: three missed heartbeats plus a second of slack."""
    return 3.0 * beat_every_s(every_s) + 1.0


class ActivationTimeoutError(RuntimeError):
    """Processes did not serve an activated version in time; ``lagging`` names them."""

    def __init__(self, version: str, lagging: dict[str, str], timeout_s: float) -> None:
        shown = ", ".join(f"{w} (serving {v})" for w, v in sorted(lagging.items()))
        super().__init__(
            f"model version {version} was not served by every server process within "
            f"{timeout_s:g} s: {shown}; the activation was undone (see those "
            "processes' logs for why they could not load it)"
        )
        self.lagging = lagging


class ActivationSupersededError(RuntimeError):
    """Another activation was stored while this one waited for the processes."""

    def __init__(self, version: str, stored: str | None) -> None:
        super().__init__(
            f"the activation of model version {version} was superseded by another one "
            f"(of {stored}) while the server processes switched; the service serves {stored}"
        )
        self.stored = stored


class SharedState(Protocol):
    """What the follower reads and the route writes (``EventStore`` implements it)."""

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key``, or None."""
        ...

    def set_state(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` durably."""
        ...

    def delete_state(self, key: str) -> None:
        """Remove ``key`` (nothing when absent)."""
        ...

    def states(self, prefix: str) -> dict[str, str]:
        """Every stored key starting with ``prefix`` and its value."""
        ...


class ActivationFollower:
    """Keeps this process on the version the shared state names (module docstring).

    Args:
        state: the shared state (the event store).
        active: the version this process serves now (a callable: it changes).
        activate: activates a version in this process (what the route does, less the
            store write); raises when the version cannot be served.
        every_s: seconds between reads of the shared state.
        worker: this process's id in the heartbeats (default ``HOST:PID:RANDOM``).
    """

    def __init__(
        self,
        state: SharedState,
        active: Callable[[], str],
        activate: Callable[[str], None],
        every_s: float = 0.5,
        worker: str | None = None,
    ) -> None:
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0 seconds, got {every_s}")
        self.state = state
        self.active = active
        self.activate = activate
        self.every_s = every_s
        # the random tail tells apart several apps of one process (and a reused pid)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.timeout_s = ACTIVATION_TIMEOUT_S
        """Seconds :meth:`wait_for` waits for the other processes."""
        self._beat_failed = False  # a failed heartbeat write is logged once per outage
        self._beat_at = -math.inf  # time.monotonic() of the last heartbeat written
        self._beat_version: str | None = None  # the version it named
        self.lock = threading.Lock()
        """Held by :meth:`sync` and by the route around its activation and store write."""
        self._periodic = Periodic(
            "wager-follow", self.sync, lambda: self.every_s,
            "reading the active model version from the event store",
        )  # fmt: skip
        self._failed: str | None = None  # the version last found unservable (logged once)

    def sync(self) -> bool:
        """Activate the version the shared state names when it is not the one served, then
        write this process's heartbeat; True when it activated one."""
        with self.lock:
            changed = self._follow()
            due = time.monotonic() - self._beat_at >= beat_every_s(self.every_s)
            if changed or due or self._beat_version != self.active():
                self.beat()
            return changed

    def _follow(self) -> bool:
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

    def beat(self) -> None:
        """Store this process's heartbeat: the version it serves now. A failed write is
        logged (once until one succeeds) and otherwise ignored: serving goes on."""
        version = self.active()
        value = {"version": version, "ts": time.time(), "every_s": self.every_s}
        try:
            self.state.set_state(WORKER_PREFIX + self.worker, json.dumps(value))
        except Exception as exc:  # the store hiccupped; the next read writes it again
            if not self._beat_failed:
                log.warning("cannot store this process's heartbeat: %s", exc)
            self._beat_failed = True
            return
        self._beat_failed = False
        self._beat_at, self._beat_version = time.monotonic(), version

    def lagging(self, version: str) -> dict[str, str]:
        """The live processes (fresh heartbeats, this one excluded) that do not serve
        ``version``: id -> the version they serve."""
        now, out = time.time(), {}
        for key, raw in self.state.states(WORKER_PREFIX).items():
            worker = key[len(WORKER_PREFIX) :]
            try:
                beat = json.loads(raw)
                fresh = now - float(beat["ts"]) <= stale_after_s(float(beat["every_s"]))
                serving = str(beat["version"])
            except (ValueError, KeyError, TypeError):  # not a heartbeat this wager wrote
                continue
            if worker != self.worker and fresh and serving != version:
                out[worker] = serving
        return out

    def wait_for(self, version: str) -> None:
        """Return once every live process serves ``version`` (what the activation route
        waits for after storing it).

        Raises:
            ActivationTimeoutError: some did not within :attr:`timeout_s`.
            ActivationSupersededError: another version was stored meanwhile.
        """
        end = time.monotonic() + self.timeout_s
        while lagging := self.lagging(version):
            stored = self.state.get_state(ACTIVE_KEY)
            if stored != version:  # a later activation (another process's) replaced it
                raise ActivationSupersededError(version, stored)
            if time.monotonic() >= end:
                raise ActivationTimeoutError(version, lagging, self.timeout_s)
            time.sleep(min(0.05, self.every_s / 4))

    def leave(self) -> None:
        """Remove this process's heartbeat (a stopping process no longer counts)."""
        try:
            self.state.delete_state(WORKER_PREFIX + self.worker)
        except Exception as exc:  # it goes stale on its own
            log.warning("cannot remove this process's heartbeat: %s", exc)

    def start(self) -> None:
        """Start following (a daemon thread reading every ``every_s`` seconds)."""
        self._periodic.start()

    def stop(self) -> None:
        """Stop following (waits for the thread) and remove this process's heartbeat."""
        self._periodic.stop()
        self.leave()
