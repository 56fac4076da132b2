"""The stacked training loop: early stopping per member, best epoch restored, errors."""

from __future__ import annotations

import pytest
import torch

from wager.config import TrainConfig
from wager.training.trainer import resolve_device, train_stacked


def test_early_stopping_restores_each_members_best_epoch():
    # two members; parameter w moves +1 per step (SGD-like via Adagrad? use a fixed gradient).
    params = {"w": torch.zeros(2, 1)}

    def losses(p, idx):
        return -p["w"].sum(dim=1)  # gradient -1 per member: Adam moves w up by ~lr per step

    # member 0's validation is best at w ~ 0.3 (3rd epoch), member 1's at w ~ 0.1 (1st epoch)
    def validate(p):
        w = p["w"][:, 0]
        return torch.stack([(w[0] - 0.3).abs(), (w[1] - 0.1).abs()])

    cfg = TrainConfig(epochs=10, batch_size=10, learning_rate=0.1, patience=2, optimizer="adam")
    hist = train_stacked(
        params,
        losses,
        n_rows=10,
        config=cfg,
        validate=validate,
        generator=torch.Generator().manual_seed(0),
    )
    assert hist.best_epoch == [2, 0]
    torch.testing.assert_close(params["w"][:, 0], torch.tensor([0.3, 0.1]), atol=1e-3, rtol=0)
    # stopped after member 0 stopped improving for 2 epochs: epochs 0..4 ran
    assert len(hist.train_loss) == 5


def test_empty_training_set_is_an_error():
    with pytest.raises(ValueError, match="0 rows"):
        train_stacked({"w": torch.zeros(1, 1)}, lambda p, i: p["w"].sum(1), 0, TrainConfig())


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")
