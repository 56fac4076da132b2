"""Relevance confidence of retrieval / implicit top-k lists: score -> P(relevant) map."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from wager.config import EvaluationConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.errors import NotFittedError
from wager.recommender import Recommender
from wager.uncertainty.relevance import ScoreRelevanceCalibrator, load_relevance_calibrator


def test_score_calibrator_equals_sklearn_isotonic_on_raw_scores_at_the_fitting_points():
    rng = np.random.default_rng(0)
    scores = rng.normal(3.0, 2.0, 400)
    hits = (rng.random(400) < 1 / (1 + np.exp(-(scores - 3.0)))).astype(float)
    ours = ScoreRelevanceCalibrator().fit(scores, hits)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(scores, hits)
    got = ours.transform(torch.tensor(scores, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, ref.predict(scores), atol=1e-9)
    # PAV: the fitted probabilities sum to the hits
    assert got.sum() == pytest.approx(hits.sum(), abs=1e-6)
    assert ours.centre_ == pytest.approx(np.median(scores))
    back = load_relevance_calibrator(ours.state_dict())
    assert isinstance(back, ScoreRelevanceCalibrator)
    torch.testing.assert_close(
        back.transform(torch.tensor(scores)), ours.transform(torch.tensor(scores))
    )


def test_score_calibrator_errors():
    with pytest.raises(NotFittedError):
        ScoreRelevanceCalibrator().transform(torch.zeros(2))
    with pytest.raises(ValueError, match="finite ranking scores"):
        ScoreRelevanceCalibrator().fit([1.0, float("nan")], [0, 1])
    with pytest.raises(ValueError, match="relevant"):
        ScoreRelevanceCalibrator().fit([1.0, 2.0], [0, 2])
    with pytest.raises(ValueError, match="relevance_score_isotonic"):
        ScoreRelevanceCalibrator().load_state_dict({"kind": "isotonic"})


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


def test_validation_lists_are_calibrated_in_the_mean(model, split):
    train, valid, _ = split
    cal = model.relevance_calibrator_
    assert isinstance(cal, ScoreRelevanceCalibrator)
    users, relevant = model._relevant_lists(valid, 4.0)
    top, scores, hits = model._list_scores(users, relevant, 20, model._seen_matrix(train))
    listed = top >= 0
    p = cal.transform(torch.as_tensor(scores[listed])).numpy()
    # the isotonic fit on exactly these lists: mean probability = hit rate (PAV)
    assert p.mean() == pytest.approx(hits[listed].mean(), abs=1e-6)


def test_recommend_confidence_follows_the_rank_and_list_summaries(model):
    recs = model.recommend(list(range(10)), k=5)
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
    for key in ("ece", "ece_equal_width", "mce", "brier", "expected_hits@5", "hits@5"):
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
    assert rec.relevance_calibrator_ is None
    assert rec.recommend([0], k=3)["confidence"].isna().all()
