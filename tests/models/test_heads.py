"""Output heads: losses, means, std and clipping against closed forms and SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from wager.models.heads import BernoulliHead, GaussianHead, PointHead


def test_bernoulli_head_matches_hand_worked_bce_and_std():
    head = BernoulliHead()
    logits = torch.tensor([0.0, math.log(3.0)])  # p = 0.5, 0.75
    labels = torch.tensor([1.0, 0.0])
    # bce = log 2, -log(0.25) = log 4 ; weights (1, 3): (log 2 + 3 log 4) / 4 = 7 log 2 / 4
    got = head.loss(logits, labels, torch.tensor([1.0, 3.0]))
    assert math.isclose(got.item(), 7 * math.log(2) / 4, rel_tol=1e-6)
    torch.testing.assert_close(head.mean(logits), torch.tensor([0.5, 0.75]))
    # sqrt(0.5*0.5) = 0.5, sqrt(0.75*0.25) = 0.4330
    torch.testing.assert_close(head.aleatoric_std(logits), torch.tensor([0.5, math.sqrt(0.1875)]))
    assert head.out_dim == 1 and head.support == (0.0, 1.0)


def test_point_head_mse_and_clipping():
    head = PointHead(support=(1.0, 5.0))
    out = torch.tensor([0.0, 3.0, 6.0])
    labels = torch.tensor([1.0, 3.0, 5.0])
    # squared errors 1, 0, 1 ; weights 2, 1, 0 -> (2 + 0 + 0) / 3 ; the loss is unclipped
    got = head.loss(out, labels, torch.tensor([2.0, 1.0, 0.0]))
    assert math.isclose(got.item(), 2 / 3, rel_tol=1e-6)
    torch.testing.assert_close(head.mean(out), torch.tensor([1.0, 3.0, 5.0]))
    torch.testing.assert_close(PointHead().mean(out), out)
    assert head.aleatoric_std(out) is None
    assert head.out_dim == 1


def test_gaussian_head_nll_matches_scipy():
    head = GaussianHead(min_std=0.05)
    rng = np.random.default_rng(0)
    out = rng.normal(size=(6, 2))
    y = rng.normal(size=6)
    w = rng.uniform(0, 2, 6)
    std = np.log1p(np.exp(out[:, 1])) + 0.05
    ref = np.sum(-w * norm.logpdf(y, out[:, 0], std)) / w.sum()
    got = head.loss(torch.tensor(out), torch.tensor(y), torch.tensor(w))
    np.testing.assert_allclose(got.item(), ref, rtol=1e-10)
    np.testing.assert_allclose(head.aleatoric_std(torch.tensor(out)).numpy(), std, rtol=1e-12)
    np.testing.assert_allclose(head.mean(torch.tensor(out)).numpy(), out[:, 0])
    assert head.out_dim == 2


def test_gaussian_head_mean_clips_and_accepts_member_dimension():
    head = GaussianHead(support=(1.0, 5.0))
    out = torch.tensor([[[0.0, 0.0], [9.0, 0.0]], [[2.0, 0.0], [4.0, 0.0]]])  # (M=2, B=2, 2)
    torch.testing.assert_close(head.mean(out), torch.tensor([[1.0, 5.0], [2.0, 4.0]]))
    assert head.aleatoric_std(out).shape == (2, 2)


def test_gaussian_head_mse_mean_loss_value_and_gradients_by_hand():
    # mean_loss="mse": loss = w-mean of (mu - y)^2 + nll(stop_grad(mu), std, y)
    head = GaussianHead(min_std=0.0, mean_loss="mse")
    out = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([4.0, 1.5], dtype=torch.float64)
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    std = np.log1p(np.exp([0.0, 1.0]))
    mu = np.array([3.0, 1.0])
    per_row = (mu - y.numpy()) ** 2 - norm.logpdf(y.numpy(), mu, std)
    loss = head.loss(out, y, w)
    np.testing.assert_allclose(loss.item(), np.sum(w.numpy() * per_row) / 4.0, rtol=1e-12)
    loss.backward()
    grad = out.grad.numpy()
    # the mean sees only the squared error: d/dmu = w * 2 (mu - y) / sum(w), as a point head
    np.testing.assert_allclose(grad[:, 0], w.numpy() * 2 * (mu - y.numpy()) / 4.0, rtol=1e-12)
    # the raw scale sees only the NLL with mu fixed: d nll / d std = 1/std - r^2 / std^3,
    # d std / d raw = sigmoid(raw)
    r = y.numpy() - mu
    dstd = 1 / std - r**2 / std**3
    sig = 1 / (1 + np.exp(-np.array([0.0, 1.0])))
    np.testing.assert_allclose(grad[:, 1], w.numpy() * dstd * sig / 4.0, rtol=1e-12)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PointHead(support=(5.0, 1.0)), "low < high"),
        (lambda: GaussianHead(min_std=-1.0), "min_std must be >= 0"),
        (lambda: GaussianHead(support=(2.0, 2.0)), "low < high"),
        (lambda: GaussianHead(mean_loss="mae"), "mean_loss must be 'nll' or 'mse'"),
    ],
)
def test_bad_head_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("head", "shape"),
    [
        (GaussianHead(min_std=0.01, support=(1.0, 5.0)), (5, 7, 2)),
        (GaussianHead(min_std=0.0), (3, 4, 2)),
        (BernoulliHead(), (5, 7)),
        (PointHead(support=(1.0, 5.0)), (5, 7)),
        (PointHead(), (2, 3)),
    ],
)
def test_elementwise_heads_take_every_member_at_once(
    head: GaussianHead | BernoulliHead | PointHead, shape: tuple[int, ...]
) -> None:
    """What Scorer.head_moments relies on: for these heads, mean and aleatoric std of the
    (R, B, ...) outputs of R members in one call equal, bit for bit, the per-member calls
    stacked."""
    out = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3.0
    rows = [out[r] for r in range(shape[0])]
    assert torch.equal(head.mean(out), torch.stack([head.mean(r) for r in rows]))
    std = head.aleatoric_std(out)
    per_row = [head.aleatoric_std(r) for r in rows]
    if std is None:
        assert all(s is None for s in per_row)
    else:
        assert torch.equal(std, torch.stack(per_row))  # type: ignore[arg-type]
