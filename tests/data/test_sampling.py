"""Tests of wager.data.sampling: never a positive, sizes, distributions, determinism, errors."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from wager.data import sampling
from wager.data.sampling import PopularityNegatives, UniformNegatives
from wager.data.schema import Schema
from wager.errors import DataError

SCHEMA = Schema(user="user_id", item="item_id")
SAMPLERS = [UniformNegatives(), PopularityNegatives(alpha=1.0), PopularityNegatives(alpha=0.5)]


@pytest.fixture(params=["auto", "rejection", "exact"])
def draw_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the default routing, with rejection sampling only, and exact only."""
    if request.param == "rejection":
        monkeypatch.setattr(sampling, "_MAX_REJECTED_MASS", 1.0)
        monkeypatch.setattr(sampling, "_REJECTION_ROUNDS", 100_000)
    elif request.param == "exact":
        monkeypatch.setattr(sampling, "_MAX_REJECTED_MASS", -1.0)
    return str(request.param)


def pairs(df: pd.DataFrame) -> set[tuple[object, object]]:
    return set(zip(df["user_id"], df["item_id"], strict=True))


def assert_within_binomial(counts: pd.Series, expected: dict[object, float], n_draws: int) -> None:
    """Per item |f - p| <= 4 sqrt(p (1 - p) / N); items with p = 0 never drawn."""
    freq = counts / n_draws
    for item, p in expected.items():
        f = float(freq.get(item, 0.0))
        assert abs(f - p) <= 4 * np.sqrt(p * (1 - p) / n_draws), (item, f, p)
    assert set(freq.index) <= set(expected), "an item outside the allowed set was drawn"
    # chi-square goodness of fit on the same counts
    items = list(expected)
    observed = np.array([counts.get(i, 0) for i in items], dtype=float)
    probs = np.array([expected[i] for i in items])
    assert stats.chisquare(observed, probs * n_draws).pvalue > 1e-4


def dense_positives() -> pd.DataFrame:
    """30 dense users (38 of 40 items) and 20 sparse users (3 items)."""
    rng = np.random.default_rng(0)
    rows = []
    for u in range(50):
        k = 38 if u < 30 else 3
        rows += [(f"u{u}", f"i{i}") for i in rng.choice(40, size=k, replace=False)]
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_never_a_positive_and_shape(sampler: object, draw_path: str) -> None:
    pos = dense_positives()
    neg = sampler.sample(pos, SCHEMA, 4, np.random.default_rng(1))
    assert list(neg.columns) == ["user_id", "item_id"]
    # 30 * 38 + 20 * 3 = 1200 positive rows, 4 negatives each = 4800 rows
    assert len(neg) == 1200 * 4
    assert neg.index.equals(pd.RangeIndex(4800))
    # rows i*4 .. i*4+3 belong to positive row i
    assert neg["user_id"].tolist() == np.repeat(pos["user_id"].to_numpy(), 4).tolist()
    assert not pairs(neg) & pairs(pos)
    assert set(neg["item_id"]) <= set(pos["item_id"])


def test_uniform_frequencies(draw_path: str) -> None:
    # catalogue i0..i9. User a holds i0, i1, i2; user b holds i0..i7.
    catalogue = np.array([f"i{k}" for k in range(10)])
    pos = pd.DataFrame(
        {
            "user_id": ["a"] * 3 + ["b"] * 8,
            "item_id": [f"i{k}" for k in range(3)] + [f"i{k}" for k in range(8)],
        }
    )
    n = 10_000
    neg = UniformNegatives().sample(pos, SCHEMA, n, np.random.default_rng(2), items=catalogue)
    a = neg.loc[neg["user_id"] == "a", "item_id"].value_counts()
    b = neg.loc[neg["user_id"] == "b", "item_id"].value_counts()
    # a: 3 rows * 10_000 = 30_000 draws, each of i3..i9 with p = 1/7
    assert_within_binomial(a, {f"i{k}": 1 / 7 for k in range(3, 10)}, 30_000)
    # b: 8 rows * 10_000 = 80_000 draws, i8 and i9 with p = 1/2
    assert_within_binomial(b, {"i8": 0.5, "i9": 0.5}, 80_000)


