"""Off-policy evaluation in the simulator, where the true policy value is known.

:func:`simulated_ope` logs one day of a **logging policy** in the simulator, estimates an
**evaluation policy**'s value from that log with every estimator, and computes the evaluation
policy's true value on the same requests, so the estimates can be scored (bias, RMSE, interval
coverage over seeds: ``benchmarks/ope_simulation.py``).

Design, one call:

1. :func:`~wager.evaluation.simulation.simulate` runs ``config.days`` days (one, typically)
   with the logging policy acting on ``model``; the model is fitted once, on the simulator's
   warm-up log (the popularity policy's impressions), before the first day, and (with one day)
   never refitted. ``config.log_action_distribution`` must be on: the logging policy's
   marginal distribution per request and position is logged beside each impression.
2. The **propensity** each estimator divides by is the logging policy's *marginal*
   probability of the logged action at the logged position (read from that distribution),
   not the slate's conditional propensity: the estimators treat each position as its own
   bandit (see :mod:`wager.evaluation.ope.estimators`), and with the marginal their IPS is
   exactly unbiased in this world, where a click depends only on its own (user, item,
   position).
3. The evaluation policy acts on the same fitted model: its marginal distribution for each
   logged request is ``evaluation_policy.action_distribution(model.predict(users, catalogue))``.
4. **The true value** is the evaluation policy's exact expected reward per impression on the
   logged requests and positions: ``mean_i sum_a pi(a | u_i, p_i) true_ctr(u_i, a, p_i)``
   (the world's true CTR at position 1 times its position bias), the quantity every
   estimator estimates.
5. **The reward model** of DM, DR and switch-DR is ``reward_draws(feedback)``, a callable
   returning (S, n, n_actions, n_positions) draws (e.g. the ensemble members of the fitted
   model, which never saw the evaluated log, so no cross-fitting is needed), or None (then
   only IPS and SNIPS run).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from wager.data.logged import LoggedFeedback
from wager.data.synthetic import SyntheticWorld
from wager.evaluation.ope.estimators import OffPolicyEstimator
from wager.evaluation.ope.run import default_estimators, estimate_all
from wager.evaluation.simulation import SimulationConfig, SimulationModel, catalogue, simulate
from wager.policies.base import Policy, PolicyState

RewardDraws = Callable[[LoggedFeedback], np.ndarray]


def marginal_propensity_feedback(feedback: LoggedFeedback) -> LoggedFeedback:
    """``feedback`` with each propensity replaced by the logging policy's marginal
    probability of the logged action at the logged position (from its
    ``action_distribution``).

    Raises:
        ValueError: the log carries no action distribution (run the simulation with
            ``SimulationConfig(log_action_distribution=True)``).
    """
    d = feedback.action_distribution
    if d is None:
        raise ValueError(
            f"{feedback.source or 'the log'} has no action_distribution: simulate with "
            "SimulationConfig(log_action_distribution=True) to log the logging policy's "
            "marginals"
        )
    rows = np.arange(feedback.n_rounds)
    marginal = np.asarray(d[rows, feedback.action, feedback.position], dtype=np.float64)
    return replace(feedback, propensity=marginal)


def policy_distribution(
    world: SyntheticWorld,
    model: SimulationModel,
    policy: Policy,
    feedback: LoggedFeedback,
    *,
    day: int = 0,
    catalogue_size: int | None = None,
    seed: int = 0,
    draws: int = 1000,
) -> np.ndarray:
    """(n, n_actions, n_positions) the marginal distribution of ``policy`` acting on
    ``model`` for every logged request (user) of ``feedback``, over ``day``'s catalogue placed
    on the log's action space (0 for actions outside that catalogue)."""
    users = np.asarray(feedback.user_ids, dtype=np.int64)
    items = catalogue(world, day, catalogue_size)
    cols = np.searchsorted(np.asarray(feedback.item_ids), items)
    pred = model.predict(users, items)
    marginal = policy.action_distribution(
        pred, feedback.n_positions, PolicyState.seeded(seed), draws
    )  # (n, k, C)
    out = np.zeros((feedback.n_rounds, feedback.n_actions, feedback.n_positions))
    out[:, cols, :] = np.transpose(marginal.detach().cpu().numpy().astype(np.float64), (0, 2, 1))
    return out


