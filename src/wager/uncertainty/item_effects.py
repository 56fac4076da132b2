"""Empirical-Bayes item effects: what a click model cannot see of an item, as a random effect.

A click model that scores items from their features predicts every item of the same
features alike, yet items differ in ways no feature shows (the quality of a picture, a
title that works). An ensemble's member spread does not measure that difference: the
members agree on an item's features, so a new item comes out nearly as certain as one shown
ten thousand times, and exploration policies (UCB, Thompson sampling) find nothing to
explore. This module adds the missing term as a generalised linear mixed model with the
click model as its fixed part::

    logit P(click | row) = o(row) + delta[item],    delta[item] ~ Normal(0, tau**2)

where ``o`` is the base model's logit of the row (its user, item features and context).

- ``tau`` (the spread of the hidden item effects, on the logit scale) is estimated by
  maximum marginal likelihood over all items (empirical Bayes; golden-section search on
  ``log tau``), the marginal of each item integrated by adaptive Gauss-Hermite quadrature;
- each item's posterior of ``delta`` given its rows is represented by ``nodes`` quadrature
  nodes centred on its posterior mode (Newton's method) and scaled by the Laplace std, with
  normalised weights: exact for a Gaussian posterior, and accurate both for an item seen
  twice (a wide, prior-like posterior) and for one seen ten thousand times (a narrow one);
- an item never seen takes the prior, ``Normal(0, tau**2)`` on Gauss-Hermite nodes: the
  cold-start item is less certain by exactly the spread the data showed.

The predictive click probability of (user, item) is ``E[sigmoid(o + delta)]`` under the
item's posterior, its std the std of ``sigmoid(o + delta)``: the uncertainty about the
item's CTR, not the Bernoulli noise of one click.

**The base model must not memorise items.** Fitted on the same rows, a model with per-item
parameters (an id embedding, or feature combinations unique to an item) has already fitted
each item's clicks: the residual item effects then look tiny, ``tau`` comes out near 0 and
the posterior is overconfident. Use a model of features that items share (for wager's
factorization model: ``[model] item_min_count`` above any item's count, so that every item
id is out of vocabulary, and no feature unique to an item).

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> items = np.repeat(np.arange(200), 50)
    >>> delta = rng.normal(0.0, 1.0, 200)
    >>> clicks = (rng.random(len(items)) < 1 / (1 + np.exp(2.0 - delta[items]))).astype(int)
    >>> effects = fit_item_effects(np.full(len(items), -2.0), items, clicks)
    >>> 0.7 < effects.tau < 1.3
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.special import expit, log_expit, logsumexp

from wager.prediction import Prediction

__all__ = ["DEFAULT_NODES", "ItemEffects", "fit_item_effects"]

#: quadrature nodes per item (posterior) and for the prior
DEFAULT_NODES = 9
#: search range of tau (logit scale): from nearly no item effect to a tenfold odds spread
TAU_RANGE = (1e-3, 10.0)
_NEWTON_STEPS = 30
_GOLDEN_STEPS = 40


@dataclass(frozen=True)
class ItemEffects:
    """Fitted item effects: ``tau`` and each known item's posterior on quadrature nodes.

    Attributes:
        tau: std of the item effects on the logit scale (>= 0).
        item_ids: (n,) int64 sorted ids of the items that had rows.
        nodes: (n, G) float64 values of each item's effect ``delta``.
        weights: (n, G) float64 posterior weights of those values (rows sum to 1).
        prior_nodes: (G,) float64 ``tau * z`` at the Gauss-Hermite nodes ``z``.
        prior_weights: (G,) float64 their weights (sum to 1).
        log_marginal: the marginal log-likelihood at ``tau`` (nats, summed over items).
        n_rows: rows the effects were fitted on.
    """

    tau: float
    item_ids: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    prior_nodes: np.ndarray
    prior_weights: np.ndarray
    log_marginal: float
    n_rows: int

    def posterior(self, item_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(C, G) effect values and weights of ``item_ids``: a known item's posterior, the
        prior for an item the fit never saw."""
        ids = np.asarray(item_ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self.item_ids, ids)
        pos = np.minimum(pos, max(len(self.item_ids) - 1, 0))
        known = self.item_ids[pos] == ids if len(self.item_ids) else np.zeros(len(ids), dtype=bool)
        nodes = np.broadcast_to(self.prior_nodes, (len(ids), len(self.prior_nodes))).copy()
        weights = np.broadcast_to(self.prior_weights, nodes.shape).copy()
        nodes[known] = self.nodes[pos[known]]
        weights[known] = self.weights[pos[known]]
        return nodes, weights

    def effect_moments(self, item_ids: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """(C,) posterior mean and std of each item's effect ``delta`` (logit scale)."""
        nodes, weights = self.posterior(item_ids)
        mean = (nodes * weights).sum(axis=1)
        var = (weights * (nodes - mean[:, None]) ** 2).sum(axis=1)
        return mean, np.sqrt(var)

    def predict(self, base_logit: ArrayLike, item_ids: ArrayLike, method: str = "") -> Prediction:
        """The click probability of every (request, item) with its item's uncertainty.

        Args:
            base_logit: (B, C) the base model's logits of the pairs, or (M, B, C) the logits
                of M ensemble members (draws of the base model): the prediction is then the
                mixture over members, and its variance adds the members' disagreement to the
                item effect's (law of total variance).
            item_ids: (C,) the items of the columns.
            method: provenance prefix of the returned prediction.

        Returns:
            :class:`~wager.prediction.Prediction` with (B, C) float64 ``mean``
            ``E[sigmoid(o + delta)]`` and ``std`` (also ``epistemic_std``) over the item's
            posterior (and the members); support (0, 1).
        """
        o = np.asarray(base_logit, dtype=np.float64)
        if o.ndim not in (2, 3):
            raise ValueError(
                f"ItemEffects.predict: base_logit must be (B, C) or (M, B, C), got {o.shape}"
            )
        o = o[None] if o.ndim == 2 else o
        nodes, weights = self.posterior(item_ids)
        if len(nodes) != o.shape[2]:
            raise ValueError(
                f"ItemEffects.predict: {len(nodes)} item ids for {o.shape[2]} columns of base_logit"
            )
        mean = np.zeros(o.shape[1:])
        second = np.zeros(o.shape[1:])
        for member in o:  # (B, C) each: memory B x C x G per member
            p = expit(member[:, :, None] + nodes[None, :, :])
            mean += (p * weights[None]).sum(axis=2)
            second += (p * p * weights[None]).sum(axis=2)
        mean /= len(o)
        second /= len(o)
        std = torch.from_numpy(np.sqrt(np.maximum(second - mean * mean, 0.0)))
        label = f"item_effects(tau={self.tau:.3g})"
        return Prediction(
            mean=torch.from_numpy(mean),
            std=std,
            epistemic_std=std.clone(),
            method=f"{method}+{label}" if method else label,
            support=(0.0, 1.0),
        )


def _check_rows(
    base_logit: ArrayLike, item_ids: ArrayLike, clicks: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.asarray(base_logit, dtype=np.float64).reshape(-1)
    items = np.asarray(item_ids).reshape(-1)
    y = np.asarray(clicks).reshape(-1)
    if not (len(o) == len(items) == len(y)):
        raise ValueError(
            f"fit_item_effects: base_logit, item_ids and clicks must have one value per row, "
            f"got {len(o)}, {len(items)} and {len(y)}"
        )
    if not np.all(np.isfinite(o)):
        row = int(np.flatnonzero(~np.isfinite(o))[0])
        raise ValueError(f"fit_item_effects: base_logit is not finite at row {row}")
    if not np.issubdtype(items.dtype, np.integer):
        raise ValueError(f"fit_item_effects: item_ids must be integers, got dtype {items.dtype}")
    bad = (y != 0) & (y != 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"fit_item_effects: clicks must be 0 or 1, got {y[row].item()!r} at row {row}"
        )
    return o, items.astype(np.int64), y.astype(np.float64)


def _loglik(o: np.ndarray, y: np.ndarray, delta_rows: np.ndarray) -> np.ndarray:
    """(n,) Bernoulli log-likelihood of each row at effect ``delta_rows``."""
    z = o + delta_rows
    return y * log_expit(z) + (1.0 - y) * log_expit(-z)


class _Fit:
    """The rows grouped by item, and the per-tau computations of the marginal likelihood."""

    def __init__(self, o: np.ndarray, inverse: np.ndarray, y: np.ndarray, n_items: int, g: int):
        self.o, self.inv, self.y, self.n = o, inverse, y, n_items
        z, w = np.polynomial.hermite_e.hermegauss(g)  # nodes / weights for exp(-z**2 / 2)
        self.z, self.log_w = z, np.log(w / w.sum())
        self.mode = np.zeros(n_items)

    def _sum(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.inv, weights=values, minlength=self.n)

    def laplace(self, tau: float) -> tuple[np.ndarray, np.ndarray]:
        """Each item's posterior mode and Laplace std of ``delta`` under Normal(0, tau**2)."""
        prec = 1.0 / tau**2
        d = self.mode.copy()
        for _ in range(_NEWTON_STEPS):
            p = expit(self.o + d[self.inv])
            grad = self._sum(self.y - p) - prec * d
            hess = self._sum(p * (1.0 - p)) + prec
            step = np.clip(grad / hess, -2.0, 2.0)
            d += step
            if np.max(np.abs(step)) < 1e-8:
                break
        p = expit(self.o + d[self.inv])
        hess = self._sum(p * (1.0 - p)) + prec
        self.mode = d
        return d, 1.0 / np.sqrt(hess)

    def nodes(self, tau: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(n, G) posterior nodes and normalised weights, and the marginal log-likelihood."""
        mode, scale = self.laplace(tau)
        nodes = mode[:, None] + scale[:, None] * self.z[None, :]
        # adaptive quadrature: int f(d) dd = scale * E_z[f(mode + scale z) / phi(z)]
        log_terms = np.empty_like(nodes)
        for j in range(len(self.z)):
            ll = self._sum(_loglik(self.o, self.y, nodes[self.inv, j]))
            log_prior = -0.5 * (nodes[:, j] / tau) ** 2 - math.log(tau)
            log_terms[:, j] = self.log_w[j] + ll + log_prior + 0.5 * self.z[j] ** 2
        log_item = logsumexp(log_terms, axis=1) + np.log(scale)
        weights = np.exp(log_terms - log_terms.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        return nodes, weights, float(log_item.sum())


def fit_item_effects(
    base_logit: ArrayLike,
    item_ids: ArrayLike,
    clicks: ArrayLike,
    *,
    nodes: int = DEFAULT_NODES,
    tau: float | None = None,
) -> ItemEffects:
    """Fit the item effects of a click model's rows (see the module docstring).

    Args:
        base_logit: (n,) the base model's logit of each row's click probability.
        item_ids: (n,) integer item of each row.
        clicks: (n,) 0/1 click of each row.
        nodes: quadrature nodes per item (>= 3).
        tau: a fixed spread of the effects instead of the empirical-Bayes estimate (> 0).

    Returns:
        :class:`ItemEffects`.

    Raises:
        ValueError: rows of different lengths, a non-finite logit, non-integer items, a
            click other than 0 / 1 (each naming the row), ``nodes`` < 3 or ``tau`` <= 0.
    """
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 3:
        raise ValueError(f"fit_item_effects: nodes must be an integer >= 3, got {nodes!r}")
    if tau is not None and not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"fit_item_effects: tau must be a number > 0 or None, got {tau!r}")
    o, items, y = _check_rows(base_logit, item_ids, clicks)
    uniq, inverse = np.unique(items, return_inverse=True)
    fit = _Fit(o, inverse, y, len(uniq), nodes)
    if tau is None and len(o):
        log_tau = _golden_section(
            lambda t: fit.nodes(math.exp(t))[2], math.log(TAU_RANGE[0]), math.log(TAU_RANGE[1])
        )
        tau = math.exp(log_tau)
    tau = float(tau if tau is not None else TAU_RANGE[1])
    node_values, weights, log_marginal = fit.nodes(tau)
    prior_w = np.exp(fit.log_w)
    return ItemEffects(
        tau=tau,
        item_ids=uniq.astype(np.int64),
        nodes=node_values,
        weights=weights,
        prior_nodes=tau * fit.z,
        prior_weights=prior_w / prior_w.sum(),
        log_marginal=log_marginal,
        n_rows=len(o),
    )


def _golden_section(f: Callable[[float], float], lo: float, hi: float) -> float:
    """The maximiser of the unimodal ``f`` on ``[lo, hi]`` (golden-section search)."""
    r = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - r * (b - a), a + r * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(_GOLDEN_STEPS):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - r * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + r * (b - a)
            fd = f(d)
    return (a + b) / 2.0
