"""Contract suite: every model passes the same checks on a batch with every field kind.

Checks: same seed same model; batch equals single; finite scalar loss with a gradient for
every parameter; safetensors state_dict round trip; forward and loss under ``torch.func.vmap``
over stacked members (how ensembles run them); zero weights equal dropping the rows.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from wager.models.fields import Field
from wager.models.heads import GaussianHead, PointHead
from wager.models.mf import BiasedMF, FeatureFactorization
from wager.models.ncf import NeuMF
from wager.models.ranking import DCNRanker
from wager.models.two_tower import TwoTower

Batch = dict[str, Tensor]

USER = [
    Field("user.user_id", "index", 6),
    Field("user.segment", "index", 3),
    Field("user.tags", "bag", 5),
    Field("user.age", "numeric", 2),
]
ITEM = [
    Field("item.item_id", "index", 7),
    Field("item.genre", "bag", 4),
    Field("item.price", "numeric", 1),
]
CONTEXT = [Field("context.device", "index", 3), Field("context.hour", "numeric", 2)]
B, K, N = 6, 2, 3


def _item_fields(g: torch.Generator, shape: tuple[int, ...], prefix: str) -> Batch:
    return {
        prefix + "item_id": torch.randint(0, 7, shape, generator=g),
        prefix + "genre": torch.randint(0, 4, (*shape, 3), generator=g),
        prefix + "price": torch.randn(*shape, 1, generator=g),
    }


def _base_batch(g: torch.Generator) -> Batch:
    return {
        "user.user_id": torch.randint(0, 6, (B,), generator=g),
        "user.segment": torch.randint(0, 3, (B,), generator=g),
        "user.tags": torch.randint(0, 5, (B, 4), generator=g),
        "user.age": torch.randn(B, 2, generator=g),
        **_item_fields(g, (B,), "item."),
        "context.device": torch.randint(0, 3, (B,), generator=g),
        "context.hour": torch.randn(B, 2, generator=g),
        "label": torch.randint(0, 2, (B,), generator=g).float(),
    }


def _two_tower_batch(g: torch.Generator) -> Batch:
    return {
        **_base_batch(g),
        "item.logq": torch.rand(B, generator=g).log(),
        **_item_fields(g, (N,), "neg.item."),  # N negatives shared by the batch
        "neg.item.logq": torch.rand(N, generator=g).log(),
    }


def _neumf_batch(g: torch.Generator) -> Batch:
    return {**_base_batch(g), **_item_fields(g, (B, K), "neg.item.")}  # K per row


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], nn.Module]
    batch: Callable[[torch.Generator], Batch]
    shared_negatives: bool = False  # "neg.*" keys are not per row


CASES = [
    Case(
        "feature_factorization", lambda: FeatureFactorization(USER, ITEM, CONTEXT, 3), _base_batch
    ),
    Case(
        "biased_mf_point",
        lambda: BiasedMF(USER, ITEM, 3, head=PointHead((0.0, 1.0)), reg=0.01, dropout=0.2),
        _base_batch,
    ),
    Case(
        "biased_mf_gaussian",
        lambda: BiasedMF(USER, ITEM, 3, head=GaussianHead(), reg=0.01, dropout=0.2),
        _base_batch,
    ),
    Case(
        "two_tower",
        lambda: TwoTower(USER, ITEM, dim=4, hidden=(6,), dropout=0.2),
        _two_tower_batch,
        shared_negatives=True,
    ),
    Case(
        "neumf",
        lambda: NeuMF(USER, ITEM, gmf_dim=3, mlp_dim=4, hidden=(6, 3), dropout=0.2),
        _neumf_batch,
    ),
    Case(
        "dcn",
        lambda: DCNRanker(USER, ITEM, CONTEXT, dim=3, low_rank=2, deep=(8,), dropout=0.2),
        _base_batch,
    ),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> Case:
    return request.param


def _build(case: Case, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = case.make()
    # zero-initialised biases would hide wiring mistakes: perturb every parameter
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def _rows(case: Case, batch: Batch, idx: Tensor) -> Batch:
    return {
        k: v if case.shared_negatives and k.startswith("neg.") else v[idx] for k, v in batch.items()
    }


class _Loss(nn.Module):
    """Lets functional_call reach ``loss`` (functional_call always calls ``forward``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, weights: Tensor | None = None) -> Tensor:
        return self.model.loss(batch, weights)