def true_policy_value(
    world: SyntheticWorld, feedback: LoggedFeedback, action_distribution: np.ndarray
) -> float:
    """``mean_i sum_a pi(a | u_i, p_i) true_ctr(u_i, a, p_i)``: the exact expected reward per
    impression of the policy behind ``action_distribution`` (n, n_actions, n_positions) on
    ``feedback``'s requests and positions."""
    users = np.asarray(feedback.user_ids, dtype=np.int64)
    items = np.asarray(feedback.item_ids, dtype=np.int64)
    ctr = world.true_ctr_matrix(users, items)  # (n, A) at position 1
    rows = np.arange(feedback.n_rounds)
    pi_at = np.moveaxis(action_distribution, 2, 1)[rows, feedback.position]  # (n, A)
    bias = np.asarray(world.position_bias)[feedback.position]
    return float(np.mean(np.einsum("na,na->n", pi_at, ctr) * bias))


def simulated_ope(
    world: SyntheticWorld,
    model: SimulationModel,
    logging_policy: Policy,
    evaluation_policy: Policy,
    config: SimulationConfig,
    *,
    reward_draws: RewardDraws | None = None,
    estimators: Sequence[OffPolicyEstimator] | None = None,
    switch_tau: float = 10.0,
    confidence_level: float = 0.95,
    n_bootstrap: int = 1000,
    interval: str = "bca",
) -> dict[str, Any]:
    """Log ``logging_policy`` in the simulator, estimate ``evaluation_policy``'s value from the
    log with every estimator, and score the estimates against its true value (see the module
    docstring for the design).

    Args:
        world: the synthetic world.
        model: the model both policies act on (fitted on the simulator's warm-up log).
        logging_policy: the policy that writes the log.
        evaluation_policy: the policy whose value is estimated.
        config: the simulation; ``log_action_distribution`` must be True and ``warmup_rows``
            > 0 for a model that must be fitted.
        reward_draws: the reward model of DM / DR / switch-DR, or None (IPS and SNIPS only).
        estimators: what to run; default :func:`~wager.evaluation.ope.default_estimators`.
        switch_tau: switch-DR's threshold in the default list.
        confidence_level: nominal coverage of every interval.
        n_bootstrap: bootstrap replicates per estimator.
        interval: ``"bca"`` or ``"percentile"`` bootstrap intervals
            (:meth:`~wager.evaluation.ope.OffPolicyEstimator.estimate`).

    Returns:
        :func:`~wager.evaluation.ope.estimate_all`'s dict with the true value as
        "on_policy" (and per estimate "relative_error", "covers", plus "error" = value -
        truth), and "logged_ctr", "logging_value" (the logging policy's own exact value).

    Raises:
        ValueError: ``config.log_action_distribution`` is False.
    """
    if not config.log_action_distribution:
        raise ValueError(
            "simulated_ope needs SimulationConfig(log_action_distribution=True): the "
            "estimators divide by the logging policy's marginal propensities"
        )
    sim = simulate(world, logging_policy, model, config)
    feedback = marginal_propensity_feedback(sim.feedback)
    assert feedback.action_distribution is not None
    dist = policy_distribution(
        world,
        model,
        evaluation_policy,
        feedback,
        day=config.days - 1,
        catalogue_size=config.catalogue_size,
        seed=config.seed + 2,
        draws=config.action_distribution_draws,
    )
    truth = true_policy_value(world, feedback, dist)
    draws = reward_draws(feedback) if reward_draws is not None else None
    chosen = (
        list(estimators)
        if estimators is not None
        else default_estimators(feedback, draws is not None, switch_tau=switch_tau)
    )
    out = estimate_all(
        feedback,
        dist,
        draws,
        estimators=chosen,
        truth=truth,
        confidence_level=confidence_level,
        n_bootstrap=n_bootstrap,
        seed=config.seed,
        interval=interval,
    )
    for row in out["estimates"].values():
        row["error"] = row["value"] - truth
    out["logged_ctr"] = float(np.mean(feedback.reward))
    out["logging_value"] = true_policy_value(world, feedback, feedback.action_distribution)
    return out
