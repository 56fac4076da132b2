"""Off-policy estimators of a slate policy's value from logged feedback.

Every estimator reads the same inputs:

- ``log``: a :class:`~wager.data.logged.LoggedFeedback` (action, 0-based position, reward,
  logging propensity per impression; ``request`` groups the impressions of one slate);
- ``action_distribution``: (n, n_actions, n_positions) float64, the evaluation policy's
  **marginal** probability of showing each action at each position of each logged request
  (each (row, position) sums to 1 over the actions);
- for the direct method and doubly robust estimators, ``reward_draws``: (S, n, n_actions,
  n_positions) float64 predicted expected reward of every action at every position of every
  logged request, one slice per draw of the reward model (S ensemble members or posterior
  draws; S = 1 for a point model).

**Policy value, and the independent-position assumption.** The value is the expected reward
*per impression*, as Open Bandit Pipeline defines it (so the numbers compare with its
estimators and with a log's on-policy CTR, ``mean(reward)``):
``V(pi) = mean_i sum_a pi(a | x_i, p_i) q(x_i, a, p_i)``, where ``p_i`` is the position of
impression i and ``q`` the expected reward. Each position is treated as its own bandit whose
action is drawn from the policy's marginal at that position, and the reward of an impression
depends only on its own (context, action, position): the items shown beside it do not change
it. The importance weight of impression i is therefore
``w_i = pi(a_i | x_i, p_i) / propensity_i`` (a per-position weight, not a slate weight).

**Intervals.** Each estimator reports a bootstrap interval: a replicate resamples the
rounds with replacement (whole requests when ``log.request`` is given, else single
impressions) and, for the estimators that use a reward model, also draws one reward model
from its S draws. The interval's ends are the replicates' BCa percentiles by default
(``interval="bca"``; Efron 1987: percentiles moved by the replicates' median bias ``z0``
and by the acceleration ``a`` from the skewness of the rounds' empirical influence), or
their plain percentiles (``interval="percentile"``). Importance-weighted terms are
heavy-tailed (a few rounds with large weights carry the clicks), so the estimate's
sampling distribution is skewed to the right: the plain percentile interval then misses
the truth mostly from below when a log happens to hold few of those rounds, which BCa
corrects in part (it does not help a log that holds almost none of them). Because each
replicate also draws a reward model, the interval of DM and DR covers the reward model's own
uncertainty as well as the sampling noise of the log; with S = 1 it is the usual bootstrap
that treats the reward model as fixed. The point value uses the mean of the draws.

How a replicate draws the reward model (``gaussian_draws``): with True (the default) it is
``q_bar + sum_s g_s (q_s - q_bar) / sqrt(S - 1)`` with ``g_s`` independent standard normals,
a Gaussian with the draws' mean and (unbiased) covariance; with False one of the S draws,
uniformly. A handful of ensemble members cannot reach a 95% interval's tails when picked
one at a time (the range of 5 draws covers a sixth draw only 4 times in 6); the Gaussian
draw keeps the spread the members measure and gives it tails. The estimators are linear in
the reward model, so the mixing is done on their per-round terms.

Example:
    >>> import numpy as np
    >>> from wager.data.logged import LoggedFeedback
    >>> log = LoggedFeedback(
    ...     action=np.array([0, 1]), position=np.array([0, 0]), reward=np.array([1.0, 0.0]),
    ...     propensity=np.array([0.5, 0.5]), item_ids=np.array(["a", "b"]), n_positions=1)
    >>> pi = np.array([[[1.0], [0.0]], [[1.0], [0.0]]])
    >>> IPS().estimate(log, pi).value  # (2 * 1 + 0 * 0) / 2
    1.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from wager.data.logged import LoggedFeedback

_SUM_TOLERANCE = 1e-6
#: the interval methods of :meth:`OffPolicyEstimator.estimate`
INTERVALS = ("bca", "percentile")


@dataclass(frozen=True)
class Estimate:
    """One estimator's estimate of a policy value.

    Attributes:
        estimator: the estimator's key ("ips", "snips", "dm", "dr", "switch_dr", "replay").
        value: the point estimate (expected reward per impression).
        low: lower end of the percentile bootstrap interval.
        high: upper end of the interval.
        std_error: standard deviation of the bootstrap replicates.
        ess: effective sample size of the importance weights the estimator applies,
            ``(sum w)^2 / sum w^2`` (the number of rounds for the direct method).
        confidence_level: the interval's nominal coverage, e.g. 0.95.
        n_bootstrap: bootstrap replicates behind low / high / std_error.
        reward_draws: reward-model draws the replicates sampled from (0: none used).
    """

    estimator: str
    value: float
    low: float
    high: float
    std_error: float
    ess: float
    confidence_level: float
    n_bootstrap: int
    reward_draws: int = 0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict: value, low, high, std_error, ess (what ``wager ope --json`` prints)."""
        return {
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "std_error": self.std_error,
            "ess": self.ess,
        }


