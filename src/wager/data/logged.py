"""LoggedFeedback: the one shape of logged decisions that off-policy estimators read.

The simulator writes it, the Open Bandit loader and the service's event-log loader
(:func:`wager.data.loaders.event_log.load_event_log`, on `wager export-logs` files) produce it,
and every estimator in :mod:`wager.evaluation.ope` takes it. One row per impression: which
action (item) the logging policy showed, at which position, with what probability, and the
reward it earned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class LoggedFeedback:
    """Logged impressions of a slate policy.

    Attributes:
        action: (n,) int64 index of the shown item in ``item_ids`` (the action space).
        position: (n,) int64 0-based slot of the impression (0 = top).
        reward: (n,) float64 observed reward (click 0/1, or a rating).
        propensity: (n,) float64 probability the logging policy had of showing ``action`` at
            ``position`` for this request, in (0, 1].
        item_ids: (n_actions,) the external item id of each action index.
        n_positions: the slate length (positions are < n_positions).
        user_ids: (n,) external user id of each impression, or None when unknown (then the
            reward model sees the context only).
        context: n-row DataFrame of request / user features (one row per impression, same
            order), or None.
        item_features: n_actions-row DataFrame of item features indexed like ``item_ids``,
            or None.
        request: (n,) int64 id grouping the impressions of one slate (one request), or None.
        action_distribution: (n, n_actions, n_positions) float64 the logging policy's
            probability of every action at every position for this request, or None.
        source: where the log came from (a path, "simulation(seed=0)"), named in errors.
    """

    action: np.ndarray
    position: np.ndarray
    reward: np.ndarray
    propensity: np.ndarray
    item_ids: np.ndarray
    n_positions: int
    user_ids: np.ndarray | None = None
    context: pd.DataFrame | None = None
    item_features: pd.DataFrame | None = None
    request: np.ndarray | None = None
    action_distribution: np.ndarray | None = None
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.action)
        where = f"LoggedFeedback({self.source})" if self.source else "LoggedFeedback"
        for name in ("position", "reward", "propensity"):
            if len(getattr(self, name)) != n:
                raise ValueError(
                    f"{where}.{name} has {len(getattr(self, name))} rows, expected {n} "
                    "(one per impression, like action)"
                )
        for name in ("user_ids", "request"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{where}.{name} has {len(value)} rows, expected {n}")
        if self.context is not None and len(self.context) != n:
            raise ValueError(f"{where}.context has {len(self.context)} rows, expected {n}")
        n_actions = len(self.item_ids)
        if n and (self.action.min() < 0 or self.action.max() >= n_actions):
            bad = int(np.flatnonzero((self.action < 0) | (self.action >= n_actions))[0])
            raise ValueError(
                f"{where}.action: row {bad} holds {int(self.action[bad])}, outside the "
                f"{n_actions} actions of item_ids"
            )
        if n and (self.position.min() < 0 or self.position.max() >= self.n_positions):
            bad = int(np.flatnonzero((self.position < 0) | (self.position >= self.n_positions))[0])
            raise ValueError(
                f"{where}.position: row {bad} holds {int(self.position[bad])}, outside "
                f"0..{self.n_positions - 1} (positions are 0-based)"
            )
        p = np.asarray(self.propensity, dtype=np.float64)
        bad_p = ~np.isfinite(p) | (p <= 0) | (p > 1)
        if bad_p.any():
            row = int(np.flatnonzero(bad_p)[0])
            raise ValueError(
                f"{where}.propensity: row {row} holds {float(p[row])!r}; logging propensities "
                "must be in (0, 1] (a zero-propensity action cannot be reweighted)"
            )
        d = self.action_distribution
        if d is not None and d.shape != (n, n_actions, self.n_positions):
            raise ValueError(
                f"{where}.action_distribution has shape {d.shape}, expected "
                f"{(n, n_actions, self.n_positions)} (rows, actions, positions)"
            )

    @property
    def n_rounds(self) -> int:
        """Impressions in the log."""
        return len(self.action)

    @property
    def n_actions(self) -> int:
        """Items in the action space."""
        return len(self.item_ids)
