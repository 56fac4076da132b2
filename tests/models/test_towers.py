"""Tower and FieldEmbedding.forward_fields: hand-computed embeddings, prefixes, leading shapes."""

from __future__ import annotations

import pytest
import torch

from wager.models.fields import Field, FieldEmbedding
from wager.models.towers import Tower

FIELDS = [
    Field("item.item_id", "index", 4),
    Field("item.genre", "bag", 5),
    Field("item.price", "numeric", 2),
]


def _batch(prefix="item."):
    return {
        prefix + "item_id": torch.tensor([1, 3]),
        prefix + "genre": torch.tensor([[2, 4, 0], [0, 0, 0]]),
        prefix + "price": torch.tensor([[1.0, 0.0], [-2.0, 1.0]]),
    }


def _by_hand(emb: FieldEmbedding, batch, prefix="item."):
    e_id = emb.vectors["item__item_id"].weight
    e_genre = emb.vectors["item__genre"].weight
    w_price = emb.vectors["item__price"].weight  # (dim, 2)
    ids, price = batch[prefix + "item_id"], batch[prefix + "price"]
    # row 0: bag {2, 4} -> mean of two rows; row 1: empty bag -> 0
    genre = torch.stack([(e_genre[2] + e_genre[4]) / 2, torch.zeros(e_genre.shape[1])])
    return torch.stack([e_id[ids[0]], e_id[ids[1]]]), genre, price @ w_price.T


def test_forward_fields_matches_hand_lookup_and_sums_to_forward():
    torch.manual_seed(0)
    emb = FieldEmbedding(FIELDS, dim=3)
    batch = _batch()
    per_field = emb.forward_fields(batch)
    assert per_field.shape == (2, 3, 3)
    for slot, ref in enumerate(_by_hand(emb, batch)):
        torch.testing.assert_close(per_field[:, slot], ref)
    vec, _ = emb(batch)
    torch.testing.assert_close(per_field.sum(1), vec)


def test_field_embedding_without_bias_has_no_bias_parameters():
    emb = FieldEmbedding(FIELDS, dim=3, bias=False)
    assert not any("biases" in name for name, _ in emb.named_parameters())
    vec, bias = emb(_batch())
    assert vec is not None and torch.equal(bias, torch.zeros(2))
    with pytest.raises(ValueError, match="dim = 0 with bias=True"):
        FieldEmbedding(FIELDS, dim=0, bias=False)


def test_tower_without_mlp_is_the_embedding_sum():
    torch.manual_seed(0)
    tower = Tower(FIELDS, dim=3)
    ids, genre, price = _by_hand(tower.embedding, _batch())
    torch.testing.assert_close(tower(_batch()), ids + genre + price)
    assert tower.out_dim == 3


def test_tower_mlp_matches_manual_layers_and_normalize():
    torch.manual_seed(0)
    tower = Tower(FIELDS, dim=3, hidden=(5, 2), normalize=True)
    ids, genre, price = _by_hand(tower.embedding, _batch())
    l1, l2 = tower.mlp[0], tower.mlp[2]
    h = torch.relu((ids + genre + price) @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias
    torch.testing.assert_close(tower(_batch()), h / h.norm(dim=-1, keepdim=True))
    assert tower.out_dim == 2


def test_tower_reads_prefixed_keys_with_any_leading_shape():
    torch.manual_seed(0)
    tower = Tower(FIELDS, dim=3, hidden=(4,))
    plain = tower(_batch())
    torch.testing.assert_close(tower(_batch("neg.item."), prefix="neg.item."), plain)
    # (B=2, K=3) negatives: every slot equals the row-wise embedding of its item
    flat = _batch("neg.item.")
    stacked = {k: torch.stack([v] * 3, dim=1) for k, v in flat.items()}  # (2, 3, ...)
    out = tower(stacked, prefix="neg.item.")
    assert out.shape == (2, 3, 4)
    for k in range(3):
        torch.testing.assert_close(out[:, k], plain)


def test_has_inputs_all_none_or_partial():
    tower = Tower(FIELDS, dim=2)
    batch = _batch()
    assert tower.has_inputs(batch) and not tower.has_inputs(batch, "neg.item.")
    partial = {**batch, "neg.item.item_id": torch.tensor([1])}
    with pytest.raises(ValueError, match=r"missing \['neg.item.genre', 'neg.item.price'\]"):
        tower.has_inputs(partial, "neg.item.")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fields": [], "dim": 2}, "at least one field"),
        ({"fields": FIELDS, "dim": 0}, "dim must be >= 1"),
        ({"fields": FIELDS, "dim": 2, "hidden": (4, 0)}, "positive layer widths"),
        ({"fields": FIELDS, "dim": 2, "dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_tower_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Tower(**kwargs)