def check_action_distribution(log: LoggedFeedback, action_distribution: np.ndarray) -> np.ndarray:
    """Check an evaluation policy's action distribution against a log; return it as float64.

    Raises:
        ValueError: naming ``action_distribution``: wrong shape, a value that is not finite or
            is negative, or a (row, position) whose probabilities do not sum to 1.
    """
    d = np.asarray(action_distribution, dtype=np.float64)
    expected = (log.n_rounds, log.n_actions, log.n_positions)
    if d.shape != expected:
        raise ValueError(
            f"action_distribution has shape {d.shape}, expected {expected} (logged rows, "
            "actions, positions of the log)"
        )
    bad = ~np.isfinite(d) | (d < 0)
    if bad.any():
        row, action, pos = (int(v[0]) for v in np.nonzero(bad))
        raise ValueError(
            f"action_distribution[{row}, {action}, {pos}] holds {float(d[row, action, pos])!r}; "
            "probabilities must be finite and >= 0"
        )
    sums = d.sum(axis=1)
    off = np.abs(sums - 1.0) > _SUM_TOLERANCE
    if off.any():
        row, pos = (int(v[0]) for v in np.nonzero(off))
        raise ValueError(
            f"action_distribution row {row}, position {pos} sums to {float(sums[row, pos]):.6g} "
            "over the actions, not 1: pass each position's marginal distribution over them"
        )
    return d


def check_reward_draws(log: LoggedFeedback, reward_draws: np.ndarray | None) -> np.ndarray:
    """Check reward-model draws against a log; return them as (S, n, A, P) float64.

    Raises:
        ValueError: naming ``reward_draws``: missing, wrong shape, or a value not finite.
    """
    if reward_draws is None:
        raise ValueError(
            "reward_draws is None: this estimator needs the reward model's predictions, "
            "(S, n, n_actions, n_positions) with S draws (S = 1 for a point model)"
        )
    q = np.asarray(reward_draws, dtype=np.float64)
    shape = (log.n_rounds, log.n_actions, log.n_positions)
    if q.ndim != 4 or q.shape[1:] != shape or q.shape[0] < 1:
        raise ValueError(
            f"reward_draws has shape {q.shape}, expected (S, {', '.join(map(str, shape))}) "
            "(draws, logged rows, actions, positions); add a leading axis of 1 for a point model"
        )
    if not np.isfinite(q).all():
        idx = tuple(int(v[0]) for v in np.nonzero(~np.isfinite(q)))
        raise ValueError(f"reward_draws{list(idx)} is not finite; predictions must be numbers")
    return q


def importance_weights(log: LoggedFeedback, action_distribution: np.ndarray) -> np.ndarray:
    """(n,) per-impression weights ``pi(a_i | x_i, p_i) / propensity_i``."""
    rows = np.arange(log.n_rounds)
    pi = action_distribution[rows, log.action, log.position]
    return pi / np.asarray(log.propensity, dtype=np.float64)


def effective_sample_size(weights: np.ndarray) -> float:
    """``(sum w)^2 / sum w^2`` (0 when every weight is 0)."""
    w = np.asarray(weights, dtype=np.float64)
    sq = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / sq if sq > 0 else 0.0


@dataclass(frozen=True)
class Terms:
    """Per-round terms of a ratio estimator: value = sum(numerator) / sum(denominator).

    Attributes:
        numerator: (S, n) per-draw, per-round numerator (S = 1 without a reward model).
        denominator: (n,) per-round denominator (1 for mean estimators, w for SNIPS).
        weights: (n,) the importance weights behind the ESS (ones for DM).
    """

    numerator: np.ndarray
    denominator: np.ndarray
    weights: np.ndarray


