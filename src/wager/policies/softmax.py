"""Softmax (Plackett-Luce): sample the slate position by position, each candidate with a
probability proportional to exp(mean / temperature) among those not yet shown."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wager.policies._shared import (
    candidate_means,
    check_finite,
    check_floor,
    check_positive_int,
    draw_blocks,
    masked,
    sequential_slate,
)
from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, PolicyState, Slate
from wager.prediction import Prediction


@dataclass(frozen=True)
class SoftmaxPolicy:
    """Plackett-Luce over ``mean / temperature``: at position j, candidate c (not yet shown)
    is chosen with probability exp(mean_c / T) / sum over the remaining candidates of
    exp(mean / T). Its propensities are these exact conditionals.

    Attributes:
        temperature: T > 0, in the units of the mean: small = nearly greedy, large =
            nearly uniform.
        propensity_floor: the smallest propensity a slate reports, in [0, 1).

    Example:
        >>> import math, torch
        >>> from wager.prediction import Prediction
        >>> from wager.policies import PolicyState, SoftmaxPolicy
        >>> p = Prediction(torch.tensor([[0.0, math.log(3.0)]]))
        >>> SoftmaxPolicy(1.0).select(p, 1, PolicyState.seeded(0)).distribution  # 1:3
        tensor([[[0.2500, 0.7500]]], dtype=torch.float64)
    """

    temperature: float
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR

    def __post_init__(self) -> None:
        check_finite("temperature", self.temperature, 0.0, math.inf, "> 0 (the mean's units)")
        if self.temperature == 0:
            raise ValueError("temperature must be a finite number > 0 (the mean's units), got 0")
        check_floor(self.propensity_floor)

    @property
    def name(self) -> str:
        """e.g. "softmax(temperature=0.1)"."""
        return f"softmax(temperature={self.temperature})"

    def _logits(self, prediction: Prediction, k: int) -> Tensor:
        """(B, C) float64 mean / temperature, after the checks every call makes."""
        logits = candidate_means(prediction, k, self.name) / float(self.temperature)
        if not bool(torch.isfinite(logits).all()):
            raise ValueError(
                f"{self.name}: mean / temperature overflows float64; raise the temperature"
            )
        return logits

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """Sample k distinct candidates per request from the Plackett-Luce model.

        Args:
            prediction: (B, C) predictions (only the mean is used; std may be None).
            k: slate length, 1 <= k <= C.
            state: its generator draws each position.

        Returns:
            A slate with items (B, k), the exact conditional propensities (floored) and each
            position's conditional distribution (B, k, C).
        """
        logits = self._logits(prediction, k)
        b, c = logits.shape

        def step(j: int, taken: Tensor) -> tuple[Tensor, Tensor]:
            probs = torch.softmax(masked(logits, taken), dim=1)
            return probs, torch.multinomial(probs, 1, generator=state.generator).squeeze(1)

        return sequential_slate(step, (b, c), k, self.propensity_floor, self.name)

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> Tensor:
        """(B, k, C) float64 marginal probability of each candidate at each position.

        Position 1 is exact: softmax(mean / T). Position j > 1 averages, over ``draws``
        slates sampled with ``state``'s generator (Gumbel top-k: the k largest of
        mean / T + Gumbel noise are a Plackett-Luce slate), the exact conditional
        distribution of position j given that slate's earlier positions: an unbiased Monte
        Carlo estimate (of lower variance than counting the sampled items) whose rows sum
        to 1 exactly.
        """
        check_positive_int("draws", draws)
        logits = self._logits(prediction, k)
        b, c = logits.shape
        out = torch.zeros((b, k, c), dtype=torch.float64)
        out[:, 0] = torch.softmax(logits, dim=1)
        if k == 1:
            return out
        for n in draw_blocks(draws, b * c):
            u = torch.rand((n, b, c), generator=state.generator, dtype=torch.float64)
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
            prefix = torch.topk(logits + gumbel, k - 1, dim=2).indices  # (n, B, k - 1)
            taken = torch.zeros((n, b, c), dtype=torch.bool)
            for j in range(1, k):
                taken.scatter_(2, prefix[:, :, j - 1 : j], True)
                out[:, j] += torch.softmax(masked(logits, taken), dim=2).sum(dim=0)
        out[:, 1:] /= draws
        return out
