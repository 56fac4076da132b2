"""Vector features end to end: precomputed item vectors carry the signal to cold items.

The world: item i has a precomputed 8-dim vector v_i ~ N(0, I) (say a text embedding of a
news article, computed elsewhere); a user clicks an item exactly when v_i . w > 0 for one
fixed direction w. Training rows cover 40 items; 20 more items (the "news of the day") have
vectors in the item table but no interaction at all, so their ids are out of vocabulary.

Known answers, as the mean over users of the AUC of each user's scores for the 20 cold
articles: a model without the vector sees every cold item as the same OOV item, so it gives a
user one score for all of them: AUC exactly 0.5. The click rule is linear in v, so a logistic
regression on the warm rows' vectors (the reference, fitted here with scikit-learn) ranks the
cold articles perfectly (AUC 1.0); a model with the vector feature must come within 0.1 of it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from wager.config import EnsembleConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema, Vector
from wager.errors import DataError
from wager.recommender import Recommender

DIM = 8
N_USERS, N_WARM, N_COLD = 30, 40, 20


def _world() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(0)
    w = rng.normal(size=DIM)
    vectors = rng.normal(size=(N_WARM + N_COLD, DIM))
    good = vectors @ w > 0
    items = pd.DataFrame({"item_id": [f"a{i}" for i in range(N_WARM + N_COLD)]})
    items["emb"] = list(vectors)  # a list column, one array per article
    rows = []
    for u in range(N_USERS):
        for i in rng.choice(N_WARM, size=20, replace=False):
            rows.append((f"u{u}", f"a{i}", float(good[i])))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "click"])
    train = df.sample(frac=0.85, random_state=0)
    valid = df.drop(train.index)
    cold = pd.DataFrame(
        [
            (f"u{u}", f"a{i}", float(good[i]))
            for u in range(N_USERS)
            for i in range(N_WARM, N_WARM + N_COLD)
        ],
        columns=["user_id", "item_id", "click"],
    )
    return train, valid, cold, items


def _config(with_vector: bool) -> RunConfig:
    features = (Vector("emb", DIM),) if with_vector else ()
    return RunConfig(
        schema=Schema(label="click", label_kind="click", item_features=features),
        model=ModelConfig(type="factorization", dim=4, init_std=0.1),
        training=TrainConfig(epochs=40, batch_size=128, learning_rate=0.05, patience=5),
        seed=0,
    )


@pytest.fixture(scope="module")
def world():
    return _world()


@pytest.fixture(scope="module")
def with_vector(world):
    train, valid, _, items = world
    return Recommender(_config(True)).fit(train, valid, item_features=items)


def _per_user_auc(click: pd.Series, score: np.ndarray, users: pd.Series) -> float:
    frame = pd.DataFrame({"click": click.to_numpy(), "score": score, "user": users.to_numpy()})
    return float(np.mean([roc_auc_score(g["click"], g["score"]) for _, g in frame.groupby("user")]))


def _cold_auc(rec: Recommender, cold: pd.DataFrame) -> float:
    mean = rec.predict(cold["user_id"], cold["item_id"]).mean.numpy()
    return _per_user_auc(cold["click"], mean, cold["user_id"])


def test_vector_feature_beats_ids_alone_on_cold_items(world, with_vector):
    train, valid, cold, items = world
    assert not set(cold["item_id"]) & set(train["item_id"])  # cold: never in training
    vectors = dict(zip(items["item_id"], items["emb"], strict=True))
    reference = LogisticRegression(C=100.0).fit(
        np.stack([vectors[i] for i in train["item_id"]]), train["click"]
    )
    ref_score = reference.decision_function(np.stack([vectors[i] for i in cold["item_id"]]))
    auc_ref = _per_user_auc(cold["click"], ref_score, cold["user_id"])
    assert auc_ref == 1.0
    without = Recommender(_config(False)).fit(train, valid, item_features=items)
    auc_with, auc_without = _cold_auc(with_vector, cold), _cold_auc(without, cold)
    assert auc_with > auc_ref - 0.1, auc_with  # 0.967 measured
    assert auc_without == pytest.approx(0.5), auc_without
    # and the recommendations for every user put the clicked cold articles first
    recs = with_vector.recommend([f"u{u}" for u in range(N_USERS)], k=5)
    good = set(cold.loc[cold["click"] == 1, "item_id"]) | set(
        train.loc[train["click"] == 1, "item_id"]
    )
    assert recs["item"].isin(good).mean() > 0.95


def test_name_i_columns_train_the_same_model_and_runs_reload(world, with_vector, tmp_path):
    train, valid, cold, items = world
    family = pd.DataFrame(np.stack(items["emb"]), columns=[f"emb_{i}" for i in range(DIM)])
    family.insert(0, "item_id", items["item_id"])
    again = Recommender(_config(True)).fit(train, valid, item_features=family)
    expected = with_vector.predict(cold["user_id"], cold["item_id"]).mean
    assert np.array_equal(again.predict(cold["user_id"], cold["item_id"]).mean, expected)
    with_vector.save(tmp_path / "run")
    loaded = Recommender.load(tmp_path / "run")
    assert np.array_equal(loaded.predict(cold["user_id"], cold["item_id"]).mean, expected)


def test_item_table_with_wrong_dim_is_refused_before_training(world):
    train, valid, _, items = world
    config = _config(True)
    schema = dataclasses.replace(config.schema, item_features=(Vector("emb", DIM + 1),))
    with pytest.raises(DataError, match=r"column 'emb', rows 1, 2, 3, 4, 5 \(and 55 more\)"):
        Recommender(dataclasses.replace(config, schema=schema)).fit(
            train, valid, item_features=items
        )


def test_oov_analysis_of_an_ensemble_skips_vector_fields(world):
    train, valid, _, items = world
    config = dataclasses.replace(
        _config(True),
        ensemble=EnsembleConfig(members=2),
        training=TrainConfig(epochs=3, batch_size=128, learning_rate=0.05),
    )
    rec = Recommender(config).fit(train, valid, item_features=items)
    ratios = rec.oov_std_ratios(valid)
    assert "item.item_id" in ratios and "item.emb" not in ratios
