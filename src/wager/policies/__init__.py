"""Policies: turn predictions with uncertainty into slates with propensities."""

from wager.policies.base import DEFAULT_PROPENSITY_FLOOR, Policy, PolicyState, Slate

__all__ = ["DEFAULT_PROPENSITY_FLOOR", "Policy", "PolicyState", "Slate"]
