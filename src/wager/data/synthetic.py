"""A synthetic world with a known click probability for every (user, item, position).

The world is wager's embedded default data: ``wager quickstart``, the tests, the
simulator and the off-policy estimators use it because its ground truth is known
exactly. It holds users with features, an item catalogue that grows every day,
a power-law exposure popularity, and a true click-through rate (CTR) model.

True CTR model (the "examination" or position-based model)::

    ctr(u, i, k) = position_bias[k] * sigmoid(logit(u, i))
    logit(u, i)  = intercept
                   + popularity_effect * (0.5 - popularity_rank[i] / (n_items_total - 1))
                   + segment_category[segment[u], category[i]]
                   + country_effect[country[u]]
                   + (age_effect + age_category_slope[category[i]]) * z(age[u])
                   + price_effect * z(log price[i])
                   + sum(tag_effect[t] for t in tags[i]) / sqrt(len(tags[i]))
                   + brand_effect[brand[i]]
                   + hidden_strength * (item_bias[i]
                                        + taste_strength
                                        * <u_latent[u], v_latent[i]> / sqrt(latent_dim))

``popularity_rank`` is 0 for the most exposed item, so the popularity effect is small
and bounded (+-popularity_effect / 2). ``z`` standardises over users (age) or items
(log price); a missing age gets ``z = 0``, the effect of the mean age.
``position_bias[k] = 1 / log2(1 + k)`` for positions ``k = 1..n_positions`` (1 at the
top slot), so the bias multiplies the click probability exactly. The intercept is
solved so that the exposure-weighted mean CTR at position 1 (users uniform, items
weighted by ``popularity``) equals ``base_ctr`` (on an evenly spaced subset of users
when ``n_users * n_items_total`` exceeds 2**22 cells, which makes it approximate).

Hidden factors (``item_bias``, the latent vectors) cannot be seen in any feature
table; only interactions reveal them. Observable features explain the rest, so
cold-start items and users can be scored from their features. ``ground_truth()``
reports how the logit variance splits between the two.

Randomness: everything comes from ``np.random.default_rng(config.seed)``, split
with ``spawn`` into independent streams for the effect tables, the users and the
items. So changing ``n_users`` leaves the effect tables unchanged, changing
``hidden_strength`` only rescales the hidden part, and changing ``base_ctr`` only
moves the intercept.

The world's configuration (:class:`WorldConfig`, re-exported here), vocabularies, effect
sizes, construction and true CTR live in :mod:`wager.data.synthetic_model`; this module
holds the logging policies and :class:`SyntheticWorld`, which adds to that model what is
observed from it: sampled logs, aggregated CTR rows and the ground-truth report.

Example:
    >>> world = SyntheticWorld(WorldConfig(n_users=200, n_items=50, n_days=3, seed=1))
    >>> log = world.sample_log(1000, seed=2)
    >>> list(log.columns)
    ['user_id', 'item_id', 'position', 'day', 'click', 'propensity', 'true_ctr']
    >>> bool(((log["true_ctr"] > 0) & (log["true_ctr"] < 1)).all())
    True
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar, Protocol

import numpy as np
import pandas as pd
from scipy.special import expit

from wager.data.synthetic_model import (
    _AGE_EFFECT,
    _CATEGORIES,
    _COUNTRIES,
    _ITEM_BIAS_SD,
    _MAX_CELLS,
    _POPULARITY_EFFECT,
    _PRICE_EFFECT,
    _SEGMENTS,
    _TAGS,
    WorldConfig,
    _sample_rng,
    _WorldModel,
)
from wager.errors import format_rows

__all__ = [
    "LoggingPolicy",
    "PopularityPolicy",
    "SoftmaxOraclePolicy",
    "SyntheticWorld",
    "UniformPolicy",
    "WorldConfig",
]


# --------------------------------------------------------------------------- policies


class LoggingPolicy(Protocol):
    """Chooses one item per request among the candidates available that day.

    Implementations may set a class attribute ``user_independent = True`` when every
    row of :meth:`probabilities` is the same; :meth:`SyntheticWorld.sample_log` then
    asks for a single row and samples all requests of a day from it.
    """

    def probabilities(
        self, world: SyntheticWorld, user_ids: np.ndarray, candidates: np.ndarray, day: int
    ) -> np.ndarray:
        """Choice probabilities.

        Args:
            world: the world (for popularity or the true CTR).
            user_ids: (n,) int64 user ids of the requests.
            candidates: (c,) int64 item ids available on ``day``.
            day: the day of the requests.

        Returns:
            (n, c) float64, rows non-negative and summing to 1.
        """
        ...


@dataclass(frozen=True)
class PopularityPolicy:
    """The default logging policy: item chosen with probability proportional to popularity.

    Example:
        >>> world = SyntheticWorld(WorldConfig(n_users=10, n_items=5, n_days=1))
        >>> p = PopularityPolicy().probabilities(world, np.arange(2), np.arange(5), 0)
        >>> p.shape, bool(np.allclose(p.sum(axis=1), 1.0))
        ((2, 5), True)
    """

    user_independent: ClassVar[bool] = True

    def probabilities(
        self, world: SyntheticWorld, user_ids: np.ndarray, candidates: np.ndarray, day: int
    ) -> np.ndarray:
        """(n, c) float64; each row is ``popularity[candidates]`` normalised to sum to 1."""
        w = world.popularity[np.asarray(candidates)]
        return np.broadcast_to(w / w.sum(), (len(user_ids), len(w)))


@dataclass(frozen=True)
class UniformPolicy:
    """Every available item equally likely: probability ``1 / len(candidates)``.

    Example:
        >>> world = SyntheticWorld(WorldConfig(n_users=10, n_items=4, n_days=1))
        >>> UniformPolicy().probabilities(world, np.arange(1), np.arange(4), 0).tolist()
        [[0.25, 0.25, 0.25, 0.25]]
    """

    user_independent: ClassVar[bool] = True

    def probabilities(
        self, world: SyntheticWorld, user_ids: np.ndarray, candidates: np.ndarray, day: int
    ) -> np.ndarray:
        """(n, c) float64 filled with ``1 / c``."""
        c = len(candidates)
        return np.full((len(user_ids), c), 1.0 / c)


@dataclass(frozen=True)
class SoftmaxOraclePolicy:
    """Knows the truth: probability proportional to ``exp(true_ctr / temperature)``.

    The true CTR is taken at position 1. Low temperatures approach the greedy oracle;
    high ones approach :class:`UniformPolicy`. Useful as a strong target or logging
    policy in off-policy evaluation experiments.

    Attributes:
        temperature: softmax temperature on the CTR scale (> 0).

    Example:
        >>> world = SyntheticWorld(WorldConfig(n_users=10, n_items=5, n_days=1))
        >>> p = SoftmaxOraclePolicy(0.01).probabilities(world, np.arange(3), np.arange(5), 0)
        >>> bool(np.allclose(p.sum(axis=1), 1.0))
        True
    """

    user_independent: ClassVar[bool] = False
    temperature: float = 0.05

    def __post_init__(self) -> None:
        t = self.temperature
        if (
            isinstance(t, bool)
            or not isinstance(t, int | float)
            or not (math.isfinite(t) and t > 0)
        ):
            raise ValueError(
                f"SoftmaxOraclePolicy.temperature must be a finite number > 0, got {t!r}"
            )

    def probabilities(
        self, world: SyntheticWorld, user_ids: np.ndarray, candidates: np.ndarray, day: int
    ) -> np.ndarray:
        """(n, c) float64 softmax of the position-1 true CTR over the candidates."""
        z = world.true_ctr_matrix(user_ids, candidates) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _check_probabilities(p: np.ndarray, n: int, c: int, policy: object) -> np.ndarray:
    """Validate a policy's (n, c) probability matrix; raise naming the policy and rows."""
    name = type(policy).__name__
    p = np.asarray(p, dtype=np.float64)
    if p.shape != (n, c):
        raise ValueError(
            f"{name}.probabilities returned shape {p.shape}, expected {(n, c)} "
            "(one row per user, one column per candidate item)"
        )
    bad = ~np.isfinite(p).all(axis=1) | (p < 0).any(axis=1)
    bad |= np.abs(p.sum(axis=1) - 1.0) > 1e-6
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(
            f"{name}.probabilities: {format_rows(rows)} are not probability vectors "
            "(each row must be finite, non-negative and sum to 1)"
        )
    return p


