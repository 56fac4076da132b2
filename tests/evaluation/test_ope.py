"""Off-policy estimators against hand computations, closed forms and simulations."""

from __future__ import annotations

import numpy as np
import pytest

from wager.data.logged import LoggedFeedback
from wager.evaluation.ope import (
    IPS,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    Replay,
    SwitchDR,
    context_free_distribution,
    estimate_all,
    plot_estimates,
)

# Six impressions, two actions, two positions:
#   row  action  position  reward  propensity
#   0    0       0         1       0.5
#   1    1       0         0       0.5
#   2    0       1         1       0.25
#   3    1       1         1       0.75
#   4    0       0         0       0.5
#   5    1       1         0       0.75
ACTION = np.array([0, 1, 0, 1, 0, 1])
POSITION = np.array([0, 0, 1, 1, 0, 1])
REWARD = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
PROPENSITY = np.array([0.5, 0.5, 0.25, 0.75, 0.5, 0.75])
# the evaluation policy: position 0 shows action 0 w.p. 0.8; position 1 each w.p. 0.5
PI = np.array([[0.8, 0.5], [0.2, 0.5]])  # (action, position)


def _log(**changes: object) -> LoggedFeedback:
    args: dict[str, object] = {
        "action": ACTION,
        "position": POSITION,
        "reward": REWARD,
        "propensity": PROPENSITY,
        "item_ids": np.array(["a", "b"]),
        "n_positions": 2,
        "source": "hand-made",
    }
    args.update(changes)
    return LoggedFeedback(**args)  # type: ignore[arg-type]


def _pi(n: int = 6) -> np.ndarray:
    return np.broadcast_to(PI, (n, 2, 2)).copy()


def test_ips_on_a_hand_made_log() -> None:
    # w = pi / propensity = 0.8/0.5, 0.2/0.5, 0.5/0.25, 0.5/0.75, 0.8/0.5, 0.5/0.75
    #   = 1.6, 0.4, 2, 2/3, 1.6, 2/3
    # sum w r = 1.6 + 2 + 2/3 = 64/15; IPS = 64/15 / 6 = 32/45
    est = IPS().estimate(_log(), _pi(), n_bootstrap=200)
    assert est.value == pytest.approx(32 / 45, rel=1e-12)
    # ESS = (sum w)^2 / sum w^2 = (104/15)^2 / (2288/225) = 10816 / 2288
    assert est.ess == pytest.approx(10816 / 2288, rel=1e-12)
    assert est.low <= est.value <= est.high
    # clipped at 1.5: w r = 1.5 + 1.5 + 2/3 = 11/3; / 6 = 11/18
    assert IPS(max_weight=1.5).estimate(_log(), _pi()).value == pytest.approx(11 / 18)


def test_snips_on_a_hand_made_log() -> None:
    # sum w r / sum w = (64/15) / (104/15) = 8/13
    est = SNIPS().estimate(_log(), _pi(), n_bootstrap=200)
    assert est.value == pytest.approx(8 / 13, rel=1e-12)


def test_dm_dr_and_switch_by_hand() -> None:
    # q(a, p) the same for every row: q = [[0.6, 0.2], [0.1, 0.4]] (action, position)
    q = np.broadcast_to(np.array([[0.6, 0.2], [0.1, 0.4]]), (1, 6, 2, 2)).copy()
    # DM per row: position 0 -> 0.8*0.6 + 0.2*0.1 = 0.5; position 1 -> 0.5*0.2 + 0.5*0.4 = 0.3
    # rows' positions 0,0,1,1,0,1 -> DM = (3*0.5 + 3*0.3) / 6 = 0.4
    assert DirectMethod().estimate(_log(), _pi(), q).value == pytest.approx(0.4)
    # residuals r - q(a_i, p_i): 0.4, -0.1, 0.8, 0.6, -0.6, -0.4
    # w * residual: 0.64, -0.04, 1.6, 0.4, -0.96, -4/15 -> sum = 1.64 - 4/15 = 1.37333
    dr = DoublyRobust().estimate(_log(), _pi(), q).value
    assert dr == pytest.approx(0.4 + (1.64 - 4 / 15) / 6)
    # switch at tau = 1: corrections kept where w <= 1 (rows 1, 3, 5): -0.04 + 0.4 - 4/15
    sw = SwitchDR(tau=1.0).estimate(_log(), _pi(), q).value
    assert sw == pytest.approx(0.4 + (-0.04 + 0.4 - 4 / 15) / 6)
    assert SwitchDR(tau=np.inf).estimate(_log(), _pi(), q).value == pytest.approx(dr)


