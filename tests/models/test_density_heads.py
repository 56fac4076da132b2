"""Mixture density (MDN) and deep density (DDN) heads: losses against hand / NumPy / SciPy
computations, the detached noise term, vmap equivalence and input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm
from torch.func import vmap

from wager.models.heads import DeepDensityHead, MixtureDensityHead
from wager.prediction import MixturePrediction


def _raw_scale(std: float) -> float:
    """Inverse of softplus: softplus(_raw_scale(s)) == s."""
    return math.log(math.expm1(std))


# Two rows, K = 2, laid out [logit_1, logit_2 | mu_1, mu_2 | raw_1, raw_2] with min_std = 0:
# row 1: weights (0.5, 0.5), means (0.1, 0.3), stds (0.05, 0.1)
# row 2: weights (0.75, 0.25) (logits log 3, 0), means (0.02, 0.1), stds (0.01, 0.05)
HAND_OUTPUTS = torch.tensor(
    [
        [0.0, 0.0, 0.1, 0.3, _raw_scale(0.05), _raw_scale(0.1)],
        [math.log(3.0), 0.0, 0.02, 0.1, _raw_scale(0.01), _raw_scale(0.05)],
    ],
    dtype=torch.float64,
)
HAND_LABELS = torch.tensor([0.3, 0.05], dtype=torch.float64)  # 3 / 10 and 50 / 1000 clicks
HAND_IMPRESSIONS = torch.tensor([10.0, 1000.0], dtype=torch.float64)


def _random_outputs(shape: tuple[int, ...], k: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    out = torch.randn(*shape, 3 * k, generator=gen, dtype=torch.float64)
    out[..., k : 2 * k] = 0.3 + 0.1 * out[..., k : 2 * k]  # component means near a CTR of 0.3
    out[..., 2 * k :] = out[..., 2 * k :] - 2.0  # stds around softplus(-2) = 0.13
    return out


def test_mdn_loss_matches_numpy_logsumexp():
    head = MixtureDensityHead(components=2, min_std=0.01)
    out = np.array([[0.3, -0.7, 1.0, 2.5, 0.2, -1.0], [-1.2, 0.4, -0.5, 0.5, 0.0, 0.8]])
    y = np.array([2.0, 0.1])
    w_rows = np.array([1.0, 3.0])
    # reference: w = softmax(logits), s = softplus(raw) + min_std,
    # nll = -logsumexp_k(log w_k + norm.logpdf(y; mu_k, s_k))
    logits, mu, raw = out[:, :2], out[:, 2:4], out[:, 4:]
    log_w = logits - logsumexp(logits, axis=1, keepdims=True)
    s = np.log1p(np.exp(raw)) + 0.01
    nll = -logsumexp(log_w + norm.logpdf(y[:, None], mu, s), axis=1)
    t_out, t_y = torch.tensor(out), torch.tensor(y)
    np.testing.assert_allclose(head.loss(t_out, t_y).item(), nll.mean(), rtol=1e-12)
    np.testing.assert_allclose(
        head.loss(t_out, t_y, torch.tensor(w_rows)).item(),
        (w_rows * nll).sum() / w_rows.sum(),
        rtol=1e-12,
    )
    weights, means, stds = head.mixture_components(t_out)
    np.testing.assert_allclose(weights.numpy(), np.exp(log_w), rtol=1e-12)
    np.testing.assert_allclose(means.numpy(), mu)
    np.testing.assert_allclose(stds.numpy(), s, rtol=1e-12)
    # mixture mean and std from the weighted moments
    m = (np.exp(log_w) * mu).sum(1)
    var = (np.exp(log_w) * (s**2 + mu**2)).sum(1) - m**2
    np.testing.assert_allclose(head.mean(t_out).numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(head.aleatoric_std(t_out).numpy(), np.sqrt(var), rtol=1e-10)
    assert head.out_dim == 6


def test_mdn_mean_clips_to_support_and_prediction_matches_head():
    head = MixtureDensityHead(components=2, min_std=0.0, support=(0.0, 1.0))
    out = HAND_OUTPUTS.clone()
    out[1, 2:4] = torch.tensor([-0.4, -0.2])  # mixture mean -0.35 -> clipped to 0
    torch.testing.assert_close(
        head.mean(out), torch.tensor([0.2, 0.0], dtype=torch.float64), rtol=0, atol=1e-12
    )
    p = head.prediction(out, method="mdn")
    assert isinstance(p, MixturePrediction)
    assert p.method == "mdn" and p.support == (0.0, 1.0) and p.measurement_std is None
    torch.testing.assert_close(p.mean, head.mean(out))
    torch.testing.assert_close(p.std, head.aleatoric_std(out))
    torch.testing.assert_close(p.weights, head.mixture_components(out)[0])
    assert p.epistemic_std is None


def test_ddn_loss_matches_hand_computation():
    head = DeepDensityHead(components=2, min_std=0.0)
    # row 1: m = 0.5*0.1 + 0.5*0.3 = 0.2, v = 0.2*0.8/10 = 0.016,
    #   variances 0.05^2 + 0.016 = 0.0185 and 0.1^2 + 0.016 = 0.026, y = 0.3:
    #   log N(0.3; 0.1, 0.0185) = -0.5 log(2π 0.0185) - 0.04 / 0.037   = -0.0050273408
    #   log N(0.3; 0.3, 0.026)  = -0.5 log(2π 0.026)                   =  0.9058908373
    #   nll_1 = -log(0.5 e^-0.0050273408 + 0.5 e^0.9058908373)        = -0.5507538563
    # row 2: m = 0.75*0.02 + 0.25*0.1 = 0.04, v = 0.04*0.96/1000 = 3.84e-5,
    #   variances 1e-4 + 3.84e-5 = 1.384e-4 and 2.5e-3 + 3.84e-5 = 2.5384e-3, y = 0.05:
    #   log N(0.05; 0.02, 1.384e-4) = -0.5 log(2π 1.384e-4) - 9e-4 / 2.768e-4 = 0.2722976375
    #   log N(0.05; 0.1, 2.5384e-3) = -0.5 log(2π 2.5384e-3) - 2.5e-3 / 5.0768e-3 = 1.576735945
    #   nll_2 = -log(0.75 e^0.2722976375 + 0.25 e^1.576735945)        = -0.7859619777
    # mean over rows: (-0.5507538563 - 0.7859619777) / 2 = -0.6683579170
    got = head.loss(HAND_OUTPUTS, HAND_LABELS, impressions=HAND_IMPRESSIONS)
    assert got.item() == pytest.approx(-0.6683579170, abs=1e-9)
    # row weights (1, 3): (-0.5507538563 + 3 * -0.7859619777) / 4 = -0.7271599473
    w = torch.tensor([1.0, 3.0], dtype=torch.float64)
    got_w = head.loss(HAND_OUTPUTS, HAND_LABELS, w, impressions=HAND_IMPRESSIONS)
    assert got_w.item() == pytest.approx((-0.5507538563 + 3 * -0.7859619777) / 4, abs=1e-9)
    # a zero-weight row does not count
    got_0 = head.loss(
        HAND_OUTPUTS, HAND_LABELS, torch.tensor([0.0, 2.0]).double(), impressions=HAND_IMPRESSIONS
    )
    assert got_0.item() == pytest.approx(-0.7859619777, abs=1e-9)


def _loss_with_noise(raw: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Independent DDN loss for K = 2, min_std = 0: the noise variance ``v`` (B,) is given."""
    log_w = raw[:, :2] - torch.logsumexp(raw[:, :2], dim=1, keepdim=True)
    var = torch.nn.functional.softplus(raw[:, 4:]) ** 2 + v[:, None]
    y = HAND_LABELS[:, None]
    log_pdf = -0.5 * torch.log(2 * math.pi * var) - 0.5 * (y - raw[:, 2:4]) ** 2 / var
    return -torch.logsumexp(log_w + log_pdf, dim=1).mean()


