"""Monte Carlo dropout: dropout kept on at inference, S samples in one batched pass.

Gal & Ghahramani's MC dropout reads the spread of S stochastic forward passes (dropout
active) as model uncertainty. Here the S passes are one pass: the batch is tiled S times
along its leading dimension, so a (B, ...) batch becomes (S * B, ...) rows evaluated by a
single forward call (no Python loop over samples); every row draws its own dropout masks.
With a stacked ensemble the result is (M * S, B) samples (each member's S dropout draws).

Example:
    >>> import torch
    >>> from wager.models.fields import Field
    >>> from wager.models.mf import BiasedMF
    >>> from wager.training.trainer import StackedModel
    >>> make = lambda: BiasedMF([Field("user.u", "index", 3)], [Field("item.i", "index", 3)],
    ...                         dim=4, init_std=0.5, dropout=0.5)
    >>> stack = StackedModel(make, members=1, seed=0)
    >>> batch = {"user.u": torch.tensor([1, 2]), "item.i": torch.tensor([0, 1])}
    >>> MCDropout(samples=8, seed=0).sample_outputs(stack, batch).shape
    torch.Size([8, 2])
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import Tensor

from wager.training.trainer import StackedModel

Batch = dict[str, Tensor]
# dropout masks come from torch's one global generator: a seeded sampler holds this lock from
# seeding to restoring it, so concurrent seeded calls (serving threads) neither interleave
# their draws nor restore each other's state. Unseeded samplers and every other prediction
# path run without it.
_GLOBAL_RNG = threading.Lock()


def tile_batch(batch: Batch, samples: int) -> Batch:
    """Repeat every tensor of ``batch`` ``samples`` times along dimension 0.

    Args:
        batch: tensors with leading dimension B.
        samples: S >= 1.

    Returns:
        tensors with leading dimension S * B; rows s * B .. (s + 1) * B - 1 are copy s.
    """
    return {k: v.repeat(samples, *([1] * (v.ndim - 1))) for k, v in batch.items()}


class MCDropout:
    """S dropout samples of a (stacked) model, evaluated in one batched forward pass.

    Args:
        samples: S >= 2 stochastic passes.
        seed: seed of the dropout masks (the same inputs give the same samples), or None
            to draw from the global RNG.
        max_rows: tiled rows (pairs x S) per forward pass; larger batches run in several
            passes of whole pairs (every pass still evaluates all S draws of its pairs).
    """

    def __init__(self, samples: int = 30, seed: int | None = 0, max_rows: int = 16384) -> None:
        if not isinstance(samples, int) or samples < 2:
            raise ValueError(f"MCDropout samples must be an integer >= 2, got {samples!r}")
        if max_rows < 1:
            raise ValueError(f"MCDropout max_rows must be >= 1, got {max_rows!r}")
        self.samples = samples
        self.max_rows = int(max_rows)
        self.seed = seed

    @property
    def method(self) -> str:
        """Provenance string for predictions."""
        return f"mc_dropout(samples={self.samples})"

    def sample_outputs(self, stack: StackedModel, batch: Batch, method: str = "forward") -> Any:
        """Raw outputs of every member under S dropout draws.

        Args:
            stack: the (stacked) model; the pass runs with dropout on (``training=True`` for
                these calls only: the stack's own mode is not touched, so other threads
                predicting with the same stack meanwhile are unaffected).
            batch: encoded inputs with leading dimension B.
            method: the model method to call.

        Returns:
            (M * S, B, ...) outputs: member m's draws are rows m * S .. (m + 1) * S - 1.
        """
        if self.seed is None:
            return self._draw(stack, batch, method)
        with _GLOBAL_RNG:
            state = torch.random.get_rng_state()
            try:
                torch.manual_seed(self.seed)
                return self._draw(stack, batch, method)
            finally:
                torch.random.set_rng_state(state)

    def _draw(self, stack: StackedModel, batch: Batch, method: str) -> Any:
        n = len(next(iter(batch.values())))
        # pairs per pass: all S draws of a pair share one pass, and a pass holds at most
        # ``max_rows`` tiled rows (one huge pass is memory-bound: 9,430 pairs x 30 draws in
        # one pass ran ~4x slower than the same rows in passes of ~16k)
        per_pass = max(1, self.max_rows // self.samples)
        parts = []
        with torch.no_grad():
            for start in range(0, n, per_pass):
                chunk = {k: v[start : start + per_pass] for k, v in batch.items()}
                m = len(next(iter(chunk.values())))
                if method == "forward" and hasattr(stack.model, "forward_samples"):
                    # the model draws the S masks after one embedding lookup per row
                    out = stack.call("forward_samples", chunk, self.samples, training=True)
                else:
                    out = stack.call(method, tile_batch(chunk, self.samples), training=True)
                # out: (M, S * m, ...), draw-major within each member
                parts.append(out.reshape(out.shape[0] * self.samples, m, *out.shape[2:]))
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
