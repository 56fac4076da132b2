"""Catalogue: items, users, counts and the seen matrix, saved as arrays."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wager.data.schema import Schema
from wager.recommender import Catalogue

S = Schema(label="click")


def _rows():
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3"],
            "item_id": ["a", "b", "a", "c", "c"],
            "click": [1, 0, 1, 1, 0],
        }
    )


def test_fit_counts_and_seen_by_hand(tmp_path):
    rows = _rows()
    feats = pd.DataFrame({"item_id": ["d"], "genre": ["x"]})  # an item with no interactions
    cat = Catalogue.fit(rows, rows, feats, S, clicks_only=True)
    assert list(cat.items) == ["a", "b", "c", "d"] and list(cat.users) == ["u1", "u2", "u3"]
    np.testing.assert_array_equal(cat.item_counts, [2, 1, 2, 0])
    # clicks only: u1 clicked a; u2 clicked a and c; u3 clicked nothing
    np.testing.assert_array_equal(cat.seen.toarray(), [[1, 0, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    all_seen = cat.seen_matrix(rows, S, clicks_only=False).toarray()
    np.testing.assert_array_equal(all_seen, [[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 0]])
    # an unknown user gets an empty row
    np.testing.assert_array_equal(cat.seen_rows(["u2", "new"]).toarray(), [[1, 0, 1, 0], [0] * 4])
    np.testing.assert_array_equal(cat.known_users(["u3", "zz"]), [True, False])
    np.testing.assert_allclose(cat.popularity(), [2 / 3, 0, 1 / 3, 0])
    users, relevant = cat.relevant_lists(rows, S, threshold=1)
    assert users == ["u1", "u2"] and [r.tolist() for r in relevant] == [[0], [0, 2]]
    cat.save(tmp_path / "c.npz")
    back = Catalogue.load(tmp_path / "c.npz")
    assert list(back.items) == list(cat.items) and list(back.users) == list(cat.users)
    assert (back.seen != cat.seen).nnz == 0
    np.testing.assert_array_equal(back.item_counts, cat.item_counts)


def test_ids_are_values_as_written():
    rows = pd.DataFrame({"user_id": ["007", "7"], "item_id": ["1e3", "1000"], "click": [1, 1]})
    cat = Catalogue.fit(rows, rows, None, S)
    assert list(cat.users) == ["007", "7"] and list(cat.items) == ["1e3", "1000"]


def test_load_names_a_broken_file(tmp_path):
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"c\.npz: not a readable catalogue"):
        Catalogue.load(tmp_path / "c.npz")