def test_dr_equals_dm_when_the_reward_model_is_exact() -> None:
    rng = np.random.default_rng(0)
    n, a, p = 400, 5, 2
    q = rng.uniform(0.1, 0.9, size=(n, a, p))
    action = rng.integers(0, a, n)
    position = rng.integers(0, p, n)
    reward = q[np.arange(n), action, position]  # noise-free rewards: every correction is 0
    log = LoggedFeedback(
        action=action, position=position, reward=reward, propensity=np.full(n, 1 / a),
        item_ids=np.arange(a), n_positions=p,
    )  # fmt: skip
    pi = rng.dirichlet(np.ones(a), size=(n, p)).transpose(0, 2, 1)
    dm = DirectMethod().estimate(log, pi, q[None], n_bootstrap=50)
    dr = DoublyRobust().estimate(log, pi, q[None], n_bootstrap=50)
    assert dr.value == pytest.approx(dm.value, rel=1e-12)
    # Bernoulli rewards from the same exact model: the correction is zero-mean, so DR - DM
    # over many logs averages to 0 within 3 standard errors
    diffs = []
    for seed in range(100):
        g = np.random.default_rng(seed + 1)
        clicks = (g.random(n) < reward).astype(float)
        noisy = LoggedFeedback(
            action=action, position=position, reward=clicks, propensity=np.full(n, 1 / a),
            item_ids=np.arange(a), n_positions=p,
        )  # fmt: skip
        d = DoublyRobust().estimate(noisy, pi, q[None], n_bootstrap=2).value
        diffs.append(d - dm.value)
    assert abs(np.mean(diffs)) < 3 * np.std(diffs, ddof=1) / np.sqrt(len(diffs))


def test_dm_interval_widens_when_reward_draws_disagree() -> None:
    rng = np.random.default_rng(1)
    n, a, p = 300, 4, 2
    base = rng.uniform(0.2, 0.4, size=(n, a, p))
    shifts = np.linspace(-0.1, 0.1, 21)  # 21 draws: the model's level is unsure by +-0.1
    draws = base[None] + shifts[:, None, None, None]
    log = LoggedFeedback(
        action=rng.integers(0, a, n), position=rng.integers(0, p, n),
        reward=(rng.random(n) < 0.3).astype(float), propensity=np.full(n, 1 / a),
        item_ids=np.arange(a), n_positions=p,
    )  # fmt: skip
    pi = np.full((n, a, p), 1 / a)
    one = DirectMethod().estimate(log, pi, base[None], n_bootstrap=400)
    many = DirectMethod().estimate(log, pi, draws, n_bootstrap=400)
    assert many.value == pytest.approx(one.value)  # the draws average to the same model
    assert (many.high - many.low) > 5 * (one.high - one.low)
    # the spread of the replicates is about that of the shifts (sd of uniform grid ~0.062)
    assert many.std_error == pytest.approx(np.std(shifts), rel=0.2)


