"""What a long training run reports and keeps between epochs: epoch reports and checkpoints.

Every training loop (the gradient loop of :mod:`wager.training.trainer`, the alternating
least squares loop of :mod:`wager.training.als`) takes two optional hooks:

- ``on_epoch``: a callable that receives one :class:`EpochReport` after each epoch (the
  CLI prints it as one log line when stderr is not a terminal);
- ``checkpoint``: a :class:`Checkpoint` that the loop saves its whole state to after each
  epoch and, when it starts, loads from to continue a stopped run (``wager train --resume``).
  The state is a dict of tensors and JSON-like values (ints, floats, strings, lists, dicts)
  written with ``torch.save``; the loop that saved it is the only reader of its keys.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class EpochReport:
    """One finished epoch of a training loop.

    Attributes:
        epoch: 1-based epoch just finished.
        epochs: the most epochs the run may take (``[training] epochs``).
        loss: mean training loss of the epoch over members (the loop's own objective).
        metric: mean validation metric over members, lower is better (e.g. minus NDCG@10),
            or None without validation.
        metric_name: what ``metric`` is, e.g. "ndcg@10" (shown negated back), or "".
        seconds: wall time of the epoch, validation included.
        best_epoch: 1-based epoch with the best mean metric so far (0 = none yet).
        best_metric: that epoch's mean metric (lower is better), or None.
        higher_is_better: the metric shown to users is ``-metric`` (e.g. NDCG: the loop
            minimises minus NDCG); False for metrics shown as they are (RMSE, log-loss).
        member: the 1-based ensemble member whose own loop this is (``[ensemble] fit =
            "separate"``), or 0 when the loop trains every member.
        members: the ensemble's members when ``member`` is set, else 0.
    """

    epoch: int
    epochs: int
    loss: float
    metric: float | None
    metric_name: str
    seconds: float
    best_epoch: int
    best_metric: float | None = None
    higher_is_better: bool = False
    member: int = 0
    members: int = 0

    def shown(self, value: float | None) -> float | None:
        """``value`` (a ``metric`` or ``best_metric``) with its natural sign for display."""
        if value is None:
            return None
        return -value if self.higher_is_better else value


EpochHook = Callable[[EpochReport], None]


class Checkpoint(Protocol):
    """Where a training loop keeps its state between epochs."""

    def load(self) -> dict[str, Any] | None:
        """The state last saved, or None when there is none (a fresh run)."""

    def save(self, state: dict[str, Any]) -> None:
        """Replace the saved state with ``state`` (atomically: a crash keeps the old one).

        ``state`` holds the loop's live tensors (parameters, optimiser moments): serialise
        or copy it before returning, since the loop goes on changing them in place.
        """


class MemoryCheckpoint:
    """A :class:`Checkpoint` held in memory (a deep copy of the last state saved): for
    tests, and for notebooks that stop and continue a loop within one process.

    Example:
        >>> ck = MemoryCheckpoint()
        >>> ck.load() is None
        True
        >>> ck.save({"epoch": 1})
        >>> ck.load()
        {'epoch': 1}
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.saves = 0

    def load(self) -> dict[str, Any] | None:
        """A deep copy of the state last saved, or None."""
        return None if self.state is None else copy.deepcopy(self.state)

    def save(self, state: dict[str, Any]) -> None:
        """Keep a deep copy of ``state``; counts the saves in ``saves``."""
        self.state = copy.deepcopy(state)
        self.saves += 1
