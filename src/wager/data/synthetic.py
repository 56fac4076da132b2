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

from wager.data.schema import Categorical, Feature, MultiCategorical, Numeric, Schema, Text
from wager.errors import data_error, format_rows

__all__ = [
    "LoggingPolicy",
    "PopularityPolicy",
    "SoftmaxOraclePolicy",
    "SyntheticWorld",
    "UniformPolicy",
    "WorldConfig",
]

# --------------------------------------------------------------------------- vocabularies

_SEGMENTS = ("seg_a", "seg_b", "seg_c", "seg_d", "seg_e")
_SEGMENT_P = (0.30, 0.25, 0.20, 0.15, 0.10)
_COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "ES")
_COUNTRY_P = (0.38, 0.16, 0.12, 0.10, 0.09, 0.07, 0.05, 0.03)
_CATEGORIES = (
    "books",
    "electronics",
    "fashion",
    "garden",
    "kitchen",
    "sports",
    "toys",
    "beauty",
    "music",
    "travel",
)
_TAGS = (
    "sale",
    "new",
    "eco",
    "premium",
    "classic",
    "compact",
    "family",
    "outdoor",
    "smart",
    "vintage",
    "handmade",
    "bestseller",
    "limited",
    "kids",
    "pro",
)
_NOISE_WORDS = (
    "deluxe",
    "original",
    "essential",
    "ultra",
    "mini",
    "max",
    "plus",
    "edition",
    "set",
    "pack",
    "series",
    "collection",
    "style",
    "basic",
    "lite",
    "one",
    "modern",
    "prime",
    "select",
    "studio",
    "urban",
    "nova",
    "alpha",
    "zen",
    "bright",
    "swift",
    "pure",
    "bold",
    "simple",
    "daily",
)
_N_BRANDS = 40
_AGE_MISSING_RATE = 0.02

# effect sizes on the logit scale (standard deviations of the random effect tables,
# or fixed slopes per standard deviation of the feature)
_SEGMENT_CATEGORY_SD = 0.6
_COUNTRY_SD = 0.3
_AGE_EFFECT = -0.15
_AGE_CATEGORY_SD = 0.3
_PRICE_EFFECT = -0.25
_TAG_SD = 0.4
_BRAND_SD = 0.25
_POPULARITY_EFFECT = 0.3  # logit difference between the most and the least exposed item
_ITEM_BIAS_SD = 0.35
_LATENT_VAR = 0.85  # per-coordinate variance: Var(<u, v>) / latent_dim = 0.85**2 ~= 0.72

_MAX_CELLS = 2**22  # cells of a (users, items) block computed at once


def _streams(seed: int) -> tuple[np.random.Generator, ...]:
    """Independent generators for effects, users and items, all from ``default_rng(seed)``."""
    return tuple(np.random.default_rng(seed).spawn(3))


def _sample_rng(seed: int | None, default: int, stream: int) -> np.random.Generator:
    """Generator for a sampling method; ``stream`` separates the methods' streams."""
    if seed is not None:
        _check_seed("seed", seed)
    return np.random.default_rng([stream, default if seed is None else seed])


