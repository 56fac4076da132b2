"""InteractionEncoder.transform carries the impression counts of aggregated CTR rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.data.features import InteractionEncoder
from wager.data.schema import Categorical, Schema
from wager.data.synthetic import SyntheticWorld, WorldConfig

CTR_SCHEMA = Schema(
    user="context_id",
    item="item_id",
    label="ctr",
    label_kind="ctr",
    impressions="shown",
    clicks="clicked",
    context=(Categorical("segment"),),
)


def _rows() -> pd.DataFrame:
    # ctr = clicked / shown: 1/4 = 0.25, 0/1 = 0, 3/1000 = 0.003
    return pd.DataFrame(
        {
            "context_id": ["a", "b", "a"],
            "item_id": [1, 2, 2],
            "segment": ["x", "y", "x"],
            "shown": [4, 1, 1000],
            "clicked": [1, 0, 3],
            "ctr": [0.25, 0.0, 0.003],
        }
    )


def test_impressions_present_as_float32_counts():
    enc = InteractionEncoder.from_schema(CTR_SCHEMA).fit(_rows())
    out = enc.transform(_rows())
    assert out["impressions"].dtype == np.float32
    assert out["impressions"].shape == (3,)
    np.testing.assert_array_equal(out["impressions"], [4.0, 1.0, 1000.0])
    np.testing.assert_allclose(out["label"], [0.25, 0.0, 0.003], rtol=1e-7)
    assert "weight" not in out


def test_impressions_absent_when_rows_lack_the_column():
    enc = InteractionEncoder.from_schema(CTR_SCHEMA).fit(_rows())
    out = enc.transform(_rows().drop(columns=["shown"]))
    assert "impressions" not in out
    assert "label" in out


def test_impressions_absent_when_schema_has_no_impressions():
    # a column that happens to be called "impressions" is not read without the schema role
    schema = Schema(user="context_id", item="item_id", label="ctr", label_kind="ctr")
    rows = _rows().rename(columns={"shown": "impressions"})
    out = InteractionEncoder.from_schema(schema).fit(rows).transform(rows)
    assert "impressions" not in out


def test_impressions_column_survives_state_round_trip():
    enc = InteractionEncoder.from_schema(CTR_SCHEMA).fit(_rows())
    assert enc.impressions == "shown"
    back = InteractionEncoder.from_state_dict(enc.state_dict())
    assert back.impressions == "shown"
    np.testing.assert_array_equal(back.transform(_rows())["impressions"], [4.0, 1.0, 1000.0])
    # a state saved before the impressions column existed loads with None
    old = enc.state_dict()
    del old["impressions"]
    assert InteractionEncoder.from_state_dict(old).impressions is None


def test_synthetic_aggregate_rows_carry_their_impressions():
    world = SyntheticWorld(WorldConfig(n_users=300, n_items=20, n_days=1, seed=3))
    rows = world.aggregate(200, seed=4, min_impressions=1, max_impressions=50)
    enc = InteractionEncoder.from_schema(world.aggregate_schema()).fit(rows, None, world.items)
    out = enc.transform(rows)
    np.testing.assert_array_equal(out["impressions"], rows["impressions"].to_numpy())
    assert out["impressions"].min() >= 1.0 and out["impressions"].max() <= 50.0
    # the label is the observed CTR clicks / impressions (float32 rounding)
    np.testing.assert_allclose(
        out["label"], rows["clicks"] / out["impressions"].astype(np.float64), rtol=1e-6
    )


@settings(max_examples=30, deadline=None)
@given(counts=st.lists(st.integers(1, 2**24), min_size=1, max_size=20))
def test_counts_up_to_2_pow_24_are_exact_in_float32(counts):
    # float32 has a 24-bit significand: every integer up to 2**24 is exactly representable
    rows = pd.DataFrame(
        {
            "context_id": ["a"] * len(counts),
            "item_id": [1] * len(counts),
            "segment": ["x"] * len(counts),
            "shown": counts,
            "clicked": [0] * len(counts),
            "ctr": [0.0] * len(counts),
        }
    )
    out = InteractionEncoder.from_schema(CTR_SCHEMA).fit(rows).transform(rows)
    assert out["impressions"].astype(np.int64).tolist() == counts
