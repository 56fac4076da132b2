"""Prediction: law of total variance, intervals vs scipy, support clipping, properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm, t

from wager.prediction import MixturePrediction, Prediction
from wager.uncertainty.conformal import VarianceScaling


def test_from_members_law_of_total_variance():
    means = torch.tensor([[1.0, 2.0], [3.0, 2.0], [2.0, 5.0]])  # (M=3, n=2)
    ale = torch.tensor([[1.0, 0.5], [1.0, 0.5], [2.0, 0.5]])
    p = Prediction.from_members(means, ale)
    # column 0: mean 2, var of means = ((1-2)^2 + (3-2)^2 + 0)/3 = 2/3,
    # mean aleatoric var = (1 + 1 + 4)/3 = 2 -> total var 8/3
    assert p.mean[0] == pytest.approx(2.0)
    assert p.epistemic_std[0] == pytest.approx(np.sqrt(2 / 3), rel=1e-6)
    assert p.aleatoric_std[0] == pytest.approx(np.sqrt(2.0), rel=1e-6)
    assert p.std[0] == pytest.approx(np.sqrt(8 / 3), rel=1e-6)
    ref = means.numpy()
    np.testing.assert_allclose(p.epistemic_std.numpy(), ref.std(axis=0), rtol=1e-6)


def test_from_members_without_aleatoric_is_epistemic_only():
    p = Prediction.from_members(torch.tensor([[0.1], [0.3]]))
    assert p.aleatoric_std is None
    assert p.std[0] == pytest.approx(0.1, rel=1e-5)
    assert p.samples.shape == (2, 1)


def test_interval_matches_scipy_and_clips_to_support():
    p = Prediction(
        mean=torch.tensor([0.5, 0.02]), std=torch.tensor([0.1, 0.05]), support=(0.0, 1.0)
    )
    iv = p.interval(0.9)
    z = norm.ppf(0.95)
    assert float(iv.low[0]) == pytest.approx(0.5 - z * 0.1, rel=1e-6)
    assert float(iv.high[0]) == pytest.approx(0.5 + z * 0.1, rel=1e-6)
    assert float(iv.low[1]) == 0.0  # 0.02 - 0.082 clipped at the support
    assert bool(iv.contains(torch.tensor([0.5, 0.0])).all())


def test_deterministic_prediction_refuses_uncertainty_methods():
    p = Prediction(mean=torch.tensor([1.0]))
    assert p.std is None
    with pytest.raises(ValueError, match="deterministic"):
        p.interval(0.9)
    with pytest.raises(ValueError, match="deterministic"):
        p.ucb(1.0)


def test_ucb_and_bad_levels():
    p = Prediction(mean=torch.tensor([1.0]), std=torch.tensor([2.0]))
    assert float(p.ucb(0.5)[0]) == pytest.approx(2.0)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="confidence_level"):
            p.interval(bad)


def _both() -> list[Prediction]:
    gaussian = Prediction(mean=torch.tensor([1.0]), std=torch.tensor([2.0]))
    mixture = MixturePrediction.from_components(
        torch.tensor([[0.5, 0.5]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 1.0]])
    )
    return [gaussian, mixture]


@pytest.mark.parametrize("p", _both(), ids=["gaussian", "mixture"])
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.ucb(float("nan")), "ucb beta must be a finite number, got nan"),
        (lambda p: p.ucb(float("inf")), "ucb beta must be a finite number, got inf"),
        (lambda p: p.ucb(-float("inf")), "ucb beta must be a finite number, got -inf"),
        (lambda p: p.ucb("1"), "ucb beta must be a finite number, got '1'"),
        (lambda p: p.ucb(True), "ucb beta must be a finite number, got True"),
        (
            lambda p: p.interval(float("nan")),
            "confidence_level must be a number in (0, 1), got nan",
        ),
        (lambda p: p.interval(0.0), "confidence_level must be a number in (0, 1), got 0.0"),
        (lambda p: p.interval("0.9"), "confidence_level must be a number in (0, 1), got '0.9'"),
        (lambda p: p.quantile(float("nan")), "quantile q must be a number in (0, 1), got nan"),
        (lambda p: p.quantile(1.0), "quantile q must be a number in (0, 1), got 1.0"),
        (lambda p: p.quantile(-0.1), "quantile q must be a number in (0, 1), got -0.1"),
    ],
)
def test_non_finite_or_out_of_range_parameters_are_named_errors(p, call, message):
    with pytest.raises(ValueError) as exc:
        call(p)
    assert str(exc.value) == message


def test_ucb_takes_any_finite_beta():
    p = Prediction(mean=torch.tensor([1.0]), std=torch.tensor([2.0]))
    # 1 + (-0.5) * 2 = 0; a NumPy float is a float
    assert float(p.ucb(-0.5)[0]) == pytest.approx(0.0)
    assert float(p.ucb(np.float64(1.5))[0]) == pytest.approx(4.0)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="std has shape"):
        Prediction(mean=torch.zeros(3), std=torch.zeros(2))


def test_sample_draws_member_values():
    samples = torch.tensor([[1.0, 10.0], [2.0, 20.0]])
    p = Prediction.from_members(samples)
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([p.sample(g) for _ in range(50)])
    assert set(draws[:, 0].tolist()) <= {1.0, 2.0}
    assert set(draws[:, 1].tolist()) <= {10.0, 20.0}


def test_indexing_and_to_dict():
    p = Prediction.from_members(
        torch.tensor([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]),
        method="ensemble(members=2)",
        support=(0.0, 1.0),
    )
    sub = p[torch.tensor([2, 0])]
    assert sub.mean.tolist() == pytest.approx([0.2, 0.2])
    assert sub.samples.shape == (2, 2)
    d = sub.to_dict()
    assert d["method"] == "ensemble(members=2)"
    assert len(d["interval"]["low"]) == 2


@settings(max_examples=60, deadline=None)
@given(
    mean=st.floats(-10, 10),
    std=st.floats(1e-3, 5),
    a=st.floats(0.05, 0.95),
    b=st.floats(0.05, 0.95),
)
def test_intervals_nested_across_levels_and_quantiles_monotone(mean, std, a, b):
    p = Prediction(
        mean=torch.tensor([mean], dtype=torch.float64), std=torch.tensor([std], dtype=torch.float64)
    )
    lo_level, hi_level = min(a, b), max(a, b)
    inner, outer = p.interval(lo_level), p.interval(hi_level)
    assert float(outer.low[0]) <= float(inner.low[0]) + 1e-12
    assert float(outer.high[0]) >= float(inner.high[0]) - 1e-12
    assert float(p.quantile(lo_level)[0]) <= float(p.quantile(hi_level)[0]) + 1e-12


def test_member_only_interval_is_the_student_t_prediction_interval():
    # 5 members 1, 2, 3, 4, 10: mean 4, population std sqrt(10); the 90% interval is
    # 4 +- t_4(0.95) * sqrt(10) * sqrt(6 / 4) (scipy's t quantile, 2.1318)
    members = torch.tensor([[1.0], [2.0], [3.0], [4.0], [10.0]], dtype=torch.float64)
    p = Prediction.from_members(members)
    half = t.ppf(0.95, 4) * np.sqrt(10.0) * np.sqrt(6 / 4)
    iv = p.interval(0.9)
    np.testing.assert_allclose([iv.low.item(), iv.high.item()], [4 - half, 4 + half], rtol=1e-9)
    # with a noise head the interval stays Gaussian
    g = Prediction.from_members(members, torch.ones_like(members))
    z = norm.ppf(0.95) * np.sqrt(10.0 + 1.0)
    np.testing.assert_allclose(g.interval(0.9).high.item(), 4 + z, rtol=1e-9)


def test_member_only_interval_holds_the_next_draw_at_the_nominal_rate():
    # M = 5 draws and the truth a 6th draw from the same normal: the t interval holds it
    # 90% of the time (exact for normal draws); se over 20,000 trials ~ 0.002
    gen = torch.Generator().manual_seed(0)
    draws = torch.randn(6, 20000, generator=gen, dtype=torch.float64) * 3.0 + 1.0
    p = Prediction.from_members(draws[:5])
    covered = p.interval(0.9).contains(draws[5]).double().mean().item()
    assert abs(covered - 0.9) < 4 * 0.0022
    # the Gaussian interval with the same std would hold only ~75%
    z = norm.ppf(0.95)
    gauss = ((draws[5] - p.mean).abs() <= z * p.std).double().mean().item()
    assert gauss < 0.8


def test_student_t_only_for_the_spread_of_three_or_more_draws():
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(5, 200, generator=g, dtype=torch.float64)
    p = Prediction.from_members(draws)
    df, scale = p.student_t()
    assert df == 4.0
    torch.testing.assert_close(scale, p.std * np.sqrt(6 / 4))
    # the t quantile of one more draw: t_4(0.95) * std * sqrt(6 / 4) above the mean
    torch.testing.assert_close(p.quantile(0.95), p.mean + t.ppf(0.95, 4) * scale)
    assert p[torch.arange(3)].df == 4.0  # indexing keeps it
    # a cold-start population spread is a spread over draws too: still the t
    pop = Prediction.from_members(draws, population_var=torch.ones(200, dtype=torch.float64))
    assert pop.df == 4.0
    # Gaussian: a head std in the spread, or only 2 draws (df 1)
    assert Prediction.from_members(draws, torch.ones(5, 200, dtype=torch.float64)).df is None
    two = Prediction.from_members(draws[:2])
    assert two.df is None
    torch.testing.assert_close(two.quantile(0.95), two.mean + norm.ppf(0.95) * two.std)
    with pytest.raises(ValueError, match=r"df = 0\.0 needs a std and df > 0"):
        Prediction(mean=torch.zeros(2), std=torch.ones(2), df=0.0)
    with pytest.raises(ValueError, match="needs a std"):
        Prediction(mean=torch.zeros(2), df=3.0)


def test_a_refitted_std_is_gaussian_again():
    # VarianceScaling fits its factor by the Gaussian likelihood: scaling a t's std and then
    # widening it again as a t would count the small-sample width twice (coverage ~0.98)
    g = torch.Generator().manual_seed(2)
    truth = torch.randn(4000, generator=g, dtype=torch.float64)
    draws = truth + 0.3 * torch.randn(5, 4000, generator=g, dtype=torch.float64)
    y = truth + torch.randn(4000, generator=g, dtype=torch.float64)
    pred = Prediction.from_members(draws)
    scaled = VarianceScaling().fit(pred[:2000], y[:2000]).transform(pred[2000:])
    assert scaled.df is None and scaled.student_t() is None
    iv = scaled.interval(0.9)
    inside = ((y[2000:] >= iv.low) & (y[2000:] <= iv.high)).double().mean()
    assert 0.87 < float(inside) < 0.93
