"""Policies: turn predictions with uncertainty into slates with propensities.

:class:`Greedy`, :class:`EpsilonGreedy`, :class:`UCB`, :class:`ThompsonSampling` and
:class:`SoftmaxPolicy` implement the :class:`Policy` protocol; :func:`policy_from_name`
builds one from a name and parameters (the CLI's ``--policy``).
"""

from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, Policy, PolicyState, Slate
from wager.policies.epsilon_greedy import EpsilonGreedy, rank_marginals
from wager.policies.greedy import Greedy
from wager.policies.registry import POLICY_PARAMETERS, policy_from_name
from wager.policies.softmax import SoftmaxPolicy
from wager.policies.thompson import ThompsonSampling
from wager.policies.ucb import UCB

__all__ = [
    "DEFAULT_PROPENSITY_FLOOR",
    "POLICY_PARAMETERS",
    "UCB",
    "EpsilonGreedy",
    "Greedy",
    "Policy",
    "PolicyState",
    "Slate",
    "SoftmaxPolicy",
    "ThompsonSampling",
    "policy_from_name",
    "rank_marginals",
]
