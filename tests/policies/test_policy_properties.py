"""Properties every policy keeps (hypothesis): distinct items, each position's conditional
distribution and the marginal action distribution sum to 1 over the candidates, the
conditional puts no mass on items already shown, and propensities lie in [floor, 1]."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.policies import (
    UCB,
    EpsilonGreedy,
    Greedy,
    Policy,
    PolicyState,
    SoftmaxPolicy,
    ThompsonSampling,
)
from wager.prediction import Prediction

POLICIES = st.one_of(
    st.just(Greedy()),
    st.floats(0.0, 1.0).map(lambda e: EpsilonGreedy(e, propensity_floor=1e-3)),
    st.floats(0.0, 5.0).map(UCB),
    st.floats(0.05, 10.0).map(SoftmaxPolicy),
    st.integers(1, 40).map(lambda d: ThompsonSampling(draws=d, propensity_floor=0.01)),
)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Prediction, int, int]:
    b, c = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    k = draw(st.integers(1, c))
    values = st.floats(-5.0, 5.0, allow_nan=False)
    mean = torch.tensor(draw(st.lists(values, min_size=b * c, max_size=b * c)))
    std = torch.tensor(draw(st.lists(st.floats(0.0, 2.0), min_size=b * c, max_size=b * c)))
    pred = Prediction(mean.double().view(b, c), std=std.double().view(b, c))
    return pred, k, draw(st.integers(0, 2**31 - 1))


@settings(max_examples=120, deadline=None)
@given(policy=POLICIES, case=cases())
def test_probabilities_sum_to_one_and_propensities_lie_in_floor_one(
    policy: Policy, case: tuple[Prediction, int, int]
) -> None:
    pred, k, seed = case
    b, c = pred.mean.shape
    slate = policy.select(pred, k, PolicyState.seeded(seed))
    assert slate.items.shape == (b, k) and slate.propensities.shape == (b, k)
    for row in slate.items.tolist():
        assert len(set(row)) == k and all(0 <= i < c for i in row)
    floor = slate.propensity_floor
    assert bool(((slate.propensities >= floor) & (slate.propensities <= 1.0)).all())
    dist = slate.distribution
    assert dist is not None and dist.shape == (b, k, c)
    torch.testing.assert_close(dist.sum(-1), torch.ones(b, k, dtype=torch.float64))
    for j in range(1, k):  # no mass on what earlier positions showed
        shown = dist[:, j].gather(1, slate.items[:, :j])
        assert bool((shown == 0).all())
    chosen = dist.gather(2, slate.items.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(slate.propensities, chosen.clamp(floor, 1.0))
    marg = policy.action_distribution(pred, k, PolicyState.seeded(seed), draws=30)
    assert marg.shape == (b, k, c) and bool((marg >= 0).all())
    torch.testing.assert_close(marg.sum(-1), torch.ones(b, k, dtype=torch.float64))
