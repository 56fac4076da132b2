"""Pure loss functions shared by heads and models (no parameters, no reductions hidden inside).

Every function returns per-example losses except :func:`weighted_mean`, the one place where a
batch of per-example losses is reduced to a scalar: ``sum(w * loss) / sum(w)``. All functions
are free of in-place operations and data-dependent Python control flow, so they run under
``torch.func.vmap`` (stacked ensemble members).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def weighted_mean(values: Tensor, weights: Tensor | None = None) -> Tensor:
    """Weighted mean of per-example values.

    Args:
        values: (B,) per-example values (e.g. losses).
        weights: (B,) non-negative example weights, or None for all ones.

    Returns:
        scalar: ``sum(weights * values) / max(sum(weights), 1e-12)``, or ``values.mean()``
        when ``weights`` is None. All-zero weights give 0, not NaN.

    Example:
        >>> weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([3.0, 1.0]))
        tensor(1.5000)
    """
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def gaussian_nll(mean: Tensor, std: Tensor, target: Tensor) -> Tensor:
    """Negative log-density of ``target`` under Normal(mean, std), constant included.

    Args:
        mean: (...) predicted means.
        std: (...) predicted standard deviations, > 0.
        target: (...) observed values.

    Returns:
        (...) ``0.5 * log(2π) + log(std) + 0.5 * ((target - mean) / std) ** 2`` in nats.

    Example:
        >>> round(float(gaussian_nll(torch.tensor(0.0), torch.tensor(1.0), torch.tensor(0.0))), 4)
        0.9189
    """
    z = (target - mean) / std
    return _HALF_LOG_2PI + torch.log(std) + 0.5 * z * z


def sampled_softmax_loss(
    logits: Tensor,
    positive: Tensor,
    logq: Tensor | None = None,
    invalid: Tensor | None = None,
) -> Tensor:
    """Softmax cross-entropy over candidate columns with logQ correction and masking.

    Order of operations (as in TensorFlow Recommenders' retrieval task): the caller scales
    the scores by the temperature; this function subtracts ``logq`` from every column (the
    positive's included), then replaces masked columns with a large negative number.

    Args:
        logits: (B, C) float32 scores of B queries against C candidates.
        positive: (B,) int64 column index of each row's positive candidate.
        logq: (C,) or (B, C) log-probability that the sampler drew each candidate, or None
            for no correction (exact or full softmax).
        invalid: (B, C) bool, True where a column must not count as a negative for that row
            (accidental hits, absent rows). Never set it on the row's positive column.

    Returns:
        (B,) ``logsumexp(corrected logits of the row) - corrected logit of the positive``.

    Example:
        >>> sampled_softmax_loss(torch.zeros(1, 4), torch.tensor([0]))  # log(4)
        tensor([1.3863])
    """
    if logq is not None:
        logits = logits - logq
    if invalid is not None:
        logits = logits.masked_fill(invalid, torch.finfo(logits.dtype).min / 100.0)
    pos = logits.gather(-1, positive.unsqueeze(-1)).squeeze(-1)
    return torch.logsumexp(logits, dim=-1) - pos


def bce_with_negatives(positive_logits: Tensor, negative_logits: Tensor) -> Tensor:
    """Binary cross-entropy of one positive (label 1) and its K negatives (label 0), per row.

    Args:
        positive_logits: (B,) logits of the observed (positive) pairs.
        negative_logits: (B, K) logits of each row's K sampled negatives.

    Returns:
        (B,) mean over the row's 1 + K examples of the binary cross-entropy, i.e.
        ``(softplus(-pos) + sum_k softplus(neg_k)) / (1 + K)``. The weighted mean of this
        over rows equals NCF's mean over all B * (1 + K) training instances when the
        weights are equal.

    Example:
        >>> round(float(bce_with_negatives(torch.zeros(1), torch.zeros(1, 3))), 4)
        0.6931
    """
    k = negative_logits.shape[-1]
    total = F.softplus(-positive_logits) + F.softplus(negative_logits).sum(-1)
    return total / (1 + k)
