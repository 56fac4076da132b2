"""The stacked training loop: early stopping per member, best epoch restored, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch

from wager.config import TrainConfig
from wager.models.fields import Field
from wager.models.mf import BiasedMF, FeatureFactorization
from wager.training import trainer
from wager.training.trainer import StackedModel, lr_factor, resolve_device, train_stacked


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


# ----------------------------------------------------------------------------- LR schedule


@pytest.mark.parametrize(
    ("schedule", "warmup", "step", "total", "expected"),
    [
        ("constant", 0, 0, 10, 1.0),
        ("constant", 0, 9, 10, 1.0),
        ("cosine", 0, 0, 10, 1.0),
        ("cosine", 0, 5, 10, 0.5),  # half-way: 0.5 * (1 + cos(pi / 2)) = 0.5
        ("cosine", 0, 10, 10, 0.0),  # end: 0.5 * (1 + cos(pi)) = 0
        ("cosine", 0, 2, 10, 0.5 * (1 + math.cos(0.2 * math.pi))),  # 0.9045085
        ("cosine", 0, 25, 10, 0.0),  # past the end stays at 0
        ("linear", 0, 0, 10, 1.0),
        ("linear", 0, 3, 10, 0.7),
        ("linear", 0, 10, 10, 0.0),
        # warm-up over 4 steps: (step + 1) / 4, whatever the schedule after it
        ("constant", 4, 0, 14, 0.25),
        ("cosine", 4, 1, 14, 0.5),
        ("linear", 4, 3, 14, 1.0),
        # after warm-up the decay spans the remaining 14 - 4 = 10 steps
        ("cosine", 4, 4, 14, 1.0),
        ("cosine", 4, 9, 14, 0.5),
        ("linear", 4, 6, 14, 0.8),
        ("linear", 4, 14, 14, 0.0),
        ("constant", 4, 13, 14, 1.0),
    ],
)
def test_lr_factor_known_values(schedule, warmup, step, total, expected):
    cfg = TrainConfig(lr_schedule=schedule, warmup_steps=warmup)
    assert lr_factor(step, total, cfg) == pytest.approx(expected, abs=1e-12)


def _capture_optimizers(monkeypatch) -> list[torch.optim.Optimizer]:
    made: list[torch.optim.Optimizer] = []
    original = trainer.make_optimizer

    def make(params, config):
        opt = original(params, config)
        made.append(opt)
        return opt

    monkeypatch.setattr("wager.training.trainer.make_optimizer", make)
    return made


@pytest.mark.parametrize(
    ("schedule", "warmup", "reference"),
    [
        ("cosine", 0, lambda s, t: 0.5 * (1 + math.cos(math.pi * s / t))),
        ("linear", 3, lambda s, t: (s + 1) / 3 if s < 3 else 1 - (s - 3) / (t - 3)),
        ("constant", 0, lambda s, t: 1.0),
    ],
)
def test_train_stacked_steps_follow_the_schedule(monkeypatch, schedule, warmup, reference):
    made = _capture_optimizers(monkeypatch)
    lrs: list[float] = []

    def losses(p, idx):
        lrs.append(made[0].param_groups[0]["lr"])  # the lr the coming step will use
        return (p["w"] - 1.0).square().sum(dim=1)

    # 10 rows in batches of 3: 4 steps per epoch, 3 epochs = 12 steps
    cfg = TrainConfig(
        epochs=3, batch_size=3, learning_rate=0.2, lr_schedule=schedule, warmup_steps=warmup
    )
    hist = train_stacked({"w": torch.zeros(1, 2)}, losses, 10, cfg)
    total = 12
    expected = [0.2 * reference(s, total) for s in range(total)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    final = made[0].param_groups[0]["lr"]
    if schedule == "constant":
        assert final == pytest.approx(0.2, abs=1e-12)
    else:
        assert final == pytest.approx(0.0, abs=1e-12)  # decayed to 0 after the last step
    assert len(hist.epoch_seconds) == len(hist.train_loss) == 3


def test_epoch_seconds_has_one_entry_per_epoch_run():
    params = {"w": torch.zeros(1, 1)}
    cfg = TrainConfig(epochs=6, batch_size=4, learning_rate=0.1, patience=1)
    # validation never improves after the first epoch: epochs 0 and 1 run, then stop
    hist = train_stacked(
        params, lambda p, i: p["w"].sum(1), 8, cfg, validate=lambda p: torch.zeros(1)
    )
    assert len(hist.train_loss) == 2
    assert len(hist.epoch_seconds) == 2
    assert all(s >= 0 for s in hist.epoch_seconds)
    assert sum(hist.epoch_seconds) <= hist.seconds
    assert hist.to_dict()["epoch_seconds"] == hist.epoch_seconds


# ----------------------------------------------------------------------------- StackedModel

USER = [Field("user.u", "index", 5), Field("user.seg", "index", 3)]
ITEM = [Field("item.i", "index", 6)]


def _mf() -> BiasedMF:
    return BiasedMF(USER, ITEM, dim=3, init_std=0.3, reg=0.05, global_mean=3.0)


def _ff() -> FeatureFactorization:
    return FeatureFactorization(USER, ITEM, [Field("context.pos", "index", 4)], dim=3)


def _batch(n: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "user.u": torch.randint(0, 5, (n,), generator=g),
        "user.seg": torch.randint(0, 3, (n,), generator=g),
        "item.i": torch.randint(0, 6, (n,), generator=g),
        "context.pos": torch.randint(0, 4, (n,), generator=g),
        "label": torch.randint(1, 6, (n,), generator=g).float(),
    }


def _perturb(stack: StackedModel) -> None:
    """Give every stacked parameter distinct non-zero values (biases start at zero)."""
    g = torch.Generator().manual_seed(123)
    for v in stack.params.values():
        v.add_(0.1 * torch.randn(v.shape, generator=g))


@pytest.mark.parametrize("factory", [_mf, _ff])
def test_single_member_equals_the_plain_module(factory):
    stack = StackedModel(factory, members=1, seed=7)
    torch.manual_seed(7)  # member 0 is built under manual_seed(seed + 0)
    plain = factory()
    batch = _batch()
    out = stack.call("forward", batch)
    assert out.shape == (1, 7)
    torch.testing.assert_close(out[0], plain(batch), rtol=0, atol=0)
    torch.testing.assert_close(stack.call("loss", batch)[0], plain.loss(batch), rtol=0, atol=0)
    # after training-like changes, member(0) carries exactly the stacked weights
    _perturb(stack)
    member = stack.member(0)
    torch.testing.assert_close(stack.call("forward", batch)[0], member(batch), rtol=0, atol=0)
    w = torch.rand(1, 7, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(
        stack.call_weighted("loss", batch, w)[0], member.loss(batch, w[0]), rtol=0, atol=0
    )


@pytest.mark.parametrize("factory", [_mf, _ff])
def test_three_members_equal_a_loop_over_members(factory):
    stack = StackedModel(factory, members=3, seed=0)
    _perturb(stack)
    batch = _batch(9, seed=2)
    out = stack.call("forward", batch)
    loop = torch.stack([stack.member(m)(batch) for m in range(3)])
    assert out.shape == (3, 9)
    torch.testing.assert_close(out, loop, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out[0], out[1])  # members differ
    # initial weights: member m as built under manual_seed(seed + m)
    fresh = StackedModel(factory, members=3, seed=0)
    for m in range(3):
        torch.manual_seed(m)
        plain = factory()
        torch.testing.assert_close(
            fresh.call("forward", batch)[m], plain(batch), rtol=1e-6, atol=1e-6
        )


@pytest.mark.parametrize("members", [1, 3])
def test_call_per_member_gives_each_member_its_own_slice(members):
    stack = StackedModel(_mf, members=members, seed=0)
    _perturb(stack)
    slices = [_batch(5, seed=10 + m) for m in range(members)]
    batch = {k: torch.stack([b[k] for b in slices]) for k in slices[0]}
    out = stack.call("forward", batch, per_member=True)
    loop = torch.stack([stack.member(m)(slices[m]) for m in range(members)])
    assert out.shape == (members, 5)
    torch.testing.assert_close(out, loop, rtol=1e-6, atol=1e-6)


def test_call_weighted_equals_per_member_weighted_loss():
    stack = StackedModel(_mf, members=3, seed=0)
    _perturb(stack)
    batch = _batch(8, seed=3)
    w = torch.rand(3, 8, generator=torch.Generator().manual_seed(4)) * 2
    w[1, :4] = 0.0  # member 1 ignores half the rows (a bootstrap-like weighting)
    got = stack.call_weighted("loss", batch, w)
    want = torch.stack([stack.member(m).loss(batch, w[m]) for m in range(3)])
    assert got.shape == (3,)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    # a weight of zero removes a row: member 1's loss equals its loss on rows 4..7 only
    tail = {k: v[4:] for k, v in batch.items()}
    torch.testing.assert_close(got[1], stack.member(1).loss(tail, w[1, 4:]), rtol=1e-6, atol=1e-6)


def test_state_dict_round_trip_and_errors():
    src = StackedModel(_mf, members=2, seed=0)
    _perturb(src)
    state = src.state_dict()
    assert all(k.startswith(("param.", "buffer.")) for k in state)
    assert all(v.device.type == "cpu" for v in state.values())
    dst = StackedModel(_mf, members=2, seed=99).load_state_dict(state)
    batch = _batch()
    torch.testing.assert_close(dst.call("forward", batch), src.call("forward", batch))
    # loading copies: changing the source afterwards leaves the destination alone
    before = dst.call("forward", batch).clone()
    _perturb(src)
    torch.testing.assert_close(dst.call("forward", batch), before, rtol=0, atol=0)

    key = next(k for k in state if k.startswith("param."))
    missing = {k: v for k, v in state.items() if k != key}
    with pytest.raises(KeyError, match=re.escape(f"saved weights lack '{key}'")):
        StackedModel(_mf, members=2, seed=0).load_state_dict(missing)

    def wider() -> BiasedMF:
        return BiasedMF(USER, ITEM, dim=5, global_mean=3.0)

    with pytest.raises(
        ValueError, match=r"have shape \(2, \d, 3\), the model expects \(2, \d, 5\)"
    ):
        StackedModel(wider, members=2, seed=0).load_state_dict(state)
    with pytest.raises(ValueError, match=r"the model expects \(3,"):
        StackedModel(_mf, members=3, seed=0).load_state_dict(state)


def test_member_index_out_of_range():
    stack = StackedModel(_mf, members=2, seed=0)
    with pytest.raises(IndexError, match="member 2 out of range for 2 members"):
        stack.member(2)
    with pytest.raises(ValueError, match="members must be >= 1"):
        StackedModel(_mf, members=0)


def test_anchored_weight_decay_converges_to_the_anchored_minimum():
    # per-member loss 0.5 (w - c)^2 plus Adam's L2 decay wd towards the member's own start
    # w0: stationary where (w - c) + wd (w - w0) = 0 -> w = (c + wd w0) / (1 + wd);
    # the plain decay (towards 0) ends at c / (1 + wd) for every member.
    c, wd = 1.0, 0.5
    w0 = torch.tensor([[2.0], [-1.0]])  # two members, different anchors

    def losses(p, idx):
        return 0.5 * (p["w"][:, 0] - c).square()

    def run(anchored: bool) -> torch.Tensor:
        params = {"w": w0.clone()}
        cfg = TrainConfig(
            epochs=400,
            batch_size=1,
            learning_rate=0.05,
            optimizer="adam",
            weight_decay=wd,
            anchored=anchored,
            lr_schedule="cosine",
        )
        train_stacked(params, losses, 1, cfg)
        return params["w"][:, 0]

    expected = (c + wd * w0[:, 0]) / (1 + wd)  # 4/3 and 1/3
    torch.testing.assert_close(run(True), expected, atol=2e-3, rtol=0)
    torch.testing.assert_close(run(False), torch.full((2,), c / (1 + wd)), atol=2e-3, rtol=0)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "adagrad"])
def test_anchored_decay_keeps_an_untouched_parameter_at_its_start(optimizer):
    # a coordinate that never gets data (an OOV embedding row) stays at its random start
    # with anchored decay, and shrinks towards 0 with the plain decay
    start = torch.tensor([[0.7, 0.0], [-0.4, 0.0]])

    def losses(p, idx):
        return (p["w"][:, 1] - 1.0).square()

    def run(anchored: bool) -> torch.Tensor:
        params = {"w": start.clone()}
        cfg = TrainConfig(
            epochs=50,
            batch_size=1,
            learning_rate=0.05,
            weight_decay=0.1,
            anchored=anchored,
            optimizer=optimizer,
        )
        train_stacked(params, losses, 1, cfg)
        return params["w"][:, 0]

    torch.testing.assert_close(run(True), start[:, 0])
    assert bool((run(False).abs() < start[:, 0].abs() - 1e-3).all())
