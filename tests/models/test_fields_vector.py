"""Vector fields in the model layer: a linear projection, taken by every model built on fields.

The encoded vector field is (B, dim + 1) float32: the entries, then a missing indicator.
"""

from __future__ import annotations

import math

import pytest
import torch

from wager.models.fields import Field, FieldEmbedding
from wager.models.mf import BiasedMF, FeatureFactorization
from wager.models.ncf import NeuMF
from wager.models.ranking import DCNRanker
from wager.models.towers import Tower
from wager.models.two_tower import TwoTower

USER = [Field("user.user_id", "index", 4)]
ITEM = [Field("item.item_id", "index", 5), Field("item.emb", "vector", 4)]  # dim 3 + indicator


def test_vector_field_is_a_linear_projection_and_bias():
    emb = FieldEmbedding([Field("item.emb", "vector", 3)], dim=2)
    with torch.no_grad():
        emb.vectors["item__emb"].weight.copy_(torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]))
        emb.biases["item__emb"].weight.copy_(torch.tensor([[0.5, 0.25, -1.0]]))
    x = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # a vector (1, 1); a missing one
    vec, bias = emb({"item.emb": x})
    # row 0: (1 + 2, 0 - 1) = (3, -1), bias 0.5 + 0.25 = 0.75
    # row 1 (missing): the indicator's column (0.5, 3) and its bias -1
    torch.testing.assert_close(vec, torch.tensor([[3.0, -1.0], [0.5, 3.0]]))
    torch.testing.assert_close(bias, torch.tensor([0.75, -1.0]))
    fields = emb.forward_fields({"item.emb": x})
    torch.testing.assert_close(fields, vec.unsqueeze(-2))


def test_vector_projection_starts_at_the_scale_of_an_id_embedding():
    torch.manual_seed(0)
    size, dim, init_std = 401, 64, 0.05
    emb = FieldEmbedding([Field("item.emb", "vector", size)], dim, init_std=init_std)
    weight = emb.vectors["item__emb"].weight
    # N(0, (init_std / sqrt(size))^2) entries; 25,664 draws give the std within about 1%
    assert weight.std().item() == pytest.approx(init_std / math.sqrt(size), rel=0.03)
    # so a standardised vector (unit-variance entries) projects to entries of std ~ init_std
    x = torch.randn(2000, size)
    vec, _ = emb({"item.emb": x})
    assert vec.std().item() == pytest.approx(init_std, rel=0.05)


def _batch(b: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "user.user_id": torch.randint(1, 4, (b,), generator=g),
        "item.item_id": torch.randint(0, 5, (b,), generator=g),
        "item.emb": torch.cat([torch.randn(b, 3, generator=g), torch.zeros(b, 1)], dim=1),
        "label": torch.randint(0, 2, (b,), generator=g).to(torch.float32),
    }


MODELS = {
    "tower": lambda: Tower(ITEM, dim=4, hidden=(8, 3)),
    "factorization": lambda: FeatureFactorization(USER, ITEM, [], dim=4),
    "biased_mf": lambda: BiasedMF(USER, ITEM, dim=4),
    "two_tower": lambda: TwoTower(USER, ITEM, dim=4, hidden=(8,), logq_correction=False),
    "neumf": lambda: NeuMF(USER, ITEM, gmf_dim=4, mlp_dim=4, hidden=(8,)),
    "dcn": lambda: DCNRanker(USER, ITEM, [], dim=4, cross_layers=1, deep=(8,)),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_every_field_model_reads_the_vector(kind):
    torch.manual_seed(0)
    model = MODELS[kind]()
    batch = _batch()
    batch["item.emb"].requires_grad_(True)
    out = model(batch)
    assert torch.isfinite(out).all()
    out.sum().backward()
    grad = batch["item.emb"].grad
    assert grad is not None and grad[:, :3].abs().sum().item() > 0, kind
    # and the projection is trained: the loss reaches its weights
    if hasattr(model, "loss") and kind != "tower":
        model.zero_grad()
        model.loss({k: v.detach() for k, v in batch.items()}).backward()
        proj = [p for n, p in model.named_parameters() if "item__emb" in n and "vectors" in n]
        assert proj and all(p.grad is not None and p.grad.abs().sum() > 0 for p in proj), kind
