"""Open Bandit Dataset -> LoggedFeedback on a tiny hand-written policy directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wager.data.loaders.obd import load_obd_feedback
from wager.errors import DataError

HEADER = (
    ",timestamp,item_id,position,click,propensity_score,user_feature_0,user_feature_1,"
    "user_feature_2,user_feature_3,user-item_affinity_0,user-item_affinity_1,"
    "user-item_affinity_2\n"
)
ROWS = [
    "0,2019-11-24 00:03:13+00:00,2,1,0,0.5,a,b,c,d,0.0,1.0,0.0",
    "1,2019-11-24 00:04:00+00:00,0,2,1,0.25,a,b,c,d,0.0,0.0,3.0",
    "2,2019-11-24 00:05:00+00:00,10,3,0,0.125,e,b,c,d,2.0,0.0,0.0",
]
# item ids 0, 2, 10 in item_context (not in numeric order in the file)
ITEMS = (
    ",item_id,item_feature_0,item_feature_1,item_feature_2,item_feature_3\n"
    "0,10,0.5,x,y,z\n1,0,-0.5,x,y,z\n2,2,0.25,x,w,z\n"
)


def write_obd(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "men.csv").write_text(HEADER + "\n".join(ROWS) + "\n")
    (root / "item_context.csv").write_text(ITEMS)
    return root


def test_feedback_arrays(tmp_path: Path) -> None:
    fb = load_obd_feedback(write_obd(tmp_path / "random"))
    assert list(fb.item_ids) == ["0", "2", "10"]  # numeric order: action = index
    np.testing.assert_array_equal(fb.action, [1, 0, 2])
    np.testing.assert_array_equal(fb.position, [0, 1, 2])  # 1-based slots -> 0-based
    np.testing.assert_array_equal(fb.reward, [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(fb.propensity, [0.5, 0.25, 0.125])
    assert fb.n_positions == 3 and fb.n_actions == 3 and fb.request is None
    assert fb.source.endswith("men.csv")
    assert fb.context is not None and fb.item_features is not None
    assert list(fb.context["user_feature_0"]) == ["a", "a", "e"]
    np.testing.assert_array_equal(fb.context["user-item_affinity_2"], [0.0, 3.0, 0.0])
    # item features follow item_ids
    assert list(fb.item_features["item_id"]) == ["0", "2", "10"]
    np.testing.assert_array_equal(fb.item_features["item_feature_0"], [-0.5, 0.25, 0.5])
    assert fb.user_ids is not None and fb.user_ids[0] == fb.user_ids[1] != fb.user_ids[2]


def test_bad_propensity_names_file_and_column(tmp_path: Path) -> None:
    root = write_obd(tmp_path / "bts")
    bad = [ROWS[0], ROWS[1].replace(",0.25,", ",0,"), ROWS[2]]
    (root / "men.csv").write_text(HEADER + "\n".join(bad) + "\n")
    with pytest.raises(DataError, match=r"men\.csv.*propensity_score|propensity_score.*men"):
        load_obd_feedback(root)
