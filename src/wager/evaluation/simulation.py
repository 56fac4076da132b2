"""A simulator with known truth: run a policy against the :class:`SyntheticWorld` for D days.

Each day of :func:`simulate`:

1. **Morning, catalogue.** The day's new items arrive (``WorldConfig.new_items_per_day``,
   the world's ``available_items(day)``) and the oldest retire: when more than
   ``SimulationConfig.catalogue_size`` items are available, the oldest ones (smallest
   ``day_added``, then smallest item id) retire until ``catalogue_size`` remain; a retired
   item never comes back. The model hears of both (``add_items`` / ``retire_items``).
2. **Requests.** ``requests_per_day`` requests, each from a user drawn uniformly from the
   world's users. For each, the model predicts the position-1 CTR of every item in the day's
   catalogue (a (B, C) :class:`~wager.prediction.Prediction`) and the policy serves a slate
   of ``k`` distinct items for positions 1..k, with the propensity of each choice.
3. **Clicks.** The item at position j is clicked with probability
   ``world.true_ctr(user, item, j)`` (the true CTR at position 1 times the world's position
   bias).
4. **Evening.** The model is refitted on every log so far (warm-up log included); it is not
   refitted after the last day (nothing would use it).

**Online updates** (``SimulationConfig.online_updates``, off by default): a live service
sees clicks within minutes, not at the next fit. With them on, the simulator keeps, per
item, the clicks and the *effective impressions* (clicks plus the world's position bias of
every non-clicked impression: see :mod:`wager.uncertainty.online`) served since the model
was last fitted (cleared at every fit), and before each batch of ``batch_requests`` it
replaces the model's prediction by :func:`~wager.uncertainty.online.beta_posterior` of it
given those counts (with as many Beta draws as the prediction has samples, so Thompson
sampling draws from the posterior). Every policy sees the same updated prediction: it is
the serving system's, not the policy's. The policy state's counts (batch-aware UCB's
pending impressions) are then cleared before every batch, not once a day: the impressions
of earlier batches are observed, and pending ones are only those of the batch being served.
Smaller batches give more frequent feedback.

Day 0 is served by the model fitted on a **warm-up log**: ``warmup_rows`` impressions from
the world's popularity logging policy on day 0 (``world.sample_log(warmup_rows,
PopularityPolicy(), day=0, seed=seed)``: items drawn with probability proportional to
popularity, positions uniform; its rows carry ``day = -1`` in the logs the model sees).

What is reported, per day and in total (:class:`SimulationResult`):

- ``ctr``: clicks / impressions; ``expected_ctr``: the mean true click probability of the
  impressions shown (the noise-free CTR of what the policy chose).
- ``rpm``: revenue per mille impressions, ``1000 * sum(clicks * cpc[item]) / impressions``.
  Each item's cost per click is drawn once per simulation, log-normal with mean 1 and
  log-scale ``cpc_sigma`` (so ``cpc_sigma = 0`` gives ``rpm = 1000 * ctr``), or passed in.
- ``regret``: expected clicks lost against the oracle that knows the true CTR: per request,
  ``sum_j bias[j] * ctr(top-j item)`` (the oracle shows the k highest true CTRs in
  decreasing order, which is optimal for decreasing position bias) minus
  ``sum_j bias[j] * ctr(item shown at j)``; expected values, not clicks, so regret is free
  of click noise. ``cumulative_regret`` sums it over the days.
- ``throughput`` (targets throughput): the number of *new* items (arrived on day >= 1 of
  the world) that reached ``target_impressions`` impressions **and** ``target_clicks``
  clicks in total on that day for the first time; each item counts once, on the day it
  crosses both thresholds.
- ``coverage``: the share of the day's catalogue shown at least once that day; in total, the
  share of every item available on some day that was shown at least once.

Every draw is seeded from ``SimulationConfig.seed`` (users, clicks, costs per click, the
policy's :class:`~wager.policies.PolicyState` and the warm-up log), so a seeded run with a
deterministic model is reproducible bit for bit.

The world's own logging policies become wager policies through :class:`WorldModel`: it is a
:class:`SimulationModel` whose prediction is one of the world's own scores (true CTR,
popularity, log-popularity; see :func:`world_prediction`). A softmax policy at temperature
1 over ``WorldModel(world, "log_popularity")`` chooses each item with probability
proportional to its popularity, the world's ``PopularityPolicy``; at temperature t over
``"true_ctr"`` it is ``SoftmaxOraclePolicy(t)``; greedy over ``"true_ctr"`` is the oracle.
That wiring lives here rather than in :mod:`wager.data.synthetic` because the data layer
sits below both :mod:`wager.prediction`'s consumers and :mod:`wager.policies`, and keeping
it torch-free keeps the world a plain NumPy object.

Example:
    >>> from wager.data.synthetic import SyntheticWorld, WorldConfig
    >>> world = SyntheticWorld(WorldConfig(n_users=50, n_items=8, n_days=2, seed=0))
    >>> pred = world_prediction(world, np.arange(3), world.available_items(0), "popularity")
    >>> tuple(pred.mean.shape)
    (3, 8)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd
import torch

from wager.data.logged import LoggedFeedback
from wager.data.synthetic import PopularityPolicy, SyntheticWorld
from wager.policies.base import Policy, PolicyState, Slate
from wager.prediction import Prediction
from wager.uncertainty.online import beta_posterior

__all__ = [
    "SimulationConfig",
    "SimulationModel",
    "SimulationResult",
    "WorldModel",
    "catalogue",
    "simulate",
    "world_prediction",
]

WorldScore = Literal["true_ctr", "popularity", "log_popularity"]
_WORLD_SCORES = ("true_ctr", "popularity", "log_popularity")
_LOG_COLUMNS = ("user_id", "item_id", "position", "day", "click", "propensity", "true_ctr")


# --------------------------------------------------------------------------- the model


@runtime_checkable
class SimulationModel(Protocol):
    """What the simulator needs of a model: refit on the logs, predict with uncertainty, and
    hear of catalogue changes. :class:`WorldModel` is one; ``wager.pipeline`` wraps a
    :class:`~wager.recommender.Recommender` as another (``RecommenderSimulationModel``).
    """

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        """Retrain (or warm-start) on every log so far.

        Args:
            logs: every impression so far, in day order, with columns user_id, item_id,
                position (1-based), day (-1 for the warm-up log), click (0/1), propensity
                and true_ctr (the world's truth, for diagnostics only: a model must not
                learn from it).
            items: the world's item feature rows (``world.items`` columns) of every item in
                the logs or the current catalogue.
        """
        ...

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        """(B, C) prediction of the position-1 CTR of every (user, item) pair.

        Args:
            user_ids: (B,) int64 user ids of the requests.
            item_ids: (C,) int64 ids of the day's catalogue.
        """
        ...

    def add_items(self, items: pd.DataFrame) -> None:
        """New items arrived (their ``world.items`` rows); they are predicted from now on."""
        ...

    def retire_items(self, item_ids: np.ndarray) -> None:
        """(n,) int64 items retired: never asked for again."""
        ...


def world_prediction(
    world: SyntheticWorld, user_ids: np.ndarray, item_ids: np.ndarray, score: WorldScore
) -> Prediction:
    """The world's own score of every (user, item) pair, as a deterministic prediction.

    Args:
        world: the synthetic world.
        user_ids: (B,) int user ids.
        item_ids: (C,) int item ids.
        score: "true_ctr" (position-1 true CTR), "popularity" (the exposure weight, the
            same for every user) or "log_popularity" (its natural log).

    Returns:
        Prediction with (B, C) float64 mean, std None, method ``"world(<score>)"``.
    """
    if score not in _WORLD_SCORES:
        raise ValueError(f"world_prediction: score must be one of {_WORLD_SCORES}, got {score!r}")
    users = np.asarray(user_ids, dtype=np.int64).reshape(-1)
    items = np.asarray(item_ids, dtype=np.int64).reshape(-1)
    if score == "true_ctr":
        mean = world.true_ctr_matrix(users, items)
    else:
        pop = world.popularity[items]
        row = np.log(pop) if score == "log_popularity" else pop
        mean = np.broadcast_to(row, (len(users), len(items))).copy()
    return Prediction(mean=torch.from_numpy(mean), method=f"world({score})")


@dataclass(frozen=True)
class WorldModel:
    """A :class:`SimulationModel` that predicts one of the world's own scores and learns
    nothing: it turns the world's logging policies (and the oracle) into wager policies.

    Attributes:
        world: the world whose scores are predicted.
        score: "true_ctr", "popularity" or "log_popularity" (see :func:`world_prediction`).
    """

    world: SyntheticWorld
    score: WorldScore = "true_ctr"

    def __post_init__(self) -> None:
        if self.score not in _WORLD_SCORES:
            raise ValueError(f"WorldModel.score must be one of {_WORLD_SCORES}, got {self.score!r}")

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        """Nothing to learn."""

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        """(B, C) the world's score (see :func:`world_prediction`)."""
        return world_prediction(self.world, user_ids, item_ids, self.score)

    def add_items(self, items: pd.DataFrame) -> None:
        """Nothing to do: the world knows every item."""

    def retire_items(self, item_ids: np.ndarray) -> None:
        """Nothing to do."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SimulationConfig:
    """How a simulation runs (the world itself is a :class:`~wager.data.synthetic.WorldConfig`).

    Attributes:
        days: days simulated, 0..days-1 (1..world's ``n_days``).
        requests_per_day: requests served each day (>= 1).
        k: slate length: positions 1..k (1..world's ``n_positions``, and at most the
            catalogue's size).
        warmup_rows: impressions of the popularity-policy warm-up log the day-0 model is
            fitted on (>= 0; 0 = no fit before day 0, for models that need none).
        catalogue_size: most items available on one day (the oldest retire beyond it), or
            None for the world's day-0 catalogue size ``n_items`` (so each day's arrivals
            push out as many of the oldest items).
        target_impressions: impressions a new item needs to count towards targets
            throughput (>= 1).
        target_clicks: clicks it needs as well (>= 0).
        cpc_sigma: log-scale of the log-normal cost per click of each item (mean 1), >= 0.
        batch_requests: requests predicted and served at once (memory: B x C predictions).
        log_action_distribution: also log the policy's marginal action distribution per
            impression (``LoggedFeedback.action_distribution``, n x n_actions x k floats:
            for small simulations that feed off-policy estimators).
        action_distribution_draws: Monte Carlo slates per request behind that distribution
            where the policy has no closed form (>= 1).
        online_updates: update the model's prediction before each batch with the clicks
            seen since the last fit (Beta posterior; see the module docstring). Needs a
            model whose predictions are click probabilities with a std.
        seed: seed of every draw of the simulation (>= 0).

    Example:
        >>> SimulationConfig(days=3).k
        3
    """

    days: int = 30
    requests_per_day: int = 1000
    k: int = 3
    warmup_rows: int = 5000
    catalogue_size: int | None = None
    target_impressions: int = 100
    target_clicks: int = 0
    cpc_sigma: float = 0.5
    batch_requests: int = 1024
    log_action_distribution: bool = False
    action_distribution_draws: int = 1000
    online_updates: bool = False
    seed: int = 0

    _INT_RANGES: ClassVar[dict[str, tuple[int, int]]] = {
        "days": (1, 100_000),
        "requests_per_day": (1, 100_000_000),
        "k": (1, 100),
        "warmup_rows": (0, 100_000_000),
        "target_impressions": (1, 2**62),
        "target_clicks": (0, 2**62),
        "batch_requests": (1, 10_000_000),
        "action_distribution_draws": (1, 10_000_000),
        "seed": (0, 2**63 - 1),
    }

    def __post_init__(self) -> None:
        for name, (lo, hi) in self._INT_RANGES.items():
            _check_int(f"SimulationConfig.{name}", getattr(self, name), lo, hi)
        if self.catalogue_size is not None:
            _check_int("SimulationConfig.catalogue_size", self.catalogue_size, 1, 10**9)
        s = self.cpc_sigma
        if isinstance(s, bool) or not isinstance(s, int | float) or not (math.isfinite(s)):
            s_ok = False
        else:
            s_ok = 0 <= s <= 5
        if not s_ok:
            raise ValueError(f"SimulationConfig.cpc_sigma must be a number in [0, 5], got {s!r}")
        for flag in ("log_action_distribution", "online_updates"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(
                    f"SimulationConfig.{flag} must be true or false, got {getattr(self, flag)!r}"
                )

    def check_world(self, world: SyntheticWorld) -> None:
        """Refuse a world this simulation cannot run in, naming the field and the fix."""
        w = world.config
        if self.days > w.n_days:
            raise ValueError(
                f"SimulationConfig.days = {self.days} exceeds the world's n_days = {w.n_days}: "
                f"build the world with WorldConfig(n_days >= {self.days}) or simulate fewer days"
            )
        if self.k > w.n_positions:
            raise ValueError(
                f"SimulationConfig.k = {self.k} exceeds the world's n_positions = "
                f"{w.n_positions} (the position bias is known for positions 1..{w.n_positions})"
                ": lower k or build the world with more positions"
            )
        smallest = min(len(catalogue(world, d, self.catalogue_size)) for d in range(self.days))
        if smallest < self.k:
            raise ValueError(
                f"SimulationConfig.k = {self.k} exceeds the smallest daily catalogue "
                f"({smallest} items): a slate holds k distinct items; lower k or raise "
                "catalogue_size / the world's n_items"
            )


def _check_int(name: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")


def catalogue(world: SyntheticWorld, day: int, size: int | None = None) -> np.ndarray:
    """(c,) int64 ascending ids of the items available on ``day`` under the retirement rule.

    The world's ``available_items(day)`` less the oldest ones (smallest ``day_added``, then
    smallest id) beyond the ``size`` newest; ``size`` None means the world's ``n_items``.
    """
    available = world.available_items(day)
    size = world.config.n_items if size is None else size
    if len(available) <= size:
        return available
    added = world.items["day_added"].to_numpy()[available]
    newest = np.lexsort((available, added))[-size:]  # oldest first: keep the tail
    return np.sort(available[newest])


# --------------------------------------------------------------------------- result


@dataclass(frozen=True)
class SimulationResult:
    """What a simulation reports.

    Attributes:
        days: one row per day: day, requests, impressions, clicks, ctr, expected_ctr,
            oracle_ctr (the oracle's expected CTR on the same requests), revenue, rpm,
            regret (that day's), cumulative_regret, catalogue (items available), new_items,
            retired_items, throughput, coverage.
        total: impressions, clicks, ctr, expected_ctr, oracle_ctr, revenue, rpm, regret
            (cumulative, at the end), throughput (sum over days), coverage (share of every
            item available on some day that was ever shown).
        log: every impression served (warm-up excluded): the logs' columns plus request.
        feedback: the same impressions as :class:`~wager.data.logged.LoggedFeedback` for
            off-policy estimators (actions index the items available on some day).
        policy: the policy's description (``Slate.policy``).
        config: the simulation's config.
    """

    days: pd.DataFrame
    total: dict[str, float]
    log: pd.DataFrame
    feedback: LoggedFeedback
    policy: str
    config: SimulationConfig

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"days": [per-day figures], "total": {...}, "policy", "config"}``."""
        days = [{k: _plain(v) for k, v in row.items()} for row in self.days.to_dict("records")]
        return {
            "days": days,
            "total": {k: _plain(v) for k, v in self.total.items()},
            "policy": self.policy,
            "config": asdict(self.config),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


# --------------------------------------------------------------------------- the run


@dataclass
class _Tally:
    """Running counts over the whole simulation (per item arrays over n_items_total)."""

    impressions: np.ndarray
    clicks: np.ndarray
    reached_day: np.ndarray  # day an item reached the targets, -1 if not (yet)
    ever_available: np.ndarray
    ever_shown: np.ndarray
    cumulative_regret: float = 0.0
    days: list[dict[str, Any]] = field(default_factory=list)
    logs: list[pd.DataFrame] = field(default_factory=list)
    distributions: list[np.ndarray] = field(default_factory=list)
    policy: str = ""


@dataclass
class _Served:
    """One batch of requests after serving: (B,) users, (B, k) items / propensities /
    true click probabilities at the shown positions / clicks, (B,) oracle expected clicks."""

    users: np.ndarray
    items: np.ndarray
    propensity: np.ndarray
    shown_ctr: np.ndarray
    clicks: np.ndarray
    oracle: np.ndarray
    distribution: np.ndarray | None
    policy: str


class _Simulation:
    """The state of one :func:`simulate` call (streams, tallies) and its daily steps."""

    def __init__(
        self,
        world: SyntheticWorld,
        policy: Policy,
        model: SimulationModel,
        config: SimulationConfig,
        cpc: np.ndarray | None,
    ) -> None:
        self.world, self.policy, self.model, self.config = world, policy, model, config
        # spawn(4)'s first three children are spawn(3)'s: the fourth stream (the online
        # posterior's Beta draws) leaves the other draws as they were without it
        users_rng, clicks_rng, cpc_rng, online_rng = np.random.default_rng(config.seed).spawn(4)
        self.users_rng, self.clicks_rng, self.online_rng = users_rng, clicks_rng, online_rng
        n = world.config.n_items_total
        sigma = config.cpc_sigma
        self.cpc = (
            cpc_rng.lognormal(-0.5 * sigma**2, sigma, n) if cpc is None else _check_cpc(cpc, n)
        )
        self.state = PolicyState.seeded(config.seed)
        self.distribution_state = PolicyState.seeded(config.seed + 1)
        self.bias = world.position_bias[: config.k]
        self.new_item = world.items["day_added"].to_numpy() >= 1
        self.actions = np.flatnonzero(world.items["day_added"].to_numpy() < config.days)
        self.tally = _Tally(
            impressions=np.zeros(n, dtype=np.int64),
            clicks=np.zeros(n, dtype=np.int64),
            reached_day=np.full(n, -1, dtype=np.int64),
            ever_available=np.zeros(n, dtype=bool),
            ever_shown=np.zeros(n, dtype=bool),
        )
        self.request_offset = 0
        self.warmup: pd.DataFrame | None = None
        # per item since the last fit (online updates): effective impressions and clicks
        self.since_fit = (np.zeros(n, dtype=np.float64), np.zeros(n, dtype=np.float64))

    def fitted(self) -> None:
        """The model was just refitted: the clicks it has seen are no longer news."""
        for counts in self.since_fit:
            counts[:] = 0.0

    def online(self, pred: Prediction, items: np.ndarray) -> Prediction:
        """The model's prediction updated with the feedback since the fit (online updates),
        and the policy's pending impressions cleared (they are observed now)."""
        self.state.counts.clear()
        self.distribution_state.counts.clear()
        impressions, clicks = self.since_fit
        draws = 0 if pred.samples is None else int(pred.samples.shape[0])
        try:
            return beta_posterior(
                pred, impressions[items], clicks[items], draws=draws, generator=self.online_rng
            )
        except ValueError as exc:
            raise ValueError(
                f"SimulationConfig.online_updates: {exc} ({type(self.model).__name__}); "
                "set online_updates=False for this model"
            ) from None

    def observe(self, cols: np.ndarray, items: np.ndarray, clicks: np.ndarray) -> None:
        """Add a batch's (B, k) clicks at the (B, k) catalogue columns ``cols`` to the
        counts since the fit: a click counts 1, a non-click its position's bias."""
        impressions, counted = self.since_fit
        shown = items[cols].reshape(-1)
        effective = np.where(clicks == 1, 1.0, self.bias[None, :]).reshape(-1)
        impressions += np.bincount(shown, weights=effective, minlength=len(impressions))
        counted += np.bincount(shown, weights=clicks.reshape(-1), minlength=len(counted))

    def warm_up(self, items: np.ndarray) -> None:
        """Fit the day-0 model on the popularity policy's warm-up log (day -1 in the logs)."""
        cfg = self.config
        if cfg.warmup_rows == 0:
            return
        log = self.world.sample_log(cfg.warmup_rows, PopularityPolicy(), day=0, seed=cfg.seed)
        log["day"] = -1
        self.warmup = log.loc[:, list(_LOG_COLUMNS)]
        self.model.fit(self.all_logs(), self.item_rows(items))

    def all_logs(self) -> pd.DataFrame:
        """The warm-up log and every day's impressions so far, in the logs' columns."""
        frames = [f.loc[:, list(_LOG_COLUMNS)] for f in self.tally.logs]
        if self.warmup is not None:
            frames.insert(0, self.warmup)
        return pd.concat(frames, ignore_index=True)

    def item_rows(self, current: np.ndarray) -> pd.DataFrame:
        """``world.items`` rows of the items ever available so far (logs + catalogue)."""
        self.tally.ever_available[current] = True
        return self.world.items.iloc[np.flatnonzero(self.tally.ever_available)].reset_index(
            drop=True
        )

    def serve(self, users: np.ndarray, items: np.ndarray) -> _Served:
        """Predict, select a slate and draw clicks for one batch of requests."""
        cfg, world = self.config, self.world
        b, c = len(users), len(items)
        pred = self.model.predict(users, items)
        if tuple(pred.mean.shape) != (b, c):
            raise ValueError(
                f"{type(self.model).__name__}.predict returned a prediction of shape "
                f"{tuple(pred.mean.shape)}, expected {(b, c)} (requests x catalogue items)"
            )
        if cfg.online_updates:
            pred = self.online(pred, items)
        slate = self.policy.select(pred, cfg.k, self.state)
        cols = _slate_columns(slate, b, c, cfg.k, self.policy)
        true = world.true_ctr_matrix(users, items)  # (B, C) at position 1
        shown = np.take_along_axis(true, cols, axis=1) * self.bias
        clicks = (self.clicks_rng.random(shown.shape) < shown).astype(np.int64)
        if cfg.online_updates:
            self.observe(cols, items, clicks)
        # same operations, same order for both: the oracle's slate gives exactly zero regret
        oracle = (-np.sort(-true, axis=1)[:, : cfg.k] * self.bias).sum(axis=1)
        distribution = None
        if cfg.log_action_distribution:
            marginal = self.policy.action_distribution(
                pred, cfg.k, self.distribution_state, cfg.action_distribution_draws
            )
            distribution = np.asarray(marginal.detach().cpu().numpy(), dtype=np.float64)
        return _Served(
            users=users,
            items=items[cols],
            propensity=slate.propensities.detach().cpu().numpy().astype(np.float64),
            shown_ctr=shown,
            clicks=clicks,
            oracle=oracle,
            distribution=distribution,
            policy=slate.policy,
        )

    def run_day(self, day: int, items: np.ndarray) -> list[_Served]:
        """Serve the day's requests in batches of ``batch_requests``."""
        cfg = self.config
        users = self.users_rng.integers(0, self.world.config.n_users, cfg.requests_per_day)
        return [
            self.serve(users[lo : lo + cfg.batch_requests], items)
            for lo in range(0, cfg.requests_per_day, cfg.batch_requests)
        ]

    def record(
        self, day: int, items: np.ndarray, served: list[_Served], turnover: tuple[int, int]
    ) -> None:
        """Append the day's log rows and report row; update the per-item tallies."""
        cfg, t = self.config, self.tally
        users = np.concatenate([s.users for s in served])
        shown = np.concatenate([s.items for s in served])  # (R, k) item ids
        clicks = np.concatenate([s.clicks for s in served])
        probs = np.concatenate([s.shown_ctr for s in served])
        oracle = np.concatenate([s.oracle for s in served])
        regret = float((oracle - probs.sum(axis=1)).sum())
        oracle_clicks = float(oracle.sum())
        r = len(users)
        request = self.request_offset + np.repeat(np.arange(r), cfg.k)
        self.request_offset += r
        log = pd.DataFrame(
            {
                "user_id": np.repeat(users, cfg.k).astype(np.int64),
                "item_id": shown.reshape(-1).astype(np.int64),
                "position": np.tile(np.arange(1, cfg.k + 1), r).astype(np.int64),
                "day": np.full(r * cfg.k, day, dtype=np.int64),
                "click": clicks.reshape(-1),
                "propensity": np.concatenate([s.propensity for s in served]).reshape(-1),
                "true_ctr": probs.reshape(-1),
                "request": request.astype(np.int64),
            }
        )
        t.logs.append(log)
        if cfg.log_action_distribution:
            t.distributions.append(self._distribution_rows(served, items))
        t.policy = served[0].policy
        flat_items, flat_clicks = log["item_id"].to_numpy(), log["click"].to_numpy()
        n = len(t.impressions)
        t.impressions += np.bincount(flat_items, minlength=n)
        t.clicks += np.bincount(flat_items, weights=flat_clicks, minlength=n).astype(np.int64)
        reached = (
            self.new_item
            & (t.reached_day < 0)
            & (t.impressions >= cfg.target_impressions)
            & (t.clicks >= cfg.target_clicks)
        )
        t.reached_day[reached] = day
        t.ever_shown[flat_items] = True
        t.cumulative_regret += regret
        revenue = float((flat_clicks * self.cpc[flat_items]).sum())
        impressions = len(log)
        t.days.append(
            {
                "day": day,
                "requests": r,
                "impressions": impressions,
                "clicks": int(flat_clicks.sum()),
                "ctr": float(flat_clicks.mean()),
                "expected_ctr": float(probs.mean()),
                "oracle_ctr": oracle_clicks / impressions,
                "revenue": revenue,
                "rpm": 1000.0 * revenue / impressions,
                "regret": regret,
                "cumulative_regret": t.cumulative_regret,
                "catalogue": len(items),
                "new_items": turnover[0],
                "retired_items": turnover[1],
                "throughput": int(reached.sum()),
                "coverage": float(len(np.unique(flat_items)) / len(items)),
            }
        )

    def _distribution_rows(self, served: list[_Served], items: np.ndarray) -> np.ndarray:
        """(R k, n_actions, k): each request's (k, C) marginal over the catalogue, placed on
        the action space's columns and repeated for each of its k impressions."""
        k = self.config.k
        cols = np.searchsorted(self.actions, items)
        out = []
        for s in served:
            assert s.distribution is not None
            d = np.zeros((len(s.users), len(self.actions), k))
            d[:, cols, :] = np.transpose(s.distribution, (0, 2, 1))
            out.append(np.repeat(d, k, axis=0))
        return np.concatenate(out)

    def result(self) -> SimulationResult:
        """Assemble the per-day table, the totals, the log and the LoggedFeedback."""
        cfg, t, world = self.config, self.tally, self.world
        days = pd.DataFrame(t.days)
        log = pd.concat(t.logs, ignore_index=True)
        impressions = len(log)
        clicks = log["click"].to_numpy()
        revenue = float(days["revenue"].sum())
        total = {
            "impressions": impressions,
            "clicks": int(clicks.sum()),
            "ctr": float(clicks.mean()),
            "expected_ctr": float(log["true_ctr"].mean()),
            "oracle_ctr": float((days["oracle_ctr"] * days["impressions"]).sum() / impressions),
            "revenue": revenue,
            "rpm": 1000.0 * revenue / impressions,
            "regret": t.cumulative_regret,
            "throughput": int(days["throughput"].sum()),
            "coverage": float(t.ever_shown.sum() / t.ever_available.sum()),
        }
        users = log["user_id"].to_numpy()
        context = world.users.iloc[users].drop(columns="user_id").reset_index(drop=True)
        context.insert(0, "day", log["day"].to_numpy())
        feedback = LoggedFeedback(
            action=np.searchsorted(self.actions, log["item_id"].to_numpy()).astype(np.int64),
            position=log["position"].to_numpy() - 1,
            reward=clicks.astype(np.float64),
            propensity=log["propensity"].to_numpy(),
            item_ids=self.actions.copy(),
            n_positions=cfg.k,
            user_ids=users.copy(),
            context=context,
            item_features=world.items.iloc[self.actions].reset_index(drop=True),
            request=log["request"].to_numpy(),
            action_distribution=np.concatenate(t.distributions) if t.distributions else None,
            source=f"simulation(seed={cfg.seed}, policy={t.policy})",
        )
        return SimulationResult(
            days=days, total=total, log=log, feedback=feedback, policy=t.policy, config=cfg
        )


def _slate_columns(slate: Slate, b: int, c: int, k: int, policy: object) -> np.ndarray:
    """(B, k) int64 candidate columns of a slate, checked: k distinct columns in [0, C)."""
    name = type(policy).__name__
    cols = slate.items.detach().cpu().numpy()
    if cols.shape != (b, k):
        raise ValueError(
            f"{name}.select returned items of shape {cols.shape}, expected {(b, k)} "
            "(requests x slate positions)"
        )
    bad = ((cols < 0) | (cols >= c)).any(axis=1)
    ordered = np.sort(cols, axis=1)
    bad |= (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{name}.select: request {row} of the batch got columns {cols[row].tolist()}; a "
            f"slate holds {k} distinct columns in [0, {c - 1}]"
        )
    props = slate.propensities.detach().cpu().numpy()
    if props.shape != (b, k) or not (np.isfinite(props) & (props > 0) & (props <= 1)).all():
        raise ValueError(
            f"{name}.select returned propensities that are not (B, k) = {(b, k)} values in "
            "(0, 1]; floor them (Slate.propensity_floor) so the log can be reweighted"
        )
    return cols.astype(np.int64)


def _check_cpc(cpc: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(cpc, dtype=np.float64)
    if arr.shape != (n,) or not (np.isfinite(arr) & (arr >= 0)).all():
        raise ValueError(
            f"simulate: cpc must be ({n},) finite costs per click >= 0, one per item of the "
            f"world (n_items_total = {n}), got shape {arr.shape}"
        )
    return arr


def simulate(
    world: SyntheticWorld,
    policy: Policy,
    model: SimulationModel,
    config: SimulationConfig | None = None,
    *,
    cpc: np.ndarray | None = None,
) -> SimulationResult:
    """Run ``policy`` with ``model`` against ``world`` for ``config.days`` days.

    See the module docstring for the day loop, the retirement rule and the figures.

    Args:
        world: the synthetic world (its truth draws the clicks).
        policy: a :class:`~wager.policies.Policy` (prediction -> slate with propensities).
        model: a :class:`SimulationModel`: fitted on the warm-up log, predicts each day's
            requests, refitted each evening on every log so far.
        config: the simulation settings; None for the defaults.
        cpc: (n_items_total,) cost per click of every item of the world, or None to draw
            them (log-normal, mean 1, log-scale ``config.cpc_sigma``).

    Returns:
        The per-day figures, the totals, the log and its LoggedFeedback.

    Raises:
        ValueError: the config does not fit the world (days, k, catalogue), or the model /
            policy returned malformed predictions or slates (named).
    """
    cfg = SimulationConfig() if config is None else config
    if not isinstance(world, SyntheticWorld):
        raise TypeError(f"simulate: world must be a SyntheticWorld, got {type(world).__name__}")
    cfg.check_world(world)
    for obj, kind, protocol in (
        (policy, "policy", Policy),
        (model, "model", SimulationModel),
    ):
        if not isinstance(obj, protocol):
            raise TypeError(
                f"simulate: the {kind} {type(obj).__name__} does not implement "
                f"{protocol.__module__}.{protocol.__name__} (methods: "
                f"{', '.join(sorted(m for m in vars(protocol) if not m.startswith('_')))})"
            )
    sim = _Simulation(world, policy, model, cfg, cpc)
    previous = catalogue(world, 0, cfg.catalogue_size)
    sim.warm_up(previous)
    for day in range(cfg.days):
        items = catalogue(world, day, cfg.catalogue_size)
        added = np.setdiff1d(items, previous)
        retired = np.setdiff1d(previous, items)
        if day > 0:
            if len(added):
                model.add_items(world.items.iloc[added].reset_index(drop=True))
            if len(retired):
                model.retire_items(retired)
        sim.state.counts.clear()  # a new model and catalogue: no impression is pending
        sim.distribution_state.counts.clear()
        sim.record(day, items, sim.run_day(day, items), (len(added), len(retired)))
        sim.item_rows(items)
        if day + 1 < cfg.days:
            model.fit(sim.all_logs(), sim.item_rows(items))
            sim.fitted()
        previous = items
    return sim.result()
