"""The simulator's Recommender adapter (wager.pipeline.RecommenderSimulationModel): (B, C)
predictions equal the Recommender's pair predictions, and it refuses to predict unfitted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wager.config import RunConfig
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.evaluation.simulation import SimulationModel
from wager.pipeline import RecommenderSimulationModel, simulation_run_config

TINY_MODEL = """\
seed = 0
[data]
format = "synthetic"
valid_fraction = 0.0
[model]
type = "factorization"
dim = 4
[training]
batch_size = 256
epochs = 1
[ensemble]
members = 2
"""


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
