"""Independent training tasks run one after another here, or in parallel on Ray.

Work that splits into independent tasks (the members of an ``[ensemble] fit = "separate"``
run; later the trials of a search) goes through a :class:`Runner`:

- :class:`SequentialRunner` runs the tasks in this process, in order;
- :class:`RayRunner` (extra ``[dist]``) runs them as Ray tasks on a cluster that is already
  running (``address``) or on a local one it starts (``"auto"`` with none running), each
  task with the CPUs (and GPU) it asks for.

Both call the same module-level function with the same arguments, so a task whose own
arithmetic is deterministic (fixed seeds, fixed thread count) gives the same result on
either. Results come back as tasks finish: ``(index, result)`` pairs, so a caller can save
each one at once (a stopped run keeps the finished tasks).

Example:
    >>> def square(shared, x):
    ...     return shared * x * x
    >>> sorted(SequentialRunner().run(square, [1, 2, 3], shared=10))
    [(0, 10), (1, 40), (2, 90)]
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wager._optional import require

TaskFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class TaskResources:
    """What one task needs of a worker.

    Attributes:
        cpus: CPU cores (Ray reserves them; the task should use no more threads).
        gpus: GPUs (0 on CPU).
    """

    cpus: int = 1
    gpus: float = 0.0


class Runner(Protocol):
    """Runs ``fn(shared, task)`` for every task; yields ``(index, result)`` as each ends."""

    name: str

    def run(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        shared: Any,
        resources: TaskResources = TaskResources(),
        window: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Run the tasks (at most ``window`` at once); a task's exception is raised as it
        is (the rest are cancelled)."""
        ...


class SequentialRunner:
    """Runs the tasks in this process, one after another, in order."""

    name = "sequential"

    def run(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        shared: Any,
        resources: TaskResources = TaskResources(),
        window: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Yield ``(i, fn(shared, tasks[i]))`` for i = 0, 1, ... (``resources`` and
        ``window`` unused: one task at a time)."""
        for i, task in enumerate(tasks):
            yield i, fn(shared, task)


class RayRunner:
    """Runs the tasks as Ray tasks, in parallel as the cluster's free CPUs allow.

    ``shared`` is put in Ray's object store once and handed to every task; a task's
    exception comes back as that exception (Ray's error subclasses its type), and the tasks
    still running are cancelled. Ctrl-C cancels them too. The workers must import the
    same wager (on a local cluster they run this Python); on a remote cluster install it on
    every node.

    Args:
        address: "auto": the Ray cluster this machine belongs to (``RAY_ADDRESS`` or one
            started by ``ray start``), else a local cluster of this machine's CPUs started
            for this run and stopped after it; otherwise a cluster address, e.g.
            "ray://head:10001" or "head:6379".

    Raises:
        MissingExtraError: Ray is not installed (``pip install "wager[dist]"``).
    """

    name = "ray"

    def __init__(self, address: str = "auto") -> None:
        if not address or not address.strip():
            raise ValueError('--ray: give "auto" or a cluster address such as ray://head:10001')
        self.address = address.strip()
        self._ray = require("ray", "dist", "--ray (training on a Ray cluster)")
        self._held = False  # inside ``with``: the cluster stays up between runs
        self._started = False  # ``with`` started the cluster (and stops it on exit)
        self._shared: tuple[Any, Any] | None = None  # (object, its ref) put while held

    def __enter__(self) -> RayRunner:
        """Keep the cluster for several :meth:`run` calls (stopped on exit when this runner
        started it)."""
        self._started, self._held = self._connect(), True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self._ray.shutdown()
        self._held, self._started, self._shared = False, False, None

    def _put(self, shared: Any) -> Any:
        """``shared`` in the object store; while the runner holds its cluster (``with``),
        the same object is put once for all runs."""
        if self._held and self._shared is not None and self._shared[0] is shared:
            return self._shared[1]
        ref = self._ray.put(shared)
        self._shared = (shared, ref) if self._held else None
        return ref

    def cpus(self) -> int:
        """CPUs of the cluster (joined or started)."""
        started = self._connect()
        try:
            return max(1, int(self._ray.cluster_resources().get("CPU", 1)))
        finally:
            if started:
                self._ray.shutdown()

    def _connect(self) -> bool:
        """Join or start the cluster; True when this call started (and so must stop) it."""
        ray = self._ray
        if ray.is_initialized():
            return False
        quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
        if self.address != "auto":
            ray.init(address=self.address, **quiet)
            return True
        try:
            ray.init(address="auto", **quiet)
        except ConnectionError:  # no cluster running: a local one for this run
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
        return True

    def run(
        self,
        fn: TaskFn,
        tasks: Sequence[Any],
        shared: Any,
        resources: TaskResources = TaskResources(),
        window: int | None = None,
    ) -> Iterator[tuple[int, Any]]:
        """Submit the tasks (at most ``window`` unfinished at a time; None: all at once)
        and yield ``(i, result)`` in the order they finish."""
        ray = self._ray
        started = self._connect()
        pending: dict[Any, int] = {}
        try:
            remote = ray.remote(fn).options(
                num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0
            )
            ref = self._put(shared)
            queue = iter(enumerate(tasks))
            limit = window or len(tasks)
            for i, task in itertools.islice(queue, limit):
                pending[remote.remote(ref, task)] = i
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                for j, task in itertools.islice(queue, 1):
                    pending[remote.remote(ref, task)] = j
                yield i, ray.get(done[0])
        finally:
            for future in pending:  # an error, Ctrl-C or a caller that stopped early
                ray.cancel(future, force=True)
            if started:
                ray.shutdown()
