"""Recommender.recommend with a policy: candidates by the mean, predicted with full
uncertainty, picked by the policy; checked against rec.predict over the same candidates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.policies import (
    UCB,
    EpsilonGreedy,
    Greedy,
    PolicyState,
    SoftmaxPolicy,
    ThompsonSampling,
)
from wager.recommender import Recommender
from wager.recommender.listing import COLUMNS, default_candidates

N_ITEMS = 30


@pytest.fixture(scope="module")
def rec() -> Recommender:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 3000
    u, i = rng.integers(0, 40, n), rng.integers(0, N_ITEMS, n)
    click = (rng.random(n) < np.where(i < 10, 0.3, 0.1)).astype(int)
    df = pd.DataFrame({"user_id": u, "item_id": i, "click": click})
    cfg = RunConfig(
        schema=Schema(label="click"),
        model=ModelConfig(dim=4),
        training=TrainConfig(epochs=3, batch_size=512, learning_rate=0.05),
        ensemble=EnsembleConfig(members=3),
        seed=0,
    )
    return Recommender(cfg).fit(df.iloc[:2500], df.iloc[2500:])


def _all_items(rec: Recommender, user: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items, mean, std) of every catalogue item for ``user`` by rec.predict."""
    items = np.asarray(rec.scorer_.catalogue.items, dtype=object)
    pred = rec.predict([user] * len(items), items)
    assert pred.std is not None
    return items, pred.mean.numpy(), pred.std.numpy()


def test_greedy_policy_ranks_all_candidates_by_predicted_mean_with_propensity_one(rec):
    users = [1, 2, "cold"]
    frame = rec.recommend(users, k=5, exclude_seen=False, policy=Greedy())
    assert list(frame.columns) == [*COLUMNS, "propensity"]
    assert (frame["propensity"] == 1.0).all()
    assert frame["user"].tolist() == [u for u in users for _ in range(5)]  # users' order
    assert frame["rank"].tolist() == [1, 2, 3, 4, 5] * 3
    for user in users:
        items, mean, _ = _all_items(rec, user)
        expected = items[np.argsort(-mean, kind="stable")[:5]]
        assert frame.loc[frame.user == user, "item"].tolist() == expected.tolist()
    assert frame.attrs["policy"] == {
        "name": "greedy",
        "propensity_floor": Greedy().propensity_floor,
        "draws": None,
        "candidates": default_candidates(5),
    }
    assert default_candidates(5) == 100 and default_candidates(12) == 120


def test_ucb_with_a_large_beta_picks_the_most_uncertain_items(rec):
    frame = rec.recommend([3], k=4, exclude_seen=False, policy=UCB(beta=1000.0))
    items, _, std = _all_items(rec, 3)
    assert frame["item"].tolist() == items[np.argsort(-std, kind="stable")[:4]].tolist()
    np.testing.assert_allclose(frame["std"], np.sort(std)[::-1][:4], rtol=1e-6)
    assert (frame["propensity"] == 1.0).all()


def test_epsilon_greedy_propensities_follow_the_closed_form(rec):
    eps, k = 0.4, 3
    frame = rec.recommend(
        [1, 2, 5], k=k, exclude_seen=False, policy=EpsilonGreedy(eps), state=PolicyState.seeded(0)
    )
    for user, rows in frame.groupby("user", sort=False):
        items, mean, _ = _all_items(rec, user)
        left = list(items[np.argsort(-mean, kind="stable")])  # all 30 are candidates
        for item, prop in zip(rows["item"], rows["propensity"], strict=True):
            best = left[0]
            ref = (1 - eps) + eps / len(left) if item == best else eps / len(left)
            assert prop == pytest.approx(ref, rel=1e-9)
            left.remove(item)


def test_the_candidates_are_the_best_by_the_mean_and_exclude_seen_items(rec):
    seen = rec.scorer_.catalogue.seen_rows([1])
    seen_items = set(np.asarray(rec.scorer_.catalogue.items, dtype=object)[seen.indices])
    frame = rec.recommend(
        [1, 2], k=6, policy=SoftmaxPolicy(10.0), candidates=8, state=PolicyState.seeded(1)
    )
    assert not set(frame.loc[frame.user == 1, "item"]) & seen_items
    top8 = rec.recommend([1, 2], k=8)  # without a policy: the 8 best by the mean
    for user in (1, 2):
        assert set(frame.loc[frame.user == user, "item"]) <= set(
            top8.loc[top8.user == user, "item"]
        )
    assert frame.attrs["policy"]["candidates"] == 8
    assert ((frame["propensity"] > 0) & (frame["propensity"] <= 1)).all()


def test_seeded_states_give_identical_frames_and_thompson_records_its_draws(rec):
    a = rec.recommend(
        [1, 2, 3], k=4, policy=ThompsonSampling(draws=50), state=PolicyState.seeded(5)
    )
    b = rec.recommend(
        [1, 2, 3], k=4, policy=ThompsonSampling(draws=50), state=PolicyState.seeded(5)
    )
    pd.testing.assert_frame_equal(a, b)
    assert a.attrs["policy"]["draws"] == 50 and a.attrs["policy"]["name"] == "thompson(draws=50)"
    assert (a.groupby("user")["item"].nunique() == 4).all()


def test_without_a_policy_the_frame_is_unchanged(rec):
    frame = rec.recommend([1, 2], k=3)
    assert list(frame.columns) == COLUMNS and "policy" not in frame.attrs


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (
            {"candidates": 2, "policy": Greedy()},
            ValueError,
            "candidates must be an integer >= k = 3",
        ),
        ({"state": PolicyState()}, ValueError, "state applies only with a policy"),
        ({"candidates": 50}, ValueError, "candidates applies only with a policy"),
        ({"policy": "ucb"}, TypeError, "policy must be a wager.policies.Policy"),
        ({"policy": Greedy(), "state": 3}, TypeError, "state must be a wager.policies.PolicyState"),
    ],
)
def test_bad_policy_arguments_are_named(rec, kwargs, error, message):
    with pytest.raises(error, match=message):
        rec.recommend([1], k=3, **kwargs)
