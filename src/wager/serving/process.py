"""Process-wide helpers of a serving process: the garbage collector's setting
(:func:`settle_heap`) and the random bytes of request ids and policy seeds
(:data:`random_bytes`)."""

from __future__ import annotations

import gc
import os
import threading
import time


def settle_heap() -> None:
    """Tune the garbage collector of a serving process once its models are loaded.

    The loaded models (tensors, encoders, per-user rows) are hundreds of thousands of
    long-lived objects that every full collection walks again: under load those pauses were
    the p99 (ML-100k, 8 clients: 91 ms without, 21 ms with). So: unfreeze and collect (the
    cycles of a version deactivated since the last call are freed here), move every object
    alive now to the permanent generation (``gc.freeze``), and collect the young generation
    every 20,000 allocations instead of 700 (a request allocates a few thousand objects).
    Process-wide: run at start-up by ``create_app(settle=True)`` (what ``wager serve``
    builds) and by the activation route again when the process was settled; a library
    user's process is left alone.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


class RandomBytes:
    """Random bytes from ``os.urandom``, read 4 KiB at a time (one system call per ~200
    requests instead of two per request): request ids and policy seeds."""

    def __init__(self, block: int = 4096) -> None:
        self.block = block
        self._buffer = b""
        self._lock = threading.Lock()

    def take(self, n: int) -> bytes:
        with self._lock:
            if len(self._buffer) < n:
                self._buffer = os.urandom(max(self.block, n))
            out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def request_id(self) -> str:
        """32 hex digits: a 48-bit millisecond timestamp, then 80 random bits (UUIDv7's
        layout without its version bits). Ids sort by time, so the event store's unique
        index on (request_id, item_id) grows at its end instead of at random pages."""
        ms = time.time_ns() // 1_000_000
        return f"{ms & 0xFFFF_FFFF_FFFF:012x}{self.take(10).hex()}"

    def seed(self) -> int:
        """A random 63-bit seed."""
        return int.from_bytes(self.take(8), "little") >> 1


random_bytes = RandomBytes()
"""The process's source of request ids and policy seeds."""