# --------------------------------------------------------------------------- world


class SyntheticWorld(_WorldModel):
    """Users, a growing item catalogue and a known true CTR; samples logs and aggregates.

    Attributes:
        config: the configuration the world was built from.
        users: one row per user: ``user_id`` (int64, 0..n_users-1), ``segment`` (5 levels
            "seg_a".."seg_e"), ``country`` (8 levels, skewed), ``age`` (float years, ~2% NaN).
        items: one row per item: ``item_id`` (int64), ``category`` (10 levels), ``brand``
            (40 levels, skewed), ``price`` (float > 0, log-normal by category), ``tags``
            ("|"-joined 1-3 of 15 tags), ``title`` (2-5 words from the category/tag
            vocabulary and noise words), ``day_added`` (int64; the first ``n_items`` on day 0,
            then ``new_items_per_day`` on each later day).
        popularity: (n_items_total,) float64 exposure weights summing to 1: the item of
            rank r (a random permutation of items) has weight proportional to
            r**-popularity_exponent.

    Example:
        >>> world = SyntheticWorld(WorldConfig(n_users=100, n_items=20, n_days=2, seed=3))
        >>> world.true_ctr_matrix().shape
        (100, 30)
        >>> len(world.available_items(0)), len(world.available_items(1))
        (20, 30)
    """

    # ------------------------------------------------------------------ logs

    def sample_log(
        self,
        n: int,
        policy: LoggingPolicy | None = None,
        *,
        day: int | None = None,
        seed: int | None = None,
    ) -> pd.DataFrame:
        """Sample ``n`` logged impressions with their clicks.

        Each row: a day (uniform over 0..n_days-1 when ``day`` is None, rows sorted by
        day), a user drawn uniformly, an item drawn by ``policy`` among
        ``available_items(day)``, a position drawn uniformly from 1..n_positions
        independently of the item, and a click ~ Bernoulli(true CTR at that position).

        Args:
            n: number of rows (>= 0).
            policy: the logging policy; None means :class:`PopularityPolicy`.
            day: put every row on this day, or None to spread rows over all days.
            seed: seed of the sampling draws; None uses ``config.seed``, so repeated calls
                return the same log (pass different seeds for independent logs).

        Returns:
            DataFrame with columns user_id, item_id, position, day, click (int64 0/1),
            propensity (float64: probability that the policy chose this item for this user
            among that day's available items; the position draw is not included), and
            true_ctr (float64, at the row's position).
        """
        src = "SyntheticWorld.sample_log"
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"{src}: n must be an integer >= 0, got {n!r}")
        policy = PopularityPolicy() if policy is None else policy
        if not callable(getattr(policy, "probabilities", None)):
            raise TypeError(
                f"{src}: policy must have a probabilities(world, user_ids, candidates, day) "
                f"method, got {type(policy).__name__}"
            )
        rng = _sample_rng(seed, self.config.seed, stream=1)
        cfg = self.config
        if day is None:
            days = np.sort(rng.integers(0, cfg.n_days, n))
        else:
            days = np.full(n, self._check_day(day, src), dtype=np.int64)
        users = rng.integers(0, cfg.n_users, n)
        items = np.empty(n, dtype=np.int64)
        propensity = np.empty(n, dtype=np.float64)
        bounds = np.searchsorted(days, np.arange(cfg.n_days + 1))
        for d in range(cfg.n_days):
            lo, hi = int(bounds[d]), int(bounds[d + 1])
            if hi > lo:
                items[lo:hi], propensity[lo:hi] = self._choose(
                    policy, users[lo:hi], self.available_items(d), d, rng
                )
        positions = rng.integers(1, cfg.n_positions + 1, n)
        true = expit(self._logit(users, items)) * self._position_bias[positions - 1]
        click = (rng.random(n) < true).astype(np.int64)
        return pd.DataFrame(
            {
                "user_id": users.astype(np.int64),
                "item_id": items,
                "position": positions.astype(np.int64),
                "day": days.astype(np.int64),
                "click": click,
                "propensity": propensity,
                "true_ctr": true,
            }
        )

    def _choose(
        self,
        policy: LoggingPolicy,
        users: np.ndarray,
        candidates: np.ndarray,
        day: int,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draw one candidate per user by inverse-CDF sampling; return (items, propensities)."""
        m, c = len(users), len(candidates)
        if getattr(policy, "user_independent", False):
            p = _check_probabilities(
                policy.probabilities(self, users[:1], candidates, day), 1, c, policy
            )[0]
            cdf = np.cumsum(p)
            idx = np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right")
            idx = np.minimum(idx, c - 1)
            return candidates[idx], p[idx]
        # Policies depend on (user, candidates, day) only: ask once per distinct user,
        # then sample every row of that user from the user's row (inverse CDF over a
        # flattened, row-offset CDF: row k's CDF lives in [k, k + 1]).
        uniq, inv = np.unique(users, return_inverse=True)
        u = rng.random(m)
        items = np.empty(m, dtype=np.int64)
        prop = np.empty(m, dtype=np.float64)
        block = max(1, _MAX_CELLS // c)
        for lo in range(0, len(uniq), block):
            hi = min(len(uniq), lo + block)
            p = _check_probabilities(
                policy.probabilities(self, uniq[lo:hi], candidates, day), hi - lo, c, policy
            )
            rows = (
                np.flatnonzero((inv >= lo) & (inv < hi)) if lo or hi < len(uniq) else np.arange(m)
            )
            k = inv[rows] - lo
            cdf = np.cumsum(p, axis=1)
            cdf /= cdf[:, -1:]
            flat = (cdf + np.arange(hi - lo)[:, None]).reshape(-1)
            idx = np.searchsorted(flat, k + u[rows], side="right") - k * c
            idx = np.clip(idx, 0, c - 1)
            items[rows] = candidates[idx]
            prop[rows] = p[k, idx]
        return items, prop

    # ------------------------------------------------------------------ aggregated CTR

    def _groups(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(group codes present, group sizes, (groups, items) mean true CTR at position 1)."""
        if self._group_cache is None:
            country = pd.Categorical(self.users["country"], categories=_COUNTRIES).codes
            code = self._user_segment * len(_COUNTRIES) + country.astype(np.int64)
            present, inverse, sizes = np.unique(code, return_inverse=True, return_counts=True)
            n_items = self.config.n_items_total
            sums = np.zeros((len(present), n_items))
            block = max(1, _MAX_CELLS // n_items)
            for lo in range(0, self.config.n_users, block):
                users = np.arange(lo, min(self.config.n_users, lo + block))
                ctr = expit(self._logit_matrix(users, np.arange(n_items)))
                one_hot = inverse[users][None, :] == np.arange(len(present))[:, None]
                sums += one_hot.astype(np.float64) @ ctr
            self._group_cache = (present, sizes, sums / sizes[:, None])
        return self._group_cache

    def aggregate(
        self,
        n_rows: int,
        *,
        seed: int | None = None,
        min_impressions: int = 1,
        max_impressions: int = 10000,
    ) -> pd.DataFrame:
        """Aggregated CTR data: clicks out of impressions per (item, user group).

        Rows are distinct (item, group) pairs, a group being a (segment, country) pair of
        users, drawn without replacement with probability proportional to
        ``popularity[item] * group size``, and sorted by item then group. Impressions are
        log-uniform on [min_impressions, max_impressions] (half the rows have fewer than
        about sqrt(min * max)); clicks ~ Binomial(impressions, true_ctr), where true_ctr is
        the exact mean position-1 true CTR of the item over the group's users.

        Args:
            n_rows: rows to draw, 1..(number of items * number of non-empty groups).
            seed: seed of the draws; None uses ``config.seed``.
            min_impressions: smallest impression count (>= 1).
            max_impressions: largest impression count (>= min_impressions).

        Returns:
            DataFrame with columns context_id ("segment|country", the context group, which
            plays the user role in :meth:`aggregate_schema`), item_id (int64), segment,
            country, impressions (int64),
            clicks (int64), ctr (float64 clicks / impressions), true_ctr (float64).
        """
        src = "SyntheticWorld.aggregate"
        for name, value, lo in (
            ("min_impressions", min_impressions, 1),
            ("max_impressions", max_impressions, min_impressions),
        ):
            if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < lo:
                raise ValueError(f"{src}: {name} must be an integer >= {lo}, got {value!r}")
        present, sizes, group_ctr = self._groups()
        n_items = self.config.n_items_total
        n_pairs = len(present) * n_items
        if (
            isinstance(n_rows, bool)
            or not isinstance(n_rows, int | np.integer)
            or not 1 <= n_rows <= n_pairs
        ):
            raise ValueError(
                f"{src}: n_rows must be an integer in [1, {n_pairs}] (items x non-empty "
                f"(segment, country) groups = {n_items} x {len(present)}), got {n_rows!r}; "
                "lower n_rows or build a world with more users or items"
            )
        rng = _sample_rng(seed, self.config.seed, stream=2)
        # Efraimidis-Spirakis weighted sampling without replacement: smallest Exp(1)/w
        weight = (sizes[:, None] * self.popularity[None, :]).reshape(-1)
        keys = rng.exponential(size=n_pairs) / weight
        chosen = np.sort(np.argpartition(keys, n_rows - 1)[:n_rows])
        g, items = np.divmod(chosen, n_items)
        order = np.lexsort((g, items))
        g, items = g[order], items[order]
        true = group_ctr[g, items]
        log_lo, log_hi = math.log(min_impressions), math.log(max_impressions + 1)
        impressions = np.floor(np.exp(rng.uniform(log_lo, log_hi, n_rows))).astype(np.int64)
        impressions = np.clip(impressions, min_impressions, max_impressions)
        clicks = rng.binomial(impressions, true).astype(np.int64)
        seg, country = np.divmod(present[g], len(_COUNTRIES))
        segments = np.asarray(_SEGMENTS, dtype=object)[seg]
        countries = np.asarray(_COUNTRIES, dtype=object)[country]
        return pd.DataFrame(
            {
                "context_id": segments + "|" + countries,
                "item_id": items.astype(np.int64),
                "segment": segments,
                "country": countries,
                "impressions": impressions,
                "clicks": clicks,
                "ctr": clicks / impressions,
                "true_ctr": true,
            }
        )

    # ------------------------------------------------------------------ ground truth

    def ground_truth(self) -> dict:
        """JSON-ready description of the generative parameters and summary statistics.

        Statistics over (user, item) pairs are computed at position 1 over every user
        (or the evenly spaced reference subset for very large worlds) and every item.
        """
        users = self._reference_users()
        items = np.arange(self.config.n_items_total)
        logit = self._logit_matrix(users, items)
        ctr = expit(logit)
        cat = self._item_category
        hs = self.config.hidden_strength
        hidden = hs * (
            self._item_bias[None, :]
            + (self._user_latent[users] @ self._item_latent.T) * self._dot_scale
        )
        observable = logit - hidden - self._intercept
        var_total = float(logit.var())
        q = np.quantile(ctr, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
        return {
            "model": (
                "ctr = position_bias[position] * sigmoid(intercept + observable(user, item) + "
                "hidden_strength * (item_bias + taste_strength * <u_latent, v_latent> / "
                "sqrt(latent_dim)))"
            ),
            "config": asdict(self.config),
            "intercept": float(self._intercept),
            "base_ctr": float(self.config.base_ctr),
            "true_mean_ctr": float(ctr.mean(axis=0) @ self.popularity),
            "true_mean_ctr_uniform_pairs": float(ctr.mean()),
            "true_ctr_quantiles": {
                str(p): float(v)
                for p, v in zip((0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99), q, strict=True)
            },
            "position_bias": [float(v) for v in self._position_bias],
            "logit_variance": {
                "total": var_total,
                "observable": float(observable.var()),
                "hidden": float(hidden.var()),
                "observable_share": float(observable.var() / var_total) if var_total > 0 else 0.0,
            },
            "effects": {
                "segment_category": {
                    s: {c: float(self._segment_category[a, b]) for b, c in enumerate(_CATEGORIES)}
                    for a, s in enumerate(_SEGMENTS)
                },
                "country": {
                    c: float(v) for c, v in zip(_COUNTRIES, self._country_effect, strict=True)
                },
                "age_per_std": _AGE_EFFECT,
                "age_category_slope_per_std": {
                    c: float(v) for c, v in zip(_CATEGORIES, self._age_category_slope, strict=True)
                },
                "age_mean": self._age_mean,
                "age_std": self._age_std,
                "price_per_std_log_price": _PRICE_EFFECT,
                "tag": {t: float(v) for t, v in zip(_TAGS, self._tag_effect, strict=True)},
                "brand": {f"brand_{b:02d}": float(v) for b, v in enumerate(self._brand_effect)},
                "popularity_top_minus_bottom": _POPULARITY_EFFECT,
                "item_bias_sd": _ITEM_BIAS_SD,
                "latent_sd": self._latent_scale,
            },
            "n_items_by_day": [
                int((self._day_added <= d).sum()) for d in range(self.config.n_days)
            ],
            "categories_by_item_share": {
                c: float((cat == k).mean()) for k, c in enumerate(_CATEGORIES)
            },
            "user_sampling": "uniform over users",
            "position_sampling": "uniform over 1..n_positions, independent of the item",
            "aggregate_true_ctr": "mean position-1 true CTR over the users of the "
            "(segment, country) group",
        }
