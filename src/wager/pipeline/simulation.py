"""The recommender in the simulator and in off-policy evaluation: a trained wager model as
the simulator's daily model (:class:`RecommenderSimulationModel`), as the direct method's
reward model with its own uncertainty (:func:`fit_reward_draws`), and a wager policy's
action distribution over logged rounds (:func:`wager_policy_distribution`); see
:mod:`wager.pipeline`.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.logged import LoggedFeedback
from wager.data.schema import Categorical, Feature, Numeric, Schema
from wager.data.synthetic import SyntheticWorld
from wager.policies.base import Policy, PolicyState
from wager.prediction import Prediction
from wager.recommender import ModelSpec, Recommender
from wager.uncertainty.calibration import clipped_logit
from wager.uncertainty.item_effects import ItemEffects, fit_item_effects

SIMULATION_CONFIG_RESOURCE = "examples/simulate.toml"
ITEM_EFFECTS_CONFIG_RESOURCE = "examples/simulate-item-effects.toml"


def simulation_run_config(item_effects: bool = False) -> RunConfig:
    """The default model of ``wager simulate``: ``examples/simulate.toml`` as shipped in the
    package (a small anchored Bernoulli ensemble of the factorization model on click rows),
    or with ``item_effects`` ``examples/simulate-item-effects.toml`` (the feature-only model
    that the item effects complete)."""
    from importlib import resources

    name = ITEM_EFFECTS_CONFIG_RESOURCE if item_effects else SIMULATION_CONFIG_RESOURCE
    with resources.as_file(resources.files("wager").joinpath(name)) as p:
        return RunConfig.load(p)


def _reshape_prediction(pred: Prediction, rows: int, cols: int) -> Prediction:
    """A prediction of n = rows * cols pairs (row-major) as (rows, cols): every tensor field
    reshaped, ``samples`` (S, n) to (S, rows, cols), mixture fields (n, K) to (rows, cols, K)."""
    changes: dict[str, Any] = {}
    for f in fields(pred):
        value = getattr(pred, f.name)
        if not isinstance(value, torch.Tensor):
            continue
        if f.name == "samples":
            changes[f.name] = value.reshape(value.shape[0], rows, cols)
        else:
            changes[f.name] = value.reshape(rows, cols, *value.shape[1:])
    return replace(pred, **changes)


#: the item-id count threshold that keeps every item id out of vocabulary (item effects)
ITEM_EFFECTS_MIN_COUNT = 1_000_000_000
_P_CLIP = 1e-6  # click probabilities are clipped into [_P_CLIP, 1 - _P_CLIP] before the logit


def check_item_effects(config: RunConfig, item_effects: bool) -> None:
    """Refuse item effects on a config they cannot apply to (before any data is made).

    Raises:
        ValueError: aggregated ("ddn") rows, or a model that learns item ids; the message
            names the setting and the fix.
    """
    if not item_effects:
        return
    if config.model.likelihood == "ddn":
        raise ValueError(
            "item effects need click rows: [model] likelihood = 'ddn' trains on aggregated "
            "CTR rows; use a click model (e.g. the default of wager simulate --item-effects)"
        )
    if config.model.item_min_count < ITEM_EFFECTS_MIN_COUNT:
        raise ValueError(
            f"item effects need a model without item ids, got [model] item_min_count = "
            f"{config.model.item_min_count}: set item_min_count = {ITEM_EFFECTS_MIN_COUNT} "
            "(every item id out of vocabulary) so that the random effects, not the model, "
            "fit each item (as examples/simulate-item-effects.toml does, the default model "
            "of wager simulate --item-effects)"
        )


class RecommenderSimulationModel:
    """The simulator's model (:class:`~wager.evaluation.simulation.SimulationModel`) as a wager
    :class:`~wager.recommender.Recommender`, retrained from scratch on every log each evening.

    Two kinds of rows, chosen by the config:

    - **Click rows** (a Bernoulli click head, the default ``examples/simulate.toml``): the
      world's click-log schema (``world.schema()``: user and item features, position as
      context), one row per impression.
    - **Aggregated CTR rows** (``[model] likelihood = "ddn"``, the deep density network's own
      setting, ``examples/simulate-ddn.toml``): the logs are summed into clicks out of
      impressions per (context group, item, position), the context group being the user's
      (segment, country) as in ``world.aggregate_schema()`` (``context_id`` plays the user
      role; segment, country and position are context). A request is predicted as its
      user's group.

    ``[data] user_features`` / ``item_features`` / ``drop_features`` apply as in
    :func:`load_run_data`; ``[data] valid_fraction`` > 0 holds out the latest rows (before
    aggregation) for early stopping and the post-hoc chain. Predictions are of the
    position-1 CTR, made once per distinct user (or group) of a batch. Catalogue changes go
    to ``Recommender.add_items`` / ``retire_items``: a new item is scored from its features
    with the run's cold-start uncertainty (``[uncertainty] cold_start = "population"``
    makes it wider than a known item's) until the next evening's fit sees it.

    **Item effects** (``item_effects=True``, click rows only): the Recommender is the fixed
    part of a mixed model and each item gets an empirical-Bayes random intercept on its
    logit (:mod:`wager.uncertainty.item_effects`), refitted each evening on every log with
    the Recommender's logits as offsets. A prediction is then the item's posterior
    predictive (a new item's: the prior, as wide as the effects' fitted spread) instead of
    the members' spread. The Recommender must not learn item ids
    (``[model] item_min_count`` >= :data:`ITEM_EFFECTS_MIN_COUNT`, so every item id is out
    of vocabulary), or it would fit each item's clicks twice.

    Args:
        config: the run config of the model (its ``[data]`` source is ignored: the simulator
            supplies the rows).
        world: the simulated world (its users' feature table and schema).
        item_effects: add the item random effects (see above).
    """

    def __init__(
        self, config: RunConfig, world: SyntheticWorld, *, item_effects: bool = False
    ) -> None:
        check_item_effects(config, item_effects)
        self.item_effects = item_effects
        self.effects_: ItemEffects | None = None
        self.aggregated = config.model.likelihood == "ddn"
        schema = world.aggregate_schema() if self.aggregated else world.schema()
        if self.aggregated:
            schema = replace(schema, context=(*schema.context, Categorical("position")))
        data = config.data
        drop = set(data.drop_features)
        schema = replace(
            schema,
            user_features=tuple(
                f for f in schema.user_features if data.user_features and f.name not in drop
            ),
            item_features=tuple(
                f for f in schema.item_features if data.item_features and f.name not in drop
            ),
        )
        self.config = replace(config, schema=schema)
        ModelSpec.from_config(self.config).validate()  # every config rule before day 0
        if ModelSpec.from_config(self.config).task != "click":
            raise ValueError(
                f"[model] type = {config.model.type!r} does not predict clicks; the simulator "
                'needs a click model (e.g. type = "factorization" with a Bernoulli head)'
            )
        self.world = world
        users = world.users
        self._group = (users["segment"].astype(str) + "|" + users["country"].astype(str)).to_numpy(
            dtype=object
        )
        self.recommender_: Recommender | None = None
        self._retired: set[int] = set()

    def rows(self, logs: pd.DataFrame) -> pd.DataFrame:
        """The training rows of ``logs``: the logs themselves (click rows) or, for a "ddn"
        model, clicks out of impressions per (context_id, item_id, position), sorted by those
        keys, with columns context_id, item_id, position, segment, country, impressions,
        clicks, ctr."""
        if not self.aggregated:
            return logs
        users = logs["user_id"].to_numpy()
        frame = pd.DataFrame(
            {
                "context_id": self._group[users],
                "item_id": logs["item_id"].to_numpy(),
                "position": logs["position"].to_numpy(),
                "click": logs["click"].to_numpy(),
            }
        )
        agg = (
            frame.groupby(["context_id", "item_id", "position"], sort=True)["click"]
            .agg(impressions="size", clicks="sum")
            .reset_index()
        )
        seg_country = agg["context_id"].str.split("|", n=1, expand=True)
        agg.insert(3, "segment", seg_country[0])
        agg.insert(4, "country", seg_country[1])
        agg["ctr"] = agg["clicks"] / agg["impressions"]
        return agg

    def fit(self, logs: pd.DataFrame, items: pd.DataFrame) -> None:
        """Train a new Recommender on every log so far (the latest ``valid_fraction`` of the
        rows held out when > 0)."""
        n_valid = round(len(logs) * self.config.data.valid_fraction)
        train = self.rows(logs.iloc[: len(logs) - n_valid])
        valid = self.rows(logs.iloc[len(logs) - n_valid :]) if n_valid else None
        schema = self.config.schema
        rec = Recommender(self.config).fit(
            train,
            valid,
            user_features=self.world.users if schema and schema.user_features else None,
            item_features=items if schema and schema.item_features else None,
        )
        self.recommender_ = rec
        if self._retired:
            self.retire_items(np.fromiter(self._retired, dtype=np.int64))
        if self.item_effects:
            logit = self._row_logits(train)
            self.effects_ = fit_item_effects(logit, train["item_id"].to_numpy(), train["click"])

    def _row_logits(self, rows: pd.DataFrame) -> np.ndarray:
        """(n,) the Recommender's logit of each click row's click probability (its user, its
        item, its position)."""
        context = pd.DataFrame({"position": rows["position"].to_numpy()})
        mean = (
            self._fitted()
            .predict(rows["user_id"].to_numpy(), rows["item_id"].to_numpy(), context=context)
            .mean
        )
        return clipped_logit(mean, _P_CLIP)

    def _fitted(self) -> Recommender:
        if self.recommender_ is None:
            raise ValueError(
                "RecommenderSimulationModel has no fitted model: give the simulation a "
                "warm-up log (SimulationConfig.warmup_rows > 0)"
            )
        return self.recommender_

    def predict(self, user_ids: np.ndarray, item_ids: np.ndarray) -> Prediction:
        """(B, C) predicted position-1 CTR of every (user, item) pair, predicted once per
        distinct user (click rows) or context group (aggregated rows) of the batch."""
        rec = self._fitted()
        users, items = np.asarray(user_ids), np.asarray(item_ids)
        keys = self._group[users] if self.aggregated else users
        uniq, inverse = np.unique(keys, return_inverse=True)
        n, c = len(uniq), len(items)
        if self.aggregated:
            seg_country = pd.Series(np.repeat(uniq, c)).str.split("|", n=1, expand=True)
            context: Any = pd.DataFrame(
                {"segment": seg_country[0], "country": seg_country[1], "position": 1}
            )
        else:
            context = {"position": 1}
        pred = rec.predict(np.repeat(uniq, c), np.tile(items, n), context=context)
        pred = _reshape_prediction(pred, n, c)
        if self.effects_ is not None:
            # the members' predictions (samples) when the model has several: their spread
            # joins the item effects' (an ensemble's uncertainty about the feature effects)
            values = pred.mean if pred.samples is None else pred.samples
            logit = clipped_logit(values, _P_CLIP)
            pred = self.effects_.predict(logit, items, method=pred.method)
        return pred[torch.from_numpy(inverse.reshape(-1))]

    def add_items(self, items: pd.DataFrame) -> None:
        """Register new items with the Recommender (``add_items``): scored from their
        features with the cold-start uncertainty until the next fit."""
        self._fitted().add_items(items)

    def retire_items(self, item_ids: np.ndarray) -> None:
        """Retire items in the Recommender (``retire_items``); kept retired across refits."""
        self._retired.update(int(i) for i in item_ids)
        self._fitted().retire_items(np.asarray(item_ids))


# ----------------------------------------------------------------------------- OPE reward model

_REWARD_USER = "_"  # the reward model's one user: OBD's user ids are near-unique segments


def reward_model_config(
    log: LoggedFeedback, *, members: int = 5, epochs: int = 10, seed: int = 0
) -> RunConfig:
    """The default reward model of :func:`fit_reward_draws`: a small DCN-v2 click model
    (embeddings of 4, one rank-8 cross layer, an MLP of 32, a Bernoulli head) over the log's
    context columns (categorical when text, numeric when numbers), the position
    (categorical) and the item features, as a bootstrap ensemble of ``members`` models
    trained ``epochs`` epochs (AdamW, learning rate 0.01, batches of 512). Sized for the
    Open Bandit sample: 10,000 rows fit and predict all 34 x 3 (item, position) pairs in
    about 40 s on one CPU thread."""
    context: list[Feature] = [Categorical("position")]
    if log.context is not None:
        context += [
            Numeric(c) if pd.api.types.is_numeric_dtype(log.context[c]) else Categorical(c)
            for c in log.context.columns
        ]
    items: list[Feature] = []
    if log.item_features is not None:
        frame = log.item_features
        items = [
            Numeric(c) if pd.api.types.is_numeric_dtype(frame[c]) else Categorical(c)
            for c in frame.columns
            if c != "item_id"
        ]
    schema = Schema(
        user="user_id",
        item="item_id",
        label="reward",
        label_kind="click",
        context=tuple(context),
        item_features=tuple(items),
    )
    return RunConfig(
        schema=schema,
        model=ModelConfig(type="dcn", dim=4, hidden=(32,), cross_layers=1, low_rank=8),
        training=TrainConfig(epochs=epochs, batch_size=512, learning_rate=0.01, optimizer="adamw"),
        ensemble=EnsembleConfig(members=members, bootstrap=True),
        seed=seed,
    )


def _reward_rows(log: LoggedFeedback, rows: np.ndarray, actions: np.ndarray) -> pd.DataFrame:
    """The interaction frame of logged ``rows`` shown ``actions`` at their logged position."""
    frame = pd.DataFrame(
        {
            "user_id": _REWARD_USER,
            "item_id": np.asarray(log.item_ids)[actions].astype(str),
            "position": log.position[rows].astype(str),
            "reward": np.asarray(log.reward, dtype=np.float64)[rows],
        }
    )
    if log.context is not None:
        ctx = log.context.iloc[rows].reset_index(drop=True)
        frame = pd.concat([frame, ctx.drop(columns=["position"], errors="ignore")], axis=1)
    return frame


def fit_reward_draws(
    log: LoggedFeedback,
    *,
    folds: int = 3,
    config: RunConfig | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Cross-fitted reward-model draws for off-policy evaluation (DM, DR, switch-DR).

    The log's rows are split into ``folds`` random folds; for each fold a wager
    Bernoulli-click ensemble (``config``, default :func:`reward_model_config`) is fitted on
    the other folds and predicts every (action, position) of the fold's rows, each ensemble
    member one draw. Cross-fitting keeps a row's own reward out of its prediction (as Open
    Bandit Pipeline's ``fit_predict(n_folds=...)`` does). User ids are not used: the model
    sees the context, the position and the item.

    Args:
        log: logged impressions with 0/1 rewards.
        folds: cross-fitting folds (>= 2).
        config: the reward model's run config: its schema must name label "reward", item
            "item_id", user "user_id" and the context columns of ``log.context`` plus
            "position" (what :func:`reward_model_config` writes).
        seed: seed of the fold assignment (the model's seed is the config's).

    Returns:
        (S, n, n_actions, n_positions) float64 predicted click probabilities, S the members.

    Raises:
        ValueError: ``folds`` < 2 or more than the rows, or rewards that are not 0/1.
    """
    n = log.n_rounds
    if not 2 <= folds <= n:
        raise ValueError(f"folds={folds} must be between 2 and the log's {n} rows")
    reward = np.asarray(log.reward, dtype=np.float64)
    if not np.isin(reward, (0.0, 1.0)).all():
        row = int(np.flatnonzero(~np.isin(reward, (0.0, 1.0)))[0])
        raise ValueError(
            f"{log.source or 'the log'}: reward row {row} is {reward[row]!r}; the click "
            "reward model needs 0/1 rewards"
        )
    cfg = config if config is not None else reward_model_config(log)
    fold = np.random.default_rng(seed).permutation(n) % folds
    item_features = None
    if log.item_features is not None:
        item_features = log.item_features.assign(item_id=np.asarray(log.item_ids).astype(str))
    a, p = log.n_actions, log.n_positions
    draws: np.ndarray | None = None
    for k in range(folds):
        train_rows = np.flatnonzero(fold != k)
        rec = Recommender(cfg).fit(
            _reward_rows(log, train_rows, log.action[train_rows]), item_features=item_features
        )
        held = np.flatnonzero(fold == k)
        grid = np.repeat(held, a * p)  # held row, then action, then position
        actions = np.tile(np.repeat(np.arange(a), p), len(held))
        frame = _reward_rows(log, grid, actions)
        frame["position"] = np.tile(np.arange(p), len(held) * a).astype(str)
        pred = rec.predict(frame["user_id"].to_numpy(), frame["item_id"].to_numpy(), frame)
        samples = pred.samples if pred.samples is not None else pred.mean[None]
        values = samples.detach().cpu().numpy().astype(np.float64)
        if draws is None:
            draws = np.empty((values.shape[0], n, a, p))
        draws[:, held] = values.reshape(values.shape[0], len(held), a, p)
    assert draws is not None
    return draws


def wager_policy_distribution(
    recommender: Recommender,
    log: LoggedFeedback,
    policy: Policy,
    *,
    seed: int = 0,
    draws: int = 1000,
    batch_rows: int = 2048,
) -> np.ndarray:
    """The action distribution of a wager policy acting on a trained run, for every request
    of ``log``: (n, n_actions, n_positions), marginal per position.

    Each logged row is one request: the run predicts every action (``log.item_ids``, as
    text) for the row's user (``log.user_ids``; unknown or absent ids take the run's
    out-of-vocabulary path) with the row's context (``log.context`` plus "position", the
    row's logged position written 1-based as the Open Bandit loader writes it), and the
    policy's ``action_distribution(prediction, k=n_positions, state)`` gives the marginal
    of each position.

    Args:
        recommender: a fitted / loaded run.
        log: the logged requests.
        policy: anything with the :class:`~wager.policies.base.Policy` protocol's
            ``action_distribution``.
        seed: seed of the policy's :class:`~wager.policies.base.PolicyState`.
        draws: Monte Carlo draws for policies without a closed form (Thompson sampling).
        batch_rows: logged rows per prediction batch.

    Raises:
        ValueError: the log has more positions than actions, or the policy returns a
            distribution of the wrong shape.
    """
    n, a, k = log.n_rounds, log.n_actions, log.n_positions
    if k > a:
        raise ValueError(f"{log.source or 'the log'} has {k} positions but only {a} actions")
    items = np.asarray(log.item_ids).astype(str)
    users = (
        np.asarray(log.user_ids).astype(str)
        if log.user_ids is not None
        else np.full(n, _REWARD_USER, dtype=object)
    )
    state = PolicyState.seeded(seed)
    out = np.empty((n, a, k))
    for start in range(0, n, batch_rows):
        rows = np.arange(start, min(start + batch_rows, n))
        grid = np.repeat(rows, a)
        context = (
            log.context.iloc[grid].reset_index(drop=True)
            if log.context is not None
            else pd.DataFrame(index=range(len(grid)))
        )
        context["position"] = log.position[grid] + 1
        pred = recommender.predict(users[grid], np.tile(items, len(rows)), context)
        dist = policy.action_distribution(_as_matrix(pred, len(rows), a), k, state, draws)
        got = tuple(dist.shape)
        if got != (len(rows), k, a):
            raise ValueError(
                f"policy {policy!r}.action_distribution returned shape {got}, expected "
                f"{(len(rows), k, a)} (requests, positions, candidates)"
            )
        out[rows] = np.moveaxis(dist.detach().cpu().numpy().astype(np.float64), 1, 2)
    return out


def _as_matrix(pred: Prediction, rows: int, actions: int) -> Prediction:
    """A flat (rows * actions,) Prediction reshaped to (rows, actions)."""

    def shape(t: torch.Tensor | None, lead: tuple[int, ...] = ()) -> torch.Tensor | None:
        return None if t is None else t.reshape(*lead, rows, actions)

    samples = pred.samples
    return replace(
        pred,
        mean=pred.mean.reshape(rows, actions),
        std=shape(pred.std),
        aleatoric_std=shape(pred.aleatoric_std),
        epistemic_std=shape(pred.epistemic_std),
        samples=None if samples is None else samples.reshape(samples.shape[0], rows, actions),
    )


def simulation_reward_draws(model: RecommenderSimulationModel, log: LoggedFeedback) -> np.ndarray:
    """Reward-model draws for off-policy evaluation in the simulator: the fitted simulation
    model's prediction of every (logged request, action, position), one draw per ensemble
    member (``Prediction.samples``; the mean alone for a single model).

    The model must not have seen ``log`` (e.g. fitted on the warm-up log only), so no
    cross-fitting is needed.

    Args:
        model: a fitted :class:`RecommenderSimulationModel`.
        log: the simulator's feedback (``user_ids`` and ``item_ids`` are world ids).

    Returns:
        (S, n, n_actions, n_positions) float64 predicted click probabilities.
    """
    rec = model._fitted()
    n, a, p = log.n_rounds, log.n_actions, log.n_positions
    users = np.asarray(log.user_ids, dtype=np.int64)
    items = np.asarray(log.item_ids, dtype=np.int64)
    grid_users = np.repeat(users, a * p)  # row, then action, then position
    grid_items = np.tile(np.repeat(items, p), n)
    context = pd.DataFrame({"position": np.tile(np.arange(1, p + 1), n * a)})
    pred = rec.predict(grid_users, grid_items, context)
    samples = pred.samples if pred.samples is not None else pred.mean[None]
    values = samples.detach().cpu().numpy().astype(np.float64)
    return values.reshape(values.shape[0], n, a, p)
