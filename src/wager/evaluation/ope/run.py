"""Running several off-policy estimators at once, and what their report needs.

Kept apart from the estimators (:mod:`wager.evaluation.ope.estimators`): :func:`estimate_all`
runs a list of them on one log and returns a plain dict that the CLI renders and benchmarks
dump as JSON; :func:`context_free_distribution` turns another log into the action
distribution of the (context-free) policy that wrote it. The estimates' plot is
:func:`wager.evaluation.plots.plot_estimates`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from wager.data.logged import LoggedFeedback
from wager.evaluation.ope.estimators import (
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    OffPolicyEstimator,
    Replay,
    SwitchDR,
    is_uniform,
)


def default_estimators(
    log: LoggedFeedback, with_reward_model: bool, switch_tau: float = 10.0
) -> list[OffPolicyEstimator]:
    """IPS and SNIPS; DM, DR and switch-DR(``switch_tau``) with a reward model; replay when
    ``log`` is uniformly random."""
    out: list[OffPolicyEstimator] = [IPS(), SNIPS()]
    if with_reward_model:
        out += [DirectMethod(), DoublyRobust(), SwitchDR(tau=switch_tau)]
    if is_uniform(log):
        out.append(Replay())
    return out


def estimate_all(
    log: LoggedFeedback,
    action_distribution: np.ndarray,
    reward_draws: np.ndarray | None = None,
    *,
    estimators: Sequence[OffPolicyEstimator] | None = None,
    truth: float | None = None,
    confidence_level: float = 0.95,
    n_bootstrap: int = 1000,
    seed: int = 0,
    gaussian_draws: bool = True,
    interval: str = "bca",
) -> dict[str, Any]:
    """Run several estimators on one log and collect their estimates.

    Args:
        log: the logged impressions.
        action_distribution: (n, n_actions, n_positions) the evaluation policy's marginal
            distribution per logged request and position.
        reward_draws: (S, n, n_actions, n_positions) reward-model draws, or None (then the
            estimators that need one are left out of the default list).
        estimators: what to run; default :func:`default_estimators`.
        truth: the value the estimates are checked against (e.g. an on-policy CTR); adds
            "on_policy" and, per estimate, "relative_error" ``|value - truth| / truth`` and
            "covers" (truth inside [low, high]).
        confidence_level: nominal coverage of every interval.
        n_bootstrap: bootstrap replicates per estimator.
        seed: bootstrap seed (the same for every estimator).
        gaussian_draws: how a bootstrap replicate draws the reward model (see
            :meth:`~wager.evaluation.ope.OffPolicyEstimator.estimate`).
        interval: ``"bca"`` or ``"percentile"`` bootstrap intervals (see there).

    Returns:
        ``{"estimates": {key: {"value", "low", "high", "std_error", "ess"[, "relative_error",
        "covers"]}}, "confidence_level", "n_rounds", "n_bootstrap", "reward_draws",
        "gaussian_draws", "interval"[, "on_policy"]}``.
    """
    chosen = (
        list(estimators)
        if estimators is not None
        else default_estimators(log, reward_draws is not None)
    )
    estimates: dict[str, dict[str, Any]] = {}
    for est in chosen:
        e = est.estimate(
            log,
            action_distribution,
            reward_draws,
            confidence_level=confidence_level,
            n_bootstrap=n_bootstrap,
            seed=seed,
            gaussian_draws=gaussian_draws,
            interval=interval,
        )
        row = e.to_dict()
        if truth is not None:
            row["relative_error"] = abs(e.value - truth) / truth if truth else float("nan")
            row["covers"] = bool(e.low <= truth <= e.high)
        estimates[e.estimator] = row
    out: dict[str, Any] = {
        "estimates": estimates,
        "confidence_level": confidence_level,
        "n_rounds": log.n_rounds,
        "n_bootstrap": n_bootstrap,
        "reward_draws": 0 if reward_draws is None else int(np.shape(reward_draws)[0]),
        "gaussian_draws": gaussian_draws,
        "interval": interval,
    }
    if truth is not None:
        out["on_policy"] = truth
    return out


def context_free_distribution(other: LoggedFeedback, n_rounds: int) -> np.ndarray:
    """The action distribution, per position, of the context-free policy that wrote ``other``,
    repeated for ``n_rounds`` requests: (n_rounds, n_actions, n_positions).

    The Open Bandit Dataset's policies (uniform random, Bernoulli Thompson sampling) do not
    look at the user, so one distribution per position describes them. Where ``other``'s
    propensities are exact and constant, they are that distribution: when every (action,
    position) pair carries a single propensity and those sum to 1 over the actions at every
    position (uniform random logs), they are used as they are. Otherwise (Thompson sampling,
    whose posterior and so its propensities drift during the log) the probability of action a
    at position p is averaged over the log by its empirical frequency, ``count(a, p) /
    count(p)``: an unbiased estimate of the time-averaged propensity (the mean logged
    propensity of the rows that show a would over-weight the times a was likely).

    Raises:
        ValueError: ``other`` has no impression at some position.
    """
    a, p = np.asarray(other.action), np.asarray(other.position)
    shape = (other.n_actions, other.n_positions)
    counts = np.zeros(shape)
    np.add.at(counts, (a, p), 1.0)
    per_position = counts.sum(axis=0)
    if (per_position == 0).any():
        pos = int(np.flatnonzero(per_position == 0)[0])
        raise ValueError(
            f"{other.source or 'the policy log'} has no impression at position {pos}: its "
            "action distribution there is unknown"
        )
    prop = np.asarray(other.propensity, dtype=np.float64)
    lo, hi = np.full(shape, np.inf), np.full(shape, -np.inf)
    np.minimum.at(lo, (a, p), prop)
    np.maximum.at(hi, (a, p), prop)
    seen = counts > 0
    constant = bool(np.allclose(lo[seen], hi[seen], rtol=1e-9, atol=0))
    exact = np.where(seen, lo, 0.0)
    if constant and np.allclose(exact.sum(axis=0), 1.0, atol=1e-6):
        dist = exact / exact.sum(axis=0, keepdims=True)
    else:
        dist = counts / per_position
    return np.broadcast_to(dist, (n_rounds, *shape)).copy()
