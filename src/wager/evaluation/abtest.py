"""A/B test statistics for click-through rates: per-arm CTR with its interval, the difference
between two arms with a two-proportion z test, the sample-ratio-mismatch check, and the power
of a design.

What the service's ``wager abtest report`` prints and what a team reads before calling an
experiment. All tests are two-sided and treat impressions as independent draws (true when
requests, not users, are randomised; with sticky per-user assignment and several impressions
per user, clicks of one user are correlated and these tests are too optimistic).

Formulas (``c`` clicks out of ``n`` impressions per arm, control a, treatment b):

- CTR interval: Wilson score interval at ``level``.
- Difference ``p_b - p_a`` with the unpooled (Wald) interval
  ``+- z * sqrt(p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b)``.
- Test of equal CTRs: ``z = (p_b - p_a) / sqrt(p (1 - p) (1 / n_a + 1 / n_b))`` with the
  pooled ``p = (c_a + c_b) / (n_a + n_b)``; p-value ``2 * (1 - Phi(|z|))`` (statsmodels'
  ``proportions_ztest``).
- Power (statsmodels' ``NormalIndPower`` with Cohen's ``h = 2 asin sqrt(p_b) - 2 asin
  sqrt(p_a)``): with ``m = 1 / (1 / n_a + 1 / n_b)`` and ``q = Phi^-1(1 - alpha / 2)``,
  ``power = 1 - Phi(q - |h| sqrt(m)) + Phi(-q - |h| sqrt(m))``.
- Sample-ratio mismatch: Pearson's chi-square of the arms' impression counts against their
  configured traffic shares; a p-value below 0.001 flags a broken assignment.

Example:
    >>> r = compare_two_proportions((50, 1000), (75, 1000))
    >>> round(r.difference, 3), r.significant
    (0.025, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from wager.data.synthetic import LoggingPolicy, SyntheticWorld

#: p-value below which the sample-ratio check flags a mismatch (a common industry threshold:
#: a real mismatch gives tiny p-values, and experiments are checked often)
SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class ArmResult:
    """One arm's clicks out of impressions.

    Attributes:
        arm: the arm's name.
        impressions: impressions served (>= 0).
        clicks: clicks among them (0..impressions).
        ctr: clicks / impressions (NaN without impressions).
        low: lower end of the Wilson interval of the CTR.
        high: upper end.
    """

    arm: str
    impressions: int
    clicks: int
    ctr: float
    low: float
    high: float


@dataclass(frozen=True)
class Comparison:
    """Treatment against control.

    Attributes:
        control: the control arm.
        treatment: the treatment arm.
        difference: treatment CTR - control CTR.
        low: lower end of the difference's interval (unpooled normal).
        high: upper end.
        relative_lift: difference / control CTR (NaN when the control CTR is 0).
        z: the pooled two-proportion z statistic.
        p_value: its two-sided p-value.
        level: the intervals' confidence level (1 - alpha).
        significant: p_value < 1 - level.
    """

    control: ArmResult
    treatment: ArmResult
    difference: float
    low: float
    high: float
    relative_lift: float
    z: float
    p_value: float
    level: float
    significant: bool


def _check_counts(clicks: int, impressions: int, arm: str) -> None:
    for name, value in (("clicks", clicks), ("impressions", impressions)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"arm {arm!r}: {name} must be an integer >= 0, got {value!r}")
    if clicks > impressions:
        raise ValueError(
            f"arm {arm!r}: {clicks} clicks out of {impressions} impressions; clicks cannot "
            "exceed impressions (count each impression's click once)"
        )


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, int | float) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95, got {level!r}")
    return float(level)


def wilson_interval(clicks: int, impressions: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a CTR (NaN, NaN without impressions)."""
    _check_counts(clicks, impressions, "?")
    q = stats.norm.isf((1.0 - _check_level(level)) / 2.0)
    if impressions == 0:
        return math.nan, math.nan
    p, n = clicks / impressions, impressions
    centre = (p + q * q / (2 * n)) / (1 + q * q / n)
    half = q * math.sqrt(p * (1 - p) / n + q * q / (4 * n * n)) / (1 + q * q / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def arm_result(arm: str, clicks: int, impressions: int, level: float = 0.95) -> ArmResult:
    """An :class:`ArmResult` with its Wilson interval at ``level``."""
    _check_counts(clicks, impressions, arm)
    low, high = wilson_interval(clicks, impressions, level)
    ctr = clicks / impressions if impressions else math.nan
    return ArmResult(arm, impressions, clicks, ctr, low, high)


def compare_two_proportions(
    control: tuple[int, int],
    treatment: tuple[int, int],
    level: float = 0.95,
    names: tuple[str, str] = ("control", "treatment"),
) -> Comparison:
    """Difference of two CTRs with its interval and the pooled two-proportion z test.

    Args:
        control: (clicks, impressions) of the control arm.
        treatment: (clicks, impressions) of the treatment arm.
        level: confidence level of the intervals; the test's alpha is 1 - level.
        names: the two arms' names, for the result and the error messages.

    Returns:
        A :class:`Comparison`.

    Raises:
        ValueError: counts that are not integers >= 0, clicks above impressions, an arm
            without impressions, or a level outside (0, 1).
    """
    level = _check_level(level)
    a = arm_result(names[0], *control, level=level)
    b = arm_result(names[1], *treatment, level=level)
    for arm in (a, b):
        if arm.impressions == 0:
            raise ValueError(f"arm {arm.arm!r} has no impressions: nothing to compare yet")
    q = stats.norm.isf((1.0 - level) / 2.0)
    diff = b.ctr - a.ctr
    se = math.sqrt(a.ctr * (1 - a.ctr) / a.impressions + b.ctr * (1 - b.ctr) / b.impressions)
    pooled = (a.clicks + b.clicks) / (a.impressions + b.impressions)
    se0 = math.sqrt(pooled * (1 - pooled) * (1 / a.impressions + 1 / b.impressions))
    z = diff / se0 if se0 > 0 else 0.0
    p_value = float(2.0 * stats.norm.sf(abs(z)))
    return Comparison(
        control=a,
        treatment=b,
        difference=diff,
        low=diff - q * se,
        high=diff + q * se,
        relative_lift=diff / a.ctr if a.ctr > 0 else math.nan,
        z=z,
        p_value=p_value,
        level=level,
        significant=p_value < 1.0 - level,
    )


def compare_ratio_delta(
    control: tuple[np.ndarray, np.ndarray],
    treatment: tuple[np.ndarray, np.ndarray],
    level: float = 0.95,
) -> dict[str, Any]:
    """Difference of two CTRs with users as the independent units (delta method).

    When users, not requests, are randomised (sticky assignment), one user's impressions are
    correlated and the impression-level test is too optimistic. Each arm's CTR is the ratio
    ``R = sum(clicks) / sum(impressions)`` over its users, with variance
    ``(var(c) - 2 R cov(c, n) + R**2 var(n)) / (k * mean(n)**2)`` over its k users (sample
    variances, ddof 1); the two arms are independent.

    Args:
        control: (clicks per user, impressions per user) of the control arm, (k,) each.
        treatment: the same for the treatment arm.
        level: confidence level of the difference's interval (alpha = 1 - level).

    Returns:
        difference, low, high, z, p_value, significant, users_control, users_treatment.
    """
    level = _check_level(level)
    parts = []
    for name, (c, n) in (("control", control), ("treatment", treatment)):
        c, n = np.asarray(c, dtype=np.float64), np.asarray(n, dtype=np.float64)
        if c.shape != n.shape or c.ndim != 1 or len(c) < 2:
            raise ValueError(
                f"{name}: clicks and impressions per user must be two equal-length 1-D arrays "
                f"over at least 2 users, got shapes {c.shape} and {n.shape}"
            )
        if (n < 1).any() or (c < 0).any() or (c > n).any():
            raise ValueError(f"{name}: every user needs impressions >= 1 and 0 <= clicks <= them")
        r = c.sum() / n.sum()
        cov = np.cov(c, n, ddof=1)
        var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (len(c) * n.mean() ** 2)
        parts.append((r, max(float(var), 0.0), len(c)))
    (r_a, v_a, k_a), (r_b, v_b, k_b) = parts
    diff, se = r_b - r_a, math.sqrt(v_a + v_b)
    z = diff / se if se > 0 else 0.0
    p_value = float(2.0 * stats.norm.sf(abs(z)))
    q = stats.norm.isf((1.0 - level) / 2.0)
    return {
        "difference": float(diff),
        "low": float(diff - q * se),
        "high": float(diff + q * se),
        "z": float(z),
        "p_value": p_value,
        "significant": p_value < 1.0 - level,
        "users_control": k_a,
        "users_treatment": k_b,
    }


def two_proportion_power(
    p_control: float,
    p_treatment: float,
    n_control: int,
    n_treatment: int,
    alpha: float = 0.05,
) -> float:
    """Probability that the two-sided test at ``alpha`` detects the difference between true
    CTRs ``p_control`` and ``p_treatment`` with these many impressions per arm (normal
    approximation on Cohen's h, as statsmodels' ``NormalIndPower``)."""
    for name, p in (("p_control", p_control), ("p_treatment", p_treatment)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
    if n_control < 1 or n_treatment < 1:
        raise ValueError(f"impressions per arm must be >= 1, got {n_control}, {n_treatment}")
    _check_level(1.0 - alpha)
    h = abs(2 * math.asin(math.sqrt(p_treatment)) - 2 * math.asin(math.sqrt(p_control)))
    m = 1.0 / (1.0 / n_control + 1.0 / n_treatment)
    q = stats.norm.isf(alpha / 2.0)
    return float(stats.norm.sf(q - h * math.sqrt(m)) + stats.norm.cdf(-q - h * math.sqrt(m)))


def sample_ratio_mismatch(
    impressions: Sequence[int], shares: Sequence[float]
) -> tuple[float, float, bool]:
    """Pearson's chi-square of the arms' impression counts against their traffic shares.

    Args:
        impressions: impressions (or assigned users) per arm.
        shares: each arm's configured share of traffic (normalised to sum to 1).

    Returns:
        (chi-square statistic, p-value, mismatch = p-value < ``SRM_THRESHOLD``).
    """
    if len(impressions) != len(shares) or len(shares) < 2:
        raise ValueError(
            f"sample ratio check needs one count per arm and at least 2 arms, got "
            f"{len(impressions)} counts for {len(shares)} shares"
        )
    if any(s <= 0 for s in shares):
        raise ValueError(f"traffic shares must be > 0, got {list(shares)}")
    total, share_sum = sum(impressions), sum(shares)
    if total == 0:
        return 0.0, 1.0, False
    expected = [total * s / share_sum for s in shares]
    chi2, p = stats.chisquare(list(impressions), expected)
    return float(chi2), float(p), bool(p < SRM_THRESHOLD)


@dataclass(frozen=True)
class SimulatedExperiments:
    """Many seeded two-arm experiments in the synthetic world, against the power they should
    have.

    Attributes:
        true_ctr: (control, treatment) exact expected CTR of each arm's policy (users
            uniform, positions uniform over the world's slots, as ``sample_log`` draws them).
        impressions_per_arm: impressions each arm serves per experiment.
        experiments: how many experiments were run.
        rejections: experiments whose test rejected equal CTRs at 1 - level.
        rate: rejections / experiments (the detection rate, or the false-positive rate of an
            A/A design).
        rate_se: its binomial standard error under ``expected``.
        expected: the power :func:`two_proportion_power` gives for the true CTRs (alpha for
            an A/A design, where the CTRs are equal).
    """

    true_ctr: tuple[float, float]
    impressions_per_arm: int
    experiments: int
    rejections: int
    rate: float
    rate_se: float
    expected: float


def expected_policy_ctr(world: SyntheticWorld, policy: LoggingPolicy, day: int = 0) -> float:
    """Exact expected CTR of ``policy`` serving ``day``'s catalogue in ``world``: users
    uniform, the policy's item probabilities, positions uniform over the world's slots (the
    draws of :meth:`SyntheticWorld.sample_log`)."""
    users = np.arange(world.config.n_users)
    items = world.available_items(day)
    probabilities = np.asarray(policy.probabilities(world, users, items, day), dtype=np.float64)
    ctr = world.true_ctr_matrix(users, items)
    return float((probabilities * ctr).sum(axis=1).mean() * world.position_bias.mean())


def simulate_experiments(
    world: SyntheticWorld,
    control: LoggingPolicy,
    treatment: LoggingPolicy,
    impressions_per_arm: int,
    experiments: int,
    level: float = 0.95,
    seed: int = 0,
) -> SimulatedExperiments:
    """Run ``experiments`` two-arm experiments: each arm serves ``impressions_per_arm``
    impressions of its policy on day 0 (requests randomised, clicks drawn from the world's
    true CTR with ``seed``-derived seeds), and each is tested with
    :func:`compare_two_proportions`. The rejection rate should match the design's power
    (or alpha when both arms run the same policy) within a few standard errors: the check
    that the test's false-positive rate and power are what they claim."""
    level = _check_level(level)
    if experiments < 1 or impressions_per_arm < 1:
        raise ValueError(
            f"experiments and impressions_per_arm must be >= 1, got {experiments}, "
            f"{impressions_per_arm}"
        )
    p_a, p_b = expected_policy_ctr(world, control), expected_policy_ctr(world, treatment)
    seeds = np.random.SeedSequence(seed).generate_state(2 * experiments)
    rejections = 0
    for e in range(experiments):
        a = world.sample_log(impressions_per_arm, control, day=0, seed=int(seeds[2 * e]))
        b = world.sample_log(impressions_per_arm, treatment, day=0, seed=int(seeds[2 * e + 1]))
        result = compare_two_proportions(
            (int(a["click"].sum()), impressions_per_arm),
            (int(b["click"].sum()), impressions_per_arm),
            level,
        )
        rejections += result.significant
    alpha = 1.0 - level
    expected = (
        alpha
        if p_a == p_b
        else two_proportion_power(p_a, p_b, impressions_per_arm, impressions_per_arm, alpha)
    )
    return SimulatedExperiments(
        true_ctr=(p_a, p_b),
        impressions_per_arm=impressions_per_arm,
        experiments=experiments,
        rejections=rejections,
        rate=rejections / experiments,
        rate_se=math.sqrt(expected * (1 - expected) / experiments),
        expected=expected,
    )
