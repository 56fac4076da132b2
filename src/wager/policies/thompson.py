"""Thompson sampling: show the candidates whose draws from their predictive distributions
are highest."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wager.policies._shared import (
    candidate_means,
    candidate_stds,
    check_floor,
    check_positive_int,
    draw_blocks,
    draw_values_per_candidate,
    masked,
    predictive_draws,
    sequential_slate,
)
from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, PolicyState, Slate
from wager.prediction import Prediction


@dataclass(frozen=True)
class ThompsonSampling:
    """Probability matching: each position shows the remaining candidate with the highest
    draw from its predictive distribution.

    One draw per candidate per position, as :meth:`Prediction.sample` makes it: a uniformly
    random member / sample for sample-based predictions (ensembles, MC dropout), a
    component then its Gaussian for mixture predictions, else N(mean, std^2). Every
    position takes fresh draws, so the probability of a choice given the earlier positions
    is the probability that a fresh draw ranks it first among the remaining candidates.
    That has no closed form; the slate's propensity is its Monte Carlo estimate, the
    fraction of ``draws`` re-draws (with the earlier positions held fixed) that pick the
    same candidate, floored at ``propensity_floor``; the slate records ``draws``. Ties go to
    the lowest column. Needs a prediction with a std.

    Attributes:
        draws: Monte Carlo re-draws behind each propensity (>= 1); the standard error of an
            estimate p is sqrt(p (1 - p) / draws).
        propensity_floor: the smallest propensity a slate reports, in [0, 1).

    Example:
        >>> import torch
        >>> from wager.prediction import Prediction
        >>> from wager.policies import PolicyState, ThompsonSampling
        >>> p = Prediction(torch.tensor([[0.0, 0.0]]), std=torch.tensor([[1.0, 1.0]]))
        >>> slate = ThompsonSampling(draws=4000).select(p, 1, PolicyState.seeded(0))
        >>> abs(float(slate.propensities[0, 0]) - 0.5) < 0.03  # a coin flip
        True
    """

    draws: int = 1000
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR

    def __post_init__(self) -> None:
        check_positive_int("draws", self.draws)
        check_floor(self.propensity_floor)

    @property
    def name(self) -> str:
        """e.g. "thompson(draws=1000)"."""
        return f"thompson(draws={self.draws})"

    def _check(self, prediction: Prediction, k: int) -> None:
        candidate_means(prediction, k, self.name)
        candidate_stds(prediction, self.name)

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """Fill k positions per request, each with the best fresh draw among the remaining.

        Args:
            prediction: (B, C) predictions with a std.
            k: slate length, 1 <= k <= C.
            state: its generator makes every draw.

        Returns:
            A slate with items (B, k), Monte Carlo propensities (floored), the Monte Carlo
            conditional distribution of each position (B, k, C) and ``draws``.
        """
        self._check(prediction, k)
        b, c = prediction.mean.shape
        gen = state.generator
        per_draw = draw_values_per_candidate(prediction)

        def step(j: int, taken: Tensor) -> tuple[Tensor, Tensor]:
            chosen = masked(predictive_draws(prediction, 1, gen)[0], taken).argmax(dim=1)
            wins = torch.zeros((b, c), dtype=torch.float64)
            for n in draw_blocks(self.draws, per_draw):
                best = masked(predictive_draws(prediction, n, gen), taken).argmax(dim=2)
                wins.scatter_add_(1, best.T, torch.ones((b, n), dtype=torch.float64))
            return wins / self.draws, chosen

        return sequential_slate(step, (b, c), k, self.propensity_floor, self.name, draws=self.draws)

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> Tensor:
        """(B, k, C) float64 Monte Carlo marginal: the fraction of ``draws`` slates, sampled
        as :meth:`select` samples them, that show candidate c at position j."""
        check_positive_int("draws", draws)
        self._check(prediction, k)
        b, c = prediction.mean.shape
        counts = torch.zeros((b, k, c), dtype=torch.float64)
        for n in draw_blocks(draws, draw_values_per_candidate(prediction)):
            taken = torch.zeros((n, b, c), dtype=torch.bool)
            for j in range(k):
                values = predictive_draws(prediction, n, state.generator)
                best = masked(values, taken).argmax(dim=2)  # (n, B)
                counts[:, j].scatter_add_(1, best.T, torch.ones((b, n), dtype=torch.float64))
                taken.scatter_(2, best.unsqueeze(2), True)
        return counts / draws