def test_ddn_gradient_treats_the_noise_variance_as_constant():
    head = DeepDensityHead(components=2, min_std=0.0)
    raw = HAND_OUTPUTS.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(head.loss(raw, HAND_LABELS, impressions=HAND_IMPRESSIONS), raw)
    v_const = torch.tensor([0.016, 3.84e-5], dtype=torch.float64)  # from the hand computation
    (ref,) = torch.autograd.grad(_loss_with_noise(raw, v_const), raw)
    torch.testing.assert_close(grad, ref, rtol=1e-10, atol=1e-12)
    # central finite differences of the constant-noise loss agree too
    h = 1e-6
    fd = torch.zeros_like(grad)
    base = HAND_OUTPUTS
    for i in range(base.shape[0]):
        for j in range(base.shape[1]):
            step = torch.zeros_like(base)
            step[i, j] = h
            up = _loss_with_noise(base + step, v_const)
            down = _loss_with_noise(base - step, v_const)
            fd[i, j] = (up - down) / (2 * h)
    torch.testing.assert_close(grad, fd, rtol=1e-5, atol=1e-6)

    # had the model's mean inside the noise term been differentiated, the gradient would
    # differ (so the comparison above can tell the two apart)
    def coupled(r: torch.Tensor) -> torch.Tensor:
        w = torch.softmax(r[:, :2], dim=1)
        m = (w * r[:, 2:4]).sum(1)
        return _loss_with_noise(r, m * (1 - m) / HAND_IMPRESSIONS)

    (coupled_grad,) = torch.autograd.grad(coupled(raw), raw)
    assert (coupled_grad - grad).abs().max() > 1e-3


