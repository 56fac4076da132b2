"""NeuMF: forward against a NumPy re-implementation; BCE with negatives against hand sums."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wager.models.fields import Field
from wager.models.ncf import NeuMF

USERS = [Field("user.user_id", "index", 4)]
ITEMS = [Field("item.item_id", "index", 6)]


def _model(**kwargs) -> NeuMF:
    torch.manual_seed(0)
    m = NeuMF(USERS, ITEMS, gmf_dim=2, mlp_dim=3, hidden=(4, 2), **kwargs)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return m


def _np_logits(m: NeuMF, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    def w(module):
        return {k: v.detach().double().numpy() for k, v in module.state_dict().items()}

    gu = w(m.gmf_user)["embedding.vectors.user__user_id.weight"][users]
    gi = w(m.gmf_item)["embedding.vectors.item__item_id.weight"][items]
    mu = w(m.mlp_user)["embedding.vectors.user__user_id.weight"][users]
    mi = w(m.mlp_item)["embedding.vectors.item__item_id.weight"][items]
    layers = w(m.mlp)
    h = np.concatenate([mu, mi], axis=1)
    h = np.maximum(h @ layers["0.weight"].T + layers["0.bias"], 0)
    h = np.maximum(h @ layers["2.weight"].T + layers["2.bias"], 0)
    top = w(m.predict)
    return (np.concatenate([gu * gi, h], axis=1) @ top["weight"].T + top["bias"])[:, 0]


def _bce(z: np.ndarray, y: float) -> np.ndarray:
    p = 1 / (1 + np.exp(-z))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


BATCH = {
    "user.user_id": torch.tensor([1, 3]),
    "item.item_id": torch.tensor([2, 5]),
    "neg.item.item_id": torch.tensor([[1, 4, 0], [2, 3, 5]]),  # (B=2, K=3)
    "label": torch.tensor([1.0, 0.0]),
}


def test_forward_matches_numpy_for_positives_and_negatives():
    m = _model()
    ref = _np_logits(m, np.array([1, 3]), np.array([2, 5]))
    np.testing.assert_allclose(m(BATCH).detach().numpy(), ref, rtol=1e-5)
    neg = m(BATCH, prefix="neg.item.").detach().numpy()
    assert neg.shape == (2, 3)
    users = np.repeat([1, 3], 3)
    ref_neg = _np_logits(m, users, BATCH["neg.item.item_id"].numpy().ravel()).reshape(2, 3)
    np.testing.assert_allclose(neg, ref_neg, rtol=1e-5)


def test_loss_with_negatives_is_weighted_mean_of_per_row_bce():
    m = _model()
    pos = _np_logits(m, np.array([1, 3]), np.array([2, 5]))
    neg = _np_logits(m, np.repeat([1, 3], 3), BATCH["neg.item.item_id"].numpy().ravel())
    # per row: (bce(pos, 1) + sum_k bce(neg_k, 0)) / (1 + K)
    rows = (_bce(pos, 1.0) + _bce(neg.reshape(2, 3), 0.0).sum(1)) / 4
    w = np.array([1.0, 3.0])
    got = m.loss(BATCH, torch.tensor(w, dtype=torch.float32)).item()
    np.testing.assert_allclose(got, (w * rows).sum() / w.sum(), rtol=1e-5)


def test_loss_without_negatives_uses_the_label():
    m = _model()
    batch = {k: v for k, v in BATCH.items() if not k.startswith("neg.")}
    pos = _np_logits(m, np.array([1, 3]), np.array([2, 5]))
    ref = (_bce(pos[0], 1.0) + _bce(pos[1], 0.0)) / 2
    np.testing.assert_allclose(m.loss(batch).item(), ref, rtol=1e-5)


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive layer widths"):
        NeuMF(USERS, ITEMS, hidden=(8, -1))
    with pytest.raises(ValueError, match="dropout"):
        NeuMF(USERS, ITEMS, dropout=-0.1)