def popularity_positives() -> pd.DataFrame:
    """Item counts i0..i5 = 1, 2, 3, 4, 5, 6 (21 rows), built from users a, b and fillers.

    a holds {i5}; b holds {i3, i4, i5}; fillers (one row each) make up the counts:
    i0: 1, i1: 2, i2: 3, i3: 4 - 1 (b) = 3, i4: 5 - 1 = 4, i5: 6 - 2 (a, b) = 4.
    """
    rows = [("a", "i5"), ("b", "i3"), ("b", "i4"), ("b", "i5")]
    fill = {"i0": 1, "i1": 2, "i2": 3, "i3": 3, "i4": 4, "i5": 4}
    j = 0
    for item, k in fill.items():
        for _ in range(k):
            rows.append((f"f{j}", item))
            j += 1
    return pd.DataFrame(rows, columns=["user_id", "item_id"])


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0, -1.0])
def test_popularity_frequencies(alpha: float, draw_path: str) -> None:
    pos = popularity_positives()
    counts = pos["item_id"].value_counts()
    assert counts.sort_index().tolist() == [1, 2, 3, 4, 5, 6]
    n = 20_000
    neg = PopularityNegatives(alpha=alpha).sample(pos, SCHEMA, n, np.random.default_rng(3))

    def expected(allowed: list[int]) -> dict[object, float]:
        # count^alpha restricted to the allowed items, renormalised; counts are k + 1
        w = np.array([k + 1.0 for k in allowed]) ** alpha
        return {f"i{k}": float(p) for k, p in zip(allowed, w / w.sum(), strict=True)}

    # a (1 row, 20_000 draws): allowed i0..i4. For alpha = 1: p = [1, 2, 3, 4, 5] / 15.
    a = neg.loc[neg["user_id"] == "a", "item_id"].value_counts()
    assert_within_binomial(a, expected([0, 1, 2, 3, 4]), n)
    # b (3 rows, 60_000 draws): allowed i0..i2. For alpha = 1: p = [1, 2, 3] / 6.
    b = neg.loc[neg["user_id"] == "b", "item_id"].value_counts()
    assert_within_binomial(b, expected([0, 1, 2]), 3 * n)
    if alpha == 1.0:
        assert expected([0, 1, 2, 3, 4])["i4"] == pytest.approx(5 / 15)


def test_popularity_zero_count_catalogue_item_weighs_as_one(draw_path: str) -> None:
    pos = popularity_positives()
    catalogue = np.array([f"i{k}" for k in range(7)])  # i6 never occurs in positives
    n = 20_000
    neg = PopularityNegatives(alpha=1.0).sample(
        pos, SCHEMA, n, np.random.default_rng(4), items=catalogue
    )
    a = neg.loc[neg["user_id"] == "a", "item_id"].value_counts()
    # a: allowed i0..i4 and i6 with weights 1, 2, 3, 4, 5 and 1 (floor) -> sum 16
    w = {"i0": 1, "i1": 2, "i2": 3, "i3": 4, "i4": 5, "i6": 1}
    assert_within_binomial(a, {k: v / 16 for k, v in w.items()}, n)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_seed_determinism(sampler: object) -> None:
    pos = dense_positives()
    a = sampler.sample(pos, SCHEMA, 3, np.random.default_rng(10))
    b = sampler.sample(pos, SCHEMA, 3, np.random.default_rng(10))
    c = sampler.sample(pos, SCHEMA, 3, np.random.default_rng(11))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_error_when_user_holds_whole_catalogue(sampler: object) -> None:
    pos = pd.DataFrame(
        {"user_id": ["full", "full", "full", "x"], "item_id": ["i1", "i2", "i3", "i1"]}
    )
    with pytest.raises(DataError, match=r"user 'full' has positives on every one of the 3 items"):
        sampler.sample(pos, SCHEMA, 1, np.random.default_rng(0))
    # with a larger catalogue a negative exists: i4 is the only one for 'full'
    neg = sampler.sample(
        pos, SCHEMA, 5, np.random.default_rng(0), items=np.array(["i1", "i2", "i3", "i4"])
    )
    assert set(neg.loc[neg["user_id"] == "full", "item_id"]) == {"i4"}


