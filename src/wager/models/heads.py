"""Output heads: the head decides the likelihood and what the prediction's mean means."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class BernoulliHead:
    """Click likelihood on logits: the mean is the click probability sigmoid(logit).

    Stateless (no parameters): the model emits one logit per example.
    """

    support = (0.0, 1.0)

    def loss(self, logits: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean binary cross-entropy.

        Args:
            logits: (B,) logits.
            labels: (B,) 0/1 clicks (floats in [0, 1] are allowed: soft labels / CTRs).
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * bce) / max(sum(w), eps).
        """
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
        if weights is None:
            return bce.mean()
        return (bce * weights).sum() / weights.sum().clamp_min(1e-12)

    def mean(self, logits: Tensor) -> Tensor:
        """(B,) click probabilities."""
        return torch.sigmoid(logits)
