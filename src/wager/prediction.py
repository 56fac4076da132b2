"""Prediction: the one output type of every wager model and uncertainty estimator.

A :class:`Prediction` carries a mean and, for uncertainty-aware estimators, a total
predictive std split into aleatoric (data noise, from a likelihood head) and epistemic
(model uncertainty, from ensemble / MC-dropout spread) parts. Total variance follows the
law of total variance: mean of the members' aleatoric variances + variance of their means.

A deterministic model returns ``std=None`` — never a fake zero.

Example:
    >>> import torch
    >>> p = Prediction(mean=torch.tensor([0.2]), std=torch.tensor([0.1]), support=(0.0, 1.0))
    >>> iv = p.interval(0.9)
    >>> round(float(iv.low[0]), 4), round(float(iv.high[0]), 4)
    (0.0355, 0.3645)
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor


def _check_level(confidence_level: float) -> None:
    if not 0.0 < confidence_level < 1.0:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")


@dataclass(frozen=True)
class Interval:
    """A two-sided prediction interval.

    Attributes:
        low: (...) lower bounds, same shape as the prediction's mean.
        high: (...) upper bounds.
        confidence_level: nominal probability that the target lies inside, e.g. 0.9.
    """

    low: Tensor
    high: Tensor
    confidence_level: float

    @property
    def width(self) -> Tensor:
        """(...) high - low."""
        return self.high - self.low

    def contains(self, target: Tensor) -> Tensor:
        """(...) bool: low <= target <= high."""
        return (target >= self.low) & (target <= self.high)


@dataclass(frozen=True)
class Prediction:
    """Mean and uncertainty of a batch of predictions.

    Attributes:
        mean: (...) expected rating / CTR / relevance.
        std: (...) total predictive std, or None for a deterministic model.
        aleatoric_std: (...) data-noise part, from the likelihood head, or None.
        epistemic_std: (...) model-uncertainty part (member/sample spread), or None.
        samples: (S, ...) draws of the predicted quantity when the estimator is
            sample-based (ensemble members, dropout samples), or None.
        method: provenance, e.g. "ensemble(members=5)".
        support: (low, high) range the predicted quantity lives in (e.g. (0, 1) for a
            CTR, (1, 5) for a rating); intervals are clipped to it. None = unbounded.
    """

    mean: Tensor
    std: Tensor | None = None
    aleatoric_std: Tensor | None = None
    epistemic_std: Tensor | None = None
    samples: Tensor | None = None
    method: str = ""
    support: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("std", "aleatoric_std", "epistemic_std"):
            value = getattr(self, name)
            if value is not None and value.shape != self.mean.shape:
                raise ValueError(
                    f"Prediction.{name} has shape {tuple(value.shape)}, "
                    f"expected the mean's shape {tuple(self.mean.shape)}"
                )
        if self.samples is not None and self.samples.shape[1:] != self.mean.shape:
            raise ValueError(
                f"Prediction.samples has shape {tuple(self.samples.shape)}, expected "
                f"(S, {', '.join(map(str, self.mean.shape))})"
            )

    @classmethod
    def from_members(
        cls,
        member_means: Tensor,
        member_aleatoric_std: Tensor | None = None,
        *,
        method: str = "",
        support: tuple[float, float] | None = None,
    ) -> Prediction:
        """Combine M members by the law of total variance.

        Args:
            member_means: (M, ...) each member's predicted mean.
            member_aleatoric_std: (M, ...) each member's head std, or None when the
                members predict a mean only (then std = epistemic std).
            method: provenance string.
            support: range of the predicted quantity.

        Returns:
            mean = average of member means; epistemic variance = (population) variance of
            member means; aleatoric variance = average of member variances;
            std = sqrt(epistemic variance + aleatoric variance). ``samples`` = member means.
        """
        if member_means.ndim < 1 or member_means.shape[0] < 2:
            raise ValueError("from_members needs at least 2 members along dimension 0")
        mean = member_means.mean(dim=0)
        # sum-of-squares form: cheaper than torch.var on large tensors
        epi_var = (member_means.square().mean(dim=0) - mean.square()).clamp_min(0.0)
        epistemic = epi_var.sqrt()
        aleatoric = None
        total_var = epi_var
        if member_aleatoric_std is not None:
            ale_var = member_aleatoric_std.square().mean(dim=0)
            aleatoric = ale_var.sqrt()
            total_var = total_var + ale_var
        return cls(
            mean=mean,
            std=total_var.sqrt(),
            aleatoric_std=aleatoric,
            epistemic_std=epistemic,
            samples=member_means,
            method=method,
            support=support,
        )

    def _require_std(self, what: str) -> Tensor:
        if self.std is None:
            raise ValueError(
                f"{what} needs an uncertainty estimate, but this prediction is deterministic "
                f"(method={self.method!r}); wrap the model in an Ensemble or MCDropout"
            )
        return self.std

    def _clip(self, x: Tensor) -> Tensor:
        if self.support is None:
            return x
        return x.clamp(self.support[0], self.support[1])

    def quantile(self, q: float) -> Tensor:
        """(...) the q-quantile of a Gaussian with this mean and std, clipped to the support."""
        if not 0.0 < q < 1.0:
            raise ValueError(f"quantile q must be in (0, 1), got {q!r}")
        std = self._require_std("quantile()")
        return self._clip(self.mean + NormalDist().inv_cdf(q) * std)

    def interval(self, confidence_level: float = 0.9) -> Interval:
        """Central interval holding ``confidence_level`` of the predictive distribution."""
        _check_level(confidence_level)
        tail = (1.0 - confidence_level) / 2.0
        return Interval(
            low=self.quantile(tail),
            high=self.quantile(1.0 - tail),
            confidence_level=confidence_level,
        )

    def ucb(self, beta: float) -> Tensor:
        """(...) mean + beta * std: the optimistic score UCB ranks by."""
        return self.mean + beta * self._require_std("ucb()")

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """(...) one draw: a random member/sample when sample-based, else Gaussian."""
        if self.samples is not None:
            s = self.samples.shape[0]
            idx = torch.randint(s, self.mean.shape, generator=generator, device=self.mean.device)
            return self.samples.gather(0, idx.unsqueeze(0)).squeeze(0)
        std = self._require_std("sample()")
        noise = torch.randn(
            self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype
        )
        return self._clip(self.mean + std * noise)

    def __getitem__(self, index: Any) -> Prediction:
        """Select predictions (indexing applies to the batch dimensions)."""

        def pick(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[index]

        samples = None if self.samples is None else self.samples[(slice(None), index)]
        return Prediction(
            mean=self.mean[index],
            std=pick(self.std),
            aleatoric_std=pick(self.aleatoric_std),
            epistemic_std=pick(self.epistemic_std),
            samples=samples,
            method=self.method,
            support=self.support,
        )

    def to_dict(self, confidence_level: float = 0.9) -> dict[str, Any]:
        """JSON-ready form (the serving schema): lists of floats, interval when std exists."""

        def lst(t: Tensor | None) -> list[float] | None:
            return None if t is None else t.detach().cpu().reshape(-1).tolist()

        out: dict[str, Any] = {
            "method": self.method,
            "mean": lst(self.mean),
            "std": lst(self.std),
            "aleatoric_std": lst(self.aleatoric_std),
            "epistemic_std": lst(self.epistemic_std),
        }
        if self.std is not None:
            iv = self.interval(confidence_level)
            out["interval"] = {
                "confidence_level": confidence_level,
                "low": lst(iv.low),
                "high": lst(iv.high),
            }
        return out
