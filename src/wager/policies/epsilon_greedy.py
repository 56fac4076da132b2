"""Epsilon-greedy: mostly the best remaining candidate, sometimes a uniformly random one.

The slate is filled position by position. At position j (0-based; ``C - j`` candidates
remain) the policy explores with probability epsilon, picking one of the remaining
candidates uniformly, and otherwise exploits, picking the remaining candidate with the
highest mean (ties: the lowest column). So, given the earlier positions, the propensity of
the chosen candidate is

    (1 - epsilon) + epsilon / (C - j)   if it is the best remaining candidate,
    epsilon / (C - j)                   otherwise.

The marginal probability of each candidate at each position (:meth:`action_distribution`)
is exact too. It depends only on each candidate's rank by mean, and follows from a Markov
chain over the "frontier" m, the best-ranked candidate not yet shown: after j positions the
ranks 0..m-1 are shown, m is not, and the other e = j - m shown candidates (explorations)
are a uniformly random e-subset of the n = C - 1 - m ranks above m (nothing so far depended
on which of those ranks they are). At position j the policy picks

    rank m       with probability (1 - epsilon) + epsilon / (C - j)
    a rank r > m with probability epsilon / (C - j) * (n - e) / n  (r not yet shown),

after the frontier pick, the new frontier is m + 1 + L where L, the run of already shown
ranks just above m, has P(L >= l) = prod_{i < l} (e - i) / (n - i); after an exploration
above m the frontier stays and e grows by one. Summing the chain's state probabilities gives
the (k, C) marginal by rank in O(C k^2) operations, shared by every request with C candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from wager.policies._shared import (
    candidate_means,
    check_finite,
    check_floor,
    check_positive_int,
    masked,
    ranked,
    sequential_slate,
)
from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, PolicyState, Slate
from wager.prediction import Prediction


@dataclass(frozen=True)
class EpsilonGreedy:
    """At each position: with probability epsilon a uniform pick among the remaining
    candidates, else the remaining candidate with the highest mean (module docstring: the
    closed forms of the propensities and of the marginal action distribution).

    Attributes:
        epsilon: exploration probability per position, in [0, 1] (0 = :class:`Greedy`,
            1 = uniformly random slates).
        propensity_floor: the smallest propensity a slate reports, in [0, 1).

    Example:
        >>> import torch
        >>> from wager.prediction import Prediction
        >>> from wager.policies import EpsilonGreedy, PolicyState
        >>> p = Prediction(torch.tensor([[0.1, 0.3, 0.2, 0.0]]))
        >>> slate = EpsilonGreedy(0.2).select(p, 1, PolicyState.seeded(0))
        >>> slate.distribution  # best: 0.8 + 0.2 / 4; others 0.2 / 4
        tensor([[[0.0500, 0.8500, 0.0500, 0.0500]]], dtype=torch.float64)
    """

    epsilon: float
    propensity_floor: float = DEFAULT_PROPENSITY_FLOOR

    def __post_init__(self) -> None:
        check_finite("epsilon", self.epsilon, 0.0, 1.0, "in [0, 1] (exploration probability)")
        check_floor(self.propensity_floor)

    @property
    def name(self) -> str:
        """e.g. "epsilon_greedy(epsilon=0.1)"."""
        return f"epsilon_greedy(epsilon={self.epsilon})"

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """Fill k positions per request, each exploring with probability epsilon.

        Args:
            prediction: (B, C) predictions (only the mean is used; std may be None).
            k: slate length, 1 <= k <= C.
            state: its generator draws the explore decisions and the uniform picks.

        Returns:
            A slate with items (B, k), exact conditional propensities (floored) and the
            conditional distribution of each position (B, k, C).
        """
        mean = candidate_means(prediction, k, self.name)
        return epsilon_slate(mean, k, float(self.epsilon), state, self.propensity_floor, self.name)

    def action_distribution(
        self, prediction: Prediction, k: int, state: PolicyState, draws: int = 1000
    ) -> Tensor:
        """(B, k, C) float64 exact marginal probability of each candidate at each position
        (the frontier chain of the module docstring; ``state`` and ``draws`` unused)."""
        check_positive_int("draws", draws)
        mean = candidate_means(prediction, k, self.name)
        return epsilon_marginals(mean, k, float(self.epsilon))


def epsilon_slate(
    scores: Tensor, k: int, epsilon: float, state: PolicyState, floor: float, name: str
) -> Slate:
    """Fill k positions of (B, C) ``scores`` rows: at position j, with probability epsilon a
    uniform pick among the C - j remaining candidates, else the remaining candidate with the
    highest score (ties: the lowest column). Shared by :class:`EpsilonGreedy` (scores = means)
    and :class:`~wager.policies.UCB` with an epsilon floor (scores = mean + beta std).

    Args:
        scores: (B, C) float64 what the exploiting pick maximises.
        k: slate length, 1 <= k <= C (checked by the caller).
        epsilon: exploration probability per position, in [0, 1].
        state: its generator draws the explore decisions and the uniform picks.
        floor: the propensity floor of the slate.
        name: the policy's name, recorded in the slate.

    Returns:
        A slate whose propensity at position j is ``(1 - epsilon) [best remaining] +
        epsilon / (C - j)``, with the conditional distribution of every position.
    """
    b, c = scores.shape
    rows = torch.arange(b)

    def step(j: int, taken: Tensor) -> tuple[Tensor, Tensor]:
        best = masked(scores, taken).argmax(dim=1)  # the first maximum: lowest column
        explore = torch.rand(b, generator=state.generator, dtype=torch.float64) < epsilon
        uniform = torch.multinomial(
            (~taken).to(torch.float64), 1, generator=state.generator
        ).squeeze(1)
        cond = (~taken).to(torch.float64) * (epsilon / (c - j))
        cond[rows, best] += 1.0 - epsilon
        return cond, torch.where(explore, uniform, best)

    return sequential_slate(step, (b, c), k, floor, name)


def epsilon_marginals(scores: Tensor, k: int, epsilon: float) -> Tensor:
    """(B, k, C) float64 exact marginal probability of each candidate at each position under
    :func:`epsilon_slate` over (B, C) ``scores``: :func:`rank_marginals` placed on each
    row's ranking by score (ties: the lowest column first)."""
    b, c = scores.shape
    by_rank = rank_marginals(c, k, epsilon)  # (k, C): column r = rank r
    order = ranked(scores, c)  # (B, C): the column of each rank
    out = torch.zeros((b, k, c), dtype=torch.float64)
    return out.scatter_(2, order.unsqueeze(1).expand(b, k, c), by_rank.expand(b, k, c))


