"""Relevance confidence of retrieval / implicit top-k lists: score -> P(relevant) map."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.config import EvaluationConfig, ModelConfig, RunConfig, TrainConfig
from wager.data.schema import Schema
from wager.errors import NotFittedError
from wager.recommender import Recommender
from wager.uncertainty.relevance import ListRelevanceCalibrator, load_relevance_calibrator


def _standard_rows(n_users: int, n_items: int, gen: torch.Generator) -> torch.Tensor:
    """(U, I) float64 scores already standardised per row (mean 0, population std 1), so
    the calibrator's z-scores are the rows themselves."""
    rows = torch.randn(n_users, n_items, generator=gen, dtype=torch.float64)
    return (rows - rows.mean(1, keepdim=True)) / rows.std(1, unbiased=False, keepdim=True)


def _chunks(rows: torch.Tensor, positives: list[np.ndarray]):
    half = rows.shape[0] // 2
    return [rows[:half], rows[half:]], [positives[:half], positives[half:]]


def test_fit_recovers_the_softmax_and_an_identity_head_map():
    # data from the model itself with a = 1, b = 0: each user's H in 1..6 positives are
    # draws from softmax(z / 0.8) over 399 items (a 400th is seen: -inf); an item is then
    # among them with probability 1 - (1 - pi) ** H, which the fit must recover (repeats,
    # rare at these pi, are one positive)
    gen = torch.Generator().manual_seed(0)
    z = _standard_rows(4000, 399, gen)
    scores = torch.cat([z, torch.full((4000, 1), -math.inf, dtype=torch.float64)], dim=1)
    pi = torch.softmax(scores / 0.8, dim=1)
    h = torch.randint(1, 7, (4000,), generator=gen)
    positives = [
        np.unique(torch.multinomial(pi[u], int(h[u]), True, generator=gen).numpy())
        for u in range(4000)
    ]
    cal = ListRelevanceCalibrator(head=20).fit(*_chunks(scores, positives))
    assert cal.temperature_ == pytest.approx(0.8, rel=0.05)
    assert cal.slope_ == pytest.approx(1.0, abs=0.08)
    assert cal.offset_ == pytest.approx(0.0, abs=0.25)
    assert cal.horizon_ == pytest.approx(np.mean([len(p) for p in positives]))

    def nll(t: float) -> float:
        lp = torch.log_softmax(scores / t, 1)
        return float(-torch.cat([lp[u, p] for u, p in enumerate(positives)]).mean())

    t = cal.temperature_
    assert nll(t) <= min(nll(t * 0.97), nll(t * 1.03)) + 1e-9  # the likelihood's minimum


def test_fit_recovers_the_head_probabilities_of_a_sharper_world():
    # every user's 500 scores are a permutation of one standardised vector, so the softmax
    # normaliser is the same for all users and the head map at any T can express the truth
    # exactly. Each user has H in 10..15 positives (>= the 10 listed); their top-10 items are
    # among them with probability 1 - (1 - q) ** H, q = exp(-1.5) * softmax(z / 0.4) ** 0.7
    # (closed form), the rest of the H are uniform tail items. The fitted model's
    # probabilities of the top-10 items must match the true ones.
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    z0 = _standard_rows(1, 500, gen)[0]
    z = torch.stack([z0[torch.randperm(500, generator=gen)] for _ in range(3000)])
    top = torch.topk(z, 10, dim=1).indices
    h = torch.as_tensor(rng.integers(10, 16, 3000), dtype=torch.float64)
    q = math.exp(-1.5) * torch.softmax(z / 0.4, dim=1).gather(1, top) ** 0.7
    true = 1 - (1 - q) ** h[:, None]
    hit = torch.rand(true.shape, generator=gen, dtype=torch.float64) < true
    positives = []
    for u in range(3000):
        head = top[u][hit[u]].numpy()
        tail = np.setdiff1d(np.arange(500), top[u].numpy())
        positives.append(np.concatenate([head, rng.choice(tail, int(h[u]) - head.size, False)]))
    cal = ListRelevanceCalibrator(head=10).fit(*_chunks(z, positives))
    got = cal.probability(z.gather(1, top), cal.row_statistics(z), h[:, None])
    assert float((got - true).abs().max()) < 0.03
    assert float(got.sum(1).mean()) == pytest.approx(float(true.sum(1).mean()), rel=0.02)
    assert cal.slope_ / cal.temperature_ == pytest.approx(0.7 / 0.4, rel=0.1)


