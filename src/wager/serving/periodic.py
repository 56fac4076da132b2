"""A daemon thread that calls a function every few seconds until stopped: what the service's
background jobs share (:mod:`wager.serving.activation`, :mod:`wager.serving.recalibration`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("wager.serving")


class Periodic:
    """Calls ``tick()`` every ``interval()`` seconds on a daemon thread, from :meth:`start`
    until :meth:`stop`. A tick that raises is logged as a warning (``what`` names the job)
    and the next one runs as planned.

    Args:
        name: the thread's name.
        tick: the job.
        interval: seconds until the next tick (read before each wait: it may change).
        what: what a failed tick was doing, for the warning.
    """

    def __init__(
        self, name: str, tick: Callable[[], object], interval: Callable[[], float], what: str
    ) -> None:
        self.name, self.tick, self.interval, self.what = name, tick, interval, what
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start ticking (no-op when already started)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking (waits for a tick in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval()):
            try:
                self.tick()
            except Exception as exc:  # e.g. a store hiccup: try again at the next tick
                log.warning("%s: %s", self.what, exc)