def _check_seed(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class WorldConfig:
    """Size and shape of a :class:`SyntheticWorld`.

    Attributes:
        n_users: number of users (>= 1).
        n_items: items available on day 0 (>= 1).
        n_days: days 0..n_days-1 (>= 1).
        new_items_per_day: items arriving on each day >= 1 (>= 0); the catalogue holds
            ``n_items + new_items_per_day * (n_days - 1)`` items in all.
        latent_dim: dimension of the hidden user/item latent vectors (>= 1).
        base_ctr: exposure-weighted mean true CTR at position 1, in (0, 0.5].
        popularity_exponent: power-law exponent of item exposure popularity, in [0, 5]
            (popularity of the item of rank r is proportional to r**-exponent; 0 = uniform).
        n_positions: slate positions 1..n_positions of the context (1..100).
        hidden_strength: weight of the hidden factors against observable features, in [0, 10].
        taste_strength: weight of the user-specific hidden part (the latent dot product)
            against the hidden item bias, in [0, 10]; 1 is the model above, 0 leaves every
            hidden factor at item level (a context-level CTR: what one item earns is the same
            for users with the same features, as in content recommendation).
        seed: seed of every random draw that builds the world (>= 0).

    Example:
        >>> WorldConfig(n_users=100).n_items
        300
    """

    n_users: int = 2000
    n_items: int = 300
    n_days: int = 7
    new_items_per_day: int = 10
    latent_dim: int = 8
    base_ctr: float = 0.04
    popularity_exponent: float = 1.1
    n_positions: int = 3
    hidden_strength: float = 1.0
    taste_strength: float = 1.0
    seed: int = 0

    _INT_RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "n_users": (1, 10_000_000),
        "n_items": (1, 10_000_000),
        "n_days": (1, 100_000),
        "new_items_per_day": (0, 10_000_000),
        "latent_dim": (1, 1024),
        "n_positions": (1, 100),
        "seed": (0, 2**63 - 1),
    }

    def __post_init__(self) -> None:
        for name, (lo, hi) in self._INT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise ValueError(
                    f"WorldConfig.{name} must be an integer in [{lo}, {hi}], got {value!r}"
                )
            if not lo <= value <= hi:
                raise ValueError(
                    f"WorldConfig.{name} must be an integer in [{lo}, {hi}], got {value!r}"
                )
        self._check_float("base_ctr", 0.0, 0.5, low_open=True)
        self._check_float("popularity_exponent", 0.0, 5.0)
        self._check_float("hidden_strength", 0.0, 10.0)
        self._check_float("taste_strength", 0.0, 10.0)

    def _check_float(self, name: str, lo: float, hi: float, *, low_open: bool = False) -> None:
        value = getattr(self, name)
        allowed = f"{'(' if low_open else '['}{lo}, {hi}]"
        ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
        if ok:
            ok = math.isfinite(value) and (lo < value if low_open else lo <= value) and value <= hi
        if not ok:
            raise ValueError(f"WorldConfig.{name} must be a number in {allowed}, got {value!r}")

    @property
    def n_items_total(self) -> int:
        """Items in the catalogue on the last day."""
        return self.n_items + self.new_items_per_day * (self.n_days - 1)


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


