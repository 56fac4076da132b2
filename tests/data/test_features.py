"""Encoders: reference values for OOV (unseen, rare at min_count), standardisation, bags, text."""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.data.features import (
    CategoricalEncoder,
    EntityEncoder,
    FeatureEncoders,
    InteractionEncoder,
    MultiCategoricalEncoder,
    NumericEncoder,
    TextEncoder,
    text_tokens,
)
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text
from wager.errors import DataError, NotFittedError


def test_categorical_oov_for_unseen_and_rare_at_min_count():
    # counts in training: a=3, b=2, c=1. min_count=2 keeps a, b; c is rare -> OOV.
    enc = CategoricalEncoder(Categorical("c", min_count=2)).fit(["a", "b", "a", "c", "b", "a"])
    assert enc.vocabulary_ == ["a", "b"]  # by frequency descending
    assert enc.cardinality == 3  # OOV + 2
    # a -> 1, b -> 2, c (rare) -> 0, z (unseen) -> 0, None (missing) -> 0
    assert enc.transform(["a", "b", "c", "z", None]).tolist() == [1, 2, 0, 0, 0]


def test_categorical_min_count_boundary_is_inclusive():
    # exactly min_count occurrences keeps the value
    enc = CategoricalEncoder(Categorical("c", min_count=3)).fit(["x", "x", "x", "y", "y"])
    assert enc.transform(["x", "y"]).tolist() == [1, 0]


def test_categorical_ids_int_and_float_share_keys():
    # ids read as float from a CSV with gaps must match ids read as int
    enc = CategoricalEncoder(Categorical("id")).fit(pd.Series([10, 20, 20]))
    assert enc.transform(pd.Series([10.0, 20.0, np.nan])).tolist() == [2, 1, 0]


def test_categorical_ties_are_deterministic():
    a = CategoricalEncoder(Categorical("c")).fit(["b", "a", "c"])
    b = CategoricalEncoder(Categorical("c")).fit(["c", "a", "b"])
    assert a.vocabulary_ == b.vocabulary_ == ["a", "b", "c"]


def test_numeric_standardises_with_training_stats_and_flags_missing():
    train = pd.Series([1.0, 2.0, 3.0, np.nan])
    enc = NumericEncoder(Numeric("x")).fit(train)
    # mean over finite values = 2, population std = sqrt(2/3)
    assert enc.mean_ == pytest.approx(2.0)
    assert enc.std_ == pytest.approx(np.sqrt(2 / 3))
    out = enc.transform(pd.Series([2.0, 5.0, np.nan]))
    np.testing.assert_allclose(out[:, 0], [0.0, 3 / np.sqrt(2 / 3), 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out[:, 1], [0.0, 0.0, 1.0])


def test_numeric_explicit_bins_one_hot_with_missing_column():
    enc = NumericEncoder(Numeric("age", bins=[18, 25, 35])).fit([20.0, 30.0])
    assert enc.edges_ == [18.0, 25.0, 35.0] and enc.width == 5
    out = enc.transform([5.0, 18.0, 24.9, 25.0, 99.0, np.nan])
    # bucket = number of boundaries <= value; a missing value has no bucket
    want = np.zeros((6, 5), dtype=np.float32)
    for row, col in enumerate([0, 1, 1, 2, 3, 4]):
        want[row, col] = 1.0
    np.testing.assert_array_equal(out, want)
    state = enc.state_dict()
    back = NumericEncoder(Numeric("age", bins=[18, 25, 35])).load_state_dict(state)
    np.testing.assert_array_equal(back.transform([5.0, 40.0]), enc.transform([5.0, 40.0]))


def test_numeric_quantile_bins_are_equal_mass_on_training_values():
    x = np.arange(100, dtype=float)  # quartile edges at 24.75, 49.5, 74.25
    enc = NumericEncoder(Numeric("x", bins=4)).fit(x)
    np.testing.assert_allclose(enc.edges_, np.quantile(x, [0.25, 0.5, 0.75]))
    counts = enc.transform(x).sum(0)
    np.testing.assert_array_equal(counts, [25, 25, 25, 25, 0])
    # ties collapse to distinct edges; an edge at the minimum is dropped (empty bucket)
    tied = NumericEncoder(Numeric("t", bins=4)).fit([1.0] * 8 + [2.0, 3.0])
    assert tied.edges_ == [] or min(tied.edges_) > 1.0
    assert tied.transform([1.0, 3.0]).sum() == 2.0


@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40),
    st.integers(2, 8),
)
@settings(max_examples=40, deadline=None)
def test_numeric_bins_one_hot_property(values, bins):
    enc = NumericEncoder(Numeric("x", bins=bins)).fit(values)
    out = enc.transform([*values, np.nan])
    assert out.shape == (len(values) + 1, enc.width)
    np.testing.assert_array_equal(out.sum(1), 1.0)  # exactly one bucket (or missing)
    assert out[-1, -1] == 1.0 and out[:-1, -1].sum() == 0


