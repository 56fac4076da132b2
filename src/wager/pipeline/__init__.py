"""Config-driven runs: load the data a run config names, split it, train, evaluate, save.

This is what ``wager train`` / ``wager evaluate`` do, as functions that notebooks and
benchmarks can call (:mod:`wager.pipeline.runs`):

- :func:`load_run_data`: dataset (MovieLens, Open Bandit, a table, or the synthetic world)
  -> train / valid / test frames and feature tables, with the split the config names;
- :func:`train_run`: fit a :class:`~wager.recommender.Recommender`, evaluate it on the test
  split, save the run directory;
- :func:`evaluate_run`: reload a run directory and evaluate it on a split again.

And the recommender in the simulator and in off-policy evaluation
(:mod:`wager.pipeline.simulation`): :class:`RecommenderSimulationModel`,
:func:`fit_reward_draws`, :func:`wager_policy_distribution` (and the simulator model's
empirical-Bayes item effects, :func:`check_item_effects`).
"""

from wager.pipeline.runs import (
    RunData,
    calibrate_run,
    check_run,
    evaluate_run,
    load_run_data,
    run_identity,
    synthetic_world,
    train_run,
)
from wager.pipeline.simulation import (
    ITEM_EFFECTS_CONFIG_RESOURCE,
    ITEM_EFFECTS_MIN_COUNT,
    SIMULATION_CONFIG_RESOURCE,
    RecommenderSimulationModel,
    check_item_effects,
    fit_reward_draws,
    reward_model_config,
    simulation_reward_draws,
    simulation_run_config,
    wager_policy_distribution,
)

__all__ = [
    "ITEM_EFFECTS_CONFIG_RESOURCE",
    "ITEM_EFFECTS_MIN_COUNT",
    "SIMULATION_CONFIG_RESOURCE",
    "RecommenderSimulationModel",
    "RunData",
    "calibrate_run",
    "check_item_effects",
    "check_run",
    "evaluate_run",
    "fit_reward_draws",
    "load_run_data",
    "reward_model_config",
    "run_identity",
    "simulation_reward_draws",
    "simulation_run_config",
    "synthetic_world",
    "train_run",
    "wager_policy_distribution",
]
