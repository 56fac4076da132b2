"""A/B statistics against statsmodels and scipy (the independent references), by hand where
the formula is short, and in simulation: the test's false-positive rate and power are what
statsmodels says they are."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

from wager.data.synthetic import SoftmaxOraclePolicy, SyntheticWorld, UniformPolicy, WorldConfig
from wager.evaluation.abtest import (
    compare_two_proportions,
    expected_policy_ctr,
    sample_ratio_mismatch,
    simulate_experiments,
    two_proportion_power,
    wilson_interval,
)

counts = st.integers(min_value=1, max_value=5000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)


@settings(max_examples=60, deadline=None)
@given(counts, counts)
def test_z_test_matches_statsmodels(a: tuple[int, int], b: tuple[int, int]) -> None:
    r = compare_two_proportions(a, b)
    pooled = (a[0] + b[0]) / (a[1] + b[1])
    if pooled in (0.0, 1.0):  # no variance: statsmodels divides by zero, we report z = 0
        assert r.z == 0.0 and r.p_value == 1.0
        return
    z, p = proportions_ztest([b[0], a[0]], [b[1], a[1]])
    assert r.z == pytest.approx(z, rel=1e-9, abs=1e-12)
    assert r.p_value == pytest.approx(p, rel=1e-9, abs=1e-15)
    assert r.significant == (p < 0.05)


@settings(max_examples=60, deadline=None)
@given(counts, st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_interval_matches_statsmodels(c: tuple[int, int], level: float) -> None:
    low, high = wilson_interval(*c, level=level)
    ref = proportion_confint(c[0], c[1], alpha=1 - level, method="wilson")
    assert (low, high) == pytest.approx(ref, abs=1e-12)


def test_difference_interval_and_lift_by_hand() -> None:
    r = compare_two_proportions((50, 1000), (75, 1000), names=("A", "B"))
    se = math.sqrt(0.05 * 0.95 / 1000 + 0.075 * 0.925 / 1000)
    assert r.difference == pytest.approx(0.025)
    assert (r.low, r.high) == pytest.approx((0.025 - 1.959964 * se, 0.025 + 1.959964 * se))
    assert r.relative_lift == pytest.approx(0.5)
    assert (r.control.arm, r.treatment.arm) == ("A", "B")
    assert r.control.ctr == 0.05 and r.treatment.clicks == 75


@pytest.mark.parametrize(
    ("pa", "pb", "na", "nb", "alpha"),
    [(0.05, 0.06, 5000, 5000, 0.05), (0.02, 0.024, 20000, 10000, 0.05), (0.3, 0.2, 100, 300, 0.01)],
)
def test_power_matches_statsmodels(pa: float, pb: float, na: int, nb: int, alpha: float) -> None:
    h = proportion_effectsize(pb, pa)
    ref = NormalIndPower().power(effect_size=h, nobs1=na, alpha=alpha, ratio=nb / na)
    assert two_proportion_power(pa, pb, na, nb, alpha) == pytest.approx(ref, rel=1e-9)


def test_sample_ratio_mismatch_by_hand() -> None:
    assert sample_ratio_mismatch([5000, 5000], [0.5, 0.5]) == (0.0, 1.0, False)
    chi2, p, flag = sample_ratio_mismatch([5200, 4800], [1, 1])
    assert chi2 == pytest.approx(2 * 200**2 / 5000) and flag
    assert p == pytest.approx(stats.chi2.sf(16.0, 1))
    chi2, p, flag = sample_ratio_mismatch([9000, 1030], [0.9, 0.1])  # 9027 / 1003 expected
    assert chi2 == pytest.approx(27**2 / 9027 + 27**2 / 1003) and not flag


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: compare_two_proportions((5, 3), (1, 10)), "5 clicks out of 3 impressions"),
        (lambda: compare_two_proportions((0, 0), (1, 10)), "'control' has no impressions"),
        (lambda: compare_two_proportions((1.5, 3), (1, 10)), "clicks must be an integer >= 0"),
        (lambda: compare_two_proportions((1, 3), (1, 10), level=95), "level must be a number"),
        (lambda: two_proportion_power(1.2, 0.1, 10, 10), "p_control must be a probability"),
        (lambda: sample_ratio_mismatch([1, 2], [1.0]), "one count per arm"),
        (lambda: sample_ratio_mismatch([1, 2], [1.0, 0.0]), "shares must be > 0"),
    ],
)
def test_bad_input_is_named(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def _treatment_with_lift(world: SyntheticWorld, lift: float) -> SoftmaxOraclePolicy:
    """The softmax oracle whose true CTR is ``lift`` x the uniform policy's (bisection on
    the log temperature; the CTR falls as the temperature rises)."""
    base = expected_policy_ctr(world, UniformPolicy())
    lo, hi = math.log(0.05), math.log(5.0)
    for _ in range(60):
        mid = (lo + hi) / 2
        ratio = expected_policy_ctr(world, SoftmaxOraclePolicy(math.exp(mid))) / base
        lo, hi = (mid, hi) if ratio > lift else (lo, mid)
    return SoftmaxOraclePolicy(math.exp((lo + hi) / 2))


def test_detection_and_false_positive_rates_match_theory_over_200_experiments() -> None:
    world = SyntheticWorld(WorldConfig(n_users=1000, n_items=100, n_days=1, seed=0))
    treatment = _treatment_with_lift(world, 1.2)
    ab = simulate_experiments(world, UniformPolicy(), treatment, 10_000, 200, seed=1)
    assert ab.true_ctr[1] / ab.true_ctr[0] == pytest.approx(1.2, rel=1e-6)
    assert 0.3 < ab.expected < 0.9  # a design whose power is neither 0 nor 1
    assert abs(ab.rate - ab.expected) <= 3 * ab.rate_se, ab
    aa = simulate_experiments(world, UniformPolicy(), UniformPolicy(), 10_000, 200, seed=2)
    assert aa.expected == pytest.approx(0.05) and aa.true_ctr[0] == aa.true_ctr[1]
    assert abs(aa.rate - 0.05) <= 3 * aa.rate_se, aa
    # the exact expected CTR against a large log's mean
    log = world.sample_log(400_000, UniformPolicy(), day=0, seed=3)
    se = math.sqrt(ab.true_ctr[0] / len(log))
    assert abs(log["click"].mean() - ab.true_ctr[0]) < 4 * se
    assert np.isclose(log["true_ctr"].mean(), ab.true_ctr[0], rtol=0.02)
