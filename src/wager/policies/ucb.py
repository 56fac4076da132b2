"""UCB: rank the candidates by an optimistic score, mean + beta * std, optionally with an
epsilon floor of uniform exploration (so that its logs support off-policy estimates)."""

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
from wager.policies.epsilon_greedy import epsilon_marginals, epsilon_slate
from wager.prediction import Prediction

#: the key of ``PolicyState.counts`` holding batch-aware UCB's pending impressions per column
PENDING = "pending"


@dataclass(frozen=True)
class UCB:
    """Optimism in the face of uncertainty: the k highest ``prediction.ucb(beta)`` scores.

    ``beta`` is the exploration weight in predictive stds: 0 is greedy, larger values favour
    the candidates the model is least sure of. Deterministic, so every propensity is 1 (ties:
    the lowest column first). Needs a prediction with a std.

    A model refitted in batches (once a day, once an hour) gives every request between two
    fits the same means and stds, so plain UCB shows the same optimistic items to every
    similar request until the next fit. ``batch_aware=True`` is the batch remedy of GP-BUCB
    (Desautels, Krause & Burdick 2014): each impression served since the last fit counts as
    if its outcome had been observed, which leaves the mean alone and shrinks the candidate's
    std as a Gaussian update with the Bernoulli noise of a click would:
    ``std_eff = 1 / sqrt(1 / std**2 + n_pending / (mean * (1 - mean)))``. Requests of a
    batch are served one after the other, and the pending impressions per candidate column
    live in ``state.counts["pending"]`` ((C,) float64), so the caller keeps the candidate
    columns fixed between fits and clears ``state.counts`` when it refits the model or
    changes the candidates (the simulator does both each day). Needs click probabilities
    (means in [0, 1]).

    **Epsilon floor.** Plain UCB is deterministic: every item it does not pick has
    propensity 0, so its logs cannot support an unbiased off-policy estimate of any other
    policy (greedy included). ``epsilon > 0`` is the stochastic UCB a team would run to keep
    its logs usable: at each position, with probability epsilon a uniform pick among the
    C - j candidates still remaining, otherwise the remaining candidate with the highest
    UCB score. Given the earlier positions, the propensity of the choice at position j is
    exactly ``(1 - epsilon) [it is the UCB pick] + epsilon / (C - j)``; the marginal of each
    position (:meth:`action_distribution`) is epsilon-greedy's closed form over the UCB
    ranking (:func:`~wager.policies.epsilon_greedy.rank_marginals`).

    Attributes:
        beta: exploration weight, a finite number >= 0.
        propensity_floor: the smallest propensity a slate reports, in [0, 1).
        batch_aware: shrink the std by the impressions served since the last fit (above).
        epsilon: probability of a uniform pick at each position, in [0, 1] (0: plain,
            deterministic UCB). Not combined with ``batch_aware``.

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
    batch_aware: bool = False
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        check_finite("beta", self.beta, 0.0, math.inf, ">= 0 (stds of optimism)")
        check_floor(self.propensity_floor)
        if not isinstance(self.batch_aware, bool):
            raise ValueError(f"batch_aware must be True or False, got {self.batch_aware!r}")
        check_finite("epsilon", self.epsilon, 0.0, 1.0, "in [0, 1] (exploration probability)")
        if self.batch_aware and self.epsilon > 0:
            raise ValueError(
                f"UCB: batch_aware and epsilon = {self.epsilon} do not combine; drop one of "
                "them (epsilon > 0 for logs that support off-policy estimates)"
            )

    @property
    def name(self) -> str:
        """e.g. "ucb(beta=1.0)", "ucb(beta=1.0, epsilon=0.1)" or "ucb(beta=1.0, batch_aware)"."""
        extra = ", batch_aware" if self.batch_aware else ""
        if self.epsilon > 0:
            extra += f", epsilon={self.epsilon}"
        return f"ucb(beta={self.beta}{extra})"

    def scores(self, prediction: Prediction, k: int) -> Tensor:
        """(B, C) float64 ``prediction.ucb(beta)``, after the checks every call makes (k,
        shape, NaN means, a std)."""
        candidate_means(prediction, k, self.name)
        candidate_stds(prediction, self.name)
        return prediction.ucb(self.beta).detach().to("cpu", torch.float64)

    def select(self, prediction: Prediction, k: int, state: PolicyState) -> Slate:
        """The k best candidates by mean + beta * std, or with the epsilon floor.

        Args:
            prediction: (B, C) predictions with a std.
            k: slate length, 1 <= k <= C.
            state: with ``epsilon > 0`` its generator draws the explorations; with
                ``batch_aware`` its pending impressions per column (updated with this
                batch's slates); unused otherwise.

        Returns:
            A slate with items (B, k): propensities 1 and one-hot distributions (B, k, C)
            for plain UCB; with ``epsilon > 0`` the exact conditional propensities (floored)
            and the conditional distribution of each position.
        """
        if self.epsilon > 0:
            scores = self.scores(prediction, k)
            return epsilon_slate(
                scores, k, float(self.epsilon), state, self.propensity_floor, self.name
            )
        items = self._slates(prediction, k, state)
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
        """(B, k, C) float64 exact marginal of each candidate at each position: one-hot on the
        UCB slate (``state`` as in :meth:`select`: given the same pending counts, the same
        slates), or with ``epsilon > 0`` epsilon-greedy's closed form over the UCB ranking
        (``state`` unused). ``draws`` is unused."""
        if self.epsilon > 0:
            return epsilon_marginals(self.scores(prediction, k), k, float(self.epsilon))
        return one_hot(self._slates(prediction, k, state), prediction.mean.shape[1])

    def _slates(self, prediction: Prediction, k: int, state: PolicyState) -> Tensor:
        """(B, k) int64 slates: ranked UCB scores, or served one request at a time with the
        pending impressions shrinking the stds (``batch_aware``)."""
        if not self.batch_aware:
            return ranked(self.scores(prediction, k), k)
        candidate_means(prediction, k, self.name)  # the checks of scores(), without its sum
        candidate_stds(prediction, self.name)
        mean = prediction.mean.detach().to("cpu", torch.float64)
        std = prediction.std.detach().to("cpu", torch.float64)  # type: ignore[union-attr]
        if bool(((mean < 0) | (mean > 1)).any()):
            raise ValueError(
                f"{self.name}: batch_aware needs click probabilities, but a mean lies outside "
                "[0, 1]; use batch_aware=False for ratings or scores"
            )
        b, c = mean.shape
        pending = state.counts.get(PENDING)
        if pending is None:
            pending = torch.zeros(c, dtype=torch.float64)
        elif tuple(pending.shape) != (c,):
            raise ValueError(
                f"{self.name}: state.counts[{PENDING!r}] holds {tuple(pending.shape)} pending "
                f"counts but the prediction has {c} candidate columns; clear state.counts "
                "whenever the model is refitted or the candidates change"
            )
        noise = (mean * (1.0 - mean)).clamp_min(1e-6)
        precision = std.square().reciprocal()  # std 0 -> inf: a known candidate stays known
        out = torch.empty(b, k, dtype=torch.int64)
        for row in range(b):
            shrunk = (precision[row] + pending / noise[row]).reciprocal().sqrt()
            top = ranked((mean[row] + self.beta * shrunk).unsqueeze(0), k)[0]
            out[row] = top
            pending[top] += 1.0
        state.counts[PENDING] = pending
        return out
