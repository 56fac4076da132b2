"""A catalogue that changes without retraining: Recommender.add_items / retire_items.

One small two-tower ensemble (item features, cold_start = "population") is fitted on a
synthetic world and saved once; each test loads its own copy of the run.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig, UncertaintyConfig
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.errors import DataError
from wager.recommender import Catalogue, Recommender
from wager.runs import RunDirectory

N_USERS, N_ITEMS = 150, 40
USERS = list(range(N_USERS))
FEATURES = ["item_id", "category", "brand", "price", "tags"]
ITEM_SPECS = (
    Categorical("category"),
    Categorical("brand"),
    Numeric("price", log1p=True),
    MultiCategorical("tags"),
)
TRAIN = TrainConfig(epochs=8, batch_size=256, learning_rate=0.05, optimizer="adam")
POPULATION = UncertaintyConfig(cold_start="population", population_draws=8)


def _world() -> tuple[pd.DataFrame, pd.DataFrame]:
    world = SyntheticWorld(
        WorldConfig(n_users=N_USERS, n_items=N_ITEMS, n_days=1, new_items_per_day=0, base_ctr=0.3)
    )
    log = world.sample_log(6000, seed=1)[["user_id", "item_id", "click"]]
    return log, world.items[FEATURES]


def _two_tower() -> RunConfig:
    return RunConfig(
        schema=Schema(label="click", label_kind="click", item_features=ITEM_SPECS),
        model=ModelConfig(
            type="two_tower",
            dim=8,
            init_std=0.1,
            full_softmax=True,
            positive_threshold=1.0,
            normalize=True,
            temperature=0.2,
        ),
        training=TRAIN,
        ensemble=EnsembleConfig(members=4, bootstrap=True),
        uncertainty=POPULATION,
        seed=0,
    )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    log, items = _world()
    rec = Recommender(_two_tower()).fit(log, item_features=items)
    return rec.save(tmp_path_factory.mktemp("runs") / "two_tower")


@pytest.fixture()
def rec(run_dir):
    return Recommender.load(run_dir)


def _clicks() -> pd.Series:
    log, _ = _world()
    return log[log.click == 1].item_id.value_counts()


def _copy(item: int, new_id: int) -> pd.DataFrame:
    _, items = _world()
    row = items[items.item_id == item].copy()
    row["item_id"] = new_id
    return row


def test_a_copy_of_a_popular_item_scores_alike_with_a_wider_std(rec):
    clicks = _clicks()
    popular = int(clicks.index[0])
    rec.add_items(_copy(popular, 1000))
    known = rec.predict(USERS, [popular] * N_USERS)
    new = rec.predict(USERS, [1000] * N_USERS)
    every = rec.predict(np.repeat(USERS, N_ITEMS), np.tile(np.arange(N_ITEMS), N_USERS))
    item_mean = every.mean.reshape(N_USERS, N_ITEMS).mean(0)
    item_std = every.std.reshape(N_USERS, N_ITEMS).mean(0)
    # similar mean: same features, so the users' scores follow the source item's, and the
    # new item sits nearer its source than the typical known item (the id part is unknown)
    assert np.corrcoef(known.mean.numpy(), new.mean.numpy())[0, 1] > 0.8
    gap = abs(float(new.mean.mean() - known.mean.mean()))
    assert gap < abs(float(new.mean.mean() - item_mean.median()))
    # wider: above its source's std and above the typical known item's
    assert float(new.std.mean()) > 1.1 * float(known.std.mean())
    assert float(new.std.mean()) > float(item_std.median())
    assert float((new.std > known.std).float().mean()) > 0.7


def test_added_items_are_listed_and_scored_through_their_features(rec):
    clicks = _clicks()
    before = list(rec.scorer_.catalogue.items)
    rec.add_items(
        pd.concat([_copy(int(clicks.index[0]), 1000), _copy(int(clicks.index[-1]), 1001)])
    )
    assert list(rec.scorer_.catalogue.items) == [*before, "1000", "1001"]
    # the catalogue scores (what policies and serving read) have a column for each new item
    assert rec.scorer_.mean_scores(USERS[:3]).shape == (3, N_ITEMS + 2)
    assert rec.scorer_.member_scores(USERS[:3]).shape == (4, 3, N_ITEMS + 2)
    listed = rec.recommend(USERS, k=5)["item"].astype(str).value_counts()
    # identical but for their features: the popular item's copy is listed far more often
    assert listed.get("1000", 0) >= 20
    assert listed.get("1000", 0) > 3 * listed.get("1001", 0)


def test_retired_items_are_never_listed_but_still_predicted(rec):
    top = rec.recommend(USERS, k=3)["item"].astype(str).value_counts().index[:5].tolist()
    before = rec.predict(USERS, [top[0]] * N_USERS)
    rec.retire_items(top)
    assert not set(top) & set(rec.scorer_.catalogue.items)
    assert sorted(rec.scorer_.catalogue.retired) == sorted(top)
    every = rec.recommend(USERS, k=N_ITEMS, exclude_seen=False)
    assert len(every) == N_USERS * (N_ITEMS - 5) and not set(top) & set(every["item"].astype(str))
    assert rec.scorer_.mean_scores(USERS[:2]).shape == (2, N_ITEMS - 5)
    with pytest.warns(UserWarning, match=r"recommend: 2 candidate items are retired"):
        some = rec.recommend(USERS[:4], k=3, items=[top[0], top[1], "7", "8", "9"])
    assert set(some["item"].astype(str)) <= {"7", "8", "9"}
    after = rec.predict(USERS, [top[0]] * N_USERS)  # no warning: past items are still scored
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.std, before.std)
    rec.retire_items(top[:1])  # retiring again changes nothing
    assert sorted(rec.scorer_.catalogue.retired) == sorted(top)


def test_an_item_added_back_is_itself_again(rec):
    clicks = _clicks()
    item = str(int(clicks.index[0]))
    cat = rec.scorer_.catalogue
    seen = cat.seen[:, cat.item_index[item]].toarray().ravel()
    before = rec.predict(USERS, [item] * N_USERS)
    rec.retire_items([item])
    rec.add_items(_copy(int(item), int(item)))
    cat = rec.scorer_.catalogue
    assert cat.items[-1] == item and len(cat.retired) == 0
    # who had seen it is remembered (recommend still excludes it for them)
    np.testing.assert_array_equal(cat.seen[:, cat.item_index[item]].toarray().ravel(), seen)
    np.testing.assert_array_equal(cat.item_counts[-1], clicks.iloc[0])
    after = rec.predict(USERS, [item] * N_USERS)  # its trained id embedding, same features
    torch.testing.assert_close(after.mean, before.mean)


def test_the_run_folder_keeps_the_current_catalogue(rec, tmp_path):
    clicks = _clicks()
    rec.add_items(_copy(int(clicks.index[0]), 1000)).retire_items(["3", "5"])
    expected = rec.predict(USERS, [1000] * N_USERS)
    lists = rec.recommend(USERS[:10], k=5)
    back = Recommender.load(rec.save(tmp_path / "changed"))
    assert "catalogue.npz" in RunDirectory(tmp_path / "changed").verify()
    assert list(back.scorer_.catalogue.items) == list(rec.scorer_.catalogue.items)
    assert list(back.scorer_.catalogue.retired) == ["3", "5"]
    got = back.predict(USERS, [1000] * N_USERS)
    torch.testing.assert_close(got.mean, expected.mean)
    torch.testing.assert_close(got.std, expected.std)
    pd.testing.assert_frame_equal(back.recommend(USERS[:10], k=5), lists)


def test_a_refit_sees_added_items_as_ordinary_items(rec):
    log, items = _world()
    rec.add_items(_copy(int(_clicks().index[0]), 1000)).retire_items(["3"])
    rows = pd.DataFrame({"user_id": USERS[:60], "item_id": 1000, "click": 1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # item 1000's features come from the run, not missing
        rec.fit(pd.concat([log, rows], ignore_index=True), item_features=items)
    assert rec.scorer_.known_pairs([0], [1000]).tolist() == [True]  # its own embedding now
    assert "1000" in set(rec.scorer_.catalogue.items)
    assert list(rec.scorer_.catalogue.retired) == ["3"]  # retired ids stay retired
    table = rec.encoder_.items.table_
    assert (
        table.loc["1000", "category"]
        == items.set_index("item_id").loc[int(_clicks().index[0]), "category"]
    )


BAD_ADDS = [
    ("not a frame", TypeError, r"item_features must be a pandas DataFrame"),
    ("no id", DataError, r"column 'item_id': the item id column is missing"),
    ("no price", DataError, r"column 'price'.*feature column not found"),
    ("repeated", DataError, r"column 'item_id', rows 1, 2: item id '1001' appears more than"),
    ("missing id", DataError, r"column 'item_id', row 2: missing item ids"),
    ("in catalogue", DataError, r"item ids \['3'\] are already in the catalogue.*retire_items"),
    ("text price", DataError, r"column 'price', row 1: non-numeric values such as 'cheap'"),
]


@pytest.mark.parametrize(("case", "error", "message"), BAD_ADDS, ids=[c[0] for c in BAD_ADDS])
def test_bad_additions_name_the_column_and_id(rec, case, error, message):
    good = _copy(0, 1001)
    frames = {
        "not a frame": [1001],
        "no id": good.drop(columns="item_id"),
        "no price": good.drop(columns="price"),
        "repeated": pd.concat([good, good]),
        "missing id": pd.concat([good, good.assign(item_id=np.nan)]),
        "in catalogue": good.assign(item_id=3),
        "text price": good.assign(price="cheap"),
    }
    with pytest.raises(error, match=message):
        rec.add_items(frames[case])
    assert rec.scorer_.catalogue.n_items == N_ITEMS  # nothing changed
    assert "1001" not in rec.encoder_.items.table_.index


BAD_RETIRES = [
    (["999", "3"], ValueError, r"retire_items: item ids \['999'\] \(1 in all\) are not in"),
    ("3", TypeError, r"item_ids must be a list of ids, got '3'; pass \[id\]"),
    ([3, None], ValueError, r"retire_items: item_ids\[1\] is missing"),
    (list(range(N_ITEMS)), ValueError, r"retiring 40 items would leave the catalogue empty"),
]


@pytest.mark.parametrize(
    ("ids", "error", "message"), BAD_RETIRES, ids=["unknown", "one", "none", "all"]
)
def test_bad_retirements_name_the_ids(rec, ids, error, message):
    with pytest.raises(error, match=message):
        rec.retire_items(ids)
    assert rec.scorer_.catalogue.n_items == N_ITEMS and len(rec.scorer_.catalogue.retired) == 0


def test_an_id_only_model_scores_new_items_through_its_cold_start_path():
    log, _ = _world()
    cfg = RunConfig(
        schema=Schema(label="click", label_kind="click"),
        model=ModelConfig(type="biased_mf", dim=8, init_std=0.1),
        training=TrainConfig(epochs=4, batch_size=256, learning_rate=0.05, optimizer="adam"),
        ensemble=EnsembleConfig(members=4, bootstrap=True),
        uncertainty=POPULATION,
        seed=0,
    )
    rec = Recommender(cfg).fit(log)
    rec.add_items(pd.DataFrame({"item_id": ["new"]}))
    every = rec.predict(np.repeat(USERS, N_ITEMS), np.tile(np.arange(N_ITEMS), N_USERS))
    item_std = every.std.reshape(N_USERS, N_ITEMS).mean(0)
    new = rec.predict(USERS, ["new"] * N_USERS)
    assert float(new.std.mean()) > float(item_std.median())
    assert rec.scorer_.mean_scores(USERS[:2]).shape == (2, N_ITEMS + 1)


def test_retire_and_add_back_by_hand():
    rows = pd.DataFrame({"user_id": ["u1", "u1", "u2"], "item_id": ["a", "b", "b"], "click": 1})
    cat = Catalogue.fit(rows, rows, None, Schema(label="click"))
    cat.retire(["a"])
    # a leaves with its count (1) and seen column (u1 saw it): b stays, seen by u1 and u2
    assert list(cat.items) == ["b"] and list(cat.retired) == ["a"]
    np.testing.assert_array_equal(cat.seen.toarray(), [[1], [1]])
    np.testing.assert_array_equal(cat.retired_seen.toarray(), [[1], [0]])
    cat.add(["c", "a"])  # c is new (no count, nobody saw it); a comes back as it was
    assert list(cat.items) == ["b", "c", "a"] and len(cat.retired) == 0
    np.testing.assert_array_equal(cat.item_counts, [2, 0, 1])
    np.testing.assert_array_equal(cat.seen.toarray(), [[1, 0, 1], [1, 0, 0]])
    np.testing.assert_array_equal(cat.seen_rows(["u1"]).toarray(), [[1, 0, 1]])


def test_an_old_catalogue_file_loads_with_nothing_retired(tmp_path):
    np.savez(  # the arrays of a catalogue saved before catalogues changed
        tmp_path / "c.npz",
        items=np.array(["a", "b"]),
        item_counts=np.array([1.0, 2.0]),
        users=np.array(["u"]),
        seen_indptr=np.array([0, 1]),
        seen_indices=np.array([1]),
        label_mean=np.float64(0.0),
    )
    cat = Catalogue.load(tmp_path / "c.npz")
    assert list(cat.items) == ["a", "b"] and len(cat.retired) == 0
    assert cat.retired_seen is not None and cat.retired_seen.shape == (1, 0)


def test_learned_cold_start_warns_that_new_items_may_not_be_wider():
    rows = pd.DataFrame({"user_id": [1, 1, 2, 2], "item_id": [1, 2, 1, 2], "click": [1, 0, 0, 1]})
    cfg = RunConfig(
        schema=Schema(label="click"),
        training=TrainConfig(epochs=1),
        ensemble=EnsembleConfig(members=2),
        seed=0,
    )
    rec = Recommender(cfg).fit(rows)
    with pytest.warns(UserWarning, match=r"cold_start = 'learned' new items .* 'population'"):
        rec.add_items(pd.DataFrame({"item_id": [3]}))
    rec.retire_items([1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # item 1 has its own trained row: no warning
        rec.add_items(pd.DataFrame({"item_id": [1]}))
