"""MC dropout: one batched pass of S samples; its mean matches the closed-form expectation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import ModelConfig, RunConfig, TrainConfig, UncertaintyConfig
from wager.data.schema import Schema
from wager.models.fields import Field
from wager.models.mf import BiasedMF
from wager.recommender import Recommender
from wager.training.trainer import StackedModel
from wager.uncertainty.mc_dropout import MCDropout, tile_batch

BATCH = {"user.u": torch.tensor([1, 2, 0]), "item.i": torch.tensor([0, 1, 2])}


def _stack(members: int = 1, dropout: float = 0.5) -> StackedModel:
    def make() -> BiasedMF:
        return BiasedMF(
            [Field("user.u", "index", 3)],
            [Field("item.i", "index", 3)],
            dim=8,
            init_std=0.5,
            dropout=dropout,
            global_mean=3.0,
        )

    return StackedModel(make, members=members, seed=0).train(False)


def test_tile_batch_order():
    tiled = tile_batch({"a": torch.tensor([1, 2]), "b": torch.tensor([[1, 0], [2, 0]])}, 3)
    assert tiled["a"].tolist() == [1, 2, 1, 2, 1, 2]
    assert tiled["b"].shape == (6, 2) and tiled["b"][4].tolist() == [1, 0]


def test_samples_shape_seed_and_mode():
    stack = _stack(members=2)
    mc = MCDropout(samples=5, seed=3)
    state = torch.random.get_rng_state()
    out = mc.sample_outputs(stack, BATCH)
    assert out.shape == (10, 3)  # M * S rows, member-major
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert not stack.base.training  # back in evaluation mode
    assert torch.equal(out, mc.sample_outputs(stack, BATCH))  # same seed, same draws
    assert out[:5].std(0).min() > 0  # dropout is on: samples differ
    assert not torch.equal(out[:5], out[5:])  # members differ


def test_mean_of_samples_is_the_expected_output():
    # inverted dropout with independent masks on p and q: E[d(p) . d(q)] = p . q, so the
    # sample mean must approach the dropout-free output; tolerance 4 standard errors
    stack = _stack()
    det = stack.call("forward", BATCH)[0]
    out = MCDropout(samples=4000, seed=0).sample_outputs(stack, BATCH)
    se = out.std(0) / np.sqrt(4000)
    assert bool(((out.mean(0) - det).abs() <= 4 * se).all())


def test_one_forward_call_for_all_samples(monkeypatch):
    stack = _stack()
    calls = []
    original = StackedModel.call

    def spy(self, method, *args, **kw):
        calls.append(method)
        return original(self, method, *args, **kw)

    monkeypatch.setattr(StackedModel, "call", spy)
    MCDropout(samples=30).sample_outputs(stack, BATCH)
    # BiasedMF draws the S masks itself after one embedding lookup per row
    assert calls == ["forward_samples"]
    calls.clear()
    MCDropout(samples=30).sample_outputs(stack, BATCH, method="user_factors")
    assert calls == ["user_factors"]  # other methods: the batch tiled S times, one call


def test_large_batches_run_in_passes_of_whole_pairs(monkeypatch):
    # max_rows 6 with S = 3: 2 pairs per pass, so 3 pairs take 2 passes of all 3 draws;
    # without dropout every draw equals the deterministic output, chunked or not
    stack = _stack(members=2, dropout=0.0)
    calls = []
    original = StackedModel.call

    def spy(self, method, *args, **kw):
        calls.append(len(next(iter(args[0].values()))))
        return original(self, method, *args, **kw)

    monkeypatch.setattr(StackedModel, "call", spy)
    out = MCDropout(samples=3, max_rows=6).sample_outputs(stack, BATCH)
    assert calls == [2, 1]  # pairs per pass: 2 (x 3 draws = 6 rows), then 1
    det = original(stack, "forward", BATCH)  # (M, 3)
    assert out.shape == (6, 3)
    torch.testing.assert_close(out, det.repeat_interleave(3, dim=0))
    with pytest.raises(ValueError, match="max_rows must be >= 1"):
        MCDropout(max_rows=0)


def test_forward_samples_equals_forward_on_the_tiled_batch_and_draws_masks_per_row():
    # without dropout: identical to forward() on the tiled batch (Gaussian head included)
    from wager.models.heads import GaussianHead

    m = BiasedMF(
        [Field("user.u", "index", 3)], [Field("item.i", "index", 3)], dim=4, head=GaussianHead()
    ).eval()
    torch.testing.assert_close(m.forward_samples(BATCH, 4), m(tile_batch(BATCH, 4)))
    # with dropout: draws differ, and their mean approaches forward() (inverted dropout on p
    # and q: E[d(p) . d(q)] = p . q); 4 standard errors
    stack = _stack(dropout=0.5)
    det = stack.call("forward", BATCH)[0]
    out = MCDropout(samples=4000, seed=1).sample_outputs(stack, BATCH)
    assert bool((out.std(0) > 0).all())
    se = out.std(0) / np.sqrt(4000)
    assert bool(((out.mean(0) - det).abs() <= 4 * se).all())
    # and their variance is the closed form of independent inverted-dropout masks on p and
    # q: sum_d (p_d q_d)^2 (1 / k - 1) with k = (1 - r)^2 the chance both units survive
    p = stack.call("_parts", BATCH)
    pq = (p[0][0] * p[1][0]).double()  # member 0: (B, dim)
    k = 0.25
    var = (pq.square() * (1 / k - 1)).sum(-1)
    got = out.double().var(0)
    # sample variance of 4000 draws: relative error ~ sqrt(2 / 4000 * kurtosis), < 20%
    assert bool(((got / var - 1).abs() < 0.2).all()), (got, var)


@pytest.mark.parametrize("samples", [1, 0, 2.5])
def test_bad_samples(samples):
    with pytest.raises(ValueError, match="samples must be an integer >= 2"):
        MCDropout(samples=samples)  # type: ignore[arg-type]


def _ratings() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 400), rng.integers(0, 15, 400)
    return pd.DataFrame(
        {"user_id": users, "item_id": items, "rating": rng.integers(1, 6, 400).astype(float)}
    )


def _config(dropout: float, samples: int) -> RunConfig:
    return RunConfig(
        schema=Schema(label="rating", label_kind="rating", rating_range=(1.0, 5.0)),
        model=ModelConfig(type="biased_mf", dim=4, dropout=dropout),
        training=TrainConfig(epochs=2, batch_size=64, learning_rate=0.01, optimizer="adam"),
        uncertainty=UncertaintyConfig(mc_dropout_samples=samples),
    )


def test_recommender_with_mc_dropout_predicts_spread():
    rec = Recommender(_config(0.3, 12)).fit(_ratings())
    pred = rec.predict([0, 1, 99], [0, 1, 2])
    assert pred.samples is not None and pred.samples.shape == (12, 3)
    assert pred.std is not None and bool((pred.std > 0).all())
    assert "mc_dropout(samples=12)" in pred.method
    recs = rec.recommend([0, 99], k=3)
    assert recs["std"].notna().all() and (recs["low"] <= recs["high"]).all()


def test_mc_dropout_without_dropout_names_the_fix():
    with pytest.raises(
        ValueError, match=r"mc_dropout_samples = 12 needs dropout.*\[model\] dropout"
    ):
        Recommender(_config(0.0, 12)).fit(_ratings())