def test_ddn_with_huge_impressions_equals_mdn():
    out = _random_outputs((8,), k=3, seed=1)
    y = torch.rand(8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    w = torch.rand(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    mdn = MixtureDensityHead(components=3)
    ddn = DeepDensityHead(components=3)
    # v = m (1 - m) / 1e12 <= 2.5e-13, negligible next to s^2 >= (1e-3)^2
    n = torch.full((8,), 1e12, dtype=torch.float64)
    assert ddn.loss(out, y, w, impressions=n).item() == pytest.approx(
        mdn.loss(out, y, w).item(), abs=1e-4
    )
    torch.testing.assert_close(ddn.mean(out), mdn.mean(out).clamp(0, 1))
    torch.testing.assert_close(ddn.aleatoric_std(out), mdn.aleatoric_std(out))


def test_ddn_measurement_std_and_prediction():
    head = DeepDensityHead(components=2, min_std=0.0)
    n = torch.tensor([10.0, 1000.0], dtype=torch.float64)
    # sqrt(0.2 * 0.8 / 10) = 0.1264911, sqrt(0.04 * 0.96 / 1000) = 0.0061968
    expected = torch.tensor([math.sqrt(0.016), math.sqrt(3.84e-5)], dtype=torch.float64)
    torch.testing.assert_close(head.measurement_std(HAND_OUTPUTS, n), expected)
    # integer impressions are accepted
    torch.testing.assert_close(
        head.measurement_std(HAND_OUTPUTS, torch.tensor([10, 1000])), expected
    )
    # member dimension: (M=2, B=2, 6) outputs with (B,) impressions
    stacked = torch.stack([HAND_OUTPUTS, HAND_OUTPUTS])
    torch.testing.assert_close(head.measurement_std(stacked, n), expected.expand(2, 2))
    # a mixture mean outside (0, 1) is clamped to 1e-6 in the noise term
    out = HAND_OUTPUTS.clone()
    out[0, 2:4] = torch.tensor([-0.3, -0.1])
    got = head.measurement_std(out, torch.tensor([1.0, 1000.0]).double())[0]
    assert got.item() == pytest.approx(math.sqrt(1e-6 * (1 - 1e-6)), rel=1e-9)

    p = head.prediction(HAND_OUTPUTS, impressions=n, method="ddn")
    assert isinstance(p, MixturePrediction) and p.support == (0.0, 1.0)
    torch.testing.assert_close(p.measurement_std, expected)
    torch.testing.assert_close(p.mean, torch.tensor([0.2, 0.04], dtype=torch.float64))
    # clean mixture std, row 1: 0.5 (0.0025 + 0.01) + 0.5 (0.01 + 0.01) = 0.01625
    assert p.std[0].item() == pytest.approx(math.sqrt(0.01625), rel=1e-12)
    assert head.prediction(HAND_OUTPUTS).measurement_std is None
    assert head.out_dim == 6 and head.support == (0.0, 1.0)


@pytest.mark.parametrize("batched_impressions", [False, True])
def test_heads_under_vmap_equal_a_loop(batched_impressions):
    m_members, b, k = 3, 5, 2
    out = _random_outputs((m_members, b), k=k, seed=4)
    gen = torch.Generator().manual_seed(5)
    y = torch.rand(b, generator=gen, dtype=torch.float64)
    member_w = torch.rand(m_members, b, generator=gen, dtype=torch.float64)
    n = torch.randint(1, 50, (b,), generator=gen).double()
    n_members = n.expand(m_members, b).clone() if batched_impressions else n
    mdn = MixtureDensityHead(components=k, support=(0.0, 1.0))
    ddn = DeepDensityHead(components=k)
    n_dim = 0 if batched_impressions else None

    def n_of(i: int) -> torch.Tensor:
        return n_members[i] if batched_impressions else n

    got = vmap(lambda o, w: mdn.loss(o, y, w))(out, member_w)
    ref = torch.stack([mdn.loss(out[i], y, member_w[i]) for i in range(m_members)])
    torch.testing.assert_close(got, ref)
    got = vmap(lambda o, w, nn: ddn.loss(o, y, w, impressions=nn), in_dims=(0, 0, n_dim))(
        out, member_w, n_members
    )
    ref = torch.stack(
        [ddn.loss(out[i], y, member_w[i], impressions=n_of(i)) for i in range(m_members)]
    )
    torch.testing.assert_close(got, ref)
    got = vmap(ddn.measurement_std, in_dims=(0, n_dim))(out, n_members)
    ref = torch.stack([ddn.measurement_std(out[i], n_of(i)) for i in range(m_members)])
    torch.testing.assert_close(got, ref)
    for head in (mdn, ddn):
        torch.testing.assert_close(vmap(head.mean)(out), head.mean(out))
        torch.testing.assert_close(vmap(head.aleatoric_std)(out), head.aleatoric_std(out))
        for got_c, ref_c in zip(
            vmap(head.mixture_components)(out), head.mixture_components(out), strict=True
        ):
            torch.testing.assert_close(got_c, ref_c)


def test_ddn_loss_gradient_under_vmap_of_grad():
    # the ensemble trains stacked members: per-member gradients under vmap(grad) equal a loop
    ddn = DeepDensityHead(components=2)
    out = _random_outputs((3, 4), k=2, seed=6)
    y = torch.tensor([0.1, 0.5, 0.0, 1.0], dtype=torch.float64)
    n = torch.tensor([3.0, 10.0, 1.0, 7.0], dtype=torch.float64)
    grads = vmap(torch.func.grad(lambda o: ddn.loss(o, y, impressions=n)))(out)
    for i in range(3):
        o = out[i].clone().requires_grad_(True)
        (ref,) = torch.autograd.grad(ddn.loss(o, y, impressions=n), o)
        torch.testing.assert_close(grads[i], ref)


@pytest.mark.parametrize(
    ("impressions", "message"),
    [
        (None, "needs impressions"),
        (torch.tensor([10.0, 0.0]), "impressions must be >= 1"),
        (torch.tensor([10.0, 5.0, 3.0]), "impressions has shape"),
        ([10, 5], "impressions must be a tensor"),
    ],
)
def test_ddn_bad_impressions(impressions, message):
    head = DeepDensityHead(components=2)
    with pytest.raises(ValueError, match=message):
        head.loss(HAND_OUTPUTS, HAND_LABELS, impressions=impressions)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: MixtureDensityHead(components=0), "components must be an integer >= 1"),
        (lambda: MixtureDensityHead(components=2.0), "components must be an integer >= 1"),
        (lambda: MixtureDensityHead(min_std=-0.1), "min_std must be >= 0"),
        (lambda: MixtureDensityHead(support=(1.0, 0.0)), "low < high"),
        (lambda: DeepDensityHead(components=-1), "components must be an integer >= 1"),
        (lambda: DeepDensityHead(min_std=-1.0), "min_std must be >= 0"),
    ],
)
def test_bad_head_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_outputs_of_the_wrong_width_name_out_dim():
    with pytest.raises(ValueError, match=r"last dimension 3 \* components = 9"):
        MixtureDensityHead(components=3).mean(torch.zeros(2, 6))
