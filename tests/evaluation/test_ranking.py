"""Ranking, leave-one-out, factorized top-k and beyond-accuracy metrics against references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import ndcg_score

from wager.evaluation.ranking import (
    beyond_accuracy_metrics,
    catalogue_coverage,
    factorized_top_k_accuracy,
    intra_list_diversity,
    leave_one_out_metrics,
    novelty,
    per_user_ranking_metrics,
    popularity_bias,
    ranking_metrics,
    sampled_negatives,
    top_k_from_scores,
)

KEYS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")

# ---------------------------------------------------------------------------------------------
# references: plain loops


def ref_user_metrics(items: list[int], rel: set[int], k: int) -> dict[str, float]:
    hits = [1.0 if (i >= 0 and i in rel) else 0.0 for i in items[:k]]
    n_hits = sum(hits)
    dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, len(rel))))
    ap, seen = 0.0, 0
    for r, h in enumerate(hits):
        if h:
            seen += 1
            ap += seen / (r + 1)
    first = next((r for r, h in enumerate(hits) if h), None)
    return {
        "precision": n_hits / k,
        "recall": n_hits / len(rel),
        "ndcg": dcg / idcg,
        "map": ap / min(k, len(rel)),
        "mrr": 0.0 if first is None else 1 / (first + 1),
        "hit_rate": float(n_hits > 0),
    }


def random_lists(rng, n_users, n_items, width):
    """Distinct items per row, a random number of trailing -1 pads."""
    top = np.full((n_users, width), -1, dtype=np.int64)
    for u in range(n_users):
        m = rng.integers(0, width + 1)
        top[u, :m] = rng.permutation(n_items)[:m]
    return top


def random_relevant(rng, n_users, n_items):
    return [rng.choice(n_items, size=rng.integers(0, 8), replace=False) for _ in range(n_users)]


def to_csr(relevant, n_items):
    rows = np.repeat(np.arange(len(relevant)), [len(r) for r in relevant])
    cols = np.concatenate(relevant)
    return sp.csr_matrix((np.ones(cols.size), (rows, cols)), shape=(len(relevant), n_items))


# ---------------------------------------------------------------------------------------------
# full ranking


def test_hand_worked_hits_at_ranks_1_and_3():
    # list [4, 7, 2], relevant {2, 4}, k=3: hits at ranks 1 and 3.
    # ndcg = (1 + 1/log2(4)) / (1 + 1/log2(3)); precision 2/3; recall 2/2;
    # map = (1/1 + 2/3) / min(3, 2) = 5/6; mrr = 1/1
    m = ranking_metrics(np.array([[4, 7, 2]]), [np.array([2, 4])], k=3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m["precision@3"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["map@3"] == pytest.approx(5 / 6)
    assert m["mrr@3"] == pytest.approx(1.0)
    assert m["hit_rate@3"] == 1.0
    assert m["n_users"] == 1


def test_hand_worked_map_normalised_by_k_and_padding():
    # k=2, 4 relevant, one hit at rank 2: AP = (1/2) / min(2, 4) = 1/4; mrr 1/2;
    # ndcg = (1/log2(3)) / (1 + 1/log2(3)); recall 1/4
    m = ranking_metrics(np.array([[9, 1]]), [np.array([1, 2, 3, 4])], k=2)
    assert m["map@2"] == pytest.approx(0.25)
    assert m["mrr@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["recall@2"] == pytest.approx(0.25)
    # padding [-1, 5] with relevant {5}: the pad is a miss at rank 1, precision 1/2,
    # ndcg = (1/log2(3)) / 1, mrr 1/2, map = (1/2) / 1
    m = ranking_metrics(np.array([[-1, 5]]), [np.array([5])], k=2)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx(1 / math.log2(3))
    assert m["mrr@2"] == pytest.approx(0.5)
    assert m["map@2"] == pytest.approx(0.5)


def test_users_without_relevant_items_are_skipped_not_zero():
    top = np.array([[0, 1], [2, 3], [4, 5]])
    relevant = [np.array([0]), np.array([], dtype=np.int64), np.array([9])]
    per_user = per_user_ranking_metrics(top, relevant, k=2)
    for key in KEYS:
        assert np.isnan(per_user[f"{key}@2"][1])
    m = ranking_metrics(top, relevant, k=2)
    assert m["n_users"] == 2
    assert m["hit_rate@2"] == pytest.approx(0.5)  # user 0 hits, user 2 misses
    empty = ranking_metrics(top, [np.array([], dtype=np.int64)] * 3, k=2)
    assert empty["n_users"] == 0 and np.isnan(empty["ndcg@2"])


@pytest.mark.parametrize("k", [1, 3, 10])
def test_random_against_loop_reference_list_and_csr(k):
    rng = np.random.default_rng(k)
    n_users, n_items = 60, 25
    top = random_lists(rng, n_users, n_items, width=12)
    relevant = random_relevant(rng, n_users, n_items)
    per_user = per_user_ranking_metrics(top, relevant, k)
    per_user_csr = per_user_ranking_metrics(torch.as_tensor(top), to_csr(relevant, n_items), k)
    sums = dict.fromkeys(KEYS, 0.0)
    n = 0
    for u in range(n_users):
        if len(relevant[u]) == 0:
            continue
        n += 1
        ref = ref_user_metrics(top[u].tolist(), set(relevant[u].tolist()), k)
        for key in KEYS:
            assert per_user[f"{key}@{k}"][u] == pytest.approx(ref[key], rel=1e-12, abs=1e-15)
            assert per_user_csr[f"{key}@{k}"][u] == pytest.approx(ref[key], rel=1e-12)
            sums[key] += ref[key]
    m = ranking_metrics(top, relevant, k)
    assert m["n_users"] == n
    for key in KEYS:
        assert m[f"{key}@{k}"] == pytest.approx(sums[key] / n, rel=1e-12)


def test_ndcg_matches_sklearn_on_full_ranking():
    rng = np.random.default_rng(3)
    n_users, n_items, k = 40, 30, 7
    scores = rng.random((n_users, n_items))  # distinct scores: no tie averaging in sklearn
    truth = (rng.random((n_users, n_items)) < 0.2).astype(float)
    truth[truth.sum(axis=1) == 0, 0] = 1.0
    top = np.argsort(-scores, axis=1)[:, :k]
    relevant = [np.flatnonzero(row) for row in truth]
    ours = per_user_ranking_metrics(top, relevant, k)[f"ndcg@{k}"]
    ref = [ndcg_score(truth[u : u + 1], scores[u : u + 1], k=k) for u in range(n_users)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), k=st.integers(1, 8), n_items=st.integers(1, 20))
def test_properties_bounds_and_count_consistency(data, k, n_items):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    top = random_lists(rng, 8, n_items, width=min(k, n_items))
    if top.shape[1] < k:
        top = np.pad(top, ((0, 0), (0, k - top.shape[1])), constant_values=-1)
    relevant = [
        rng.choice(n_items, size=rng.integers(1, n_items + 1), replace=False) for _ in range(8)
    ]
    per_user = per_user_ranking_metrics(top, relevant, k)
    for key in KEYS:
        v = per_user[f"{key}@{k}"]
        assert np.all((v >= 0) & (v <= 1 + 1e-12)), key
    n_hits = np.array([np.isin(top[u], relevant[u]).sum() for u in range(8)])
    n_rel = np.array([len(r) for r in relevant])
    np.testing.assert_allclose(per_user[f"precision@{k}"] * k, n_hits, atol=1e-9)
    np.testing.assert_allclose(per_user[f"recall@{k}"] * n_rel, n_hits, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), k=st.integers(1, 8))
def test_property_list_equal_to_relevant_set_is_perfect(data, k):
    n_rel = data.draw(st.integers(1, 12))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    rel = rng.choice(50, size=n_rel, replace=False)
    row = np.full(k, -1)
    row[: min(k, n_rel)] = rng.permutation(rel)[:k]
    m = ranking_metrics(row[None, :], [rel], k)
    assert m[f"ndcg@{k}"] == pytest.approx(1.0)
    assert m[f"map@{k}"] == pytest.approx(1.0)
    assert m[f"mrr@{k}"] == 1.0
    assert m[f"recall@{k}"] == pytest.approx(min(k, n_rel) / n_rel)
    assert m[f"precision@{k}"] == pytest.approx(min(k, n_rel) / k)


# ---------------------------------------------------------------------------------------------
# top_k_from_scores


def ref_top_k(scores: np.ndarray, k: int, exclude: sp.csr_matrix | None) -> np.ndarray:
    masked = scores.astype(np.float64).copy()
    if exclude is not None:
        r, c = exclude.nonzero()
        masked[r, c] = -np.inf
    out = np.full((scores.shape[0], k), -1)
    for u in range(scores.shape[0]):
        order = np.argsort(-masked[u], kind="stable")[:k]
        order = order[np.isfinite(masked[u, order])]
        out[u, : order.size] = order
    return out


def test_top_k_hand_worked_ties_and_exclusion():
    # scores 1, 3, 3, 2: ties between items 1 and 2 go to the lower index first
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0]])
    assert top_k_from_scores(scores, 2).tolist() == [[1, 2]]
    assert top_k_from_scores(scores, 1).tolist() == [[1]]
    # excluding item 1 leaves 3 (item 2), 2 (item 3)
    ex = sp.csr_matrix(np.array([[0, 1, 0, 0]]))
    assert top_k_from_scores(scores, 2, exclude=ex).tolist() == [[2, 3]]
    # excluding 3 of 4 items with k=3 pads with -1
    ex = sp.csr_matrix(np.array([[1, 1, 0, 1]]))
    assert top_k_from_scores(scores, 3, exclude=ex).tolist() == [[2, -1, -1]]


@pytest.mark.parametrize("k", [1, 4, 9, 15])
def test_top_k_matches_argsort_reference_with_ties_and_chunks(k):
    rng = np.random.default_rng(k)
    n_users, n_items = 23, 12
    scores = np.round(rng.random((n_users, n_items)), 1).astype(np.float32)  # many ties
    seen = rng.random((n_users, n_items)) < 0.3
    seen[5] = True  # a user who has seen everything
    exclude = sp.csr_matrix(seen)
    t = torch.from_numpy(scores.copy())
    got = top_k_from_scores(t, k, exclude=exclude, batch_size=5)
    np.testing.assert_array_equal(got, ref_top_k(scores, k, exclude))
    np.testing.assert_array_equal(got[5], -1)
    np.testing.assert_array_equal(t.numpy(), scores)  # input not modified
    np.testing.assert_array_equal(top_k_from_scores(scores, k), ref_top_k(scores, k, None))


def test_top_k_constant_scores_take_lowest_indices():
    scores = torch.zeros(3, 6)
    np.testing.assert_array_equal(top_k_from_scores(scores, 3, batch_size=2), [[0, 1, 2]] * 3)


# ---------------------------------------------------------------------------------------------
# sampled leave-one-out


def test_sampled_negatives_follow_documented_procedure():
    rng_data = np.random.default_rng(0)
    n_users, n_items = 30, 150
    positives = [
        rng_data.choice(n_items, size=rng_data.integers(1, 40), replace=False)
        for _ in range(n_users)
    ]
    got = sampled_negatives(n_users, n_items, positives, n_negatives=99, seed=7)
    rng = np.random.default_rng(7)
    for u in range(n_users):
        complement = np.setdiff1d(np.arange(n_items), positives[u])
        np.testing.assert_array_equal(got[u], rng.choice(complement, size=99, replace=False))
        assert np.unique(got[u]).size == 99
        assert not np.isin(got[u], positives[u]).any()
    assert got.shape == (n_users, 99)
    np.testing.assert_array_equal(
        got, sampled_negatives(n_users, n_items, positives, n_negatives=99, seed=7)
    )


def test_sampled_negatives_errors():
    with pytest.raises(ValueError, match="user 1 interacted with 3 of 5 items, leaving 2"):
        sampled_negatives(2, 5, [np.array([0]), np.array([0, 1, 2])], n_negatives=3)
    with pytest.raises(ValueError, match=r"positives\[0\] contains item 5"):
        sampled_negatives(1, 5, [np.array([5])], n_negatives=1)
    with pytest.raises(ValueError, match="positives has 1 entries but n_users=2"):
        sampled_negatives(2, 5, [np.array([0])], n_negatives=1)


def test_leave_one_out_hand_worked_ties_count_against_positive():
    # ranks (negatives >= positive): row 0 -> 0; row 1 -> 1 (the tie 0.5 counts); row 2 -> 2.
    # k=2: hits 1, 1, 0; ndcg 1/log2(2) = 1, 1/log2(3), 0
    pos = np.array([0.5, 0.5, 0.9])
    neg = np.array([[0.1, 0.2, 0.3], [0.5, 0.1, 0.1], [0.95, 0.99, 0.1]])
    m = leave_one_out_metrics(pos, neg, k=2)
    assert m["hit_rate@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    # constant scores: every negative ties, rank 3 -> no hit even at k=3
    assert leave_one_out_metrics(np.zeros(1), np.zeros((1, 3)), k=3)["hit_rate@3"] == 0.0


def test_leave_one_out_random_reference_torch():
    rng = np.random.default_rng(5)
    pos = np.round(rng.random(300), 2)
    neg = np.round(rng.random((300, 99)), 2)
    hr = nd = 0.0
    for p, row in zip(pos, neg, strict=True):
        rank = sum(1 for s in row if s >= p)
        if rank < 10:
            hr += 1
            nd += 1 / math.log2(rank + 2)
    m = leave_one_out_metrics(torch.tensor(pos), torch.tensor(neg), k=10)
    assert m == pytest.approx({"hit_rate@10": hr / 300, "ndcg@10": nd / 300}, rel=1e-12)


# ---------------------------------------------------------------------------------------------
# factorized top-k


def test_factorized_top_k_hand_worked_ties_favour_true_item():
    # row 0: true score 0.5 ties 2 others, none strictly greater -> hit at every k
    # row 1: true score 0.5, two candidates (0.9, 0.7) strictly greater -> hit only for k >= 3
    all_scores = torch.tensor([[0.5, 0.5, 0.5, 0.1], [0.9, 0.5, 0.7, 0.1]])
    pos = torch.tensor([0.5, 0.5])
    m = factorized_top_k_accuracy(pos, all_scores, ks=(1, 2, 3, 100))
    assert m == {
        "top_k_accuracy@1": 0.5,
        "top_k_accuracy@2": 0.5,
        "top_k_accuracy@3": 1.0,
        "top_k_accuracy@100": 1.0,
    }


def test_factorized_top_k_random_reference_chunked():
    rng = np.random.default_rng(6)
    n, n_items = 57, 40
    all_scores = np.round(rng.normal(size=(n, n_items)), 1)
    true_items = rng.integers(0, n_items, n)
    pos = all_scores[np.arange(n), true_items]
    ks = (1, 5, 10, 50)
    got = factorized_top_k_accuracy(torch.tensor(pos), torch.tensor(all_scores), ks, batch_size=8)
    for k in ks:
        hits = [sum(1 for s in all_scores[i] if s > pos[i]) < k for i in range(n)]
        assert got[f"top_k_accuracy@{k}"] == pytest.approx(np.mean(hits), rel=1e-12)


# ---------------------------------------------------------------------------------------------
# beyond accuracy


def test_coverage_novelty_popularity_hand_worked():
    top = np.array([[0, 1, -1], [1, 2, -1]])
    # distinct {0, 1, 2} of 10 items
    assert catalogue_coverage(top, 10) == pytest.approx(0.3)
    pop = np.zeros(10)
    pop[[0, 1, 2]] = [0.5, 0.25, 0.0]
    # novelty: user 0 (-log2 .5 - log2 .25)/2 = 1.5; user 1 (2 + -log2(1/8))/2 = 2.5 -> 2.0
    assert novelty(top, pop, n_train_users=8) == pytest.approx(2.0)
    # ARP: user 0 (0.5 + 0.25)/2 = 0.375; user 1 (0.25 + 0)/2 = 0.125 -> 0.25
    assert popularity_bias(top, pop) == pytest.approx(0.25)
    m = beyond_accuracy_metrics(top, 10, pop, n_train_users=8)
    assert set(m) == {"coverage@3", "diversity@3", "novelty@3", "popularity_bias@3"}
    assert np.isnan(m["diversity@3"])  # not computed: NaN, never 0
    assert m["coverage@3"] == pytest.approx(0.3) and m["novelty@3"] == pytest.approx(2.0)


def test_diversity_hand_worked():
    vec = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0], [1.0, 1.0]])
    # user 0: orthogonal pair -> 1; user 1: parallel pair -> 0; user 2: one item, skipped
    top = np.array([[0, 1], [0, 2], [3, -1]])
    assert intra_list_diversity(top, vec) == pytest.approx(0.5)
    # {0, 1, 3}: pairs (0,1) 1 - 0, (0,3) 1 - 1/sqrt2, (1,3) 1 - 1/sqrt2 -> mean
    expected = (1 + 2 * (1 - 1 / math.sqrt(2))) / 3
    assert intra_list_diversity(np.array([[0, 1, 3]]), vec) == pytest.approx(expected)
    assert np.isnan(intra_list_diversity(np.array([[3, -1]]), vec))
    m = beyond_accuracy_metrics(top, 4, np.full(4, 0.5), 10, item_vectors=vec)
    assert m["diversity@2"] == pytest.approx(0.5)


def test_diversity_random_reference():
    rng = np.random.default_rng(8)
    vec = rng.normal(size=(30, 6))
    top = random_lists(rng, 40, 30, width=7)
    vals = []
    for row in top:
        items = [i for i in row if i >= 0]
        if len(items) < 2:
            continue
        d = [
            1 - vec[a] @ vec[b] / (np.linalg.norm(vec[a]) * np.linalg.norm(vec[b]))
            for x, a in enumerate(items)
            for b in items[x + 1 :]
        ]
        vals.append(np.mean(d))
    assert intra_list_diversity(top, vec) == pytest.approx(np.mean(vals), rel=1e-10)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ranking_metrics(np.zeros((2, 3), int), [np.array([0])] * 2, k=0), "k must be"),
        (
            lambda: ranking_metrics(np.zeros((2, 3), int), [np.array([0])] * 2, k=4),
            "3 columns but k=4",
        ),
        (
            lambda: ranking_metrics(np.zeros(3, int), [np.array([0])], k=1),
            "top_items must be a 2-D",
        ),
        (lambda: ranking_metrics(np.zeros((1, 2)), [np.array([0])], k=1), "integer item indices"),
        (
            lambda: ranking_metrics(np.array([[0, -2]]), [np.array([0])], k=2),
            r"top_items\[0, 1\] = -2",
        ),
        (
            lambda: ranking_metrics(np.array([[3, 3]]), [np.array([0])], k=2),
            "row 0 lists item 3 more than once",
        ),
        (
            lambda: ranking_metrics(np.array([[0, 1]]), [np.array([0])] * 2, k=2),
            "relevant has 2 entries",
        ),
        (
            lambda: ranking_metrics(np.array([[0, 5]]), sp.csr_matrix((1, 4)), k=2),
            r"top_items\[0, 1\] = 5 is out of range for n_items=4",
        ),
        (
            lambda: ranking_metrics(np.array([[0, 1]]), sp.csr_matrix((2, 4)), k=2),
            "relevant has shape",
        ),
        (
            lambda: top_k_from_scores(torch.zeros(2, 3), 2, exclude=sp.csr_matrix((2, 4))),
            "exclude must be",
        ),
        (lambda: top_k_from_scores(torch.tensor([[0.0, float("nan")]]), 1), "scores contains NaN"),
        (lambda: top_k_from_scores(torch.zeros(3), 1), "scores must be a 2-D"),
        (lambda: leave_one_out_metrics(np.zeros(2), np.zeros((3, 4))), "neg_scores has 3 rows"),
        (lambda: leave_one_out_metrics(np.zeros(0), np.zeros((0, 4))), "pos_scores is empty"),
        (lambda: factorized_top_k_accuracy(np.zeros(2), np.zeros((3, 4))), "all_scores has 3 rows"),
        (lambda: factorized_top_k_accuracy(np.zeros(1), np.zeros((1, 4)), ks=(0,)), "ks must be"),
        (lambda: catalogue_coverage(np.array([[7]]), 5), "out of range for n_items=5"),
        (
            lambda: novelty(np.array([[0]]), np.array([1.5]), 3),
            "item_popularity must hold fractions",
        ),
        (
            lambda: intra_list_diversity(np.array([[0, 1]]), np.array([[1.0], [0.0]])),
            "row 1 is zero",
        ),
        (
            lambda: beyond_accuracy_metrics(np.array([[0]]), 3, np.zeros(2), 5),
            "item_popularity has 2 entries but n_items=3",
        ),
    ],
)
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
