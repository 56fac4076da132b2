"""The synthetic world's generative model: its configuration, effect tables and true CTR.

:class:`WorldConfig` sizes the world; :class:`_WorldModel` builds, from ``config.seed``,
the users (``users`` table), the growing item catalogue (``items`` table, ``popularity``)
and the effect tables of the true CTR model, solves the intercept for ``base_ctr``, and
answers the true CTR of any (user, item, position): elementwise (``true_ctr``) or as a
(users, items) matrix at position 1 (``true_ctr_matrix``). It also gives the suggested
schemas and the items available on each day. The model itself (formula, units, the
streams of randomness) is described in :mod:`wager.data.synthetic`, whose
:class:`~wager.data.synthetic.SyntheticWorld` adds on top of it what is observed: logged
impressions under a logging policy, aggregated CTR rows and the ground-truth report.
:mod:`wager.data.synthetic` re-exports :class:`WorldConfig`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
from scipy.special import expit

from wager.data.schema import Categorical, Feature, MultiCategorical, Numeric, Schema, Text
from wager.errors import data_error

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


# --------------------------------------------------------------------------- world


class _WorldModel:
    """The world without its observations: tables, effects and the true CTR (see the module
    docstring); :class:`~wager.data.synthetic.SyntheticWorld` is the public class."""

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


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
