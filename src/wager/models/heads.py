"""Output heads: the head decides the likelihood and what the prediction's mean means.

Every head is a stateless, immutable object (no parameters; the model emits the raw
outputs) with one duck-typed interface, :class:`Head`:

- ``out_dim``: raw outputs per example; 1 means the model outputs (B,), k > 1 means (B, k).
- ``support``: (low, high) range of the predicted quantity, or None when unbounded.
- ``loss(outputs, labels, weights=None)``: scalar weighted mean ``sum(w * l) / sum(w)``.
- ``mean(outputs)``: (B,) expected value of the label.
- ``aleatoric_std(outputs)``: (B,) data-noise std, or None for point heads.

``mean`` and ``aleatoric_std`` accept any leading shape (e.g. (M, B) or (M, B, 2) outputs of
M ensemble members); the last dimension is the head's output dimension when ``out_dim > 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from wager.models.losses import gaussian_nll, weighted_mean


class Head(Protocol):
    """What every output head provides (see the module docstring)."""

    @property
    def out_dim(self) -> int:
        """Raw outputs per example (1: the model outputs (B,))."""
        ...

    @property
    def support(self) -> tuple[float, float] | None:
        """(low, high) range of the predicted quantity, or None."""
        ...

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Scalar weighted mean loss."""
        ...

    def mean(self, outputs: Tensor) -> Tensor:
        """(B,) predicted mean."""
        ...

    def aleatoric_std(self, outputs: Tensor) -> Tensor | None:
        """(B,) data-noise std, or None."""
        ...


def _check_support(support: tuple[float, float] | None) -> None:
    if support is not None and not float(support[0]) < float(support[1]):
        raise ValueError(
            f"support must be (low, high) with low < high, got {support!r}; "
            "pass the rating range, e.g. support=(1.0, 5.0), or None for no clipping"
        )


@dataclass(frozen=True)
class BernoulliHead:
    """Click likelihood on logits: the mean is the click probability sigmoid(logit).

    Example:
        >>> head = BernoulliHead()
        >>> head.mean(torch.tensor([0.0])), head.aleatoric_std(torch.tensor([0.0]))
        (tensor([0.5000]), tensor([0.5000]))
    """

    out_dim: ClassVar[int] = 1
    support: ClassVar[tuple[float, float] | None] = (0.0, 1.0)

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
        return weighted_mean(bce, weights)

    def mean(self, logits: Tensor) -> Tensor:
        """(B,) click probabilities."""
        return torch.sigmoid(logits)

    def aleatoric_std(self, logits: Tensor) -> Tensor:
        """(B,) Bernoulli std sqrt(p (1 - p)) of a single click."""
        p = torch.sigmoid(logits)
        return torch.sqrt(p * (1.0 - p))


@dataclass(frozen=True)
class PointHead:
    """Squared-error regression (a point prediction without a noise model).

    Args:
        support: (low, high) label range (e.g. (1.0, 5.0) for star ratings) used only to
            clip the predicted mean; the loss always sees the raw output. None: no clipping.

    Example:
        >>> head = PointHead(support=(1.0, 5.0))
        >>> head.mean(torch.tensor([0.2, 3.0, 7.0]))
        tensor([1., 3., 5.])
    """

    support: tuple[float, float] | None = None
    out_dim: ClassVar[int] = 1

    def __post_init__(self) -> None:
        _check_support(self.support)

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean squared error.

        Args:
            outputs: (B,) predictions (unclipped).
            labels: (B,) targets.
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * (outputs - labels)^2) / max(sum(w), eps).
        """
        return weighted_mean((outputs - labels).square(), weights)

    def mean(self, outputs: Tensor) -> Tensor:
        """(B,) predictions, clipped to ``support`` when it is set."""
        if self.support is None:
            return outputs
        return outputs.clamp(float(self.support[0]), float(self.support[1]))

    def aleatoric_std(self, outputs: Tensor) -> None:
        """None: a point head has no noise model."""
        return None


@dataclass(frozen=True)
class GaussianHead:
    """Heteroscedastic Gaussian likelihood: per-example mean and std.

    The model emits (B, 2) outputs: column 0 the mean, column 1 a raw scale ``r`` mapped to
    ``std = softplus(r) + min_std``.

    Args:
        min_std: floor of the std (label units), keeps the likelihood bounded.
        support: (low, high) label range used only to clip the predicted mean, or None.

    Example:
        >>> head = GaussianHead(min_std=0.0)
        >>> out = torch.tensor([[3.0, 0.0]])
        >>> head.mean(out), head.aleatoric_std(out)
        (tensor([3.]), tensor([0.6931]))
    """

    min_std: float = 0.01
    support: tuple[float, float] | None = None
    out_dim: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if not self.min_std >= 0.0:
            raise ValueError(
                f"min_std must be >= 0, got {self.min_std!r}; a small positive floor such "
                "as 0.01 (in label units) keeps the Gaussian likelihood bounded"
            )
        _check_support(self.support)

    def _std(self, outputs: Tensor) -> Tensor:
        return F.softplus(outputs[..., 1]) + self.min_std

    def loss(self, outputs: Tensor, labels: Tensor, weights: Tensor | None = None) -> Tensor:
        """Weighted mean Gaussian negative log-likelihood (nats, 0.5 log 2π included).

        Args:
            outputs: (B, 2) (mean, raw scale).
            labels: (B,) targets.
            weights: (B,) non-negative sample weights, or None for all ones.

        Returns:
            scalar: sum(w * nll) / max(sum(w), eps).
        """
        return weighted_mean(gaussian_nll(outputs[..., 0], self._std(outputs), labels), weights)

    def mean(self, outputs: Tensor) -> Tensor:
        """(B,) predicted means, clipped to ``support`` when it is set."""
        mu = outputs[..., 0]
        if self.support is None:
            return mu
        return mu.clamp(float(self.support[0]), float(self.support[1]))

    def aleatoric_std(self, outputs: Tensor) -> Tensor:
        """(B,) predicted std ``softplus(raw) + min_std``."""
        return self._std(outputs)
