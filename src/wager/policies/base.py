"""What every policy shares: the :class:`Slate` it returns, the :class:`Policy` protocol and
the explicit :class:`PolicyState` that carries whatever changes between calls.

A policy turns a :class:`~wager.prediction.Prediction` over each request's candidates into a
slate: ``k`` distinct candidates for ``k`` positions, each with the probability the policy had
of making that choice. Slates are filled position by position, without repeats; the
propensity of position j is the probability of the item chosen there **given the items
chosen at positions before j** (so the product over positions is the probability of the whole
slate). Policies hold their parameters only (frozen dataclasses); the random generator and any
counts live in a :class:`PolicyState` passed in, so two calls with equal states give equal
slates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from wager.prediction import Prediction

DEFAULT_PROPENSITY_FLOOR = 1e-6  # no logged propensity is below this (reported with it)


@dataclass(frozen=True)
class Slate:
    """The choices of a policy for a batch of requests.

    Attributes:
        items: (B, k) int64 column index of the chosen candidate at each position (0-based
            into the candidates the prediction covers; -1 where a request had fewer than k
            candidates).
        propensities: (B, k) float64 probability of each choice at its position given the
            earlier positions, floored at ``propensity_floor`` (NaN where ``items`` is -1).
        distribution: (B, k, C) float64 the full conditional action distribution of each
            position (rows sum to 1 over the candidates not yet chosen), or None where not
            computed (Thompson sampling without ``draws``).
        propensity_floor: the floor applied to ``propensities`` (reported with every log).
        draws: Monte Carlo draws behind the propensities (Thompson sampling), or None when
            they are exact.
        policy: a short description of the policy and its parameters, e.g. "ucb(beta=1.0)".
    """

    items: Tensor
    propensities: Tensor
    distribution: Tensor | None = None
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR
    draws: int | None = None
    policy: str = ""


@dataclass
class PolicyState:
    """What a policy may change between calls: its random generator and per-item counts.

    Attributes:
        generator: the torch generator every random draw takes (seed it for reproducible
            slates).
        counts: free-form per-key counters a policy may keep (e.g. impressions per item);
            empty for the stateless policies of this package.
    """

    generator: torch.Generator = field(default_factory=torch.Generator)
    counts: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def seeded(cls, seed: int) -> PolicyState:
        """A state whose generator is seeded with ``seed``."""
        return cls(torch.Generator().manual_seed(int(seed)))


@runtime_checkable
class Policy(Protocol):
    """Prediction over candidates -> slate. Implementations are frozen dataclasses holding
    their parameters only (``Greedy()``, ``EpsilonGreedy(0.1)``, ``UCB(1.0)``, ...)."""

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """Choose ``k`` distinct candidates per request.

        Args:
            prediction: (B, C) predictions of each request's C candidates (mean, std, samples).
            k: slate length (1 <= k <= C).
            state: the random generator and counts to use (and update).
        """
        ...

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> Tensor:
        """(B, k, C) float64 marginal probability that candidate c is shown at position j
        (rows sum to 1 over C): what off-policy estimators need of an evaluation policy
        under the independent-position assumption. Exact where a closed form exists,
        else a Monte Carlo estimate over ``draws`` slates."""
        ...
