"""Tests of the synthetic world: known truth, statistics with tolerances from theory."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import softmax

from wager.data.synthetic import (
    PopularityPolicy,
    SoftmaxOraclePolicy,
    SyntheticWorld,
    UniformPolicy,
    WorldConfig,
)
from wager.errors import DataError

SIGMAS = 4.0  # every statistical check allows 4 standard deviations (two-sided p ~ 6e-5)


@pytest.fixture(scope="module")
def world() -> SyntheticWorld:
    return SyntheticWorld(WorldConfig(seed=7))


@pytest.fixture(scope="module")
def big_log(world: SyntheticWorld) -> pd.DataFrame:
    return world.sample_log(300_000, seed=11)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_users": 2.5}, "n_users"),
        ({"n_users": True}, "n_users"),
        ({"n_items": -1}, "n_items"),
        ({"n_days": 0}, "n_days"),
        ({"new_items_per_day": -1}, "new_items_per_day"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"base_ctr": 0.0}, "base_ctr"),
        ({"base_ctr": 0.7}, "base_ctr"),
        ({"base_ctr": float("nan")}, "base_ctr"),
        ({"popularity_exponent": -0.1}, "popularity_exponent"),
        ({"n_positions": 0}, "n_positions"),
        ({"hidden_strength": -1.0}, "hidden_strength"),
        ({"hidden_strength": float("inf")}, "hidden_strength"),
        ({"taste_strength": -0.5}, "taste_strength"),
        ({"taste_strength": 11.0}, "taste_strength"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation_names_field_value_and_range(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"WorldConfig\.{field} must be .* in [\[(].*got") as e:
        WorldConfig(**kwargs)
    assert repr(next(iter(kwargs.values()))) in str(e.value)


def test_config_round_trip_and_total_items() -> None:
    cfg = WorldConfig(n_users=50, n_items=20, n_days=4, new_items_per_day=3, seed=5)
    assert WorldConfig(**asdict(cfg)) == cfg
    assert cfg.n_items_total == 20 + 3 * (4 - 1)


def test_softmax_oracle_temperature_validated() -> None:
    with pytest.raises(ValueError, match=r"temperature .* > 0, got 0"):
        SoftmaxOraclePolicy(temperature=0)


# ----------------------------------------------------------------------------- tables


def test_users_and_items_tables(world: SyntheticWorld) -> None:
    cfg = world.config
    users, items = world.users, world.items
    assert list(users.columns) == ["user_id", "segment", "country", "age"]
    np.testing.assert_array_equal(users["user_id"], np.arange(cfg.n_users))
    assert users["user_id"].dtype == np.int64
    assert users["segment"].nunique() == 5
    assert users["country"].nunique() == 8
    shares = users["country"].value_counts(normalize=True)
    assert shares.iloc[0] > 3 * shares.iloc[-1]  # skewed
    # ~2% missing ages: Binomial(2000, 0.02) has mean 40 and sd sqrt(2000*0.02*0.98) = 6.26
    n_missing = int(users["age"].isna().sum())
    assert abs(n_missing - 40) <= SIGMAS * 6.26

    assert list(items.columns) == [
        "item_id",
        "category",
        "brand",
        "price",
        "tags",
        "title",
        "day_added",
    ]
    assert len(items) == cfg.n_items_total == 300 + 10 * 6
    np.testing.assert_array_equal(items["item_id"], np.arange(cfg.n_items_total))
    assert items["category"].nunique() == 10
    assert 20 <= items["brand"].nunique() <= 40
    brand_counts = items["brand"].value_counts()
    assert brand_counts.iloc[0] > 5 * brand_counts.median()  # skewed
    assert (items["price"] > 0).all()
    n_tags = items["tags"].str.split("|").map(len)
    assert n_tags.between(1, 3).all()
    assert items["tags"].str.split("|").map(lambda t: len(set(t)) == len(t)).all()
    n_words = items["title"].str.split(" ").map(len)
    assert n_words.between(2, 5).all()
    assert items["day_added"].dtype == np.int64


def test_schema_columns_exist(world: SyntheticWorld) -> None:
    log = world.sample_log(100, seed=1)
    s = world.schema()
    assert set(s.interaction_columns) <= set(log.columns)
    assert {f.name for f in s.user_features} <= set(world.users.columns)
    assert {f.name for f in s.item_features} <= set(world.items.columns)
    assert (s.label, s.label_kind, s.propensity, s.timestamp) == (
        "click",
        "click",
        "propensity",
        "day",
    )
    agg = world.aggregate(50, seed=1)
    a = world.aggregate_schema()
    assert (a.label, a.label_kind, a.impressions, a.clicks) == (
        "ctr",
        "ctr",
        "impressions",
        "clicks",
    )
    # every column the schema names exists in the aggregate table (the user role included)
    assert set(a.interaction_columns) <= set(agg.columns)
    assert a.user == "context_id"
    assert (agg["context_id"] == agg["segment"] + "|" + agg["country"]).all()


# ----------------------------------------------------------------------------- true CTR


def test_true_ctr_range_spread_and_mean(world: SyntheticWorld) -> None:
    m = world.true_ctr_matrix()
    base = world.config.base_ctr
    assert m.shape == (world.config.n_users, world.config.n_items_total)
    assert np.isfinite(m).all() and (m > 0).all() and (m < 1).all()
    q5, q95 = np.percentile(m, [5, 95])
    assert q5 < 0.5 * base and q95 > 2 * base
    # exposure-weighted mean: users uniform, items by popularity; the intercept is solved
    # for it, so it is base_ctr to solver precision (the brief asks only for 25%)
    weighted = m.mean(axis=0) @ world.popularity
    assert weighted == pytest.approx(base, rel=1e-9)
    assert world.ground_truth()["true_mean_ctr"] == pytest.approx(base, rel=1e-9)


def test_true_ctr_elementwise_matches_matrix_and_position_bias(world: SyntheticWorld) -> None:
    users = np.array([0, 5, 17, 1999])
    items = np.array([0, 3, 359, 42])
    m = world.true_ctr_matrix(users, items)
    np.testing.assert_allclose(world.true_ctr(users[:, None], items[None, :]), m, rtol=1e-12)
    # broadcasting: a scalar user against a vector of items
    np.testing.assert_allclose(world.true_ctr(5, items), m[1], rtol=1e-12)
    # examination model: ctr(k) = ctr(1) / log2(1 + k); 1/log2(3) = 0.6309, 1/log2(4) = 0.5
    bias = np.array([1.0, 0.63092975357, 0.5])
    np.testing.assert_allclose(world.position_bias, bias, rtol=1e-10)
    for k in (1, 2, 3):
        np.testing.assert_allclose(world.true_ctr(users, items, k), bias[k - 1] * np.diag(m))
    np.testing.assert_allclose(world.true_ctr(users, items, None), np.diag(m), rtol=1e-12)


def test_missing_age_gets_mean_age_effect(world: SyntheticWorld) -> None:
    users = world.users
    missing = users.index[users["age"].isna()].to_numpy()
    assert missing.size > 0
    assert np.isfinite(world.true_ctr_matrix(missing)).all()
    # a user with missing age scores exactly like a twin at the mean age: rebuild the same
    # user's logit by hand from the ground-truth effects (age z = 0 leaves only the rest)
    gt = world.ground_truth()
    u = int(missing[0])
    seg, country = users.loc[u, ["segment", "country"]]
    v = int(
        users.index[
            (users["segment"] == seg) & (users["country"] == country) & users["age"].notna()
        ][0]
    )
    m = world.true_ctr_matrix([u, v])
    logit = np.log(m / (1 - m))
    z_v = (users.loc[v, "age"] - gt["effects"]["age_mean"]) / gt["effects"]["age_std"]
    slopes = world.items["category"].map(gt["effects"]["age_category_slope_per_std"]).to_numpy()
    age_part_v = (gt["effects"]["age_per_std"] + slopes) * z_v
    # the two users differ only by age (z) and by their hidden latent vectors
    hidden = (
        world.config.hidden_strength
        * (world._user_latent[[u, v]] @ world._item_latent.T)
        / np.sqrt(world.config.latent_dim)
    )
    diff = (logit[0] - hidden[0]) - (logit[1] - hidden[1] - age_part_v)
    np.testing.assert_allclose(diff, 0.0, atol=1e-9)


def test_hidden_strength_zero_leaves_only_observable_features() -> None:
    w = SyntheticWorld(WorldConfig(n_users=400, n_items=60, n_days=2, hidden_strength=0.0))
    users = w.users.dropna()
    twins = users[users.duplicated(["segment", "country", "age"], keep=False)]
    _, group = next(iter(twins.groupby(["segment", "country", "age"])))
    m = w.true_ctr_matrix(group["user_id"].to_numpy())
    np.testing.assert_allclose(m, np.broadcast_to(m[0], m.shape), rtol=1e-12)
    assert w.ground_truth()["logit_variance"]["observable_share"] == pytest.approx(1.0)


def test_taste_strength_zero_leaves_the_hidden_part_at_item_level() -> None:
    # users with the same features get the same CTR, although the hidden item bias is on
    cfg = WorldConfig(n_users=400, n_items=60, n_days=2, hidden_strength=3.0, taste_strength=0.0)
    w = SyntheticWorld(cfg)
    users = w.users.dropna()
    twins = users[users.duplicated(["segment", "country", "age"], keep=False)]
    _, group = next(iter(twins.groupby(["segment", "country", "age"])))
    m = w.true_ctr_matrix(group["user_id"].to_numpy())
    np.testing.assert_allclose(m, np.broadcast_to(m[0], m.shape), rtol=1e-12)
    # the item bias still moves the CTR: the default world (taste 1) differs from it only by
    # the scaled latent dot product (and the intercept solved for the base CTR)
    full = SyntheticWorld(replace(cfg, taste_strength=1.0))

    def logit(world):
        return np.log(world.true_ctr_matrix([0, 1]) / (1 - world.true_ctr_matrix([0, 1])))

    dot = 3.0 * (full._user_latent[[0, 1]] @ full._item_latent.T) / np.sqrt(cfg.latent_dim)
    diff = logit(full) - dot - logit(w)
    np.testing.assert_allclose(diff, full._intercept - w._intercept, atol=1e-9)
    assert np.ptp(logit(w)[0]) > 3.0  # item bias sd x 3 plus the observable item effects


def test_observable_features_explain_a_meaningful_part(world: SyntheticWorld) -> None:
    share = world.ground_truth()["logit_variance"]["observable_share"]
    assert 0.3 < share < 0.7


def test_true_ctr_rejects_bad_ids_and_positions(world: SyntheticWorld) -> None:
    with pytest.raises(DataError, match=r"column 'user_ids', row 2: ids out of range.*0\.\.1999"):
        world.true_ctr([0, 2000], [1, 1])
    with pytest.raises(DataError, match=r"column 'item_ids'.*0\.\.359"):
        world.true_ctr_matrix([0], [-1])
    with pytest.raises(DataError, match=r"column 'position', row 1: positions .* 1\.\.3"):
        world.true_ctr([0, 1], [1, 1], np.array([0, 1]))


def test_ground_truth_is_json_ready(world: SyntheticWorld) -> None:
    gt = json.loads(json.dumps(world.ground_truth()))
    assert gt["config"]["seed"] == 7
    assert gt["position_bias"][0] == 1.0
    assert set(gt["effects"]["segment_category"]) == set(world.users["segment"])


# ----------------------------------------------------------------------------- popularity


@pytest.mark.parametrize("exponent", [0.8, 1.1, 1.5])
def test_popularity_follows_power_law(exponent: float) -> None:
    w = SyntheticWorld(WorldConfig(n_users=10, n_items=500, n_days=1, popularity_exponent=exponent))
    pop = w.popularity
    assert pop.shape == (500,)
    assert pop.sum() == pytest.approx(1.0, abs=1e-12)
    ranked = np.sort(pop)[::-1]
    slope, _ = np.polyfit(np.log(np.arange(1, 501)), np.log(ranked), 1)
    assert abs(slope + exponent) <= 0.1
    # the ranks are a random permutation of the items, not item-id order
    assert not (np.diff(pop) <= 0).all()


# ----------------------------------------------------------------------------- logs


def test_log_columns_and_dtypes(big_log: pd.DataFrame, world: SyntheticWorld) -> None:
    assert list(big_log.columns) == [
        "user_id",
        "item_id",
        "position",
        "day",
        "click",
        "propensity",
        "true_ctr",
    ]
    for col in ("user_id", "item_id", "position", "day", "click"):
        assert big_log[col].dtype == np.int64, col
    assert set(np.unique(big_log["click"])) == {0, 1}
    assert big_log["position"].between(1, 3).all()
    assert big_log["day"].is_monotonic_increasing
    # true_ctr column is the truth at the row's position
    head = big_log.iloc[:1000]
    np.testing.assert_allclose(
        head["true_ctr"],
        world.true_ctr(head["user_id"], head["item_id"], head["position"]),
        rtol=1e-12,
    )


def test_clicks_match_true_ctr_overall_and_by_decile(big_log: pd.DataFrame) -> None:
    p = big_log["true_ctr"].to_numpy()
    y = big_log["click"].to_numpy()
    n = len(p)
    # Var(mean click | p) = sum p(1 - p) / n^2
    assert abs(y.mean() - p.mean()) <= SIGMAS * np.sqrt((p * (1 - p)).sum()) / n
    edges = np.quantile(p, np.linspace(0, 1, 11))
    bucket = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, 9)
    for b in range(10):
        pb, yb = p[bucket == b], y[bucket == b]
        assert len(pb) > 10_000
        tol = SIGMAS * np.sqrt((pb * (1 - pb)).sum()) / len(pb)
        assert abs(yb.mean() - pb.mean()) <= tol, b


def test_positions_uniform_and_independent_of_items(big_log: pd.DataFrame) -> None:
    counts = np.bincount(big_log["position"], minlength=4)[1:]
    n = len(big_log)
    # each position ~ Binomial(n, 1/3): sd = sqrt(n * 1/3 * 2/3)
    assert np.all(np.abs(counts - n / 3) <= SIGMAS * np.sqrt(n * 2 / 9))
    # mean propensity of the chosen item does not depend on the position
    by_pos = big_log.groupby("position")["propensity"].mean()
    assert by_pos.max() - by_pos.min() < 0.05 * by_pos.mean()


def test_popularity_propensity_is_exact(big_log: pd.DataFrame, world: SyntheticWorld) -> None:
    denom = np.array([world.popularity[world.available_items(d)].sum() for d in range(7)])
    expected = world.popularity[big_log["item_id"]] / denom[big_log["day"]]
    np.testing.assert_array_equal(big_log["propensity"].to_numpy(), expected)


def test_popularity_selection_frequency_matches_propensity(world: SyntheticWorld) -> None:
    n = 200_000
    log = world.sample_log(n, PopularityPolicy(), day=0, seed=3)
    avail = world.available_items(0)
    q = world.popularity[avail] / world.popularity[avail].sum()
    top = avail[np.argsort(-q)[:10]]
    freq = np.bincount(log["item_id"], minlength=world.config.n_items_total)[top] / n
    prop = log.groupby("item_id")["propensity"].first()[top].to_numpy()
    # frequency of an item with probability q is Binomial(n, q) / n: sd sqrt(q(1 - q) / n)
    assert np.all(np.abs(freq - prop) <= SIGMAS * np.sqrt(prop * (1 - prop) / n))


def test_uniform_policy_propensity(world: SyntheticWorld) -> None:
    log = world.sample_log(20_000, UniformPolicy(), seed=4)
    n_avail = 300 + 10 * log["day"].to_numpy()
    np.testing.assert_array_equal(log["propensity"].to_numpy(), 1.0 / n_avail)


def test_oracle_propensity_is_softmax_of_true_ctr(world: SyntheticWorld) -> None:
    policy = SoftmaxOraclePolicy(temperature=0.02)
    log = world.sample_log(3000, policy, seed=5)
    for d, part in log.groupby("day"):
        cands = world.available_items(int(d))
        # independent path: elementwise true_ctr (not true_ctr_matrix) and scipy softmax
        ctr = world.true_ctr(part["user_id"].to_numpy()[:, None], cands[None, :])
        probs = softmax(ctr / 0.02, axis=1)
        col = np.searchsorted(cands, part["item_id"].to_numpy())
        np.testing.assert_allclose(part["propensity"], probs[np.arange(len(part)), col], rtol=1e-9)


def test_oracle_selection_frequency_single_user() -> None:
    w = SyntheticWorld(WorldConfig(n_users=1, n_items=20, n_days=1, seed=2))
    n = 50_000
    policy = SoftmaxOraclePolicy(temperature=0.02)
    log = w.sample_log(n, policy, seed=6)
    q = policy.probabilities(w, np.array([0]), np.arange(20), 0)[0]
    freq = np.bincount(log["item_id"], minlength=20) / n
    assert np.all(np.abs(freq - q) <= SIGMAS * np.sqrt(q * (1 - q) / n) + 1e-12)


def test_oracle_policy_beats_popularity(world: SyntheticWorld) -> None:
    # mean true CTR of the chosen items: the oracle's is higher by construction
    oracle = world.sample_log(20_000, SoftmaxOraclePolicy(0.01), seed=8)["true_ctr"].mean()
    popular = world.sample_log(20_000, PopularityPolicy(), seed=8)["true_ctr"].mean()
    assert oracle > 2 * popular


def test_new_items_arrive_each_day(world: SyntheticWorld) -> None:
    log = world.sample_log(70_000, UniformPolicy(), seed=9)
    added = world.items["day_added"].to_numpy()
    assert (added[log["item_id"]] <= log["day"]).all()
    for d in range(world.config.n_days):
        assert len(world.available_items(d)) == 300 + 10 * d
        if d:
            # with ~10k uniform draws among <= 360 items each day, every new item appears
            shown = set(log.loc[log["day"] == d, "item_id"])
            assert set(np.flatnonzero(added == d)) <= shown


def test_fixed_day(world: SyntheticWorld) -> None:
    log = world.sample_log(500, day=3, seed=1)
    assert (log["day"] == 3).all()
    assert log["item_id"].isin(world.available_items(3)).all()
    with pytest.raises(ValueError, match=r"day must be an integer in \[0, 6\], got 7"):
        world.sample_log(10, day=7)


def test_bad_policy_is_reported() -> None:
    class Broken:
        def probabilities(self, world, user_ids, candidates, day):
            return np.full((len(user_ids), len(candidates)), 0.5)

    w = SyntheticWorld(WorldConfig(n_users=20, n_items=5, n_days=1))
    with pytest.raises(ValueError, match=r"Broken\.probabilities: rows 1, 2.*sum to 1"):
        w.sample_log(10, Broken(), seed=0)


@settings(max_examples=15, deadline=None)
@given(
    n_users=st.integers(1, 30),
    n_items=st.integers(1, 15),
    n_days=st.integers(1, 4),
    new=st.integers(0, 5),
    temperature=st.floats(1e-3, 10.0),
    seed=st.integers(0, 1000),
)
def test_policies_give_probability_rows(
    n_users: int, n_items: int, n_days: int, new: int, temperature: float, seed: int
) -> None:
    w = SyntheticWorld(
        WorldConfig(
            n_users=n_users, n_items=n_items, n_days=n_days, new_items_per_day=new, seed=seed
        )
    )
    users = np.arange(n_users)
    for policy in (PopularityPolicy(), UniformPolicy(), SoftmaxOraclePolicy(temperature)):
        for d in range(n_days):
            p = policy.probabilities(w, users, w.available_items(d), d)
            assert p.shape == (n_users, n_items + new * d)
            assert (p >= 0).all()
            np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
        log = w.sample_log(200, policy, seed=seed)
        added = w.items["day_added"].to_numpy()
        assert (added[log["item_id"]] <= log["day"]).all()
        assert ((log["propensity"] > 0) & (log["propensity"] <= 1)).all()


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_noise_matches_binomial_theory(world: SyntheticWorld) -> None:
    agg = world.aggregate(8000, seed=13)
    assert list(agg.columns) == [
        "context_id",
        "item_id",
        "segment",
        "country",
        "impressions",
        "clicks",
        "ctr",
        "true_ctr",
    ]
    assert not agg.duplicated(["item_id", "segment", "country"]).any()
    n = agg["impressions"].to_numpy().astype(float)
    k = agg["clicks"].to_numpy()
    p = agg["true_ctr"].to_numpy()
    assert ((k >= 0) & (k <= n)).all()
    assert n.min() >= 1 and n.max() <= 10_000
    assert n.max() / n.min() >= 100  # at least two orders of magnitude
    assert np.median(n) < 500 and (n >= 1000).mean() > 0.1  # mostly few, some thousands
    np.testing.assert_array_equal(agg["ctr"], k / n)

    e = agg["ctr"].to_numpy() - p
    rows = len(e)
    # E[e] = 0, Var(e) = p(1 - p)/n  =>  sd of the mean = sqrt(sum p(1-p)/n) / rows
    var_e = p * (1 - p) / n
    assert abs(e.mean()) <= SIGMAS * np.sqrt(var_e.sum()) / rows
    # E[e^2] = p(1-p)/n; Var(e^2) = mu4/n^4 - (p(1-p)/n)^2 with the binomial fourth central
    # moment mu4 = n p q (1 + 3 (n - 2) p q)
    pq = p * (1 - p)
    mu4 = n * pq * (1 + 3 * (n - 2) * pq)
    var_e2 = mu4 / n**4 - var_e**2
    assert abs(np.mean(e**2) - var_e.mean()) <= SIGMAS * np.sqrt(var_e2.sum()) / rows
    # the same per decade of impressions: the noise variance falls as 1/n over 4 decades
    decade = np.floor(np.log10(n)).astype(int)
    for d in range(4):
        sel = decade == d
        assert sel.sum() > 1000
        tol = SIGMAS * np.sqrt(var_e2[sel].sum()) / sel.sum()
        assert abs(np.mean(e[sel] ** 2) - var_e[sel].mean()) <= tol, d
    noise = [var_e[decade == d].mean() for d in range(4)]
    # log-uniform impressions: E[1/n] drops ~10x per decade (p varies, so allow 5x..20x)
    assert all(5 < noise[d] / noise[d + 1] < 20 for d in range(3))


def test_aggregate_true_ctr_is_group_mean(world: SyntheticWorld) -> None:
    agg = world.aggregate(300, seed=14)
    m = world.true_ctr_matrix()
    users = world.users
    for row in agg.iloc[:25].itertuples():
        members = (users["segment"] == row.segment) & (users["country"] == row.country)
        assert row.true_ctr == pytest.approx(m[members.to_numpy(), row.item_id].mean(), rel=1e-12)


def test_aggregate_rejects_too_many_rows() -> None:
    w = SyntheticWorld(WorldConfig(n_users=30, n_items=4, n_days=1))
    n_groups = w.users.groupby(["segment", "country"]).ngroups
    assert len(w.aggregate(4 * n_groups, seed=0)) == 4 * n_groups
    with pytest.raises(ValueError, match=rf"n_rows must be an integer in \[1, {4 * n_groups}\]"):
        w.aggregate(4 * n_groups + 1)
    with pytest.raises(ValueError, match=r"max_impressions must be an integer >= 5, got 2"):
        w.aggregate(3, min_impressions=5, max_impressions=2)


# ----------------------------------------------------------------------------- determinism


def test_same_seed_same_world_and_samples() -> None:
    cfg = WorldConfig(n_users=300, n_items=40, n_days=3, seed=21)
    a, b = SyntheticWorld(cfg), SyntheticWorld(cfg)
    pd.testing.assert_frame_equal(a.users, b.users)
    pd.testing.assert_frame_equal(a.items, b.items)
    np.testing.assert_array_equal(a.popularity, b.popularity)
    np.testing.assert_array_equal(a.true_ctr_matrix(), b.true_ctr_matrix())
    policy = SoftmaxOraclePolicy()
    pd.testing.assert_frame_equal(
        a.sample_log(2000, policy, seed=3), b.sample_log(2000, policy, seed=3)
    )
    pd.testing.assert_frame_equal(a.aggregate(200, seed=3), b.aggregate(200, seed=3))
    # seed=None samples with config.seed
    pd.testing.assert_frame_equal(a.sample_log(500), b.sample_log(500, seed=21))
    pd.testing.assert_frame_equal(a.aggregate(100), b.aggregate(100, seed=21))


def test_different_seeds_differ() -> None:
    a = SyntheticWorld(WorldConfig(n_users=300, n_items=40, n_days=3, seed=1))
    b = SyntheticWorld(WorldConfig(n_users=300, n_items=40, n_days=3, seed=2))
    assert not a.items["price"].equals(b.items["price"])
    assert not np.array_equal(a.true_ctr_matrix(), b.true_ctr_matrix())
    assert not a.sample_log(500, seed=1).equals(a.sample_log(500, seed=2))
    assert not a.aggregate(100, seed=1).equals(a.aggregate(100, seed=2))


def test_config_changes_keep_effect_tables() -> None:
    # users, items and effect tables come from separate streams: more users leaves the items
    # alone; base_ctr only moves the intercept, i.e. shifts every logit by one constant
    a = SyntheticWorld(WorldConfig(n_users=100, n_items=30, n_days=1, seed=4))
    b = SyntheticWorld(WorldConfig(n_users=200, n_items=30, n_days=1, seed=4))
    c = SyntheticWorld(WorldConfig(n_users=100, n_items=30, n_days=1, seed=4, base_ctr=0.08))
    pd.testing.assert_frame_equal(a.items, b.items)
    pd.testing.assert_frame_equal(a.users, c.users)
    ma, mc = a.true_ctr_matrix(), c.true_ctr_matrix()
    shift = np.log(mc / (1 - mc)) - np.log(ma / (1 - ma))
    np.testing.assert_allclose(shift, shift[0, 0], atol=1e-9)
    assert shift[0, 0] > 0
