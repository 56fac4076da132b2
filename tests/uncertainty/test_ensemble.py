"""Ensemble: vmap over stacked members equals the loop over members; training recovers rates."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from wager.config import EnsembleConfig, TrainConfig
from wager.models.fields import Field
from wager.models.mf import FeatureFactorization
from wager.uncertainty.ensemble import Ensemble, holdout_mask


def _factory():
    return FeatureFactorization(
        [Field("user.u", "index", 5), Field("user.age", "numeric", 2)],
        [Field("item.i", "index", 4), Field("item.tags", "bag", 6)],
        [Field("context.pos", "index", 3)],
        dim=3,
    )


def _batch(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "user.u": torch.randint(0, 5, (n,), generator=g),
        "user.age": torch.randn(n, 2, generator=g),
        "item.i": torch.randint(0, 4, (n,), generator=g),
        "item.tags": torch.randint(0, 6, (n, 3), generator=g),
        "context.pos": torch.randint(0, 3, (n,), generator=g),
    }


def test_vmap_equals_loop_over_members():
    ens = Ensemble(EnsembleConfig(members=4), seed=3).build(_factory)
    # give every parameter non-trivial values (biases start at zero)
    g = torch.Generator().manual_seed(0)
    for v in ens.params_.values():
        v.copy_(torch.randn(v.shape, generator=g))
    batch = _batch()
    stacked = ens.member_outputs(batch)
    model = _factory()
    for m in range(4):
        params = {k.removeprefix("model."): v[m] for k, v in ens.params_.items()}
        loop = functional_call(model, params, (batch,))
        torch.testing.assert_close(stacked[m], loop, atol=1e-6, rtol=1e-6)


def test_members_differ_and_same_seed_same_members():
    a = Ensemble(EnsembleConfig(members=3), seed=1).build(_factory)
    b = Ensemble(EnsembleConfig(members=3), seed=1).build(_factory)
    w = "model.user.vectors.user__u.weight"
    torch.testing.assert_close(a.params_[w], b.params_[w])
    assert not torch.equal(a.params_[w][0], a.params_[w][1])


def _block_data(n=6000, seed=0):
    # 2 user groups x 2 item groups, true CTR 0.8 on the diagonal and 0.1 off it
    rng = np.random.default_rng(seed)
    u = rng.integers(0, 4, n)
    i = rng.integers(0, 4, n)
    p = np.where((u < 2) == (i < 2), 0.8, 0.1)
    y = (rng.random(n) < p).astype(np.float32)
    return {"user.u": torch.tensor(u + 1), "item.i": torch.tensor(i), "label": torch.tensor(y)}, p


def test_training_recovers_block_ctrs_and_restores_best_epoch():
    data, _ = _block_data()

    def factory():
        return FeatureFactorization(
            [Field("user.u", "index", 5)], [Field("item.i", "index", 4)], [], dim=2
        )

    def loss(out, batch, w):
        return (
            torch.nn.functional.binary_cross_entropy_with_logits(
                out, batch["label"], weight=w, reduction="sum"
            )
            / w.sum()
        )

    def metric(out, batch):
        return torch.nn.functional.binary_cross_entropy_with_logits(
            out, batch["label"].expand_as(out), reduction="none"
        ).mean(1)

    cfg = TrainConfig(epochs=30, batch_size=512, learning_rate=0.05, patience=3)
    ens = Ensemble(EnsembleConfig(members=3), seed=0).fit(
        factory, loss, data, cfg, valid=data, valid_metric=metric
    )
    grid = {"user.u": torch.tensor([1, 1, 3, 3]), "item.i": torch.tensor([0, 2, 0, 2])}
    pred = ens.predict(grid, torch.sigmoid, support=(0.0, 1.0))
    # (u0,i0) diagonal 0.8; (u0,i2) 0.1; (u2,i0) 0.1; (u2,i2) 0.8 -- within sampling error
    np.testing.assert_allclose(pred.mean.numpy(), [0.8, 0.1, 0.1, 0.8], atol=0.05)
    assert pred.std is not None and bool((pred.std > 0).all())
    hist = ens.history_
    assert hist is not None and len(hist.valid_metric) >= 1
    # the kept parameters are those of each member's best validation epoch
    best = np.array(hist.valid_metric).min(axis=0)
    final = metric(ens.member_outputs(data), data).numpy()
    np.testing.assert_allclose(final, best, rtol=1e-5)


def test_state_dict_round_trip():
    a = Ensemble(EnsembleConfig(members=2), seed=0).build(_factory)
    b = Ensemble(EnsembleConfig(members=2), seed=99).load_state_dict(_factory, a.state_dict())
    batch = _batch()
    torch.testing.assert_close(a.member_outputs(batch), b.member_outputs(batch))


def test_unbuilt_ensemble_raises():
    with pytest.raises(Exception, match="call build"):
        Ensemble().member_outputs(_batch())


def test_holdout_mask_counts_independence_and_seed():
    mask = holdout_mask(1000, 4, 0.1, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 1000) and mask.dtype == torch.bool
    np.testing.assert_array_equal(mask.sum(1).numpy(), [100] * 4)
    # independent draws: two members share about 0.1 * 0.1 * 1000 = 10 held-out rows,
    # far from all 100; every row trains most members
    overlap = (mask[0] & mask[1]).sum().item()
    assert 0 <= overlap < 40
    assert int(mask.sum(0).max()) < 4
    again = holdout_mask(1000, 4, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert not holdout_mask(10, 2, 0.0, torch.Generator()).any()
    with pytest.raises(ValueError, match="holdout fraction"):
        holdout_mask(10, 2, 1.0, torch.Generator())
