"""Deep ensembles: what makes members differ besides their initialisation.

Members are built by a factory with different seeds, their parameters stacked in a
:class:`~wager.training.trainer.StackedModel` and trained and evaluated together through
``vmap(functional_call)`` (one vectorised pass for all M members; the one member loop is
``wager.recommender.fitting.train_members``). This module holds the per-member row weights:
with ``bootstrap=True`` each member weights every training row by an independent Poisson(1)
draw (the online bootstrap), and :func:`holdout_mask` keeps a share of rows out of each
member's training for its own early stopping.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from wager.data.streaming import BOOTSTRAP_STREAM, row_uniforms

Batch = dict[str, Tensor]


def bootstrap_weights(
    weights: Tensor, members: int, bootstrap: bool, generator: torch.Generator
) -> Tensor:
    """(M, n) per-member row weights: the rows' own weights times Poisson(1) draws.

    Args:
        weights: (n,) non-negative row weights.
        members: M.
        bootstrap: multiply by independent Poisson(1) counts (the online bootstrap); when
            False every member gets ``weights`` unchanged.
        generator: seeded generator for the draws.
    """
    out = weights.expand(members, -1).clone()
    if bootstrap:
        out = out * torch.poisson(torch.ones(members, weights.shape[0]), generator=generator).to(
            out.device
        )
    return out


# Poisson(1) cumulative probabilities P(K <= k), k = 0..19 (the rest: 1 - 1e-19)
_POISSON1_CDF = np.cumsum([math.exp(-1) / math.factorial(k) for k in range(20)])


def row_bootstrap_weights(
    weights: Tensor, rows: np.ndarray, members: int, bootstrap: bool, seed: int
) -> Tensor:
    """(M, B) per-member weights of a batch of streamed rows: the rows' own weights times
    Poisson(1) counts that depend on (``seed``, member, row number) only, so a row keeps
    its count in every epoch wherever it comes in the stream (the streamed counterpart of
    :func:`bootstrap_weights`; the draws differ from it).

    Args:
        weights: (B,) non-negative row weights.
        rows: (B,) int64 the rows' numbers in their source.
        members: M.
        bootstrap: draw the counts; when False every member gets ``weights`` unchanged.
        seed: the run's seed.
    """
    out = weights.expand(members, -1).clone()
    if bootstrap:
        counts = np.stack(
            [
                np.searchsorted(
                    _POISSON1_CDF, row_uniforms(rows, seed, BOOTSTRAP_STREAM + 1000 * (m + 1))
                )
                for m in range(members)
            ]
        )
        out = out * torch.from_numpy(counts.astype(np.float32)).to(out.device)
    return out


def holdout_mask(n_rows: int, members: int, fraction: float, generator: torch.Generator) -> Tensor:
    """(M, n) bool, True where member m holds row i out of its training (for its own early
    stopping): round(fraction * n) rows per member, drawn independently for each member.

    Args:
        n_rows: n training rows.
        members: M.
        fraction: share of rows each member holds out, in [0, 1).
        generator: seeded generator for the draws.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction!r}")
    k = round(fraction * n_rows)
    mask = torch.zeros(members, n_rows, dtype=torch.bool)
    for m in range(members):
        mask[m, torch.randperm(n_rows, generator=generator)[:k]] = True
    return mask