class OffPolicyEstimator:
    """Base of every estimator: ``estimate`` -> :class:`Estimate` with a bootstrap interval.

    Subclasses are frozen dataclasses holding their parameters and implement
    :meth:`terms`; this base runs the checks and the bootstrap.
    """

    key: ClassVar[str] = ""
    uses_reward_model: ClassVar[bool] = False

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        """Per-round terms (see :class:`Terms`); inputs are already checked."""
        raise NotImplementedError

    def estimate(
        self,
        log: LoggedFeedback,
        action_distribution: np.ndarray,
        reward_draws: np.ndarray | None = None,
        *,
        confidence_level: float = 0.95,
        n_bootstrap: int = 1000,
        seed: int = 0,
        gaussian_draws: bool = True,
        interval: str = "bca",
    ) -> Estimate:
        """Estimate the value of the policy behind ``action_distribution`` from ``log``.

        Args:
            log: the logged impressions (n rows).
            action_distribution: (n, n_actions, n_positions) the evaluation policy's marginal
                distribution over actions at each position of each logged request.
            reward_draws: (S, n, n_actions, n_positions) reward-model draws (DM, DR and
                switch-DR); ignored by the estimators that use no reward model.
            confidence_level: nominal coverage of the interval, in (0, 1).
            n_bootstrap: bootstrap replicates (>= 2).
            seed: seed of the bootstrap's generator.
            gaussian_draws: how a replicate draws the reward model when S > 1: a Gaussian
                with the draws' mean and covariance (True) or one of the draws (False); see
                the module docstring.
            interval: ``"bca"`` (bias-corrected and accelerated percentiles, the default)
                or ``"percentile"`` (the replicates' plain percentiles); see the module
                docstring.

        Raises:
            ValueError: naming the offending argument (shapes, distributions that do not sum
                to 1, a missing reward model, an empty log, a level outside (0, 1)).
        """
        if not 0 < confidence_level < 1:
            raise ValueError(f"confidence_level={confidence_level} must be in (0, 1), e.g. 0.95")
        if n_bootstrap < 2:
            raise ValueError(f"n_bootstrap={n_bootstrap} must be >= 2")
        if interval not in INTERVALS:
            raise ValueError(f"interval={interval!r} must be one of {', '.join(INTERVALS)}")
        if log.n_rounds == 0:
            raise ValueError(f"log {log.source or ''} has no rows: nothing to estimate from")
        d = check_action_distribution(log, action_distribution)
        if self.uses_reward_model:
            q = check_reward_draws(log, reward_draws)
        else:
            q = np.zeros((1, 0, 0, 0))
        t = self.terms(log, d, q)
        value = _ratio(t.numerator.mean(axis=0), t.denominator)
        reps = _bootstrap(t, log.request, n_bootstrap, np.random.default_rng(seed), gaussian_draws)
        alpha = (1 - confidence_level) / 2
        levels = np.array([alpha, 1 - alpha])
        if interval == "bca":
            levels = bca_levels(reps, value, _influence(t, log.request, value), levels)
        low, high = np.quantile(reps, levels)
        return Estimate(
            estimator=self.key,
            value=value,
            low=float(low),
            high=float(high),
            std_error=float(np.std(reps, ddof=1)),
            ess=effective_sample_size(t.weights),
            confidence_level=confidence_level,
            n_bootstrap=n_bootstrap,
            reward_draws=int(q.shape[0]) if self.uses_reward_model else 0,
        )


def bca_levels(
    replicates: np.ndarray, value: float, influence: np.ndarray, levels: np.ndarray
) -> np.ndarray:
    """The BCa percentile levels (Efron 1987) that replace the nominal ``levels``.

    Args:
        replicates: (B,) bootstrap replicates of the estimate.
        value: the point estimate.
        influence: (G,) empirical influence of each resampled unit (round or request) on
            the estimate; its skewness gives the acceleration
            ``a = sum U^3 / (6 (sum U^2)^1.5)``.
        levels: nominal percentile levels in (0, 1), e.g. (0.025, 0.975).

    Returns:
        The levels ``Phi(z0 + (z0 + z) / (1 - a (z0 + z)))`` with ``z = Phi^-1(level)`` and
        the bias correction ``z0 = Phi^-1(share of replicates below value, ties halved)``;
        the nominal levels when the correction is undefined (every replicate on one side,
        or no spread).
    """
    from scipy.stats import norm

    reps = np.asarray(replicates, dtype=np.float64)
    share = (np.sum(reps < value) + 0.5 * np.sum(reps == value)) / max(len(reps), 1)
    u = np.asarray(influence, dtype=np.float64)
    ss = float(np.sum(u * u))
    if not 0 < share < 1 or ss <= 0 or not np.isfinite(ss):
        return levels
    z0 = float(norm.ppf(share))
    a = float(np.sum(u**3)) / (6.0 * ss**1.5)
    z = z0 + norm.ppf(levels)
    return np.asarray(norm.cdf(z0 + z / (1.0 - a * z)), dtype=np.float64)


