"""MixturePrediction: moments, CDF, density and quantiles against NumPy / SciPy, sampling
against theory, properties (monotone quantiles, nested intervals), indexing and errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import norm

from wager.prediction import Interval, MixturePrediction, Prediction

RNG = np.random.default_rng(0)
W = RNG.dirichlet(np.ones(3), size=4)  # (B=4, K=3)
MU = RNG.normal(0.0, 2.0, size=(4, 3))
S = RNG.uniform(0.2, 1.5, size=(4, 3))


def _mixture() -> MixturePrediction:
    return MixturePrediction.from_components(
        torch.tensor(W), torch.tensor(MU), torch.tensor(S), method="test"
    )


def _np_cdf(x: float, w: np.ndarray, mu: np.ndarray, s: np.ndarray) -> float:
    return float(np.sum(w * norm.cdf(x, mu, s)))


def test_moments_match_weighted_numpy_moments():
    p = _mixture()
    mean = (W * MU).sum(1)
    var = (W * (S**2 + MU**2)).sum(1) - mean**2  # law of total variance, raw-moment form
    np.testing.assert_allclose(p.mean.numpy(), mean, rtol=1e-12)
    np.testing.assert_allclose(p.std.numpy(), np.sqrt(var), rtol=1e-10)
    np.testing.assert_allclose(p.aleatoric_std.numpy(), np.sqrt(var), rtol=1e-10)
    assert p.epistemic_std is None and p.measurement_std is None
    assert isinstance(p, Prediction) and p.components == 3 and p.method == "test"
    # ucb comes from Prediction: mean + beta * std
    np.testing.assert_allclose(p.ucb(2.0).numpy(), mean + 2.0 * np.sqrt(var), rtol=1e-10)


def test_epistemic_part_is_taken_out_of_the_mixture_variance():
    # two members pooled with weight 1/2 each: N(0, 1) and N(2, 1)
    # total var = 1 + 1 = 2; epistemic var = var of member means = 1 -> aleatoric var = 1
    p = MixturePrediction.from_components(
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[0.0, 2.0]]),
        torch.tensor([[1.0, 1.0]]),
        epistemic_std=torch.tensor([1.0]),
    )
    assert p.std.item() == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert p.aleatoric_std.item() == pytest.approx(1.0, rel=1e-6)
    assert p.epistemic_std.item() == pytest.approx(1.0)


def test_cdf_and_log_prob_match_scipy():
    p = _mixture()
    x = np.array([-1.0, 0.3, 2.0, 5.0])
    cdf = np.array([_np_cdf(x[i], W[i], MU[i], S[i]) for i in range(4)])
    pdf = (W * norm.pdf(x[:, None], MU, S)).sum(1)
    np.testing.assert_allclose(p.cdf(torch.tensor(x)).numpy(), cdf, rtol=1e-10)
    np.testing.assert_allclose(p.log_prob(torch.tensor(x)).numpy(), np.log(pdf), rtol=1e-10)
    # a float broadcasts over the batch
    np.testing.assert_allclose(
        p.cdf(0.0).numpy(), [_np_cdf(0.0, W[i], MU[i], S[i]) for i in range(4)], rtol=1e-10
    )


@pytest.mark.parametrize("q", [0.001, 0.05, 0.3, 0.5, 0.77, 0.95, 0.999])
def test_quantiles_match_brentq_on_the_scipy_mixture_cdf(q):
    p = _mixture()
    ref = [
        brentq(lambda x, i=i: _np_cdf(x, W[i], MU[i], S[i]) - q, -50, 50, xtol=1e-12)
        for i in range(4)
    ]
    np.testing.assert_allclose(p.quantile(q).numpy(), ref, rtol=0, atol=1e-5)
    # float32 components: same quantiles within float32 rounding of the result
    p32 = MixturePrediction.from_components(
        torch.tensor(W, dtype=torch.float32),
        torch.tensor(MU, dtype=torch.float32),
        torch.tensor(S, dtype=torch.float32),
    )
    got32 = p32.quantile(q)
    assert got32.dtype == torch.float32
    np.testing.assert_allclose(got32.numpy(), ref, rtol=0, atol=2e-5)


def test_single_component_quantile_is_the_normal_ppf():
    mu, s = np.array([0.5, -3.0, 100.0]), np.array([0.1, 2.0, 7.0])
    p = MixturePrediction.from_components(
        torch.ones(3, 1, dtype=torch.float64),
        torch.tensor(mu).unsqueeze(1),
        torch.tensor(s).unsqueeze(1),
    )
    for q in (0.01, 0.25, 0.5, 0.9):
        np.testing.assert_allclose(p.quantile(q).numpy(), norm.ppf(q, mu, s), rtol=0, atol=1e-5)


def test_interval_is_the_central_quantiles_and_clips_to_support():
    p = _mixture()
    iv = p.interval(0.8)
    assert isinstance(iv, Interval) and iv.confidence_level == 0.8
    torch.testing.assert_close(iv.low, p.quantile(0.1))
    torch.testing.assert_close(iv.high, p.quantile(0.9))
    # a CTR mixture with mass below 0: quantiles, mean and samples are clipped into (0, 1)
    ctr = MixturePrediction.from_components(
        torch.tensor([[0.5, 0.5]]),
        torch.tensor([[-0.2, 0.05]]),
        torch.tensor([[0.05, 0.05]]),
        support=(0.0, 1.0),
    )
    assert ctr.mean.item() == 0.0  # -0.075 clamped
    assert ctr.interval(0.9).low.item() == 0.0
    assert 0.0 < ctr.interval(0.9).high.item() < 1.0
    many = MixturePrediction.from_components(
        ctr.weights.expand(1000, 2),
        ctr.means.expand(1000, 2),
        ctr.stds.expand(1000, 2),
        support=(0.0, 1.0),
    )
    # P(X < 0) = 0.5 + 0.5 Phi(-1) = 0.58: about 580 of 1000 draws land on 0 after clipping
    draws = many.sample(torch.Generator().manual_seed(0))
    assert draws.min().item() == 0.0 and draws.max().item() <= 1.0
    assert 500 < int((draws == 0.0).sum()) < 660
    with pytest.raises(ValueError, match="confidence_level"):
        p.interval(1.0)
    with pytest.raises(ValueError, match="quantile q"):
        p.quantile(0.0)


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    qs=st.lists(st.floats(0.001, 0.999), min_size=2, max_size=5),
    levels=st.lists(st.floats(0.05, 0.99), min_size=2, max_size=4),
)
def test_quantiles_monotone_and_intervals_nested(k, seed, qs, levels):
    rng = np.random.default_rng(seed)
    p = MixturePrediction.from_components(
        torch.tensor(rng.dirichlet(np.ones(k), size=3)),
        torch.tensor(rng.normal(0.0, 5.0, size=(3, k))),
        torch.tensor(rng.uniform(0.01, 3.0, size=(3, k))),
    )
    values = [p.quantile(q) for q in sorted(qs)]
    for a, b in itertools.pairwise(values):
        assert bool((a <= b).all())
    intervals = [p.interval(level) for level in sorted(levels)]
    for inner, outer in itertools.pairwise(intervals):
        assert bool((outer.low <= inner.low).all()) and bool((inner.high <= outer.high).all())


def test_sample_mean_and_std_approach_the_analytic_ones():
    w, mu, s = np.array([0.2, 0.5, 0.3]), np.array([-2.0, 0.5, 3.0]), np.array([0.5, 1.0, 0.3])
    n = 200_000
    p = MixturePrediction.from_components(
        torch.tensor(w).expand(n, 3), torch.tensor(mu).expand(n, 3), torch.tensor(s).expand(n, 3)
    )
    x = p.sample(torch.Generator().manual_seed(123)).numpy()
    m = (w * mu).sum()
    var = (w * (s**2 + (mu - m) ** 2)).sum()
    # fourth central moment of the mixture: sum_k w_k (d^4 + 6 d^2 s^2 + 3 s^4), d = mu_k - m
    d = mu - m
    mu4 = (w * (d**4 + 6 * d**2 * s**2 + 3 * s**4)).sum()
    se_mean = np.sqrt(var / n)
    se_std = np.sqrt((mu4 - var**2) / n) / (2 * np.sqrt(var))  # delta method on the variance
    assert abs(x.mean() - m) < 4 * se_mean
    assert abs(x.std() - np.sqrt(var)) < 4 * se_std
    assert p.mean[0].item() == pytest.approx(m) and p.std[0].item() == pytest.approx(np.sqrt(var))


def test_getitem_keeps_the_mixture_fields():
    p = MixturePrediction.from_components(
        torch.tensor(W),
        torch.tensor(MU),
        torch.tensor(S),
        measurement_std=torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64),
        epistemic_std=torch.full((4,), 0.1, dtype=torch.float64),
        support=(-10.0, 10.0),
    )
    for index in (slice(1, 3), torch.tensor([True, False, True, False]), 2):
        sub = p[index]
        assert isinstance(sub, MixturePrediction)
        torch.testing.assert_close(sub.weights, p.weights[index])
        torch.testing.assert_close(sub.means, p.means[index])
        torch.testing.assert_close(sub.stds, p.stds[index])
        torch.testing.assert_close(sub.measurement_std, p.measurement_std[index])
        torch.testing.assert_close(sub.mean, p.mean[index])
        torch.testing.assert_close(sub.std, p.std[index])
        torch.testing.assert_close(sub.epistemic_std, p.epistemic_std[index])
        torch.testing.assert_close(sub.quantile(0.3), p.quantile(0.3)[index])
        assert sub.support == p.support
    assert p[2].weights.shape == (3,)


def test_to_dict_adds_components():
    p = MixturePrediction.from_components(
        torch.tensor(W[:2]),
        torch.tensor(MU[:2]),
        torch.tensor(S[:2]),
        measurement_std=torch.tensor([0.1, 0.2], dtype=torch.float64),
    )
    d = p.to_dict(0.8)
    assert set(d) == {
        "method",
        "mean",
        "std",
        "aleatoric_std",
        "epistemic_std",
        "interval",
        "components",
        "measurement_std",
    }
    assert set(d["components"]) == {"weights", "means", "stds"}
    np.testing.assert_allclose(d["components"]["means"], MU[:2])
    np.testing.assert_allclose(d["components"]["weights"], W[:2])
    np.testing.assert_allclose(d["components"]["stds"], S[:2])
    assert d["measurement_std"] == pytest.approx([0.1, 0.2])
    np.testing.assert_allclose(d["interval"]["low"], p.quantile(0.1).numpy())
    assert MixturePrediction.from_components(*_parts()).to_dict()["measurement_std"] is None


def _parts() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])


def _direct(**changes: object) -> MixturePrediction:
    w, mu, s = _parts()
    fields: dict[str, object] = {
        "mean": torch.tensor([0.5]),
        "std": torch.tensor([1.0]),
        "weights": w,
        "means": mu,
        "stds": s,
    }
    fields.update(changes)
    return MixturePrediction(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: _direct(stds=torch.tensor([[1.0, 0.0]])), r"MixturePrediction\.stds must be > 0"),
        (lambda: _direct(weights=torch.tensor([[0.5, 0.6]])), r"weights must sum to 1"),
        (lambda: _direct(weights=torch.tensor([[1.5, -0.5]])), r"weights must be >= 0"),
        (lambda: _direct(means=torch.tensor([[0.0, 1.0, 2.0]])), r"MixturePrediction\.means"),
        (lambda: _direct(stds=torch.tensor([1.0, 1.0])), r"MixturePrediction\.stds has shape"),
        (
            lambda: _direct(
                weights=torch.tensor([[0.5, 0.5]] * 2),
                means=torch.zeros(2, 2),
                stds=torch.ones(2, 2),
            ),
            r"MixturePrediction\.weights has shape",
        ),
        (lambda: _direct(weights=torch.tensor(1.0)), r"MixturePrediction\.weights must be"),
        (
            lambda: _direct(measurement_std=torch.tensor([0.1, 0.2])),
            r"MixturePrediction\.measurement_std has shape",
        ),
        (
            lambda: _direct(measurement_std=torch.tensor([-0.1])),
            r"MixturePrediction\.measurement_std must be >= 0",
        ),
        (
            lambda: MixturePrediction.from_components(
                torch.tensor([[1.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0]])
            ),
            r"MixturePrediction\.means has shape",
        ),
        (lambda: _direct(std=torch.tensor([1.0, 2.0])), r"Prediction\.std has shape"),
    ],
)
def test_bad_fields_name_the_field(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_components_are_required_keywords():
    with pytest.raises(TypeError, match="weights"):
        MixturePrediction(mean=torch.tensor([0.0]))  # type: ignore[call-arg]


def test_from_members_pools_member_major_by_hand():
    # 2 members, 1 row, 2 components each: weights halve, components member-major,
    # member means 0.5*0 + 0.5*2 = 1 and 1*4 = 4 (second member's 2nd weight is 0)
    w = torch.tensor([[[0.5, 0.5]], [[1.0, 0.0]]], dtype=torch.float64)
    mu = torch.tensor([[[0.0, 2.0]], [[4.0, 9.0]]], dtype=torch.float64)
    s = torch.tensor([[[1.0, 1.0]], [[0.5, 0.5]]], dtype=torch.float64)
    p = MixturePrediction.from_members(w, mu, s)
    assert p.weights.tolist() == [[0.25, 0.25, 0.5, 0.0]]
    assert p.means.tolist() == [[0.0, 2.0, 4.0, 9.0]]
    assert p.stds.tolist() == [[1.0, 1.0, 0.5, 0.5]]
    assert p.samples.tolist() == [[1.0], [4.0]]
    assert p.epistemic_std.tolist() == [1.5]  # population std of 1 and 4
    assert p.mean.tolist() == [2.5]
    one = MixturePrediction.from_members(w[:1], mu[:1], s[:1])
    assert one.epistemic_std is None and one.samples is None