@pytest.mark.parametrize(
    "bins, fragment",
    [
        (1, ">= 2"),
        ([3, 2], "increasing"),
        (["a"], "numbers"),
        (True, "bins"),
        ([1, float("inf")], "finite"),
    ],
)
def test_numeric_bad_bins_name_the_feature(bins, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        Numeric("age", bins=bins)
    assert "Numeric('age')" in str(info.value)


def test_numeric_log1p():
    enc = NumericEncoder(Numeric("p", log1p=True)).fit([0.0, np.e - 1])
    # log1p -> [0, 1]; mean 0.5, std 0.5
    np.testing.assert_allclose(enc.transform([np.e**2 - 1])[:, 0], [(2 - 0.5) / 0.5], rtol=1e-6)


def test_numeric_constant_column_has_unit_std():
    enc = NumericEncoder(Numeric("x")).fit([4.0, 4.0])
    assert enc.std_ == 1.0
    assert enc.transform([5.0])[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("values", "spec", "fragment"),
    [
        (["1", "oops", "3"], Numeric("age"), "column 'age', row 2"),
        ([1.0, np.inf], Numeric("age"), "column 'age', row 2: infinite"),
        ([1.0, np.nan], Numeric("age", missing="error"), "column 'age', row 2: missing"),
        ([-2.0, 1.0], Numeric("age", log1p=True), "column 'age', row 1"),
    ],
)
def test_numeric_bad_values_name_column_and_row(values, spec, fragment):
    with pytest.raises(DataError) as exc:
        NumericEncoder(spec, source="users.csv").fit(pd.Series(values))
    assert fragment in str(exc.value)
    assert "users.csv" in str(exc.value)


def test_multicategorical_padding_oov_and_rare():
    # counts: a=2, b=1, c=2. min_count=2 keeps a, c -> indices 2, 3; b rare -> OOV 1
    enc = MultiCategoricalEncoder(MultiCategorical("g", min_count=2)).fit(["a|b", "a|c", "c"])
    assert enc.vocabulary_ == ["a", "c"]
    assert enc.cardinality == 4
    out = enc.transform(["c|a|b", "", None, ["a"]])
    np.testing.assert_array_equal(out, [[3, 2, 1], [0, 0, 0], [0, 0, 0], [2, 0, 0]])


def test_text_hashing_reference_and_ngrams():
    spec = Text("t", n_buckets=100, ngram_max=2, max_tokens=10)
    assert text_tokens("Toy Story!", 2) == ["toy", "story", "toy story"]
    enc = TextEncoder(spec).fit(["x"])
    out = enc.transform(["Toy Story!"])
    expected = [zlib.crc32(t.encode()) % 100 + 1 for t in ["toy", "story", "toy story"]]
    assert out.tolist() == [expected]


def test_text_truncates_to_max_tokens():
    enc = TextEncoder(Text("t", max_tokens=3, ngram_max=1)).fit([])
    assert enc.transform(["a b c d e"]).shape == (1, 3)


def test_unfitted_encoders_raise():
    with pytest.raises(NotFittedError, match="call fit"):
        CategoricalEncoder(Categorical("c")).transform(["a"])
    with pytest.raises(NotFittedError, match="call fit"):
        NumericEncoder(Numeric("x")).transform([1.0])


def _items_table():
    return pd.DataFrame(
        {
            "item_id": [1, 2, 3, 4],
            "cat": ["a", "b", "a", "z"],
            "price": [1.0, 3.0, np.nan, 100.0],
            "tags": ["x|y", "y", "", "q"],
        }
    )


def test_entity_encoder_fits_features_on_training_entities_only():
    specs = (Categorical("cat"), Numeric("price"), MultiCategorical("tags"))
    enc = EntityEncoder("item_id", Categorical("item_id"), specs)
    # item 4 exists in the table but not in training: its category 'z' and price 100 must
    # not enter the vocabulary / statistics (fitted on the training split only).
    enc.fit(pd.Series([1, 1, 2, 3]), _items_table(), "items.csv")
    cat = enc.features_.encoders_["cat"]
    assert cat.vocabulary_ == ["a", "b"]
    price = enc.features_.encoders_["price"]
    assert price.mean_ == pytest.approx(2.0)  # mean of 1, 3 (NaN skipped, item 4 unseen)
    out = enc.transform([4, 99, 1])
    assert out["item_id"].tolist() == [0, 0, 1]  # 4 and 99 unseen in training -> OOV
    assert out["cat"].tolist() == [0, 0, 1]  # 'z' OOV, 99 absent from table -> OOV
    np.testing.assert_allclose(out["price"][:, 1], [0.0, 1.0, 0.0])  # 99: missing indicator


def test_entity_encoder_duplicate_ids_named():
    table = pd.concat([_items_table(), _items_table().iloc[[1]]], ignore_index=True)
    enc = EntityEncoder("item_id", Categorical("item_id"), (Categorical("cat"),))
    with pytest.raises(DataError, match=r"items.csv, column 'item_id', row 5: duplicate ids"):
        enc.fit(pd.Series([1]), table, "items.csv")


def test_feature_encoders_state_round_trip():
    df = pd.DataFrame({"c": ["a", "b", "a"], "n": [1.0, 2.0, 4.0], "t": ["x y", "y", "z"]})
    enc = FeatureEncoders((Categorical("c"), Numeric("n"), Text("t", n_buckets=16))).fit(df)
    back = FeatureEncoders.from_state_dict(enc.state_dict())
    for k, v in enc.transform(df).items():
        np.testing.assert_array_equal(v, back.transform(df)[k])


def test_interaction_encoder_round_trip_and_fields():
    schema = Schema(
        label="click",
        context=(Categorical("pos"),),
        item_features=(Categorical("cat"), Numeric("price")),
    )
    rows = pd.DataFrame(
        {"user_id": [1, 2, 2], "item_id": [1, 2, 3], "pos": [1, 2, 1], "click": [0, 1, 0]}
    )
    enc = InteractionEncoder.from_schema(schema).fit(rows, None, _items_table())
    keys = [k for k, _, _ in enc.fields()]
    assert keys == ["user.user_id", "item.item_id", "item.cat", "item.price", "context.pos"]
    back = InteractionEncoder.from_state_dict(enc.state_dict(), None, enc.items.table_)
    a, b = enc.transform(rows), back.transform(rows)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["label"], [0, 1, 0])