def _units(request: np.ndarray | None, n: int) -> tuple[np.ndarray, int]:
    """(n,) the resampled unit of each round (its request, else itself) and the units' count."""
    if request is None:
        return np.arange(n), n
    _, groups = np.unique(np.asarray(request), return_inverse=True)
    return groups, int(groups.max()) + 1


def _influence(t: Terms, request: np.ndarray | None, value: float) -> np.ndarray:
    """(G,) empirical influence of each resampled unit on ``sum N / sum D`` at the reward
    model's mean: ``(N_g - value D_g) / mean(D)`` with N_g, D_g a unit's summed terms."""
    groups, n_units = _units(request, t.denominator.shape[0])
    num = np.bincount(groups, weights=t.numerator.mean(axis=0), minlength=n_units)
    den = np.bincount(groups, weights=t.denominator, minlength=n_units)
    scale = float(np.mean(den))
    if not np.isfinite(value) or scale <= 0:
        return np.zeros_like(num)
    return (num - value * den) / scale


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
    den = float(np.sum(denominator))
    return float(np.sum(numerator)) / den if den > 0 else float("nan")


def _bootstrap(
    t: Terms,
    request: np.ndarray | None,
    n_bootstrap: int,
    rng: np.random.Generator,
    gaussian_draws: bool = True,
) -> np.ndarray:
    """(n_bootstrap,) replicates: resample rounds (whole requests when given) and, per
    replicate, one reward-model draw (Gaussian in the draws' span, or one of them)."""
    n = t.denominator.shape[0]
    groups, n_groups = _units(request, n)
    n_draws = t.numerator.shape[0]
    out = np.empty(n_bootstrap)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        picks = rng.integers(0, n_groups, size=(b, n_groups)) + n_groups * np.arange(b)[:, None]
        counts = np.bincount(picks.ravel(), minlength=b * n_groups).reshape(b, n_groups)
        counts = counts[:, groups].astype(np.float64)  # (b, n) times each round is drawn
        if gaussian_draws and n_draws > 1:
            centre = t.numerator.mean(axis=0)
            g = rng.standard_normal((b, n_draws)) / np.sqrt(n_draws - 1)
            num = counts @ centre + np.sum(g * (counts @ (t.numerator - centre).T), axis=1)
        else:
            draw = rng.integers(0, n_draws, size=b)
            num = np.einsum("bn,bn->b", counts, t.numerator[draw])
        den = counts @ t.denominator
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + b] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out[np.isfinite(out)] if np.isfinite(out).any() else out


def _rewards(log: LoggedFeedback) -> np.ndarray:
    return np.asarray(log.reward, dtype=np.float64)