def test_same_seed_same_model(case):
    batch = case.batch(torch.Generator().manual_seed(0))
    a, b = _build(case, 0), _build(case, 0)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    a.eval(), b.eval()
    assert torch.equal(a(batch), b(batch))
    a.train(), b.train()
    torch.manual_seed(5)
    out_a = a(batch)
    torch.manual_seed(5)
    assert torch.equal(out_a, b(batch))


def test_batch_equals_single(case):
    batch = case.batch(torch.Generator().manual_seed(1))
    model = _build(case, 0).eval()
    with torch.no_grad():
        full = model(batch)
        singles = torch.cat([model(_rows(case, batch, torch.tensor([i]))) for i in range(B)])
    torch.testing.assert_close(full, singles, rtol=1e-5, atol=1e-6)


def test_loss_is_finite_scalar_with_gradients_for_every_parameter(case):
    batch = case.batch(torch.Generator().manual_seed(2))
    model = _build(case, 0).train()
    loss = model.loss(batch)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), name


def test_state_dict_round_trip_through_safetensors(case, tmp_path):
    batch = case.batch(torch.Generator().manual_seed(3))
    model = _build(case, 0).eval()
    path = tmp_path / "model.safetensors"
    save_file(model.state_dict(), str(path))
    fresh = _build(case, 1).eval()
    assert not torch.equal(fresh(batch), model(batch))
    fresh.load_state_dict(load_file(str(path)))
    assert torch.equal(fresh(batch), model(batch))


def test_forward_and_loss_under_vmap_over_stacked_members(case):
    batch = case.batch(torch.Generator().manual_seed(4))
    members = [_build(case, 0).eval(), _build(case, 1).eval()]
    weights = torch.rand(B, generator=torch.Generator().manual_seed(0))

    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")
    out = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None))(
        params, buffers, batch
    )
    wrapped = [_Loss(m) for m in members]
    lparams, lbuffers = stack_module_state(wrapped)
    lbase = copy.deepcopy(wrapped[0]).to("meta")

    def member_loss(p, b, x, w):
        return functional_call(lbase, (p, b), (x, w))

    losses = vmap(member_loss, in_dims=(0, 0, None, None))(lparams, lbuffers, batch, weights)
    for m, member in enumerate(members):
        torch.testing.assert_close(out[m], member(batch), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(losses[m], member.loss(batch, weights), rtol=1e-5, atol=1e-6)

    # training mode: independent dropout per member, per-member weights, gradients flow
    lbase.train()
    member_w = torch.rand(2, B, generator=torch.Generator().manual_seed(1))
    train_losses = vmap(member_loss, in_dims=(0, 0, None, 0), randomness="different")(
        lparams, lbuffers, batch, member_w
    )
    assert train_losses.shape == (2,) and torch.isfinite(train_losses).all()
    train_losses.sum().backward()
    assert all(p.grad is not None for p in lparams.values())


def test_zero_weights_equal_dropping_the_rows(case):
    batch = case.batch(torch.Generator().manual_seed(5))
    model = _build(case, 0).eval()
    w = torch.tensor([0.5, 0.0, 2.0, 0.0, 1.0, 0.0])
    kept = torch.tensor([0, 2, 4])
    with torch.no_grad():
        torch.testing.assert_close(
            model.loss(batch, w),
            model.loss(_rows(case, batch, kept), w[kept]),
            rtol=1e-5,
            atol=1e-6,
        )
