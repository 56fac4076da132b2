"""UCB: rank the candidates by an optimistic score, mean + beta * std."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wager.policies._shared import (
    candidate_means,
    candidate_stds,
    check_finite,
    check_floor,
    one_hot,
    ranked,
)
from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, PolicyState, Slate
from wager.prediction import Prediction


@dataclass(frozen=True)
class UCB:
    """Optimism in the face of uncertainty: the k highest ``prediction.ucb(beta)`` scores.

    ``beta`` is the exploration weight in predictive stds: 0 is greedy, larger values favour
    the candidates the model is least sure of. Deterministic, so every propensity is 1 (ties:
    the lowest column first). Needs a prediction with a std.

    Attributes:
        beta: exploration weight, a finite number >= 0.
        propensity_floor: recorded in the slate (no UCB propensity is below 1).

    Example:
        >>> import torch
        >>> from wager.prediction import Prediction
        >>> from wager.policies import UCB, PolicyState
        >>> p = Prediction(torch.tensor([[0.5, 0.4]]), std=torch.tensor([[0.0, 0.2]]))
        >>> UCB(beta=1.0).select(p, 1, PolicyState()).items  # 0.4 + 0.2 > 0.5
        tensor([[1]])
    """

    beta: float
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR

    def __post_init__(self) -> None:
        check_finite("beta", self.beta, 0.0, math.inf, ">= 0 (stds of optimism)")
        check_floor(self.propensity_floor)

    @property
    def name(self) -> str:
        """e.g. "ucb(beta=1.0)"."""
        return f"ucb(beta={self.beta})"

    def scores(self, prediction: Prediction, k: int) -> Tensor:
        """(B, C) float64 ``prediction.ucb(beta)``, after the checks every call makes (k,
        shape, NaN means, a std)."""
        candidate_means(prediction, k, self.name)
        candidate_stds(prediction, self.name)
        return prediction.ucb(self.beta).detach().to("cpu", torch.float64)

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """The k best candidates by mean + beta * std (``state`` is not used).

        Args:
            prediction: (B, C) predictions with a std.
            k: slate length, 1 <= k <= C.
            state: unused (UCB draws nothing).

        Returns:
            A slate with items (B, k), propensities 1 and one-hot distributions (B, k, C).
        """
        items = ranked(self.scores(prediction, k), k)
        return Slate(
            items=items,
            propensities=torch.ones(items.shape, dtype=torch.float64),
            distribution=one_hot(items, prediction.mean.shape[1]),
            propensity_floor=self.propensity_floor,
            policy=self.name,
        )

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> Tensor:
        """(B, k, C) float64 one-hot on the UCB slate (exact; ``state`` and ``draws``
        unused)."""
        return one_hot(ranked(self.scores(prediction, k), k), prediction.mean.shape[1])
