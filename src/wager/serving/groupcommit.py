"""Group commit of impressions: one writer thread commits the rows of many concurrent
requests in one transaction (one fsync), and each request still waits for its own rows.

A durable commit costs a disk flush (SQLite WAL with ``synchronous=FULL``, PostgreSQL with
``synchronous_commit=on``), a few milliseconds that would otherwise bound the service to a
few hundred requests per second. :class:`GroupCommitter` queues each request's rows with a
future; its writer thread takes everything queued (up to ``max_rows``), commits it with one
``EventLog.log_impressions`` call, then resolves every future of that group: with None when
committed, with the exception when the commit failed (each of those requests then answers
503 and nothing of the group is acknowledged). Durability is unchanged: a response is sent
only after the transaction holding its rows has committed.

The writer thread starts on the first submission and ends after ``idle_s`` seconds without
work (the next submission starts a new one), so an app that is dropped leaves no thread
behind for long.

Example:
    >>> committer = GroupCommitter(store)  # doctest: +SKIP
    >>> committer.submit(rows).result()  # waits until the rows are committed  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from wager.serving.events import EventLog, Impression

log = logging.getLogger("wager.serving")

#: one request's rows and what to call once their transaction ended (None: committed)
_Done = Callable[[BaseException | None], None]
_Item = tuple[Sequence[Impression], _Done]


class GroupCommitter:
    """Commits queued impression batches together (see the module docstring).

    Args:
        events: the event log whose ``log_impressions`` commits one transaction.
        max_rows: most rows per transaction (a batch is never split; one larger batch is
            committed alone).
        idle_s: seconds without work after which the writer thread ends.
    """

    def __init__(self, events: EventLog, max_rows: int = 5000, idle_s: float = 2.0) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.events = events
        self.max_rows = max_rows
        self.idle_s = idle_s
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._lock = threading.Lock()  # guards _thread against the idle exit
        self._thread: threading.Thread | None = None
        self.transactions = 0
        """Transactions committed or attempted (for tests and benchmarks)."""

    def submit(self, rows: Sequence[Impression]) -> Future[None]:
        """Queue ``rows``; the future resolves once they are committed (None), or with the
        commit's exception."""
        future: Future[None] = Future()

        def done(error: BaseException | None) -> None:
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        self._put(rows, done)
        return future

    def submit_async(self, rows: Sequence[Impression]) -> asyncio.Future[None]:
        """:meth:`submit` for a coroutine on the running event loop: an asyncio future,
        resolved on that loop (cheaper to await than a wrapped thread future)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def resolve(error: BaseException | None) -> None:
            if future.done():  # the request was cancelled meanwhile
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def done(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(resolve, error)

        self._put(rows, done)
        return future

    def _put(self, rows: Sequence[Impression], done: _Done) -> None:
        if not rows:
            done(None)
            return
        with self._lock:
            self._queue.put((rows, done))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="wager-group-commit", daemon=True
                )
                self._thread.start()

    def _next_group(self) -> list[_Item] | None:
        """The items of the next transaction, or None when idle long enough to stop."""
        try:
            first = self._queue.get(timeout=self.idle_s)
        except queue.Empty:
            with self._lock:
                if self._queue.empty():
                    self._thread = None
                    return None
            first = self._queue.get_nowait()
        group, n = [first], len(first[0])
        while n < self.max_rows:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            group.append(item)
            n += len(item[0])
        return group

    def _run(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            rows = [row for batch, _ in group for row in batch]
            try:
                self.events.log_impressions(rows)
            except BaseException as exc:  # every request of the group learns of it
                self.transactions += 1
                for _, done in group:
                    done(exc)
                if not isinstance(exc, Exception):
                    with self._lock:
                        self._thread = None
                    raise
                continue
            self.transactions += 1
            for _, done in group:
                done(None)
