"""Relevance confidence of retrieval / implicit top-k lists: score -> P(relevant) map."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from wager.config import EvaluationConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.errors import NotFittedError
from wager.recommender import Recommender
from wager.uncertainty.relevance import ListRelevanceCalibrator, load_relevance_calibrator


def test_temperature_is_recovered_from_next_positives_drawn_from_a_softmax():
    # 3000 users x 40 items, one positive each drawn from softmax(score / 0.5); items with
    # index 39 are "seen" (-inf) and never drawn
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(3000, 40, generator=gen, dtype=torch.float64)
    scores[:, 39] = -math.inf
    pos = torch.multinomial(torch.softmax(scores / 0.5, dim=1), 1, generator=gen).squeeze(1)
    chunks = [scores[:1500], scores[1500:]]
    positives = [
        [np.array([p]) for p in pos[:1500].tolist()],
        [np.array([p]) for p in pos[1500:].tolist()],
    ]
    cal = ListRelevanceCalibrator().fit(chunks, positives)
    assert cal.temperature_ == pytest.approx(0.5, rel=0.06)
    assert cal.horizon_ == pytest.approx(1.0)

    def nll(t: float) -> float:
        return float(-(torch.log_softmax(scores / t, 1)[torch.arange(3000), pos]).mean())

    t = cal.temperature_
    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03)) + 1e-9  # the likelihood's minimum


def test_probability_by_hand_and_horizon():
    cal = ListRelevanceCalibrator()
    cal.temperature_, cal.horizon_ = 2.0, 3.0
    rows = torch.tensor([[2.0, 0.0, -math.inf]], dtype=torch.float64)
    norm = cal.log_normalizer(rows)
    assert float(norm) == pytest.approx(math.log(math.e + 1.0))
    pi = math.e / (math.e + 1.0)
    got = cal.probability(rows[:, :2], norm)
    assert got[0, 0].item() == pytest.approx(1 - (1 - pi) ** 3)
    assert got[0, 1].item() == pytest.approx(1 - pi**3)
    one = cal.probability(rows[:, :2], norm, horizon=1.0)
    assert one[0].tolist() == pytest.approx([pi, 1 - pi])
    with pytest.raises(ValueError, match="horizon must be > 0"):
        cal.probability(rows[:, :2], norm, horizon=0.0)
    back = load_relevance_calibrator(cal.state_dict())
    assert isinstance(back, ListRelevanceCalibrator)
    assert (back.temperature_, back.horizon_) == (2.0, 3.0)


def test_list_calibrator_errors():
    with pytest.raises(NotFittedError):
        ListRelevanceCalibrator().log_normalizer(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="no validation positive is scorable"):
        rows = torch.tensor([[0.0, -math.inf]])
        ListRelevanceCalibrator().fit([rows], [[np.array([1])]])
    with pytest.raises(ValueError, match="relevance_softmax"):
        ListRelevanceCalibrator().load_state_dict({"kind": "isotonic"})
    with pytest.raises(ValueError, match="must be > 0"):
        ListRelevanceCalibrator().load_state_dict(
            {"kind": "relevance_softmax", "temperature": 0.0, "horizon": 1.0}
        )


def _interactions(seed: int) -> pd.DataFrame:
    """60 users, 40 items in 2 taste blocks; a user likes in-block items 4x more often."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(60):
        w = np.where((np.arange(40) // 20) == (u % 2), 4.0, 1.0)
        for i in rng.choice(40, size=12, replace=False, p=w / w.sum()):
            rows.append((u, int(i), 5.0))
    return pd.DataFrame(rows, columns=["user_id", "item_id", "rating"])


def _config() -> RunConfig:
    return RunConfig(
        schema=Schema(label="rating", label_kind="rating", rating_range=(1.0, 5.0)),
        model=ModelConfig(
            type="two_tower", dim=4, init_std=0.1, full_softmax=True, positive_threshold=4.0
        ),
        training=TrainConfig(epochs=30, batch_size=64, learning_rate=0.05, patience=30),
        evaluation=EvaluationConfig(k=5, relevance_threshold=4.0),
        seed=0,
    )


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    df = _interactions(0).sample(frac=1.0, random_state=0)
    n = len(df)
    return df.iloc[: int(0.6 * n)], df.iloc[int(0.6 * n) : int(0.8 * n)], df.iloc[int(0.8 * n) :]


@pytest.fixture(scope="module")
def model(split) -> Recommender:
    train, valid, _ = split
    return Recommender(_config()).fit(train, valid)


def test_horizon_is_the_mean_number_of_validation_positives(model, split):
    train, valid, _ = split
    cal = model.chain_.relevance
    assert isinstance(cal, ListRelevanceCalibrator)
    cat = model.scorer_.catalogue
    seen = cat.seen_matrix(train, model.schema)
    users, relevant = cat.relevant_lists(valid, model.schema, 4.0)
    rows = model.scorer_.catalogue.seen_rows(users, seen)
    n = sum(len(r) - int(rows[u, r].sum()) for u, r in enumerate(relevant))
    assert cal.horizon_ == pytest.approx(n / len(users))


def test_recommend_confidence_follows_the_rank_and_list_summaries(model):
    recs = model.recommend(list(range(10)), k=5)
    longer = model.recommend(list(range(10)), k=5, horizon=10.0)
    assert np.all(longer["confidence"].to_numpy() > recs["confidence"].to_numpy())
    conf = recs["confidence"].to_numpy()
    assert np.all((conf >= 0) & (conf <= 1)) and not np.isnan(conf).any()
    for _, g in recs.groupby("user"):
        assert np.all(np.diff(g.sort_values("rank")["confidence"].to_numpy()) <= 1e-12)
    summary = Recommender.list_confidence(recs)
    one = recs[recs["user"] == recs["user"].iloc[0]]["confidence"].to_numpy()
    row = summary.iloc[0]
    assert row["expected_hits"] == pytest.approx(one.sum())
    assert row["prob_at_least_one"] == pytest.approx(1 - np.prod(1 - one))


def test_evaluate_reports_list_calibration(model, split, tmp_path):
    _, _, test = split
    m = model.evaluate(test, plots_dir=tmp_path)
    for key in (
        "ece",
        "ece_equal_width",
        "mce",
        "brier",
        "expected_hits@5",
        "hits@5",
        "relevance_temperature",
    ):
        assert np.isfinite(m[key]), key
    assert 0 <= m["ece"] <= m["mce"] <= 1
    assert 0 <= m["prob_at_least_one@5"] <= 1
    # hits@5 is the mean number of relevant items in the lists: precision@5 * 5
    assert m["hits@5"] == pytest.approx(5 * m["precision@5"], rel=1e-6)
    assert (tmp_path / m["plots"]["relevance_reliability_diagram"]).exists()


def test_save_load_keeps_the_list_calibrator(model, tmp_path):
    model.save(tmp_path / "run")
    back = Recommender.load(tmp_path / "run")
    pd.testing.assert_frame_equal(model.recommend([0, 1], k=3), back.recommend([0, 1], k=3))


def test_without_validation_rows_confidence_is_nan(split):
    train, _, _ = split
    rec = Recommender(_config()).fit(train)
    assert rec.chain_.relevance is None
    assert rec.recommend([0], k=3)["confidence"].isna().all()


@pytest.fixture(scope="module")
def ensemble_model(split) -> Recommender:
    from dataclasses import replace

    from wager.config import EnsembleConfig

    train, valid, _ = split
    cfg = replace(
        _config(),
        training=TrainConfig(epochs=5, batch_size=64, learning_rate=0.05, patience=30),
        ensemble=EnsembleConfig(members=3, bootstrap=False),
    )
    return Recommender(cfg).fit(train, valid)


def test_retrieval_ensemble_ranks_by_the_mean_and_scores_members_only_for_the_list(
    ensemble_model,
):
    rec = ensemble_model
    users = list(range(12))
    recs = rec.recommend(users, k=5)
    # the members' full score matrices, the slow reference
    members = rec.scorer_.member_scores(users)  # (M, U, I)
    mean = members.mean(dim=0)
    col = {key: j for j, key in enumerate(rec.scorer_.catalogue.items)}
    u = recs["user"].to_numpy().astype(np.int64)  # a writable copy for torch indexing
    i = np.array([col[key] for key in recs["item"]])
    by_hand = members[:, u, i]  # (M, n) the listed pairs' member scores
    # score = the ensemble mean score (the concatenated-factor product equals the member mean)
    np.testing.assert_allclose(recs["score"].to_numpy(), mean[u, i].numpy(), rtol=1e-5)
    np.testing.assert_allclose(recs["mean"].to_numpy(), by_hand.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        rec.scorer_.pair_member_scores(u.tolist(), recs["item"].to_numpy()).numpy(),
        by_hand.numpy(),
        rtol=1e-5,
    )
    assert recs["std"].notna().all() and (recs["std"] > 0).all()
    # a missing user id (None) is scored like the full matrix scores it: the OOV row, not
    # another pair's user
    items = recs["item"].to_numpy()[:2]
    pairs = rec.scorer_.pair_member_scores([None, 0], items)
    full = rec.scorer_.member_scores([None, 0], list(items))  # (M, 2, 2)
    np.testing.assert_allclose(pairs.numpy(), full[:, [0, 1], [0, 1]].numpy(), rtol=1e-6)
    # ranks follow the score; each user's k items are the top k unseen by the mean score
    seen = rec.scorer_.catalogue.seen_rows(users)
    for user, g in recs.groupby("user"):
        assert np.all(np.diff(g["score"].to_numpy()) <= 1e-7)
        row = mean[user].clone()
        row[torch.as_tensor(seen[user].indices, dtype=torch.long)] = -math.inf
        top = set(torch.topk(row, 5).indices.tolist())
        assert {col[key] for key in g["item"]} == top