def test_unknown_token_per_field_kind():
    # index fields and hashed text bags: 0 (OOV row / empty bag); categorical bags: 1 (their
    # OOV token, 0 is padding); numeric and missing fields are not categorical
    schema = Schema(
        label="click",
        context=(Categorical("pos"),),
        item_features=(
            Categorical("cat"),
            Numeric("price"),
            MultiCategorical("tags"),
            Text("title", n_buckets=8),
        ),
    )
    items = _items_table().assign(tags=["a|b", "b", "c", "a"], title=["x", "y z", "z", "x y"])
    items.loc[len(items)] = [5, "a", 1.0, "zzz", None]  # a tag the vocabulary lacks, no title
    rows = pd.DataFrame(
        {"user_id": [1, 2, 2], "item_id": [1, 2, 3], "pos": [1, 2, 1], "click": [0, 1, 0]}
    )
    enc = InteractionEncoder.from_schema(schema).fit(rows, None, items)
    got = {k: enc.unknown_token(k) for k, kind, _ in enc.fields() if kind != "numeric"}
    assert got == {
        "user.user_id": 0,
        "item.item_id": 0,
        "item.cat": 0,
        "item.tags": 1,
        "item.title": 0,
        "context.pos": 0,
    }
    # the tokens mean "unknown": an unseen tag encodes to 1, a missing title to an empty bag
    out = enc.transform_items([1, 5])
    assert out["item.tags"].tolist() == [[3, 2], [1, 0]]  # vocabulary b=2, a=3, c=4
    assert out["item.title"][1].tolist() == [0] * out["item.title"].shape[1]
    for bad in ("item.price", "item.nope", "other.x"):
        with pytest.raises(KeyError, match="not a categorical field"):
            enc.unknown_token(bad)


@settings(max_examples=50, deadline=None)
@given(
    train=st.lists(st.sampled_from(list("abcdef")), min_size=1, max_size=30),
    query=st.lists(st.sampled_from(list("abcdefgh")), min_size=1, max_size=30),
    min_count=st.integers(1, 4),
)
def test_categorical_indices_in_range_and_oov_iff_rare_or_unseen(train, query, min_count):
    enc = CategoricalEncoder(Categorical("c", min_count=min_count)).fit(train)
    out = enc.transform(query)
    assert out.min() >= 0 and out.max() < enc.cardinality
    counts = pd.Series(train).value_counts()
    for q, idx in zip(query, out, strict=True):
        assert (idx == 0) == (counts.get(q, 0) < min_count)