class SyntheticWorld:
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

    def __init__(self, config: WorldConfig = WorldConfig()) -> None:
        self.config = config
        effects_rng, users_rng, items_rng = _streams(config.seed)
        self._build_effects(effects_rng)
        self._build_users(users_rng)
        self._build_items(items_rng)
        self._solve_intercept()
        self._group_cache: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # ------------------------------------------------------------------ construction

    def _build_effects(self, rng: np.random.Generator) -> None:
        d = self.config.latent_dim
        self._segment_category = rng.normal(
            0.0, _SEGMENT_CATEGORY_SD, (len(_SEGMENTS), len(_CATEGORIES))
        )
        self._country_effect = rng.normal(0.0, _COUNTRY_SD, len(_COUNTRIES))
        self._age_category_slope = rng.normal(0.0, _AGE_CATEGORY_SD, len(_CATEGORIES))
        self._tag_effect = rng.normal(0.0, _TAG_SD, len(_TAGS))
        self._brand_effect = rng.normal(0.0, _BRAND_SD, _N_BRANDS)
        self._category_log_price = rng.uniform(1.5, 5.0, len(_CATEGORIES))
        self._tag_p = _normalise(1.0 / np.arange(1, len(_TAGS) + 1) ** 0.7)
        self._brand_p = _normalise(1.0 / np.arange(1, _N_BRANDS + 1) ** 1.2)
        self._latent_scale = math.sqrt(_LATENT_VAR)
        self._dot_scale = self.config.taste_strength / math.sqrt(d)
        k = np.arange(1, self.config.n_positions + 1)
        self._position_bias = 1.0 / np.log2(1.0 + k)

    def _build_users(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.n_users
        seg = rng.choice(len(_SEGMENTS), size=n, p=_SEGMENT_P)
        country = rng.choice(len(_COUNTRIES), size=n, p=_COUNTRY_P)
        age = np.round(np.clip(rng.normal(40.0, 13.0, n), 18.0, 85.0))
        age[rng.random(n) < _AGE_MISSING_RATE] = np.nan
        latent = rng.normal(0.0, self._latent_scale, (n, cfg.latent_dim))

        known = age[~np.isnan(age)]
        self._age_mean = float(known.mean()) if known.size else 40.0
        self._age_std = float(known.std()) if known.size > 1 and known.std() > 0 else 1.0
        age_z = np.where(np.isnan(age), 0.0, (age - self._age_mean) / self._age_std)

        self._user_segment = seg.astype(np.int64)
        self._user_age_z = age_z
        self._user_latent = latent
        self._user_effect = self._country_effect[country] + _AGE_EFFECT * age_z
        self.users = pd.DataFrame(
            {
                "user_id": np.arange(n, dtype=np.int64),
                "segment": np.asarray(_SEGMENTS, dtype=object)[seg],
                "country": np.asarray(_COUNTRIES, dtype=object)[country],
                "age": age,
            }
        )

    def _build_items(self, rng: np.random.Generator) -> None:
        cfg = self.config
        n = cfg.n_items_total
        day_added = np.zeros(n, dtype=np.int64)
        if cfg.new_items_per_day:
            day_added[cfg.n_items :] = 1 + np.arange(n - cfg.n_items) // cfg.new_items_per_day
        cat = rng.integers(0, len(_CATEGORIES), n)
        brand = rng.choice(_N_BRANDS, size=n, p=self._brand_p)
        price = np.round(np.exp(self._category_log_price[cat] + rng.normal(0.0, 0.5, n)), 2)
        price = np.maximum(price, 0.01)
        # 1-3 distinct tags per item: Gumbel top-k over the skewed tag frequencies
        n_tags = rng.choice(3, size=n, p=(0.4, 0.4, 0.2)) + 1
        keys = np.log(self._tag_p)[None, :] + rng.gumbel(size=(n, len(_TAGS)))
        tag_order = np.argsort(-keys, axis=1)[:, :3]
        has_tag = np.arange(3)[None, :] < n_tags[:, None]
        tag_effect = (self._tag_effect[tag_order] * has_tag).sum(axis=1) / np.sqrt(n_tags)
        titles = self._titles(rng, cat, tag_order, n_tags)

        ranks = rng.permutation(n)  # ranks[i] = 0-based popularity rank of item i
        weights = (ranks + 1.0) ** -cfg.popularity_exponent
        self.popularity = weights / weights.sum()

        item_bias = rng.normal(0.0, _ITEM_BIAS_SD, n)
        latent = rng.normal(0.0, self._latent_scale, (n, cfg.latent_dim))

        log_price = np.log(price)
        rank_fraction = ranks / (n - 1) if n > 1 else np.zeros(n)
        self._item_category = cat.astype(np.int64)
        self._item_latent = latent
        self._item_bias = item_bias
        self._item_observable = (
            _POPULARITY_EFFECT * (0.5 - rank_fraction)
            + _PRICE_EFFECT * _zscore(log_price)
            + tag_effect
            + self._brand_effect[brand]
        )
        self._item_effect = self._item_observable + cfg.hidden_strength * item_bias
        self._day_added = day_added
        tags = ["|".join(_TAGS[t] for t in sorted(tag_order[i, : n_tags[i]])) for i in range(n)]
        self.items = pd.DataFrame(
            {
                "item_id": np.arange(n, dtype=np.int64),
                "category": np.asarray(_CATEGORIES, dtype=object)[cat],
                "brand": np.asarray([f"brand_{b:02d}" for b in range(_N_BRANDS)], dtype=object)[
                    brand
                ],
                "price": price,
                "tags": tags,
                "title": titles,
                "day_added": day_added,
            }
        )

    @staticmethod
    def _titles(
        rng: np.random.Generator, cat: np.ndarray, tag_order: np.ndarray, n_tags: np.ndarray
    ) -> list[str]:
        """2-5 word titles: the category word (80%), each tag word (50%), noise words to fill."""
        n = len(cat)
        n_words = rng.integers(2, 6, n)
        use_cat = rng.random(n) < 0.8
        use_tag = rng.random((n, 3)) < 0.5
        noise = np.argsort(rng.random((n, len(_NOISE_WORDS))), axis=1)[:, :5]  # 5 distinct
        order_keys = rng.random((n, 8))
        titles = []
        for i in range(n):
            signal = [_CATEGORIES[cat[i]]] if use_cat[i] else []
            signal += [_TAGS[tag_order[i, j]] for j in range(n_tags[i]) if use_tag[i, j]]
            words = (signal + [_NOISE_WORDS[w] for w in noise[i]])[: n_words[i]]
            order = np.argsort(order_keys[i, : len(words)])
            titles.append(" ".join(words[k] for k in order))
        return titles

    def _solve_intercept(self) -> None:
        """Newton's method for the intercept giving an exposure-weighted mean CTR of base_ctr."""
        users = self._reference_users()
        rest = self._logit_matrix(users, np.arange(self.config.n_items_total), intercept=0.0)
        w = self.popularity / len(users)
        target = self.config.base_ctr
        b = math.log(target / (1 - target)) - float(np.median(rest))
        for _ in range(100):
            p = expit(b + rest)
            f = float((p @ self.popularity).sum() / len(users)) - target
            g = float(((p * (1 - p)) * w).sum())
            step = f / max(g, 1e-300)
            b -= float(np.clip(step, -5.0, 5.0))
            if abs(f) < 1e-13:
                break
        self._intercept = b

    def _reference_users(self) -> np.ndarray:
        """All users, or an evenly spaced subset when the full matrix would be too large."""
        n, m = self.config.n_users, self.config.n_items_total
        if n * m <= _MAX_CELLS:
            return np.arange(n)
        k = max(1, _MAX_CELLS // m)
        return np.unique(np.linspace(0, n - 1, k).astype(np.int64))

    # ------------------------------------------------------------------ true CTR

    def _logit_matrix(
        self, users: np.ndarray, items: np.ndarray, intercept: float | None = None
    ) -> np.ndarray:
        """(len(users), len(items)) float64 logits (position 1)."""
        b = self._intercept if intercept is None else intercept
        cat = self._item_category[items]
        # gather columns first, then rows, so that the result is C-contiguous (fast adds)
        out = self._segment_category[:, cat][self._user_segment[users]]
        out += np.outer(self._user_age_z[users], self._age_category_slope[cat])
        dot = self._user_latent[users] @ self._item_latent[items].T
        dot *= self.config.hidden_strength * self._dot_scale
        out += dot
        out += self._user_effect[users][:, None]
        out += self._item_effect[items] + b
        return out

    def _logit(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Elementwise logits for equal-shape (broadcast) id arrays."""
        cat = self._item_category[items]
        dot = np.einsum("...k,...k->...", self._user_latent[users], self._item_latent[items])
        return (
            self._intercept
            + self._user_effect[users]
            + self._item_effect[items]
            + self._segment_category[self._user_segment[users], cat]
            + self._user_age_z[users] * self._age_category_slope[cat]
            + self.config.hidden_strength * self._dot_scale * dot
        )

    def _check_ids(self, values: object, name: str, n: int, source: str) -> np.ndarray:
        arr = np.asarray(values)
        if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)  # integral floats, e.g. ids read through a float column
        if arr.dtype.kind not in "iu":
            raise data_error(
                "bad_id_type",
                f"ids must be integers, got dtype {arr.dtype}",
                source=source,
                column=name,
                fix=f"Pass integer ids in [0, {n - 1}].",
            )
        flat = arr.reshape(-1)
        bad = np.flatnonzero((flat < 0) | (flat >= n))
        if bad.size:
            raise data_error(
                "unknown_id",
                f"ids out of range (e.g. {flat[bad[0]]}); this world has ids 0..{n - 1}",
                source=source,
                column=name,
                rows=bad[:5],
                count=bad.size,
                fix=f"Pass ids in [0, {n - 1}].",
            )
        return arr.astype(np.int64, copy=False)

    def true_ctr(
        self,
        user_ids: np.ndarray | int,
        item_ids: np.ndarray | int,
        position: np.ndarray | int | None = None,
    ) -> np.ndarray:
        """True click probability, elementwise.

        Args:
            user_ids: int user ids, any shape.
            item_ids: int item ids, broadcastable with ``user_ids``.
            position: slate positions 1..n_positions broadcastable with the ids, or None
                for position 1 (no bias).

        Returns:
            float64 array of the broadcast shape, values in (0, 1).

        Raises:
            DataError: an id or position is out of range.
        """
        src = "SyntheticWorld.true_ctr"
        users = self._check_ids(user_ids, "user_ids", self.config.n_users, src)
        items = self._check_ids(item_ids, "item_ids", self.config.n_items_total, src)
        users, items = np.broadcast_arrays(users, items)
        ctr = expit(self._logit(users, items))
        if position is None:
            return np.asarray(ctr, dtype=np.float64)
        pos = np.asarray(position)
        k = self.config.n_positions
        flat = pos.reshape(-1)
        if pos.dtype.kind in "iu":
            bad = np.flatnonzero((flat < 1) | (flat > k))
        else:
            bad = np.arange(flat.size)
        if bad.size:
            raise data_error(
                "bad_position",
                f"positions must be integers in 1..{k}, got e.g. {flat[bad[0]]!r}",
                source=src,
                column="position",
                rows=bad[:5],
                count=bad.size,
                fix=f"Pass positions 1..{k} (n_positions={k}), or None for position 1.",
            )
        return np.asarray(ctr * self._position_bias[pos - 1], dtype=np.float64)

    def true_ctr_matrix(
        self, user_ids: np.ndarray | None = None, item_ids: np.ndarray | None = None
    ) -> np.ndarray:
        """True CTR at position 1 of every (user, item) pair.

        Args:
            user_ids: (n,) int user ids, or None for all users.
            item_ids: (m,) int item ids, or None for every item of the catalogue
                (including items not yet added).

        Returns:
            (n, m) float64, rows users, columns items.
        """
        src = "SyntheticWorld.true_ctr_matrix"
        users = (
            np.arange(self.config.n_users)
            if user_ids is None
            else self._check_ids(user_ids, "user_ids", self.config.n_users, src).reshape(-1)
        )
        items = (
            np.arange(self.config.n_items_total)
            if item_ids is None
            else self._check_ids(item_ids, "item_ids", self.config.n_items_total, src).reshape(-1)
        )
        return expit(self._logit_matrix(users, items))

    @property
    def position_bias(self) -> np.ndarray:
        """(n_positions,) float64 examination probabilities; entry k-1 is position k's."""
        return self._position_bias.copy()

    # ------------------------------------------------------------------ schema

    @staticmethod
    def _item_feature_specs() -> tuple[Feature, ...]:
        return (
            Categorical("category"),
            Categorical("brand", min_count=2),
            Numeric("price", log1p=True),
            MultiCategorical("tags"),
            Text("title"),
        )

    def schema(self) -> Schema:
        """Suggested schema for :meth:`sample_log` output joined with ``users`` / ``items``."""
        return Schema(
            user="user_id",
            item="item_id",
            label="click",
            label_kind="click",
            timestamp="day",
            propensity="propensity",
            context=(Categorical("position"),),
            user_features=(Categorical("segment"), Categorical("country"), Numeric("age")),
            item_features=self._item_feature_specs(),
        )

    def aggregate_schema(self) -> Schema:
        """Suggested schema for :meth:`aggregate` output.

        The (target, context) rows have no user: the context group ``context_id``
        (segment|country) takes the user role, so models see it as an id plus its
        context features.
        """
        return Schema(
            user="context_id",
            item="item_id",
            label="ctr",
            label_kind="ctr",
            impressions="impressions",
            clicks="clicks",
            context=(Categorical("segment"), Categorical("country")),
            item_features=self._item_feature_specs(),
        )

    # ------------------------------------------------------------------ catalogue

    def _check_day(self, day: object, source: str) -> int:
        k = self.config.n_days
        if isinstance(day, bool) or not isinstance(day, int | np.integer) or not 0 <= day < k:
            raise ValueError(f"{source}: day must be an integer in [0, {k - 1}], got {day!r}")
        return int(day)

    def available_items(self, day: int) -> np.ndarray:
        """(c,) int64 ids of the items with ``day_added <= day``, ascending."""
        d = self._check_day(day, "SyntheticWorld.available_items")
        return np.flatnonzero(self._day_added <= d).astype(np.int64)

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


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