def test_bad_inputs() -> None:
    pos = pd.DataFrame({"user": ["a"], "item_id": ["x"]})
    with pytest.raises(DataError, match=r"column 'user_id'.*Did you mean 'user'"):
        UniformNegatives().sample(pos, SCHEMA, 1, np.random.default_rng(0))
    pos = pd.DataFrame({"user_id": ["a", None, "b"], "item_id": ["x", "y", "z"]})
    with pytest.raises(DataError, match=r"column 'user_id', row 2: 1 positives have no id"):
        UniformNegatives().sample(pos, SCHEMA, 1, np.random.default_rng(0))
    pos = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"]})
    with pytest.raises(ValueError, match="n_per_positive must be an integer >= 1"):
        UniformNegatives().sample(pos, SCHEMA, 0, np.random.default_rng(0))
    with pytest.raises(TypeError, match=r"numpy\.random\.Generator"):
        UniformNegatives().sample(pos, SCHEMA, 1, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="alpha must be finite"):
        PopularityNegatives(alpha=float("nan"))


def test_empty_positives() -> None:
    pos = pd.DataFrame({"user_id": pd.Series([], dtype=str), "item_id": pd.Series([], dtype=str)})
    neg = UniformNegatives().sample(pos, SCHEMA, 3, np.random.default_rng(0))
    assert len(neg) == 0 and list(neg.columns) == ["user_id", "item_id"]


@pytest.mark.parametrize("sampler", SAMPLERS[:2], ids=repr)
def test_large_input_never_returns_a_positive(sampler: object) -> None:
    # speed is measured in benchmarks/sampling.py, never asserted in tests
    rng = np.random.default_rng(0)
    pos = pd.DataFrame(
        {"user_id": rng.integers(0, 5_000, 100_000), "item_id": rng.zipf(1.3, 100_000) % 3_000}
    )
    neg = sampler.sample(pos, SCHEMA, 4, np.random.default_rng(1))
    assert len(neg) == 400_000
    keys = pos["user_id"].to_numpy() * 10_000 + pos["item_id"].to_numpy()
    neg_keys = neg["user_id"].to_numpy() * 10_000 + neg["item_id"].to_numpy()
    assert not np.isin(neg_keys, keys).any()


@settings(max_examples=80, deadline=None)
@given(
    table=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 7)), min_size=1, max_size=30),
    extra=st.lists(st.integers(0, 9), max_size=3),
    alpha=st.sampled_from([None, 0.0, 0.75, 2.0]),
    n=st.integers(1, 5),
    seed=st.integers(0, 2**32 - 1),
    mass_cap=st.sampled_from([-1.0, 0.9, 1.0]),  # all exact, default routing, all rejection
)
def test_property_no_negative_is_a_positive(
    table: list[tuple[int, int]],
    extra: list[int],
    alpha: float | None,
    n: int,
    seed: int,
    mass_cap: float,
) -> None:
    pos = pd.DataFrame(table, columns=["user_id", "item_id"])
    catalogue = np.unique(np.r_[pos["item_id"].to_numpy(), extra])
    sampler = UniformNegatives() if alpha is None else PopularityNegatives(alpha=alpha)
    held = pos.groupby("user_id")["item_id"].nunique()
    if (held >= len(catalogue)).any():
        with pytest.raises(DataError, match="no negative item exists"):
            sampler.sample(pos, SCHEMA, n, np.random.default_rng(seed), items=catalogue)
        return
    with mock.patch.object(sampling, "_MAX_REJECTED_MASS", mass_cap):
        neg = sampler.sample(pos, SCHEMA, n, np.random.default_rng(seed), items=catalogue)
    assert len(neg) == n * len(pos)
    assert not pairs(neg) & pairs(pos)
    assert set(neg["item_id"]) <= set(catalogue.tolist())