def _dm_terms(log: LoggedFeedback, d: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, n) policy-weighted predicted reward at each logged position, and (S, n) the
    prediction of the logged action."""
    rows = np.arange(log.n_rounds)
    pi_at = np.moveaxis(d, 2, 1)[rows, log.position]  # (n, A)
    q_at = np.moveaxis(q, 3, 2)[:, rows, log.position]  # (S, n, A)
    dm = np.einsum("sna,na->sn", q_at, pi_at)
    factual = q[:, rows, log.action, log.position]
    return dm, factual


@dataclass(frozen=True)
class IPS(OffPolicyEstimator):
    """Inverse propensity scoring: ``mean_i min(w_i, max_weight) r_i``.

    Unbiased when every action the evaluation policy may show had a positive logging
    propensity (and ``max_weight`` is None); clipping trades bias for variance.

    Attributes:
        max_weight: clip the importance weights at this value (> 0), or None (no clipping).
    """

    max_weight: float | None = None
    key: ClassVar[str] = "ips"

    def __post_init__(self) -> None:
        if self.max_weight is not None and not self.max_weight > 0:
            raise ValueError(f"IPS max_weight={self.max_weight} must be > 0 (or None)")

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        w = importance_weights(log, action_distribution)
        if self.max_weight is not None:
            w = np.minimum(w, self.max_weight)
        return Terms((w * _rewards(log))[None], np.ones_like(w), w)


@dataclass(frozen=True)
class SNIPS(OffPolicyEstimator):
    """Self-normalised IPS: ``sum_i w_i r_i / sum_i w_i`` (Open Bandit Pipeline's SNIPW)."""

    key: ClassVar[str] = "snips"

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        w = importance_weights(log, action_distribution)
        return Terms((w * _rewards(log))[None], w, w)


@dataclass(frozen=True)
class DirectMethod(OffPolicyEstimator):
    """Direct method: ``mean_i sum_a pi(a | x_i, p_i) q(x_i, a, p_i)`` from a reward model.

    Its bias is the reward model's; the interval includes the model's uncertainty through
    the draws (see the module docstring).
    """

    key: ClassVar[str] = "dm"
    uses_reward_model: ClassVar[bool] = True

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        dm, _ = _dm_terms(log, action_distribution, reward_draws)
        ones = np.ones(log.n_rounds)
        return Terms(dm, ones, ones)


@dataclass(frozen=True)
class DoublyRobust(OffPolicyEstimator):
    """Doubly robust: ``mean_i [DM_i + w_i (r_i - q(x_i, a_i, p_i))]``.

    Unbiased when either the propensities or the reward model are right.
    """

    key: ClassVar[str] = "dr"
    uses_reward_model: ClassVar[bool] = True

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        w = importance_weights(log, action_distribution)
        dm, factual = _dm_terms(log, action_distribution, reward_draws)
        return Terms(dm + w * (_rewards(log) - factual), np.ones_like(w), w)


@dataclass(frozen=True)
class SwitchDR(OffPolicyEstimator):
    """Switch doubly robust (Wang et al. 2017, as in Open Bandit Pipeline): the DR correction
    only where ``w_i <= tau``, the direct method alone elsewhere.

    Attributes:
        tau: the weight threshold (> 0); ``inf`` gives DR, a tiny value gives DM.
    """

    tau: float
    key: ClassVar[str] = "switch_dr"
    uses_reward_model: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"SwitchDR tau={self.tau} must be > 0")

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        w = importance_weights(log, action_distribution)
        kept = np.where(w <= self.tau, w, 0.0)
        dm, factual = _dm_terms(log, action_distribution, reward_draws)
        return Terms(dm + kept * (_rewards(log) - factual), np.ones_like(w), kept)


def is_uniform(log: LoggedFeedback, rtol: float = 1e-6) -> bool:
    """True when every logged propensity equals ``1 / n_actions`` (uniformly random logs)."""
    p = np.asarray(log.propensity, dtype=np.float64)
    return bool(np.allclose(p, 1.0 / log.n_actions, rtol=rtol, atol=0.0))


@dataclass(frozen=True)
class Replay(OffPolicyEstimator):
    """Replay (Li et al. 2011) for uniformly random logs: the mean reward of the impressions
    where the evaluation policy would have shown the logged action, each counted with the
    probability it had of doing so: ``sum_i pi(a_i | x_i, p_i) r_i / sum_i pi(a_i | x_i, p_i)``
    (a deterministic policy keeps exactly its matching impressions). Under uniform logging
    this equals SNIPS; ESS is ``(sum pi)^2 / sum pi^2``, the matched impressions.

    Raises (from :meth:`estimate`):
        ValueError: the log's propensities are not all ``1 / n_actions``.
    """

    key: ClassVar[str] = "replay"

    def terms(
        self, log: LoggedFeedback, action_distribution: np.ndarray, reward_draws: np.ndarray
    ) -> Terms:
        if not is_uniform(log):
            p = np.asarray(log.propensity)
            row = int(np.flatnonzero(~np.isclose(p, 1.0 / log.n_actions, rtol=1e-6, atol=0))[0])
            raise ValueError(
                f"Replay needs uniformly random logs, but propensity row {row} of "
                f"{log.source or 'the log'} is {p[row]:.6g}, not 1/n_actions = "
                f"{1 / log.n_actions:.6g}: use IPS or SNIPS"
            )
        rows = np.arange(log.n_rounds)
        pi = action_distribution[rows, log.action, log.position]
        return Terms((pi * _rewards(log))[None], pi, pi)