def test_ips_is_unbiased_in_simulation() -> None:
    rng = np.random.default_rng(2)
    a, p, n = 6, 2, 600
    ctr = rng.uniform(0.02, 0.3, size=(a, p))
    logging = rng.dirichlet(np.ones(a), size=p).T  # (a, p)
    target = rng.dirichlet(np.ones(a), size=p).T
    # half the impressions at each position: truth = mean over positions of sum_a pi q
    truth = float(np.mean((target * ctr).sum(axis=0)))
    position = np.repeat(np.arange(p), n // p)
    values, errors = [], []
    for seed in range(300):
        g = np.random.default_rng(100 + seed)
        action = np.array([g.choice(a, p=logging[:, j]) for j in position])
        reward = (g.random(n) < ctr[action, position]).astype(float)
        log = LoggedFeedback(
            action=action, position=position, reward=reward,
            propensity=logging[action, position], item_ids=np.arange(a), n_positions=p,
        )  # fmt: skip
        est = IPS().estimate(log, np.broadcast_to(target, (n, a, p)), n_bootstrap=100, seed=seed)
        values.append(est.value)
        errors.append(est.std_error)
    mean, sd = float(np.mean(values)), float(np.std(values, ddof=1))
    assert abs(mean - truth) < 3 * sd / np.sqrt(len(values))
    # the bootstrap standard error matches the spread over logs
    assert np.mean(errors) == pytest.approx(sd, rel=0.15)


def test_bootstrap_standard_error_matches_the_closed_form() -> None:
    rng = np.random.default_rng(3)
    n, a = 2000, 4
    action = rng.integers(0, a, n)
    reward = (rng.random(n) < 0.2).astype(float)
    log = LoggedFeedback(
        action=action, position=np.zeros(n, dtype=np.int64), reward=reward,
        propensity=np.full(n, 1 / a), item_ids=np.arange(a), n_positions=1,
    )  # fmt: skip
    pi = np.zeros((n, a, 1))
    pi[:, 0, 0] = 1.0
    est = IPS().estimate(log, pi, n_bootstrap=2000)
    terms = np.where(action == 0, a * reward, 0.0)
    assert est.std_error == pytest.approx(np.std(terms) / np.sqrt(n), rel=0.1)
    # whole requests resampled together: pairs of identical rows double the variance of a
    # per-row bootstrap over the same rows, so the grouped one is sqrt(2) wider
    doubled = LoggedFeedback(
        action=np.repeat(action, 2), position=np.zeros(2 * n, dtype=np.int64),
        reward=np.repeat(reward, 2), propensity=np.full(2 * n, 1 / a), item_ids=np.arange(a),
        n_positions=1, request=np.repeat(np.arange(n), 2),
    )  # fmt: skip
    grouped = IPS().estimate(doubled, np.repeat(pi, 2, axis=0), n_bootstrap=2000)
    assert grouped.std_error == pytest.approx(est.std_error, rel=0.1)


def test_replay_on_uniform_logs() -> None:
    log = _log(propensity=np.full(6, 0.5))
    pi = np.zeros((6, 2, 2))
    pi[:, 0, :] = 1.0  # always action 0: matches rows 0, 2, 4 with rewards 1, 1, 0
    est = Replay().estimate(log, pi)
    assert est.value == pytest.approx(2 / 3)
    assert est.ess == pytest.approx(3.0)
    assert Replay().estimate(log, _pi()).value == pytest.approx(SNIPS().estimate(log, _pi()).value)
    with pytest.raises(ValueError, match=r"Replay needs uniformly random logs.*propensity row 2"):
        Replay().estimate(_log(), _pi())


def test_estimate_all_and_plot(tmp_path) -> None:
    q = np.full((3, 6, 2, 2), 0.4) + np.arange(3)[:, None, None, None] * 0.05
    out = estimate_all(_log(), _pi(), q, truth=0.5, n_bootstrap=100)
    assert list(out["estimates"]) == ["ips", "snips", "dm", "dr", "switch_dr"]
    assert out["estimates"]["ips"]["value"] == pytest.approx(32 / 45)
    assert out["estimates"]["ips"]["relative_error"] == pytest.approx(abs(32 / 45 - 0.5) / 0.5)
    assert out["on_policy"] == 0.5 and out["confidence_level"] == 0.95
    assert out["reward_draws"] == 3
    assert set(estimate_all(_log(), _pi())["estimates"]) == {"ips", "snips"}
    png = plot_estimates(out, tmp_path / "ope.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_context_free_distribution() -> None:
    # constant propensities summing to 1 per position are used as they are
    uniform = _log(propensity=np.full(6, 0.5))
    d = context_free_distribution(uniform, 4)
    assert d.shape == (4, 2, 2)
    np.testing.assert_allclose(d, 0.5)
    # drifting propensities: empirical frequency per position
    # position 0 shows actions 0, 1, 0 -> 2/3, 1/3; position 1 shows 0, 1, 1 -> 1/3, 2/3
    d = context_free_distribution(_log(propensity=np.array([0.5, 0.4, 0.2, 0.7, 0.6, 0.8])), 2)
    np.testing.assert_allclose(d[0], [[2 / 3, 1 / 3], [1 / 3, 2 / 3]])


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: IPS().estimate(_log(), _pi()[:5]), r"action_distribution has shape \(5, 2, 2\)"),
        (
            lambda: IPS().estimate(_log(), _pi() * 0.9),
            r"action_distribution row 0, position 0 sums to 0\.9",
        ),
        (
            lambda: IPS().estimate(_log(), _pi() * -1),
            r"action_distribution\[0, 0, 0\] holds -0\.8",
        ),
        (lambda: DirectMethod().estimate(_log(), _pi()), r"reward_draws is None"),
        (
            lambda: DoublyRobust().estimate(_log(), _pi(), np.zeros((6, 2, 2))),
            r"reward_draws has shape \(6, 2, 2\), expected \(S, 6, 2, 2\)",
        ),
        (
            lambda: _log(propensity=np.array([0.5, 0.0, 0.25, 0.75, 0.5, 0.75])),
            r"propensity: row 1 holds 0\.0",
        ),
        (lambda: IPS(max_weight=0.0), r"max_weight=0\.0 must be > 0"),
        (lambda: SwitchDR(tau=-1.0), r"tau=-1\.0 must be > 0"),
        (
            lambda: IPS().estimate(_log(), _pi(), confidence_level=95),
            r"confidence_level=95 must be in \(0, 1\)",
        ),
    ],
)
def test_bad_inputs_name_the_field(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_gaussian_reward_draws_reach_the_tails_member_draws_do_not() -> None:
    # 5 draws of a reward model that is 0.3 everywhere, shifted by -0.1 .. 0.1: DM's
    # replicate is 0.3 + sum_s g_s shift_s / sqrt(4) (row resampling changes nothing), a
    # normal of sd sqrt(sum shift^2 / 4) = sqrt(0.025 / 4) = 0.0791 (the draws' sample sd);
    # picking one member per replicate stays inside [0.2, 0.4]
    n, a, p = 50, 2, 1
    shifts = np.array([-0.1, -0.05, 0.0, 0.05, 0.1])
    draws = np.full((5, n, a, p), 0.3) + shifts[:, None, None, None]
    log = LoggedFeedback(
        action=np.zeros(n, dtype=np.int64), position=np.zeros(n, dtype=np.int64),
        reward=np.zeros(n), propensity=np.full(n, 0.5), item_ids=np.arange(a), n_positions=p,
    )  # fmt: skip
    pi = np.full((n, a, p), 0.5)
    gauss = DirectMethod().estimate(log, pi, draws, n_bootstrap=4000)
    assert gauss.value == pytest.approx(0.3)
    assert gauss.std_error == pytest.approx(np.std(shifts, ddof=1), rel=0.05)
    assert gauss.low == pytest.approx(0.3 - 1.96 * 0.0791, rel=0.05)
    assert gauss.high == pytest.approx(0.3 + 1.96 * 0.0791, rel=0.05)
    member = DirectMethod().estimate(log, pi, draws, n_bootstrap=4000, gaussian_draws=False)
    assert member.low >= 0.2 - 1e-12 and member.high <= 0.4 + 1e-12


# ------------------------------------------------------------------------- BCa intervals


def test_bca_levels_match_scipy_on_a_skewed_mean() -> None:
    """For a mean, the empirical-influence acceleration equals the jackknife one that
    scipy.stats.bootstrap(method="BCa") uses: on scipy's own replicates, the same ends."""
    from scipy.stats import bootstrap

    from wager.evaluation.ope import bca_levels

    x = np.random.default_rng(3).lognormal(0.0, 1.2, 80)
    res = bootstrap(
        (x,), np.mean, confidence_level=0.95, n_resamples=4000, method="BCa",
        random_state=np.random.default_rng(0),
    )  # fmt: skip
    reps = res.bootstrap_distribution
    levels = bca_levels(reps, float(x.mean()), x - x.mean(), np.array([0.025, 0.975]))
    low, high = np.quantile(reps, levels)
    assert low == pytest.approx(res.confidence_interval.low, rel=1e-3)
    assert high == pytest.approx(res.confidence_interval.high, rel=1e-3)
    # right skew: both ends move up from the plain percentiles
    assert levels[0] > 0.025 and levels[1] > 0.975


def test_bca_levels_fall_back_to_nominal_when_undefined() -> None:
    from wager.evaluation.ope import bca_levels

    nominal = np.array([0.05, 0.95])
    same = np.full(100, 2.0)  # no spread: every replicate ties the value
    assert np.array_equal(bca_levels(same, 1.0, np.ones(5), nominal), nominal)  # all above
    assert np.array_equal(bca_levels(np.arange(10.0), 4.5, np.zeros(5), nominal), nominal)
    # symmetric influence and a centred value: z0 = 0, a = 0 -> the nominal levels
    sym = bca_levels(np.arange(11.0), 5.0, np.array([-1.0, 1.0]), nominal)
    assert sym == pytest.approx(nominal, abs=1e-12)


def test_bca_covers_a_heavy_tailed_ips_better_than_percentiles() -> None:
    """IPS with rare large weights: the evaluated action is logged with propensity 0.02, so
    about 20 of 1,000 rounds carry weight 50 and 4 of them a click. The plain percentile
    interval misses mostly from below (a log with few such clicks looks certain of a low
    value); BCa moves the ends up and brings the misses below the interval to their share."""
    rng = np.random.default_rng(0)
    n, reps, ctr, p_show = 1000, 200, 0.2, 0.02
    covered = {"bca": 0, "percentile": 0}
    below = {"bca": 0, "percentile": 0}  # the truth above the interval
    pi = np.zeros((n, 2, 1))
    pi[:, 0, 0] = 1.0
    for r in range(reps):
        shown = rng.random(n) < p_show
        log = LoggedFeedback(
            action=np.where(shown, 0, 1), position=np.zeros(n, dtype=np.int64),
            reward=((rng.random(n) < ctr) & shown).astype(float),
            propensity=np.where(shown, p_show, 1 - p_show), item_ids=np.array(["a", "b"]),
            n_positions=1,
        )  # fmt: skip
        for method in covered:
            e = IPS().estimate(
                log, pi, confidence_level=0.9, n_bootstrap=400, seed=r, interval=method
            )
            covered[method] += e.low <= ctr <= e.high
            below[method] += e.high < ctr
    assert below["bca"] < below["percentile"]
    assert below["percentile"] / reps > 0.08  # twice its nominal 0.05
    assert 0.85 <= covered["bca"] / reps <= 0.97, covered


def test_interval_method_is_checked() -> None:
    with pytest.raises(ValueError, match=r"interval='normal' must be one of bca, percentile"):
        IPS().estimate(_log(), _pi(), interval="normal")
