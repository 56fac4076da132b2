"""The simulator's Recommender adapter (wager.pipeline.RecommenderSimulationModel): (B, C)
predictions equal the Recommender's pair predictions, and it refuses to predict unfitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SIMULATION_MODEL as TINY_MODEL
from wager.config import RunConfig
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.simulation import SimulationModel
from wager.pipeline import RecommenderSimulationModel, simulation_run_config


def test_predictions_are_the_recommenders_pair_predictions(tmp_path: Path) -> None:
    world = SyntheticWorld(WorldConfig(n_users=40, n_items=15, n_days=2, seed=0))
    path = tmp_path / "model.toml"
    path.write_text(TINY_MODEL)
    model = RecommenderSimulationModel(RunConfig.load(path), world)
    assert isinstance(model, SimulationModel)
    with pytest.raises(ValueError, match=r"has no fitted model: give the simulation a warm-up"):
        model.predict(np.arange(2), np.arange(3))
    logs = world.sample_log(600, day=0, seed=1)
    model.fit(logs, world.items.iloc[:15])
    users, items = np.array([3, 7, 11]), np.array([0, 4, 9, 14])
    pred = model.predict(users, items)
    assert tuple(pred.mean.shape) == (3, 4)
    assert pred.samples is not None and tuple(pred.samples.shape) == (2, 3, 4)
    rec = model.recommender_
    assert rec is not None
    for b, u in enumerate(users):
        pairs = rec.predict(np.full(4, u), items, context={"position": 1})
        torch.testing.assert_close(pred.mean[b], pairs.mean, rtol=1e-6, atol=0)
        assert pred.std is not None and pairs.std is not None
        torch.testing.assert_close(pred.std[b], pairs.std, rtol=1e-6, atol=0)


def test_default_simulation_config_is_a_click_ensemble() -> None:
    cfg = simulation_run_config()
    assert cfg.ensemble is not None and cfg.ensemble.members == 3
    world = SyntheticWorld(WorldConfig(n_users=10, n_items=5, n_days=1, seed=0))
    assert RecommenderSimulationModel(cfg, world).config.schema == world.schema()


TINY_DDN = """\
seed = 0
[data]
format = "synthetic"
valid_fraction = 0.0
[model]
type = "dcn"
likelihood = "ddn"
components = 2
dim = 4
hidden = [8]
cross_layers = 1
[training]
batch_size = 64
epochs = 1
[ensemble]
members = 2
[uncertainty]
cold_start = "population"
population_draws = 2
"""


def test_ddn_model_trains_on_clicks_out_of_impressions_per_group_item_position(
    tmp_path: Path,
) -> None:
    world = SyntheticWorld(WorldConfig(n_users=60, n_items=12, n_days=2, seed=1))
    path = tmp_path / "ddn.toml"
    path.write_text(TINY_DDN)
    model = RecommenderSimulationModel(RunConfig.load(path), world)
    logs = world.sample_log(800, day=0, seed=2)
    rows = model.rows(logs)
    users = world.users.iloc[logs["user_id"].to_numpy()]
    group = (users["segment"].astype(str) + "|" + users["country"].astype(str)).to_numpy()
    # by hand: every (group, item, position) triple once, its impressions and clicks summed
    expected: dict[tuple[str, int, int], list[int]] = {}
    for g, i, p, c in zip(group, logs["item_id"], logs["position"], logs["click"], strict=True):
        cell = expected.setdefault((g, int(i), int(p)), [0, 0])
        cell[0] += 1
        cell[1] += int(c)
    assert len(rows) == len(expected) and int(rows["impressions"].sum()) == 800
    for r in rows.itertuples():
        assert [r.impressions, r.clicks] == expected[(r.context_id, r.item_id, r.position)]
        assert r.ctr == r.clicks / r.impressions
        assert r.context_id == f"{r.segment}|{r.country}"
    model.fit(logs, world.items.iloc[:12])
    users_b = np.array([0, 1, 2, 0])
    pred = model.predict(users_b, np.arange(5))
    assert tuple(pred.mean.shape) == (4, 5) and pred.std is not None
    # a request is predicted as its user's group: the same user twice, the same row
    torch.testing.assert_close(pred.mean[0], pred.mean[3])


def test_new_items_come_out_wider_than_known_ones() -> None:
    """The default model scores an item added since the last fit from its features with the
    population's spread of the item id (cold_start = "population"), wider on average than
    the items it was trained on."""
    cfg = simulation_run_config()
    assert cfg.uncertainty.cold_start == "population"
    world = SyntheticWorld(WorldConfig(n_users=100, n_items=30, n_days=2, seed=0))
    model = RecommenderSimulationModel(cfg, world)
    model.fit(world.sample_log(3000, day=0, seed=1), world.items.iloc[:30])
    model.add_items(world.items.iloc[30:40].reset_index(drop=True))
    pred = model.predict(np.arange(50), np.arange(40))
    assert pred.std is not None
    known, new = pred.std[:, :30].mean().item(), pred.std[:, 30:].mean().item()
    assert new > 1.1 * known


TINY_EFFECTS_MODEL = """\
seed = 0
[data]
format = "synthetic"
valid_fraction = 0.0
drop_features = ["title", "brand"]
[model]
type = "factorization"
dim = 4
item_min_count = 1000000000
[training]
batch_size = 256
epochs = 2
[uncertainty]
cold_start = "learned"
"""


def test_item_effects_complete_a_feature_only_model(tmp_path: Path) -> None:
    from scipy.special import expit, logit

    from wager.uncertainty.item_effects import fit_item_effects

    world = SyntheticWorld(
        WorldConfig(
            n_users=60, n_items=12, n_days=2, new_items_per_day=3, hidden_strength=3.0, seed=2
        )
    )
    path = tmp_path / "effects.toml"
    path.write_text(TINY_EFFECTS_MODEL)
    model = RecommenderSimulationModel(RunConfig.load(path), world, item_effects=True)
    logs = world.sample_log(3000, day=0, seed=3)
    model.fit(logs, world.items.iloc[:12])
    effects, rec = model.effects_, model.recommender_
    assert effects is not None and rec is not None
    # the effects are those of the Recommender's row logits (fitted again by hand here)
    rows = rec.predict(
        logs["user_id"].to_numpy(), logs["item_id"].to_numpy(), context=logs[["position"]]
    )
    row_logit = logit(np.clip(rows.mean.numpy().astype(np.float64), 1e-6, 1 - 1e-6))
    again = fit_item_effects(row_logit, logs["item_id"].to_numpy(), logs["click"].to_numpy())
    assert effects.tau == pytest.approx(again.tau, rel=1e-6)
    # a known item: the posterior predictive over its effect, from the position-1 logit
    new = np.array([12, 13])  # day-1 arrivals, never in the logs
    model.add_items(world.items.iloc[12:14])
    users, items = np.array([5, 9]), np.array([0, 3, *new])
    pred = model.predict(users, items)
    assert tuple(pred.mean.shape) == (2, 4) and pred.std is not None
    assert "item_effects" in pred.method
    base = rec.predict(np.full(4, 5), items, context={"position": 1}).mean.numpy()
    nodes, weights = effects.posterior(items)
    expected = (expit(logit(base)[:, None] + nodes) * weights).sum(axis=1)
    np.testing.assert_allclose(pred.mean[0].numpy(), expected, rtol=1e-6)
    spread = np.sqrt(
        (weights * (expit(logit(base)[:, None] + nodes) - expected[:, None]) ** 2).sum(1)
    )
    np.testing.assert_allclose(pred.std[0].numpy(), spread, rtol=1e-6)
    # the new items take the prior: their effects are less certain than the known items'
    _, effect_std = effects.effect_moments(items)
    np.testing.assert_allclose(effect_std[2:], effects.tau, rtol=1e-9)
    assert effect_std[2:].min() > effect_std[:2].max()


def test_item_effects_refuse_models_they_cannot_complete(tmp_path: Path) -> None:
    world = SyntheticWorld(WorldConfig(n_users=10, n_items=5, n_days=1, seed=0))
    with pytest.raises(ValueError, match=r"without item ids, got \[model\] item_min_count = 1: "):
        RecommenderSimulationModel(simulation_run_config(), world, item_effects=True)
    path = tmp_path / "ddn.toml"
    path.write_text(TINY_DDN)
    with pytest.raises(ValueError, match="item effects need click rows"):
        RecommenderSimulationModel(RunConfig.load(path), world, item_effects=True)
    cfg = simulation_run_config(item_effects=True)
    assert cfg.model.item_min_count == 1_000_000_000
    assert RecommenderSimulationModel(cfg, world, item_effects=True).item_effects