def test_probability_by_hand_and_horizon():
    cal = ListRelevanceCalibrator()
    cal.temperature_, cal.horizon_, cal.slope_, cal.offset_ = 2.0, 3.0, 0.5, math.log(0.8)
    rows = torch.tensor([[3.0, 1.0, -1.0, -math.inf]], dtype=torch.float64)
    stats = cal.row_statistics(rows)
    # z = (s - 1) / sqrt(8 / 3) over the 3 finite entries, pi = softmax(z / 2)
    z = (np.array([3.0, 1.0, -1.0]) - 1.0) / math.sqrt(8 / 3)
    pi = np.exp(z / 2) / np.exp(z / 2).sum()
    assert stats[0].tolist() == pytest.approx(
        [1.0, math.sqrt(8 / 3), math.log(np.exp(z / 2).sum())]
    )
    q = 0.8 * pi[:2] ** 0.5
    got = cal.probability(rows[:, :2], stats)
    assert got[0].tolist() == pytest.approx((1 - (1 - q) ** 3).tolist())
    one = cal.probability(rows[:, [0, 1, 3]], stats, horizon=torch.tensor([[1.0]]))
    assert one[0].tolist() == pytest.approx([q[0], q[1], 0.0])  # -inf: no item
    back = load_relevance_calibrator(json.loads(json.dumps(cal.state_dict())))
    assert isinstance(back, ListRelevanceCalibrator)
    assert torch.equal(back.probability(rows[:, :2], back.row_statistics(rows)), got)


def test_old_softmax_state_gives_its_old_probabilities():
    # a "relevance_softmax" state of an older run: raw scores, P = 1 - (1 - pi) ** H
    old = {"kind": "relevance_softmax", "temperature": 2.0, "horizon": 3.0}
    cal = load_relevance_calibrator(old)
    assert isinstance(cal, ListRelevanceCalibrator) and not cal.standardize
    rows = torch.tensor([[2.0, 0.0, -math.inf]], dtype=torch.float64)
    pi = math.e / (math.e + 1.0)
    got = cal.probability(rows[:, :2], cal.row_statistics(rows))
    assert got[0].tolist() == pytest.approx([1 - (1 - pi) ** 3, 1 - pi**3])
    state = cal.state_dict()
    assert state["kind"] == "relevance_list" and state["standardize"] is False
    again = load_relevance_calibrator(state)
    assert torch.equal(again.probability(rows[:, :2], again.row_statistics(rows)), got)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-5, 5), min_size=2, max_size=12),
    st.floats(0.1, 5),
    st.floats(0.2, 3),
    st.floats(-3, 1),
    st.floats(0.5, 30),
)
def test_probability_orders_like_the_score_and_grows_with_the_horizon(
    scores, t, slope, offset, horizon
):
    cal = ListRelevanceCalibrator()
    cal.temperature_, cal.horizon_, cal.slope_, cal.offset_ = t, 1.0, slope, offset
    rows = torch.tensor([sorted(scores, reverse=True)], dtype=torch.float64)
    stats = cal.row_statistics(rows)
    p = cal.probability(rows, stats, horizon)
    longer = cal.probability(rows, stats, horizon * 2)
    assert bool(((p >= 0) & (p <= 1)).all())
    assert bool((p[0, 1:] <= p[0, :-1] + 1e-12).all())  # higher score, higher probability
    assert bool((longer >= p - 1e-12).all())


def test_list_calibrator_errors():
    with pytest.raises(NotFittedError, match="call fit"):
        ListRelevanceCalibrator().row_statistics(torch.zeros(1, 2))
    with pytest.raises(ValueError, match="head must be an int >= 1"):
        ListRelevanceCalibrator(head=0)
    rows = torch.tensor([[0.0, -math.inf]])
    with pytest.raises(ValueError, match="no validation positive is scorable"):
        ListRelevanceCalibrator().fit([rows], [[np.array([1])]])
    with pytest.raises(ValueError, match="score_rows has 1 chunks but positives has 2"):
        ListRelevanceCalibrator().fit([rows], [[np.array([0])], [np.array([0])]])
    with pytest.raises(ValueError, match=r"shape \(1, 2\) but 2 users"):
        ListRelevanceCalibrator().fit([rows], [[np.array([0]), np.array([0])]])
    cal = load_relevance_calibrator(
        {"kind": "relevance_softmax", "temperature": 1.0, "horizon": 1.0}
    )
    stats = cal.row_statistics(rows)
    with pytest.raises(ValueError, match="horizon must be > 0"):
        cal.probability(rows, stats, horizon=0.0)
    with pytest.raises(ValueError, match=r"stats must be \(U, 3\)"):
        cal.probability(rows, stats[:, :1])
    with pytest.raises(ValueError, match="expected 'relevance_list'"):
        ListRelevanceCalibrator().load_state_dict({"kind": "isotonic"})
    with pytest.raises(ValueError, match=r"\['horizon', 'offset', 'slope'"):
        ListRelevanceCalibrator().load_state_dict({"kind": "relevance_list", "temperature": 1.0})
    with pytest.raises(ValueError, match="must be > 0"):
        ListRelevanceCalibrator().load_state_dict(
            {"kind": "relevance_softmax", "temperature": 0.0, "horizon": 1.0}
        )
    with pytest.raises(ValueError, match="must be > 0"):
        ListRelevanceCalibrator().load_state_dict(
            {
                "kind": "relevance_list",
                "temperature": 1.0,
                "horizon": 1.0,
                "slope": -1.0,
                "offset": 0.0,
                "standardize": True,
            }
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
        "relevance_slope",
        "relevance_offset",
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
