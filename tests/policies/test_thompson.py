"""Thompson sampling: Monte Carlo propensities converge to the closed form
P(a > b) = Phi((mu_a - mu_b) / sqrt(s_a^2 + s_b^2)) for two Gaussian candidates, and the
sample-based and mixture draws follow their own closed forms."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

from wager.policies import PolicyState, ThompsonSampling
from wager.prediction import MixturePrediction, Prediction

MU, SD = (0.3, 0.0), (0.2, 0.4)
P_A = float(norm.cdf((MU[0] - MU[1]) / math.hypot(*SD)))  # Phi(0.6708) = 0.7488


def _two_gaussians(rows: int) -> Prediction:
    return Prediction(torch.tensor([MU] * rows), std=torch.tensor([SD] * rows))


@pytest.mark.parametrize("draws", [200, 20000])
def test_propensities_converge_to_the_gaussian_closed_form(draws):
    slate = ThompsonSampling(draws=draws).select(_two_gaussians(20), 2, PolicyState.seeded(0))
    exact = torch.where(slate.items[:, 0] == 0, P_A, 1 - P_A).double()
    se = math.sqrt(P_A * (1 - P_A) / draws)
    err = (slate.propensities[:, 0] - exact).abs()
    assert float(err.max()) <= 4.5 * se
    assert float(err.mean()) <= 1.5 * se  # E|error| = 0.8 se for a normal error
    assert slate.propensities[:, 1].tolist() == [1.0] * 20  # one candidate left
    assert slate.draws == draws and slate.policy == f"thompson(draws={draws})"


def test_chosen_items_and_action_distribution_follow_the_closed_form():
    n = 20000
    slate = ThompsonSampling(draws=10).select(_two_gaussians(n), 1, PolicyState.seeded(1))
    freq = float((slate.items[:, 0] == 0).double().mean())
    assert abs(freq - P_A) <= 4 * math.sqrt(P_A * (1 - P_A) / n)
    marg = ThompsonSampling().action_distribution(
        _two_gaussians(1), 2, PolicyState.seeded(2), draws=20000
    )[0]
    ref = torch.tensor([[P_A, 1 - P_A], [1 - P_A, P_A]], dtype=torch.float64)
    torch.testing.assert_close(marg, ref, atol=0.015, rtol=0)


def test_sample_based_predictions_draw_a_random_member_per_candidate():
    # a in {0, 1, 2}, b in {0.5, 1.5, 2.5}, each uniform: P(a > b) = (0 + 1 + 2) / 9 = 1/3
    members = torch.tensor([[[0.0, 0.5]], [[1.0, 1.5]], [[2.0, 2.5]]])
    p = Prediction.from_members(members)
    marg = ThompsonSampling().action_distribution(p, 1, PolicyState.seeded(0), draws=30000)
    assert abs(float(marg[0, 0, 0]) - 1 / 3) <= 4 * math.sqrt(2 / 9 / 30000)


def test_mixture_predictions_draw_a_component_then_its_gaussian():
    # a: 0.25 N(-1, 1e-3^2) + 0.75 N(1, 1e-3^2); b: N(0, 1e-3^2): P(a > b) = 0.75
    p = MixturePrediction.from_components(
        torch.tensor([[[0.25, 0.75], [0.5, 0.5]]]),
        torch.tensor([[[-1.0, 1.0], [0.0, 0.0]]]),
        torch.full((1, 2, 2), 1e-3),
    )
    slate = ThompsonSampling(draws=30000).select(p, 1, PolicyState.seeded(0))
    dist = slate.distribution
    assert dist is not None
    assert abs(float(dist[0, 0, 0]) - 0.75) <= 4 * math.sqrt(0.75 * 0.25 / 30000)


def test_seeded_states_give_identical_slates():
    p = Prediction(torch.randn(10, 6), std=torch.rand(10, 6) + 0.1)
    a = ThompsonSampling(draws=50).select(p, 4, PolicyState.seeded(9))
    b = ThompsonSampling(draws=50).select(p, 4, PolicyState.seeded(9))
    assert torch.equal(a.items, b.items) and torch.equal(a.propensities, b.propensities)


def test_thompson_on_a_deterministic_prediction_says_use_greedy():
    with pytest.raises(ValueError, match=r"thompson\(draws=1000\) needs an uncertainty.*Greedy"):
        ThompsonSampling().select(Prediction(torch.zeros(1, 2)), 1, PolicyState())


@pytest.mark.parametrize("draws", [0, -3, 1.5, True])
def test_bad_draws_are_named(draws):
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        ThompsonSampling(draws=draws)
    with pytest.raises(ValueError, match="draws must be an integer >= 1"):
        ThompsonSampling().action_distribution(_two_gaussians(1), 1, PolicyState(), draws=draws)
