"""beta_posterior: the moment match and Beta-binomial update worked by hand and against
scipy.stats.beta, the concentration bounds, the draws, properties, and named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from wager.prediction import MixturePrediction, Prediction
from wager.uncertainty.online import (
    DEFAULT_MAX_CONCENTRATION,
    beta_posterior,
    prior_concentration,
)


def _pred(mean: list[list[float]], std: list[list[float]] | None) -> Prediction:
    m = torch.tensor(mean, dtype=torch.float64)
    return Prediction(m, std=None if std is None else torch.tensor(std, dtype=torch.float64))


def test_update_matches_a_hand_computed_beta_and_scipy_moments() -> None:
    # prior 0.2 +- 0.1: a + b = 0.2 * 0.8 / 0.01 - 1 = 15, so Beta(3, 12); column 0 sees 5
    # clicks in 10 impressions -> Beta(8, 17): mean 8 / 25 = 0.32, var 8 * 17 / (625 * 26)
    # column 1 sees nothing and keeps the prior (0.3 +- 0.05: a + b = 83, Beta(24.9, 58.1))
    # column 2: 0 clicks in 4 effective impressions from prior 0.1 +- 0.1: a + b = 8,
    # Beta(0.8, 7.2) -> Beta(0.8, 11.2)
    prior = _pred([[0.2, 0.3, 0.1]], [[0.1, 0.05, 0.1]])
    post = beta_posterior(prior, impressions=[10.0, 0.0, 4.0], clicks=[5.0, 0.0, 0.0])
    assert post.mean[0, 0].item() == pytest.approx(0.32, abs=1e-12)
    assert post.std is not None
    assert post.std[0, 0].item() == pytest.approx((136 / 16250) ** 0.5, abs=1e-12)
    for col, (a, b) in enumerate(((8.0, 17.0), (24.9, 58.1), (0.8, 11.2))):
        ref = stats.beta(a, b)
        assert post.mean[0, col].item() == pytest.approx(ref.mean(), rel=1e-10)
        assert post.std[0, col].item() == pytest.approx(ref.std(), rel=1e-10)
    # no counts: the prior's mean and std come back
    assert post.mean[0, 1].item() == pytest.approx(0.3, abs=1e-12)
    assert post.std[0, 1].item() == pytest.approx(0.05, abs=1e-12)
    assert post.support == (0.0, 1.0)
    assert post.epistemic_std is post.std
    assert post.samples is None
    assert post.method == "+beta_posterior"


def test_counts_per_column_broadcast_over_requests_and_per_request_counts_work() -> None:
    prior = _pred([[0.2, 0.3], [0.4, 0.1]], [[0.1, 0.1], [0.1, 0.1]])
    per_col = beta_posterior(prior, [10.0, 2.0], [5.0, 1.0])
    per_cell = beta_posterior(prior, [[10.0, 2.0], [10.0, 2.0]], [[5.0, 1.0], [5.0, 1.0]])
    assert torch.equal(per_col.mean, per_cell.mean)
    # row 1, column 0: prior 0.4 +- 0.1 -> a + b = 23, Beta(9.2, 13.8) -> Beta(14.2, 18.8)
    assert per_col.mean[1, 0].item() == pytest.approx(14.2 / 33.0, abs=1e-12)


def test_concentration_floor_and_cap() -> None:
    # 0.5 +- 0.6 is wider than any Beta of mean 0.5 (sd <= 0.5): floored at a + b = 1,
    # Beta(0.5, 0.5); one click -> Beta(1.5, 0.5), mean 0.75
    wide = beta_posterior(_pred([[0.5]], [[0.6]]), [1.0], [1.0])
    assert wide.mean.item() == pytest.approx(stats.beta(1.5, 0.5).mean(), abs=1e-12)
    assert wide.std is not None
    assert wide.std.item() == pytest.approx(stats.beta(1.5, 0.5).std(), abs=1e-12)
    # std 0 claims certainty: capped at 1e6 pseudo-observations, barely moved by 100 clicks
    known = beta_posterior(_pred([[0.2]], [[0.0]]), [100.0], [100.0])
    cap = DEFAULT_MAX_CONCENTRATION
    assert known.mean.item() == pytest.approx((0.2 * cap + 100) / (cap + 100), abs=1e-12)
    nu = prior_concentration(np.array([0.5, 0.2, 0.2]), np.array([0.6, 0.0, 0.1]))
    assert nu.tolist() == [1.0, cap, pytest.approx(15.0)]
    # a mean of exactly 0 is clamped to 1e-6 (a Beta needs a > 0); a click lifts it
    zero = beta_posterior(_pred([[0.0]], [[0.1]]), [1.0], [1.0], min_concentration=2.0)
    assert zero.mean.item() == pytest.approx((2.0 * 1e-6 + 1.0) / 3.0, abs=1e-9)


def test_draws_follow_the_posterior_beta_and_mixtures_use_their_moments() -> None:
    prior = _pred([[0.2, 0.05]], [[0.1, 0.02]])
    rng = np.random.default_rng(0)
    post = beta_posterior(prior, [10.0, 20.0], [5.0, 0.0], draws=20_000, generator=rng)
    assert post.samples is not None and tuple(post.samples.shape) == (20_000, 1, 2)
    a0, b0 = 8.0, 17.0
    nu1 = 0.05 * 0.95 / 0.02**2 - 1
    a1, b1 = 0.05 * nu1, 0.95 * nu1 + 20.0
    for col, (a, b) in enumerate(((a0, b0), (a1, b1))):
        draws = post.samples[:, 0, col].numpy()
        ks = stats.kstest(draws, stats.beta(a, b).cdf)
        assert ks.pvalue > 0.001
    mix = MixturePrediction.from_components(
        torch.tensor([[[0.5, 0.5]]], dtype=torch.float64),
        torch.tensor([[[0.1, 0.3]]], dtype=torch.float64),
        torch.tensor([[[0.05, 0.05]]], dtype=torch.float64),
    )
    assert mix.std is not None
    from_moments = beta_posterior(Prediction(mix.mean, std=mix.std), [3.0], [1.0])
    assert torch.equal(beta_posterior(mix, [3.0], [1.0]).mean, from_moments.mean)


_prob = st.floats(0.02, 0.98)


@settings(max_examples=200, deadline=None)
@given(
    mean=_prob,
    rel_sd=st.floats(0.05, 0.95),
    n=st.floats(0.0, 500.0),
    frac=st.floats(0.0, 1.0),
    extra=st.floats(0.5, 50.0),
)
def test_more_clicks_raise_the_mean_more_non_clicks_lower_it_and_the_std(
    mean: float, rel_sd: float, n: float, frac: float, extra: float
) -> None:
    std = rel_sd * (mean * (1 - mean)) ** 0.5
    prior = _pred([[mean]], [[std]])
    clicks = frac * n
    base = beta_posterior(prior, [n], [clicks])
    more_clicks = beta_posterior(prior, [n + extra], [clicks + extra])  # extra impressions, clicked
    more_fails = beta_posterior(prior, [n + extra], [clicks])  # extra impressions, not clicked
    assert more_clicks.mean.item() > base.mean.item()
    assert more_fails.mean.item() < base.mean.item()
    assert base.std is not None and more_fails.std is not None
    if base.mean.item() <= 0.5:  # b >= a: a non-click always narrows the Beta
        assert more_fails.std.item() < base.std.item()
    # impressions at the posterior's own rate keep the mean and always lower the std
    rate = base.mean.item()
    same = beta_posterior(prior, [n + extra], [clicks + rate * extra])
    assert same.mean.item() == pytest.approx(rate, abs=1e-9)
    assert same.std is not None and same.std.item() < base.std.item()


@pytest.mark.parametrize(
    ("prediction", "kwargs", "message"),
    [
        (_pred([[0.2]], None), {}, r"needs the prediction's std.*deterministic"),
        (_pred([[3.5]], [[0.1]]), {}, r"click probabilities.*not in \[0, 1\].*3\.5"),
        (_pred([[0.2]], [[float("nan")]]), {}, r"std must be a finite number >= 0"),
        (_pred([[0.2, 0.3]], [[0.1, 0.1]]), {"impressions": [1.0]}, r"impressions has shape"),
        (_pred([[0.2]], [[0.1]]), {"clicks": [-1.0]}, r"clicks must be a finite count >= 0"),
        (_pred([[0.2]], [[0.1]]), {"clicks": [3.0]}, r"clicks exceed impressions"),
        (_pred([[0.2]], [[0.1]]), {"draws": 5}, r"draws > 0 needs a generator"),
        (_pred([[0.2]], [[0.1]]), {"draws": -1}, r"draws must be an integer >= 0"),
        (_pred([[0.2]], [[0.1]]), {"min_concentration": 0.0}, r"0 < min_concentration"),
        (_pred([[0.2]], [[0.1]]), {"min_concentration": 5.0, "max_concentration": 2.0}, r"<="),
    ],
)
def test_bad_inputs_are_named(prediction: Prediction, kwargs: dict, message: str) -> None:
    args = {"impressions": [2.0] * prediction.mean.shape[1], "clicks": [1.0], **kwargs}
    if len(args["clicks"]) != prediction.mean.shape[1] and "clicks" not in kwargs:
        args["clicks"] = [1.0] * prediction.mean.shape[1]
    with pytest.raises(ValueError, match=message):
        beta_posterior(prediction, **args)
