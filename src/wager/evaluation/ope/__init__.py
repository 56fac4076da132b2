"""Off-policy evaluation: estimate a slate policy's value from logged feedback.

:mod:`~wager.evaluation.ope.estimators` holds the estimators (one frozen dataclass each, one
shared base); :mod:`~wager.evaluation.ope.run` runs several and prepares their report.
"""

from __future__ import annotations

from wager.evaluation.ope.estimators import (
    INTERVALS,
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    Estimate,
    OffPolicyEstimator,
    Replay,
    SwitchDR,
    bca_levels,
    check_action_distribution,
    check_reward_draws,
    effective_sample_size,
    importance_weights,
    is_uniform,
)
from wager.evaluation.ope.run import (
    context_free_distribution,
    default_estimators,
    estimate_all,
)
from wager.evaluation.plots import plot_estimates

__all__ = [
    "INTERVALS",
    "IPS",
    "SNIPS",
    "DirectMethod",
    "DoublyRobust",
    "Estimate",
    "OffPolicyEstimator",
    "Replay",
    "SwitchDR",
    "bca_levels",
    "check_action_distribution",
    "check_reward_draws",
    "context_free_distribution",
    "default_estimators",
    "effective_sample_size",
    "estimate_all",
    "importance_weights",
    "is_uniform",
    "plot_estimates",
]
