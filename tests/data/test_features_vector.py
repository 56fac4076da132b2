"""Vector features: precomputed embeddings from a list column or ``name_0..name_{d-1}`` columns.

Reference values are worked out by hand in comments: standardisation uses the per-entry mean
and (population) std of the training vectors; a missing vector is zeros plus indicator 1.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wager.config import RunConfig, dumps_toml
from wager.data.features import (
    EntityEncoder,
    FeatureEncoders,
    InteractionEncoder,
    VectorEncoder,
    vector_columns,
)
from wager.data.loaders.table import load_table
from wager.data.schema import (
    Categorical,
    Numeric,
    Schema,
    Vector,
    feature_from_dict,
    feature_to_dict,
)
from wager.errors import DataError, NotFittedError

# train vectors (1, 2) and (3, 6): mean (2, 4), std (1, 2)
TRAIN_LISTS = [[1.0, 2.0], [3.0, 6.0]]
# (5, 0) -> ((5 - 2) / 1, (0 - 4) / 2) = (3, -2); a missing vector -> (0, 0) with indicator 1
QUERY_LISTS = [[5.0, 0.0], None]
EXPECTED = [[3.0, -2.0, 0.0], [0.0, 0.0, 1.0]]


def _family(lists: list[list[float] | None], name: str = "emb", dim: int = 2) -> pd.DataFrame:
    return pd.DataFrame(
        {f"{name}_{i}": [np.nan if v is None else v[i] for v in lists] for i in range(dim)}
    )


def test_schema_round_trips_vector_and_checks_dim():
    spec = Vector("emb", dim=3, standardize=False)
    assert feature_to_dict(spec) == {
        "type": "vector",
        "name": "emb",
        "dim": 3,
        "standardize": False,
    }
    assert feature_from_dict(feature_to_dict(spec)) == spec
    schema = Schema.from_dict({"item_features": [{"type": "vector", "name": "emb", "dim": 3}]})
    assert schema.item_features == (Vector("emb", 3),)
    assert Schema.from_dict(schema.to_dict()) == schema


def test_vector_spec_reads_from_toml(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        '[schema]\nlabel = "click"\n[[schema.item_features]]\ntype = "vector"\n'
        'name = "emb"\ndim = 384\nstandardize = false\n'
    )
    config = RunConfig.load(path)
    assert config.schema.item_features == (Vector("emb", 384, standardize=False),)
    again = tmp_path / "again.toml"
    again.write_text(dumps_toml(config.to_dict()))
    assert RunConfig.load(again).schema == config.schema


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": "emb", "dim": 0}, "Vector('emb').dim must be an integer >= 1"),
        ({"name": "emb", "dim": 2.5}, "got 2.5"),
        ({"name": "emb", "dim": True}, "got True"),
        ({"name": "emb", "dim": 4, "standardize": "yes"}, "standardize must be true or false"),
        ({"name": "", "dim": 4}, "Vector.name must be a non-empty column name"),
    ],
)
def test_bad_vector_spec_names_field(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        Vector(**kwargs)


def test_list_column_and_name_i_columns_encode_identically():
    a = VectorEncoder(Vector("emb", 2)).fit(pd.DataFrame({"emb": TRAIN_LISTS}))
    b = VectorEncoder(Vector("emb", 2)).fit(_family(TRAIN_LISTS))
    assert a.mean_ == b.mean_ == [2.0, 4.0]
    assert a.std_ == b.std_ == [1.0, 2.0]
    from_list = a.transform(pd.DataFrame({"emb": QUERY_LISTS}))
    from_family = b.transform(_family(QUERY_LISTS))
    assert from_list.dtype == np.float32 and from_list.shape == (2, 3)
    np.testing.assert_array_equal(from_list, EXPECTED)
    np.testing.assert_array_equal(from_family, EXPECTED)
    # the list column may also come as a Series, cells as tuples or arrays, NaN for missing
    cells = pd.Series([(5, 0), np.nan], dtype=object)
    np.testing.assert_array_equal(a.transform(cells), EXPECTED)


def test_parquet_list_column_reads_back(tmp_path):
    path = tmp_path / "items.parquet"
    pd.DataFrame({"item_id": [1, 2, 3], "emb": [*TRAIN_LISTS, None]}).to_parquet(path)
    table = pd.read_parquet(path)  # cells come back as numpy arrays, the missing one as None
    enc = VectorEncoder(Vector("emb", 2)).fit(table.iloc[:2])
    np.testing.assert_array_equal(enc.transform(table)[2], [0.0, 0.0, 1.0])
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"emb": QUERY_LISTS})), EXPECTED)


def test_standardize_false_passes_values_and_all_nan_is_missing():
    enc = VectorEncoder(Vector("emb", 2, standardize=False)).fit(_family(TRAIN_LISTS))
    out = enc.transform(pd.DataFrame({"emb": [[5.0, 0.0], [np.nan, np.nan]]}))
    np.testing.assert_array_equal(out, [[5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def test_constant_entry_has_unit_std_and_empty_training_is_identity():
    enc = VectorEncoder(Vector("emb", 2)).fit(pd.DataFrame({"emb": [[1.0, 7.0], [3.0, 7.0]]}))
    assert enc.std_ == [1.0, 1.0]  # entry 1 is constant: std 1, not a division by zero
    np.testing.assert_array_equal(enc.transform(pd.Series([[2.0, 9.0]])), [[0.0, 2.0, 0.0]])
    empty = VectorEncoder(Vector("emb", 2)).fit(pd.DataFrame({"emb": [None]}))
    assert (empty.mean_, empty.std_) == ([0.0, 0.0], [1.0, 1.0])


def test_entity_encoder_fits_vector_statistics_on_training_items_only():
    table = pd.DataFrame(
        {"item_id": [1, 2, 3, 4], "emb": [*TRAIN_LISTS, [100.0, 100.0], None], "cat": list("abcd")}
    )
    enc = EntityEncoder("item_id", Categorical("item_id"), (Vector("emb", 2), Categorical("cat")))
    # items 1 and 2 occur in training; item 3's outlying vector must not move the statistics
    enc.fit(pd.Series([1, 2, 2]), table, "items.parquet")
    assert enc.features_.encoders_["emb"].mean_ == [2.0, 4.0]
    out = enc.transform([3, 4, 99, 1])
    # item 3 (cold, has a vector): ((100 - 2) / 1, (100 - 4) / 2) = (98, 48)
    # item 4 (vector None) and item 99 (not in the table): missing
    np.testing.assert_array_equal(
        out["emb"], [[98.0, 48.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [-1.0, -1.0, 0.0]]
    )
    assert enc.cardinalities() == {"item_id": 3, "cat": 3}  # a vector has no embedding rows


def test_interaction_encoder_fields_and_state_round_trip():
    schema = Schema(
        label="click",
        context=(Vector("query", 3),),
        item_features=(Vector("emb", 2), Numeric("price")),
    )
    items = _family([*TRAIN_LISTS, [0.5, 0.5]]).assign(item_id=[1, 2, 3], price=[1.0, 2.0, 3.0])
    rows = pd.DataFrame(
        {
            "user_id": [1, 2, 2],
            "item_id": [1, 2, 3],
            "click": [0, 1, 0],
            "query": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], None],
        }
    )
    enc = InteractionEncoder.from_schema(schema).fit(rows, None, items)
    assert enc.fields() == [
        ("user.user_id", "index", 3),
        ("item.item_id", "index", 4),
        ("item.emb", "vector", 3),  # size: dim + 1 (the missing indicator)
        ("item.price", "numeric", 2),
        ("context.query", "vector", 4),
    ]
    with pytest.raises(KeyError, match="not a categorical field"):
        enc.unknown_token("item.emb")
    back = InteractionEncoder.from_state_dict(enc.state_dict(), None, enc.items.table_)
    a, b = enc.transform(rows), back.transform(rows)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # context "query": training rows (1,0,0), (0,1,0): mean (.5,.5,0), std (.5,.5,1)
    np.testing.assert_array_equal(
        a["context.query"], [[1.0, -1.0, 0.0, 0.0], [-1.0, 1.0, 0.0, 0.0], [0, 0, 0, 1.0]]
    )


def _bad(emb: list, **extra: list) -> pd.DataFrame:
    return pd.DataFrame({"item_id": list(range(1, len(emb) + 1)), "emb": emb, **extra})


def _bad_family(**cols: list) -> pd.DataFrame:
    n = len(next(iter(cols.values())))
    return pd.DataFrame({"item_id": list(range(1, n + 1)), **cols})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            _bad([[1.0, 2.0], [1.0, 2.0, 3.0]]),
            "items.parquet, column 'emb', row 2: Vector('emb') expects 2 entries per vector; "
            "the first of these rows has 3 entries",
        ),
        (  # ragged: each list of another length than dim is named
            _bad([[1.0], [1.0, 2.0], [1.0, 2.0, 3.0]]),
            "column 'emb', rows 1, 3: Vector('emb') expects 2 entries per vector; the first "
            "of these rows has 1 entry",
        ),
        (
            _bad([[1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]]]),
            "column 'emb', row 2: Vector('emb') expects 2 entries per vector; the first of "
            "these rows has a nested list",
        ),
        (
            _bad([[1.0, 2.0], [1.0, "x"]]),
            "column 'emb', row 2: Vector('emb') holds non-numeric entries, e.g. [1.0, 'x']",
        ),
        (
            _bad(["0.1,0.2", [1.0, 2.0]]),
            "column 'emb', row 1: Vector('emb') cells must be lists of numbers, got str values "
            "such as '0.1,0.2'",
        ),
        (
            _bad([[1.0, 2.0], [np.inf, 2.0]]),
            "column 'emb', row 2: Vector('emb') holds infinite entries",
        ),
        (
            _bad([[1.0, np.nan], [1.0, 2.0]]),
            "column 'emb', row 1: Vector('emb') has vectors with some entries missing (the "
            "first misses entry 1)",
        ),
        (
            _bad_family(emb_0=[1.0, 2.0, 3.0], emb_1=[1.0, "n/a", 3.0]),
            "column 'emb_1', row 2: Vector('emb') holds non-numeric values such as 'n/a'",
        ),
        (
            _bad_family(emb_0=[1.0, 2.0], emb_1=[1.0, np.nan]),
            "column 'emb_1', row 2: Vector('emb') has vectors with some entries missing",
        ),
        (
            _bad_family(emb_0=[1.0], emb_1=[1.0], emb_2=[1.0]),
            "column 'emb_2': Vector('emb') declares dim=2, but the table has 3 columns emb_0 .. "
            "emb_2. Declare Vector('emb', dim=3)",
        ),
        (
            _bad_family(emb_0=[1.0], emb_2=[1.0]),
            "column 'emb_2': Vector('emb') declares dim=2",
        ),
        (
            _bad_family(emb_0=[1.0]),
            "column 'emb_1': Vector('emb', dim=2) is read from emb_0 .. emb_1; missing: emb_1",
        ),
        (
            _bad_family(embedding=[1.0]),
            "column 'emb': Vector('emb', dim=2) needs a list column 'emb' or the columns "
            "emb_0 .. emb_1, and neither is present. Available columns: item_id, embedding",
        ),
        (
            _bad([[1.0, 2.0]], emb_0=[1.0]),
            "column 'emb': Vector('emb') could be read from the list column 'emb' or from the "
            "columns emb_0, ...; both are present",
        ),
    ],
)
def test_bad_vectors_name_table_column_and_row(table, message):
    enc = EntityEncoder("item_id", Categorical("item_id"), (Vector("emb", 2),))
    with pytest.raises(DataError) as exc:
        enc.fit(pd.Series([1]), table, "items.parquet")
    assert message in str(exc.value)
    assert str(exc.value).startswith("items.parquet, column ")


def test_bad_context_vector_rows_are_named_at_transform():
    enc = FeatureEncoders((Vector("query", 2),)).fit(pd.DataFrame({"query": TRAIN_LISTS}))
    with pytest.raises(DataError, match=r"test rows, column 'query', row 3: .* has 1 entry"):
        enc.transform(pd.DataFrame({"query": [[1.0, 2.0], None, [1.0]]}), "test rows")


def test_vector_columns_prefers_exact_numbering_and_unfitted_raises():
    # "emb_01" is not entry 1 of the family: only emb_0, emb_1, ... count
    assert vector_columns(Vector("emb", 2), ["emb_1", "emb_0", "emb_01"]) == ["emb_0", "emb_1"]
    with pytest.raises(NotFittedError, match="encoder for 'emb' is not fitted"):
        VectorEncoder(Vector("emb", 2)).transform(pd.Series([[1.0, 2.0]]))


@pytest.mark.parametrize("form", ["csv family", "parquet list", "jsonl list"])
def test_load_table_reads_vectors_in_every_form(tmp_path, form):
    rows = pd.DataFrame({"user_id": [1, 2], "item_id": [1, 2], "click": [1, 0]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    if form == "csv family":
        path = tmp_path / "items.csv"
        _family(TRAIN_LISTS).assign(item_id=[1, 2]).to_csv(path, index=False)
    elif form == "parquet list":
        path = tmp_path / "items.parquet"
        pd.DataFrame({"item_id": [1, 2], "emb": TRAIN_LISTS}).to_parquet(path)
    else:
        path = tmp_path / "items.jsonl"
        path.write_text('{"item_id": 1, "emb": [1.0, 2.0]}\n{"item_id": 2, "emb": [3, 6]}\n')
    schema = Schema(label="click", item_features=(Vector("emb", 2),))
    data = load_table(tmp_path / "rows.csv", schema, item_features_path=path)
    enc = EntityEncoder("item_id", Categorical("item_id"), schema.item_features)
    enc.fit(data.interactions["item_id"], data.item_features, str(path))
    # (1, 2) standardised with mean (2, 4) and std (1, 2): (-1, -1)
    np.testing.assert_array_equal(enc.transform([1])["emb"], [[-1.0, -1.0, 0.0]])


def test_load_table_reports_bad_vectors_with_file_column_and_row(tmp_path):
    pd.DataFrame({"user_id": [1], "item_id": [1], "click": [1]}).to_csv(
        tmp_path / "rows.csv", index=False
    )
    _family([[1.0, 2.0], [3.0, np.nan]]).assign(item_id=[1, 2]).to_csv(
        tmp_path / "items.csv", index=False
    )
    schema = Schema(label="click", item_features=(Vector("emb", 2),))
    with pytest.raises(DataError, match=r"items.csv, column 'emb_1', row 2: Vector\('emb'\) has"):
        load_table(tmp_path / "rows.csv", schema, item_features_path=tmp_path / "items.csv")
