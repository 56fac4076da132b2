"""Recommender facade over every model type: a known-answer block fixture plus the contract.

The fixture: 12 users and 12 items in two blocks of 6. Each user rated 5 of the 6 items of
their own block 5 stars and 3 items of the other block 1 star; the sixth in-block item is
held out. Whatever the model (rating MF, two-tower retrieval, NeuMF, DCN ranking), the only
unseen in-block item must come back as the user's top-1 recommendation.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import EnsembleConfig, EvaluationConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.errors import NotFittedError
from wager.recommender import Recommender
from wager.recommender.fitting import pointwise_validator


def _block_data() -> tuple[pd.DataFrame, dict[int, int]]:
    rows = []
    held_out = {}
    for u in range(12):
        block = u // 6
        own = [block * 6 + j for j in range(6)]
        other = [(1 - block) * 6 + j for j in range(6)]
        hold = own[u % 6]
        held_out[u] = hold
        rows += [(u, i, 5.0) for i in own if i != hold]
        rows += [(u, other[(u + j) % 6], 1.0) for j in range(3)]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"]), held_out


SCHEMA = Schema(label="rating", label_kind="rating", rating_range=(1.0, 5.0))
TRAIN = TrainConfig(epochs=150, batch_size=32, learning_rate=0.05, optimizer="adam", patience=5)

MODELS = {
    "biased_mf": ModelConfig(type="biased_mf", dim=4, init_std=0.1),
    "two_tower": ModelConfig(
        type="two_tower", dim=4, init_std=0.1, full_softmax=True, positive_threshold=4.0
    ),
    "neumf": ModelConfig(
        type="neumf", dim=4, init_std=0.1, negatives=4, hidden=(8,), positive_threshold=4.0
    ),
    "dcn": ModelConfig(type="dcn", dim=4, init_std=0.1, hidden=(16,), cross_layers=1),
}


def _config(kind: str, members: int | None = None) -> RunConfig:
    return RunConfig(
        schema=SCHEMA,
        model=MODELS[kind],
        training=TRAIN,
        ensemble=EnsembleConfig(members=members, bootstrap=True) if members else None,
        evaluation=EvaluationConfig(k=3, top_k_accuracy=(1, 3), relevance_threshold=4.0),
        seed=0,
    )


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted(request):
    df, held = _block_data()
    rec = Recommender(_config(request.param)).fit(df)
    return request.param, rec, df, held


def test_held_out_in_block_item_is_top_1(fitted):
    kind, rec, _, held = fitted
    recs = rec.recommend(list(range(12)), k=1)
    got = dict(zip(recs["user"], recs["item"], strict=True))
    assert got == {u: str(i) for u, i in held.items()}, kind


def test_same_seed_same_result(fitted):
    kind, rec, df, _ = fitted
    again = Recommender(_config(kind)).fit(df)
    torch.testing.assert_close(
        rec.predict([0, 7], [1, 2]).mean, again.predict([0, 7], [1, 2]).mean, rtol=0, atol=0
    )


def test_batch_equals_single(fitted):
    _, rec, _, _ = fitted
    users, items = [0, 3, 7, 11], [5, 0, 9, 2]
    batch = rec.predict(users, items).mean
    single = torch.cat([rec.predict([u], [i]).mean for u, i in zip(users, items, strict=True)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)


def test_save_load_round_trip(fitted, tmp_path):
    _, rec, _, _ = fitted
    rec.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    torch.testing.assert_close(rec.predict([0, 7], [1, 2]).mean, back.predict([0, 7], [1, 2]).mean)
    pd.testing.assert_frame_equal(rec.recommend([0, 5], k=3), back.recommend([0, 5], k=3))


def test_cold_start_user_gets_recommendations(fitted):
    _, rec, _, _ = fitted
    assert not rec.known_users(["nobody"])[0]
    out = rec.recommend(["nobody"], k=4)
    assert len(out) == 4 and out["item"].nunique() == 4


def test_evaluate_reports_the_metric_keys(fitted):
    kind, rec, _df, held = fitted
    test = pd.DataFrame({"user_id": list(held), "item_id": list(held.values()), "rating": 5.0})
    m = rec.evaluate(test)
    # every user's one relevant item is their top-1: precision@3 = 1/3, recall = ndcg = 1
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["ndcg@3"] == pytest.approx(1.0)
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["mrr@3"] == pytest.approx(1.0)
    for key in ("map@3", "hit_rate@3", "coverage@3", "novelty@3", "top_k_accuracy@1"):
        assert key in m
    if kind in ("biased_mf", "dcn"):
        assert m["rmse"] < 1.0 and "mae" in m


def test_ensemble_gives_member_spread():
    df, _ = _block_data()
    rec = Recommender(_config("biased_mf", members=3)).fit(df)
    pred = rec.predict([0, 0], [0, 8])  # (0, 0): held out; (0, 8): the other block, unseen
    assert pred.samples is not None and pred.samples.shape == (3, 2)
    assert pred.epistemic_std is not None and bool((pred.epistemic_std > 1e-3).all())
    np.testing.assert_allclose(pred.mean.numpy(), pred.samples.mean(0).numpy(), rtol=1e-6)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_errors_before_fit(kind, tmp_path):
    rec = Recommender(_config(kind))
    with pytest.raises(NotFittedError, match="call fit"):
        rec.predict([1], [1])
    with pytest.raises(NotFittedError, match="call fit"):
        rec.recommend([1])
    with pytest.raises(NotFittedError, match="call fit"):
        rec.save(tmp_path / "x")
    with pytest.raises(NotFittedError, match="call fit"):
        rec.evaluate(_block_data()[0])


def test_validation_rows_count_as_seen():
    # items a user rated in the validation rows are excluded from recommendations too
    df, held = _block_data()
    valid = pd.DataFrame({"user_id": [0], "item_id": [held[0]], "rating": [5.0]})
    rec = Recommender(_config("biased_mf")).fit(df, valid)
    assert str(held[0]) not in set(rec.recommend([0], k=12)["item"])


def test_holdout_members_skip_and_validate_on_their_own_rows(monkeypatch):
    from wager.training.trainer import StackedModel

    df, _ = _block_data()
    cfg = _config("biased_mf", members=3)
    cfg = dataclasses.replace(
        cfg, ensemble=EnsembleConfig(members=3, bootstrap=False, holdout=0.25)
    )
    seen_weight = torch.zeros(3)
    original = StackedModel.call_weighted

    def spy(self, method, batch, weights, **kw):
        seen_weight.add_(weights.sum(1))
        return original(self, method, batch, weights, **kw)

    monkeypatch.setattr(StackedModel, "call_weighted", spy)
    rec = Recommender(cfg).fit(df)
    n, k = len(df), round(0.25 * len(df))
    epochs = rec.metrics_["epochs"]
    # each epoch visits every row once; each member gives weight 0 to its k held-out rows
    np.testing.assert_allclose(seen_weight.numpy(), [epochs * (n - k)] * 3)
    assert rec.history_ is not None and rec.history_.valid_metric  # early stopping ran
    # the validator scores member m on its own held-out rows only
    encoded = {kk: torch.as_tensor(v) for kk, v in rec.encoder_.transform(df).items()}
    mask = torch.zeros(3, n, dtype=torch.bool)
    for m in range(3):
        mask[m, torch.arange(m, n, 3)[:k]] = True
    got = pointwise_validator(rec.scorer_, encoded, mask)(rec.scorer_.stack.params)
    for m in range(3):
        rows = {kk: v[mask[m]] for kk, v in encoded.items()}
        pred = rec.scorer_.stack.member(m)(rows).clamp(1.0, 5.0)
        want = (pred - rows["label"]).square().mean().sqrt()
        torch.testing.assert_close(got[m], want, rtol=1e-5, atol=1e-6)


def test_holdout_on_a_ranking_model_says_what_to_do():
    df, _ = _block_data()
    cfg = dataclasses.replace(
        _config("two_tower", members=2),
        ensemble=EnsembleConfig(members=2, bootstrap=False, holdout=0.1),
    )
    with pytest.raises(ValueError, match=r"\[ensemble\] holdout = 0.1 .*set holdout = 0"):
        Recommender(cfg).fit(df)


@pytest.mark.parametrize("kind", ["two_tower", "biased_mf"])
def test_mean_scores_is_one_product_of_concatenated_member_factors(kind):
    df, _ = _block_data()
    rec = Recommender(_config(kind, members=3)).fit(df)
    users = list(range(12))
    got = rec.scorer_.mean_scores(users)
    members = rec.scorer_.member_scores(users)  # (M, U, I), each member's own head
    if kind == "two_tower":  # linear scores: the mean of products is the product of means
        torch.testing.assert_close(got, members.mean(0), rtol=1e-5, atol=1e-5)
    else:  # clipped ratings: equal wherever no member's location leaves [1, 5]
        u = rec.scorer_.stack.call("user_factors", rec.scorer_.encode_users(users))
        v = rec.scorer_.stack.call("item_factors", rec.scorer_.encode_items())
        loc = torch.einsum("mud,mid->mui", u, v)
        inside = ((loc > 1) & (loc < 5)).all(0)
        assert inside.any()
        torch.testing.assert_close(got[inside], members.mean(0)[inside], rtol=1e-5, atol=1e-5)


def test_validation_ranks_the_validation_items_not_excluding_them():
    # regression: validation rows are history for recommend(), but early stopping must rank
    # them (excluding only the training rows), else NDCG@k is 0 at every epoch
    df, held = _block_data()
    valid = pd.DataFrame({"user_id": list(held), "item_id": list(held.values()), "rating": 5.0})
    rec = Recommender(_config("two_tower")).fit(df, valid)
    best = min(v[0] for v in rec.history_.valid_metric)  # -NDCG@k, lower is better
    assert best < -0.5
