"""DCNRanker with the mixture density (MDN) and deep density (DDN) heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import log_softmax, logsumexp, softplus
from scipy.stats import norm

from wager.config import TrainConfig
from wager.models.fields import Field
from wager.models.heads import (
    BernoulliHead,
    DeepDensityHead,
    GaussianHead,
    MixtureDensityHead,
    PointHead,
)
from wager.models.ranking import DCNRanker, Task, needs_impressions
from wager.training.trainer import StackedModel, train_stacked

USERS = [Field("user.context_id", "index", 5)]
ITEMS = [Field("item.item_id", "index", 6), Field("item.tags", "bag", 4)]
CONTEXT = [Field("context.segment", "index", 4), Field("context.price", "numeric", 2)]


def _batch(b: int = 7, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(1, 60, (b,), generator=g).float()
    clicks = torch.binomial(n, torch.full((b,), 0.1), generator=g)
    return {
        "user.context_id": torch.randint(0, 5, (b,), generator=g),
        "item.item_id": torch.randint(0, 6, (b,), generator=g),
        "item.tags": torch.randint(0, 4, (b, 3), generator=g),
        "context.segment": torch.randint(0, 4, (b,), generator=g),
        "context.price": torch.randn(b, 2, generator=g),
        "label": clicks / n,
        "impressions": n,
    }


def _model(head, seed: int | None = 0, **kwargs) -> DCNRanker:
    """A small DCNRanker; ``seed=None`` keeps the global RNG (StackedModel seeds members)."""
    if seed is not None:
        torch.manual_seed(seed)
    kw = {"dim": 3, "cross_layers": 1, "deep": (8,)} | kwargs
    return DCNRanker(USERS, ITEMS, CONTEXT, tasks=(Task("ctr", "label", head),), **kw)


def _reference_nll(
    outputs: np.ndarray,
    labels: np.ndarray,
    k: int,
    min_std: float,
    impressions: np.ndarray | None,
    weights: np.ndarray | None = None,
) -> float:
    """Mixture NLL written out with scipy: w = softmax, s = softplus + floor; the DDN adds
    m (1 - m) / n to every component variance, m = sum_k w_k mu_k clamped to [1e-6, 1-1e-6]."""
    log_w = log_softmax(outputs[:, :k], axis=1)
    mu = outputs[:, k : 2 * k]
    var = (softplus(outputs[:, 2 * k :]) + min_std) ** 2
    if impressions is not None:
        m = np.clip((np.exp(log_w) * mu).sum(1), 1e-6, 1 - 1e-6)
        var = var + (m * (1 - m) / impressions)[:, None]
    log_pdf = norm.logpdf(labels[:, None], loc=mu, scale=np.sqrt(var))
    nll = -logsumexp(log_w + log_pdf, axis=1)
    w = np.ones_like(nll) if weights is None else weights
    return float((w * nll).sum() / w.sum())


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("structure", ["parallel", "stacked"])
def test_forward_shape_is_batch_by_3k(k, structure):
    for head in (MixtureDensityHead(components=k), DeepDensityHead(components=k)):
        m = _model(head, structure=structure)
        assert m.output.out_features == 3 * k == head.out_dim
        assert m(_batch()).shape == (7, 3 * k)
        assert m.head is head


@pytest.mark.parametrize("use_weights", [False, True])
def test_ddn_loss_is_the_head_loss_on_forward_outputs_with_impressions(use_weights):
    head = DeepDensityHead(components=2, min_std=0.01)
    m = _model(head).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch().items()}
    w = torch.linspace(0.5, 2.0, 7, dtype=torch.float64) if use_weights else None
    out = m(batch)
    expected = head.loss(out, batch["label"], w, impressions=batch["impressions"])
    torch.testing.assert_close(m.loss(batch, w), expected, rtol=1e-12, atol=0)
    ref = _reference_nll(
        out.detach().numpy(),
        batch["label"].numpy(),
        2,
        0.01,
        batch["impressions"].numpy(),
        None if w is None else w.numpy(),
    )
    assert m.loss(batch, w).item() == pytest.approx(ref, rel=1e-10)


def test_ddn_reads_the_weight_key_when_no_weights_are_passed():
    head = DeepDensityHead(components=2)
    m = _model(head)
    batch = _batch() | {"weight": torch.tensor([0.0, 1.0, 2.0, 0.0, 1.0, 3.0, 1.0])}
    expected = head.loss(
        m(batch), batch["label"], batch["weight"], impressions=batch["impressions"]
    )
    torch.testing.assert_close(m.loss(batch), expected)


def test_mdn_loss_is_the_head_loss_and_ignores_impressions():
    head = MixtureDensityHead(components=3, min_std=0.01, support=(0.0, 1.0))
    m = _model(head).double()
    batch = {k: (v.double() if v.is_floating_point() else v) for k, v in _batch().items()}
    out = m(batch)
    torch.testing.assert_close(m.loss(batch), head.loss(out, batch["label"]), rtol=1e-12, atol=0)
    ref = _reference_nll(out.detach().numpy(), batch["label"].numpy(), 3, 0.01, None)
    assert m.loss(batch).item() == pytest.approx(ref, rel=1e-10)
    without = {k: v for k, v in batch.items() if k != "impressions"}
    torch.testing.assert_close(m.loss(without), m.loss(batch))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4))
def test_ddn_with_huge_impressions_is_the_mdn(seed, k):
    # v = m (1 - m) / n -> 0 as n -> inf: the DDN likelihood becomes the MDN likelihood
    mdn, ddn = _model(MixtureDensityHead(k), seed), _model(DeepDensityHead(k), seed)
    ddn.load_state_dict(mdn.state_dict())
    batch = _batch(seed=seed) | {"impressions": torch.full((7,), 1e12)}
    torch.testing.assert_close(ddn.loss(batch), mdn.loss(batch), rtol=1e-5, atol=1e-5)


def test_missing_impressions_error_names_the_field():
    m = _model(DeepDensityHead(components=2))
    batch = {k: v for k, v in _batch().items() if k != "impressions"}
    with pytest.raises(ValueError, match=r"'impressions'.*'ctr' \(DeepDensityHead\)") as err:
        m.loss(batch)
    assert "schema field `impressions`" in str(err.value)
    assert "Schema(impressions=" in str(err.value)


def test_bad_impressions_values_are_reported_by_the_head():
    m = _model(DeepDensityHead(components=2))
    with pytest.raises(ValueError, match="impressions must be >= 1"):
        m.loss(_batch() | {"impressions": torch.zeros(7)})


def test_needs_impressions_only_for_the_deep_density_head():
    assert needs_impressions(DeepDensityHead())
    for head in (BernoulliHead(), PointHead(), GaussianHead(), MixtureDensityHead()):
        assert not needs_impressions(head)


def test_point_and_multi_task_heads_unchanged_by_an_impressions_key():
    batch = _batch()
    point = _model(PointHead())
    without = {k: v for k, v in batch.items() if k != "impressions"}
    torch.testing.assert_close(point.loss(batch), point.loss(without))
    torch.testing.assert_close(point.loss(batch), PointHead().loss(point(batch), batch["label"]))
    torch.manual_seed(0)
    tasks = (Task("a", "label", BernoulliHead()), Task("b", "label", PointHead(), 0.5))
    multi = DCNRanker(USERS, ITEMS, CONTEXT, dim=3, deep=(8,), tasks=tasks)
    out = multi(batch)
    expected = BernoulliHead().loss(out[:, 0], batch["label"]) + 0.5 * PointHead().loss(
        out[:, 1], batch["label"]
    )
    torch.testing.assert_close(multi.loss(batch), expected)


def test_multi_task_with_a_density_head_sums_the_heads_losses_on_their_columns():
    # columns: [click logit | K = 2 components x (weight, mean, scale) = 6]: 7 outputs
    tasks = (Task("a", "label", BernoulliHead()), Task("b", "label", DeepDensityHead(2), 0.3))
    m = DCNRanker(USERS, ITEMS, CONTEXT, tasks=tasks)
    batch = _batch()
    out = m(batch)
    assert out.shape == (7, 7)
    ref = BernoulliHead().loss(out[:, 0], batch["label"]) + 0.3 * DeepDensityHead(2).loss(
        out[:, 1:], batch["label"], impressions=batch["impressions"]
    )
    torch.testing.assert_close(m.loss(batch), ref)


@pytest.mark.parametrize(
    "head", [MixtureDensityHead(components=2), DeepDensityHead(components=2)], ids=type
)
def test_vmap_over_stacked_members_equals_a_loop(head):
    stack = StackedModel(lambda: _model(head, seed=None), members=3, seed=5)
    batch = _batch()
    weights = torch.rand(3, 7, generator=torch.Generator().manual_seed(1))
    outs = stack.call("forward", batch)
    losses = stack.call("loss", batch)
    weighted = stack.call_weighted("loss", batch, weights)
    assert outs.shape == (3, 7, 6) and losses.shape == (3,) and weighted.shape == (3,)
    for m in range(3):
        member = stack.member(m)
        torch.testing.assert_close(outs[m], member(batch))
        torch.testing.assert_close(losses[m], member.loss(batch))
        torch.testing.assert_close(weighted[m], member.loss(batch, weights[m]))
    # the members differ (seeds 5, 6, 7), so the loop comparison is not vacuous
    assert not torch.allclose(losses[0], losses[1])


def _segment_data(rows: int = 3000) -> tuple[dict[str, torch.Tensor], np.ndarray, np.ndarray]:
    """Rows whose true CTR depends only on context.segment: 0.02, 0.05, 0.12 for segments
    1, 2, 3; impressions log-uniform on 1..50, so most observed CTRs are 0 or coarse."""
    rng = np.random.default_rng(0)
    seg = rng.integers(1, 4, rows)
    true = np.array([0.0, 0.02, 0.05, 0.12])[seg]
    n = np.floor(np.exp(rng.uniform(0.0, np.log(51.0), rows))).clip(1, 50)
    clicks = rng.binomial(n.astype(np.int64), true)
    batch = {
        "user.context_id": torch.as_tensor(rng.integers(0, 5, rows)),
        "item.item_id": torch.as_tensor(rng.integers(0, 6, rows)),
        "item.tags": torch.as_tensor(rng.integers(0, 4, (rows, 3))),
        "context.segment": torch.as_tensor(seg),
        "context.price": torch.as_tensor(rng.normal(size=(rows, 2)), dtype=torch.float32),
        "label": torch.as_tensor(clicks / n, dtype=torch.float32),
        "impressions": torch.as_tensor(n, dtype=torch.float32),
    }
    return batch, seg, np.stack([clicks, n])


def _fit_ddn(k: int, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Two stacked DDN members trained briefly (vmap in training); (2, rows) mean CTRs."""
    head = DeepDensityHead(components=k, min_std=1e-3)

    def make() -> DCNRanker:
        m = _model(head, seed=None, dim=4)
        with torch.no_grad():  # start every component at CTR 0.05 with std ~0.05
            m.output.weight.mul_(0.01)
            m.output.bias.zero_()
            m.output.bias[k : 2 * k] = 0.05
            m.output.bias[2 * k :] = -2.97  # softplus(-2.97) = 0.05
        return m

    stack = StackedModel(make, members=2, seed=0)
    rows = len(batch["label"])
    config = TrainConfig(epochs=30, batch_size=500, learning_rate=0.01, lr_schedule="cosine")

    def losses(params, idx):
        return stack.call("loss", {key: v[idx] for key, v in batch.items()}, params=params)

    train_stacked(stack.params, losses, rows, config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return head.mean(stack.call("forward", batch))


def test_ddn_fit_predicts_the_ordering_of_a_categorical_ctr_effect():
    # atol 0.01: the pooled estimates are within 0.003 of the truth (binomial std of ~1000
    # rows * ~12.5 impressions < 0.003), the rest is left for optimisation and K = 2
    batch, seg, _ = _segment_data()
    pred = _fit_ddn(2, batch)
    for member in pred:
        per_segment = [float(member[seg == s].mean()) for s in (1, 2, 3)]
        assert per_segment[0] < per_segment[1] < per_segment[2], per_segment
        np.testing.assert_allclose(per_segment, [0.02, 0.05, 0.12], atol=0.01)


def test_one_component_ddn_recovers_the_pooled_ctr_of_each_segment():
    # With K = 1 the DDN's likelihood for a segment is N(y; mu, s^2 + m (1 - m) / n) with
    # s^2 >= 1e-6 far below m (1 - m) / 50 >= 3.5e-4, so its MLE is the inverse-variance
    # (weights ~ n) mean of clicks / n, i.e. the pooled sum(clicks) / sum(n). The unweighted
    # mean of the observed CTRs (what an unweighted MSE fit targets) is 0.0143 in segment 1
    # against a pooled 0.0177, so atol 0.0015 (left for optimisation error) tells them apart.
    batch, seg, (clicks, n) = _segment_data()
    pooled = [clicks[seg == s].sum() / n[seg == s].sum() for s in (1, 2, 3)]
    unweighted = [(clicks / n)[seg == s].mean() for s in (1, 2, 3)]
    assert abs(pooled[0] - unweighted[0]) > 0.003
    pred = _fit_ddn(1, batch)
    for member in pred:
        per_segment = [float(member[seg == s].mean()) for s in (1, 2, 3)]
        np.testing.assert_allclose(per_segment, pooled, atol=0.0015)
