"""What happened in a training loop: :class:`History`, kept by every loop of
:mod:`wager.training` and merged across separately trained ensemble members."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class History:
    """What happened in training.

    Attributes:
        train_loss: mean training loss per epoch (averaged over members).
        valid_metric: (epochs, M) validation metric per epoch and member (lower is better).
        best_epoch: per member, the 0-based epoch whose parameters were kept.
        seconds: wall time of the loop (validation included).
        epoch_seconds: wall time of each epoch's training steps (validation excluded).
        processes: data-parallel processes that trained (see
            :mod:`wager.training.distributed`; 1 alone).
        reduce_seconds: wall time spent summing gradients across the processes (the
            communication of data-parallel training; 0 alone).
        member_seconds: members trained in loops of their own (:meth:`merge`): each one's
            loop time; empty when the members trained together.
    """

    train_loss: list[float] = field(default_factory=list)
    valid_metric: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    processes: int = 1
    reduce_seconds: float = 0.0
    member_seconds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "train_loss": self.train_loss,
            "valid_metric": self.valid_metric,
            "best_epoch": self.best_epoch,
            "seconds": self.seconds,
            "epoch_seconds": self.epoch_seconds,
            "processes": self.processes,
            "reduce_seconds": self.reduce_seconds,
            "member_seconds": self.member_seconds,
        }

    @classmethod
    def merge(cls, members: list[History], seconds: float) -> History:
        """The history of an ensemble whose members trained in loops of their own, from
        each member's (one-member) history, in member order.

        Epoch e's ``train_loss`` is the mean over the members that ran it, its
        ``epoch_seconds`` their sum (the ensemble's cost of that epoch), its
        ``valid_metric`` row holds every member's value (NaN for a member that had already
        stopped); ``seconds`` is the wall time of the whole ensemble (``seconds``).
        """
        epochs = max((len(h.train_loss) for h in members), default=0)
        out = cls(seconds=seconds, member_seconds=[h.seconds for h in members])
        for e in range(epochs):
            ran = [h for h in members if e < len(h.train_loss)]
            out.train_loss.append(float(sum(h.train_loss[e] for h in ran) / len(ran)))
            out.epoch_seconds.append(float(sum(h.epoch_seconds[e] for h in ran)))
        if any(h.valid_metric for h in members):
            out.valid_metric = [
                [h.valid_metric[e][0] if e < len(h.valid_metric) else math.nan for h in members]
                for e in range(epochs)
            ]
        out.best_epoch = [h.best_epoch[0] for h in members]
        return out
