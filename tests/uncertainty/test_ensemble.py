"""Deep ensembles: vmap over stacked members equals the loop over members; training recovers
rates; per-member row weights (bootstrap, holdout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from wager.config import TrainConfig
from wager.models.fields import Field
from wager.models.mf import FeatureFactorization
from wager.prediction import Prediction
from wager.training.trainer import StackedModel, train_stacked
from wager.uncertainty.ensemble import bootstrap_weights, holdout_mask


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
    ens = StackedModel(_factory, 4, 3, "cpu")
    # give every parameter non-trivial values (biases start at zero)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for v in ens.params.values():
            v.copy_(torch.randn(v.shape, generator=g))
    batch = _batch()
    with torch.no_grad():
        stacked = ens.call("forward", batch)
    model = _factory()
    for m in range(4):
        params = {k.removeprefix("model."): v[m].detach() for k, v in ens.params.items()}
        loop = functional_call(model, params, (batch,))
        torch.testing.assert_close(stacked[m], loop, atol=1e-6, rtol=1e-6)


def test_members_differ_and_same_seed_same_members():
    a = StackedModel(_factory, 3, 1, "cpu")
    b = StackedModel(_factory, 3, 1, "cpu")
    w = next(k for k in a.params if k.endswith("user__u.weight"))
    torch.testing.assert_close(a.params[w], b.params[w])
    assert not torch.equal(a.params[w][0], a.params[w][1])


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
    ens = StackedModel(factory, 3, 0, "cpu")
    gen = torch.Generator().manual_seed(0)
    n = len(data["label"])
    member_w = bootstrap_weights(torch.ones(n), 3, False, gen)

    def batch_losses(p, idx):
        x = {k: v[idx] for k, v in data.items()}
        out = ens.call("forward", x, params=p)
        return torch.stack([loss(out[m], x, member_w[m, idx]) for m in range(3)])

    def validate(p):
        with torch.no_grad():
            return metric(ens.call("forward", data, params=p), data)

    hist = train_stacked(ens.params, batch_losses, n, cfg, validate=validate, generator=gen)
    grid = {"user.u": torch.tensor([1, 1, 3, 3]), "item.i": torch.tensor([0, 2, 0, 2])}
    with torch.no_grad():
        pred = Prediction.from_members(torch.sigmoid(ens.call("forward", grid)))
    # (u0,i0) diagonal 0.8; (u0,i2) 0.1; (u2,i0) 0.1; (u2,i2) 0.8 -- within sampling error
    np.testing.assert_allclose(pred.mean.numpy(), [0.8, 0.1, 0.1, 0.8], atol=0.05)
    assert pred.std is not None and bool((pred.std > 0).all())
    assert len(hist.valid_metric) >= 1
    # the kept parameters are those of each member's best validation epoch
    best = np.array(hist.valid_metric).min(axis=0)
    with torch.no_grad():
        final = metric(ens.call("forward", data), data).numpy()
    np.testing.assert_allclose(final, best, rtol=1e-5)


def test_state_dict_round_trip():
    a = StackedModel(_factory, 2, 0, "cpu")
    b = StackedModel(_factory, 2, 99, "cpu")
    b.load_state_dict(a.state_dict())
    batch = _batch()
    with torch.no_grad():
        torch.testing.assert_close(a.call("forward", batch), b.call("forward", batch))


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
