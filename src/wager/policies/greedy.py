"""Greedy: show the k candidates with the highest predicted mean, best first."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wager.policies._shared import candidate_means, check_floor, one_hot, ranked
from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, PolicyState, Slate
from wager.prediction import Prediction


@dataclass(frozen=True)
class Greedy:
    """Pure exploitation: the k highest means in order (ties: the lowest column first).

    Deterministic, so every propensity is 1 and each position's distribution is one-hot.
    Works on deterministic predictions (``std`` None) too.

    Attributes:
        propensity_floor: recorded in the slate (no greedy propensity is below 1).

    Example:
        >>> import torch
        >>> from wager.prediction import Prediction
        >>> from wager.policies import Greedy, PolicyState
        >>> slate = Greedy().select(Prediction(torch.tensor([[0.1, 0.3, 0.2]])), 2, PolicyState())
        >>> slate.items, slate.propensities
        (tensor([[1, 2]]), tensor([[1., 1.]], dtype=torch.float64))
    """

    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR

    def __post_init__(self) -> None:
        check_floor(self.propensity_floor)

    @property
    def name(self) -> str:
        """ "greedy"."""
        return "greedy"

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """The k best candidates by mean per request (``state`` is not used).

        Args:
            prediction: (B, C) predictions of each request's candidates.
            k: slate length, 1 <= k <= C.
            state: unused (greedy draws nothing).

        Returns:
            A slate with items (B, k) in decreasing mean, propensities 1 and one-hot
            distributions (B, k, C).
        """
        mean = candidate_means(prediction, k, self.name)
        items = ranked(mean, k)
        return Slate(
            items=items,
            propensities=torch.ones(items.shape, dtype=torch.float64),
            distribution=one_hot(items, mean.shape[1]),
            propensity_floor=self.propensity_floor,
            policy=self.name,
        )

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> Tensor:
        """(B, k, C) float64 one-hot on the greedy slate (exact; ``state`` and ``draws``
        unused)."""
        mean = candidate_means(prediction, k, self.name)
        return one_hot(ranked(mean, k), mean.shape[1])