def rank_marginals(c: int, k: int, epsilon: float) -> Tensor:
    """(k, C) float64 probability that the candidate of rank r (0 = highest mean) is shown at
    position j by epsilon-greedy over C candidates (the frontier chain of the module
    docstring); each row sums to 1.

    Args:
        c: candidates per request.
        k: positions, 1 <= k <= c.
        epsilon: exploration probability per position, in [0, 1].
    """
    f64 = torch.float64
    m = torch.arange(c, dtype=f64)  # frontier: the best rank not yet shown
    n = c - 1.0 - m  # ranks above the frontier
    p = torch.zeros(c + 1, dtype=f64)  # P(frontier = m) after j positions (m = c: all shown)
    p[0] = 1.0
    out = torch.zeros((k, c), dtype=f64)
    for j in range(k):
        left = c - j  # candidates remaining
        e = j - m  # explorations shown above the frontier (< 0: impossible state, p = 0)
        pm = p[:c]
        free = torch.where(n > 0, (n - e) / n.clamp_min(1.0), torch.zeros_like(n))
        exploit = (1.0 - epsilon) + epsilon / left
        # rank m from frontier m; rank r from every frontier m < r where r is not yet shown
        above = torch.cumsum(pm * free, 0) - pm * free  # sum over m < r
        out[j] = pm * exploit + (epsilon / left) * above
        new = torch.zeros(c + 1, dtype=f64)
        new[:c] += pm * (epsilon / left) * (n - e).clamp_min(0.0)  # explore above: m stays
        i = torch.arange(j + 1, dtype=f64)
        num = (e.unsqueeze(1) - i).clamp_min(0.0)
        den = n.unsqueeze(1) - i
        ratio = torch.where(den > 0, num / den.clamp_min(1.0), torch.zeros_like(den))
        surv = torch.cat([torch.ones((c, 1), dtype=f64), torch.cumprod(ratio, 1)], 1)
        run = surv[:, :-1] - surv[:, 1:]  # (C, j + 1): P(L = l)
        target = (m.unsqueeze(1) + 1 + i).clamp_max(c).to(torch.int64)
        new.index_add_(0, target.flatten(), (pm.unsqueeze(1) * exploit * run).flatten())
        p = new
    return out
