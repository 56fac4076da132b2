"""Stopping and resuming the training loop: a run stopped after epoch k and continued from
its checkpoint ends with exactly the parameters, history and reports of a run never stopped.

The loop under test draws from every random source a real run does: the shuffle generator
(batch order), the same generator in the caller's sampler (per-batch noise, like the OOV
drops of the pointwise sampler) and for the bootstrap weights, and torch's global RNG
(dropout, different per member under vmap).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from wager.config import TrainConfig
from wager.training.checkpoint import EpochReport, MemoryCheckpoint
from wager.training.history import History
from wager.training.trainer import StackedModel, train_stacked
from wager.uncertainty.ensemble import bootstrap_weights

N_ROWS = 96
X = torch.linspace(-1, 1, N_ROWS * 3).reshape(N_ROWS, 3)
Y = X @ torch.tensor([0.5, -1.0, 2.0]) + 0.1


class _DropoutRegression(nn.Module):
    """y ~ w2 . dropout(relu(W1 x)): a model with dropout and a weighted loss."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(3, 8)
        self.drop = nn.Dropout(0.3)
        self.out = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.drop(torch.relu(self.hidden(x)))).squeeze(-1)

    def loss(self, batch: dict[str, Tensor], weights: Tensor) -> Tensor:
        err = (self.forward(batch["x"]) - batch["y"]).square()
        return (err * weights).sum() / weights.sum().clamp_min(1e-6)


CONFIG = TrainConfig(
    epochs=6,
    batch_size=32,
    learning_rate=0.05,
    optimizer="adamw",
    weight_decay=0.01,
    anchored=True,
    lr_schedule="cosine",
    warmup_steps=2,
    patience=10,
)


def _run(
    checkpoint: MemoryCheckpoint | None,
    stop_after: int | None = None,
    config: TrainConfig = CONFIG,
    members: int = 2,
) -> tuple[StackedModel, History | None, list[EpochReport]]:
    """One run as train_members sets it up: members seeded, bootstrap weights and the
    sampler's noise from one generator; ``stop_after`` raises KeyboardInterrupt from the
    hook after that epoch (the loop's state then is in ``checkpoint``)."""
    stack = StackedModel(_DropoutRegression, members=members, seed=0)
    gen = torch.Generator().manual_seed(0)
    w = bootstrap_weights(torch.ones(N_ROWS), members, True, gen)
    reports: list[EpochReport] = []

    def batch_losses(p: dict[str, Tensor], idx: Tensor) -> Tensor:
        noise = 0.01 * torch.randn(idx.numel(), generator=gen)  # the sampler's own draws
        batch = {"x": X[idx], "y": Y[idx] + noise}
        return stack.call_weighted("loss", batch, w[:, idx], params=p)

    def validate(p: dict[str, Tensor]) -> Tensor:
        stack.train(False)
        try:
            out = stack.call("forward", X[:20], params=p)
        finally:
            stack.train(True)
        return (out - Y[:20]).square().mean(dim=1).sqrt()

    def on_epoch(report: EpochReport) -> None:
        reports.append(report)
        if report.epoch == stop_after:
            raise KeyboardInterrupt

    stack.train(True)
    try:
        history = train_stacked(
            stack.params,
            batch_losses,
            N_ROWS,
            config,
            validate=validate,
            generator=gen,
            on_epoch=on_epoch,
            checkpoint=checkpoint,
            metric_name="rmse",
        )
    except KeyboardInterrupt:
        return stack, None, reports
    return stack, history, reports


def _assert_same_run(a: tuple, b: tuple) -> None:
    (stack_a, hist_a, _), (stack_b, hist_b, _) = a, b
    for k, v in stack_a.params.items():
        assert torch.equal(v, stack_b.params[k]), k  # bit for bit
    assert hist_a.train_loss == hist_b.train_loss
    assert hist_a.valid_metric == hist_b.valid_metric
    assert hist_a.best_epoch == hist_b.best_epoch
    assert len(hist_a.epoch_seconds) == len(hist_b.epoch_seconds)


@pytest.mark.parametrize("stop_after", [1, 2, 5])
def test_stopped_and_resumed_run_equals_the_uninterrupted_run(stop_after):
    straight = _run(None)
    ck = MemoryCheckpoint()
    _stack, history, first = _run(ck, stop_after=stop_after)
    assert history is None and ck.saves == stop_after
    assert [r.epoch for r in first] == list(range(1, stop_after + 1))
    torch.manual_seed(12345)  # the global RNG moved on: the checkpoint must restore it
    resumed = _run(ck)
    # the resumed loop ran only the remaining epochs, then saved after each
    assert [r.epoch for r in resumed[2]] == list(range(stop_after + 1, CONFIG.epochs + 1))
    assert ck.saves == CONFIG.epochs
    _assert_same_run(straight, resumed)

    # the reports of the two halves are those of the uninterrupted run (but the seconds)
    def strip(reports: list[EpochReport]) -> list[tuple]:
        return [(r.epoch, r.loss, r.metric, r.best_epoch, r.best_metric) for r in reports]

    assert strip(straight[2]) == strip(first) + strip(resumed[2])


def test_one_member_with_dropout_resumes_bit_for_bit():
    straight = _run(None, members=1)
    ck = MemoryCheckpoint()
    _run(ck, stop_after=3, members=1)
    torch.manual_seed(7)
    _assert_same_run(straight, _run(ck, members=1))


def test_a_run_stopped_early_resumes_to_the_same_best_parameters_without_more_epochs():
    config = TrainConfig(epochs=40, batch_size=32, learning_rate=0.3, patience=1)
    straight = _run(None, config=config)
    assert len(straight[1].train_loss) < 40  # early stopping ended it
    ck = MemoryCheckpoint()
    _run(ck, config=config)  # finished: its last state says "stopped"
    again = _run(ck, config=config)
    assert again[2] == []  # no epoch ran
    _assert_same_run(straight, again)


def test_reports_carry_the_mean_metric_and_the_best_epoch_of_the_history():
    _stack, hist, reports = _run(None)
    means = np.asarray(hist.valid_metric).mean(axis=1)  # (epochs,) mean over members
    assert [r.metric for r in reports] == pytest.approx(means.tolist(), abs=1e-6)
    assert [r.loss for r in reports] == hist.train_loss
    for i, r in enumerate(reports):
        best = int(np.argmin(means[: i + 1]))
        assert (r.best_epoch, r.best_metric) == (best + 1, pytest.approx(means[best], abs=1e-6))
        assert (r.epochs, r.metric_name, r.higher_is_better) == (6, "rmse", False)
        assert r.seconds > 0
    assert reports[0].shown(0.25) == 0.25


def test_a_higher_is_better_metric_is_shown_with_its_sign():
    report = EpochReport(3, 30, 5.1, -0.23, "ndcg@10", 1.0, 3, -0.23, higher_is_better=True)
    assert (report.shown(report.metric), report.shown(None)) == (0.23, None)


def test_a_checkpoint_of_another_model_is_refused():
    ck = MemoryCheckpoint()
    _run(ck, stop_after=1)
    with pytest.raises(ValueError, match="saved by another model"):
        _run(ck, members=1)
