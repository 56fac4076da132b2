"""Indexes against a NumPy stable-argsort reference; faiss kinds against brute force."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pandas as pd
import pytest
import scipy.sparse
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wager.errors import DataError, MissingExtraError, NotFittedError
from wager.retrieval import BruteForceIndex, FaissIndex, Index, TopK, masked_top_k


def _reference(items, queries, k, exclude=None):
    """Top-k by np.argsort(-scores, kind="stable"): ties go to the lower position."""
    scores = np.asarray(queries, dtype=np.float64) @ np.asarray(items, dtype=np.float64).T
    for row, excluded in enumerate(exclude or []):
        scores[row, list(excluded)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, axis=1)
    positions = np.where(np.isneginf(top), -1, order)
    pad = k - positions.shape[1]
    positions = np.pad(positions, ((0, 0), (0, pad)), constant_values=-1)
    top = np.pad(top, ((0, 0), (0, pad)), constant_values=-np.inf)
    return positions, top


def _int_data(seed, n_items=40, n_queries=15, dim=3):
    """Small integer embeddings: exact float32 products and many tied scores."""
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(-2, 3, (n_items, dim), generator=g).float()
    queries = torch.randint(-2, 3, (n_queries, dim), generator=g).float()
    return items, queries


def _random_exclusions(seed, n_queries, n_items, max_per_query):
    rng = np.random.default_rng(seed)
    return [
        sorted(rng.choice(n_items, size=rng.integers(0, max_per_query + 1), replace=False))
        for _ in range(n_queries)
    ]


# ---------------------------------------------------------------- brute force vs reference


def test_brute_force_matches_stable_argsort_with_ties():
    items, queries = _int_data(0)
    top = BruteForceIndex().index(items).search(queries, k=7)
    positions, scores = _reference(items.numpy(), queries.numpy(), 7)
    np.testing.assert_array_equal(top.positions.numpy(), positions)
    np.testing.assert_array_equal(top.scores.numpy(), scores.astype(np.float32))
    assert top.scores.dtype == torch.float32 and top.positions.dtype == torch.int64
    # the data really has ties inside the top 7 (otherwise the test proves nothing about them)
    assert (np.diff(scores, axis=1) == 0).any()


def test_brute_force_matches_reference_on_float_data():
    g = torch.Generator().manual_seed(1)
    items, queries = torch.randn(300, 16, generator=g), torch.randn(25, 16, generator=g)
    exclude = _random_exclusions(1, 25, 300, 20)
    top = BruteForceIndex().index(items).search(queries, k=10, exclude=exclude)
    positions, scores = _reference(items.numpy(), queries.numpy(), 10, exclude)
    np.testing.assert_array_equal(top.positions.numpy(), positions)
    np.testing.assert_allclose(top.scores.numpy(), scores, rtol=0, atol=1e-5)


def test_exclusion_forms_agree_with_reference_and_string_ids():
    items, queries = _int_data(2, n_items=30, n_queries=12)
    ids = np.array([f"item{j}" for j in range(30)])
    exclude = _random_exclusions(2, 12, 30, 8)
    positions, scores = _reference(items.numpy(), queries.numpy(), 6, exclude)
    index = BruteForceIndex().index(items, ids=list(ids))

    by_list = index.search(queries, k=6, exclude=exclude)
    rows = np.repeat(np.arange(12), [len(e) for e in exclude])
    cols = np.concatenate(exclude).astype(np.int64)
    csr = scipy.sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(12, 30))
    by_csr = index.search(queries, k=6, exclude=csr)
    by_ids = index.search(queries, k=6, exclude_ids=[[ids[j] for j in e] for e in exclude])

    for top in (by_list, by_csr, by_ids):
        np.testing.assert_array_equal(top.positions.numpy(), positions)
        np.testing.assert_array_equal(top.scores.numpy(), scores.astype(np.float32))
        np.testing.assert_array_equal(top.ids, ids[positions])
        assert isinstance(top.ids[0, 0], str)


def test_exclude_and_exclude_ids_are_a_union_and_unknown_ids_are_ignored():
    items = torch.eye(4)
    query = torch.tensor([[4.0, 3.0, 2.0, 1.0]])  # scores 4, 3, 2, 1 for items a, b, c, d
    index = BruteForceIndex().index(items, ids=["a", "b", "c", "d"])
    top = index.search(query, k=2, exclude=[[0]], exclude_ids=[["b", "no-such-item"]])
    assert top.ids.tolist() == [["c", "d"]]
    assert top.scores.tolist() == [[2.0, 1.0]]


def test_csr_explicit_zeros_are_not_exclusions():
    index = BruteForceIndex().index(torch.eye(3))
    data, indices, indptr = np.array([0.0, 1.0]), np.array([0, 1]), np.array([0, 2])
    csr = scipy.sparse.csr_matrix((data, indices, indptr), shape=(1, 3))
    top = index.search(torch.tensor([[3.0, 2.0, 1.0]]), k=2, exclude=csr)
    assert top.positions.tolist() == [[0, 2]]  # position 1 excluded, stored zero at 0 is not


def test_equal_scores_ordered_by_position():
    # every item has the same score 1.0 -> order is 0, 1, 2, ...; excluding 1 and 3 skips them
    index = BruteForceIndex().index(torch.ones(6, 2) / 2)
    top = index.search(torch.ones(3, 2), k=4, exclude=[[], [1, 3], [0]])
    assert top.positions.tolist() == [[0, 1, 2, 3], [0, 2, 4, 5], [1, 2, 3, 4]]
    assert top.scores.tolist() == [[1.0] * 4] * 3


def test_padding_when_too_few_candidates():
    # 4 items; query 0 excludes 3 of them -> 1 found + 2 padded; k=3 <= n_items
    items = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    index = BruteForceIndex().index(items, ids=[10, 20, 30, 40])
    top = index.search(torch.tensor([[1.0], [-1.0]]), k=3, exclude=[[1, 2, 3], []])
    assert top.positions.tolist() == [[0, -1, -1], [0, 1, 2]]
    assert top.scores.tolist() == [[1.0, -np.inf, -np.inf], [-1.0, -2.0, -3.0]]
    assert top.ids.dtype == object and top.ids.tolist() == [[10, None, None], [10, 20, 30]]
    # k larger than the catalogue: padded columns at the end
    top = index.search(torch.tensor([[1.0]]), k=6)
    assert top.positions.tolist() == [[3, 2, 1, 0, -1, -1]]
    assert top.ids.tolist() == [[40, 30, 20, 10, None, None]]
    # no padding anywhere: ids keep their integer dtype
    assert index.search(torch.tensor([[1.0]]), k=2).ids.dtype.kind == "i"


def test_batch_size_smaller_than_queries_gives_identical_results():
    items, queries = _int_data(3, n_items=25, n_queries=23)
    exclude = _random_exclusions(3, 23, 25, 24)
    one = BruteForceIndex(batch_size=4096).index(items).search(queries, k=9, exclude=exclude)
    many = BruteForceIndex(batch_size=4).index(items).search(queries, k=9, exclude=exclude)
    assert torch.equal(one.positions, many.positions)
    assert torch.equal(one.scores, many.scores)
    np.testing.assert_array_equal(one.ids, many.ids)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n_items=st.integers(1, 12),
    n_queries=st.integers(1, 6),
    k=st.integers(1, 15),
    batch_size=st.integers(1, 7),
    data=st.data(),
)
def test_property_no_excluded_positions_and_scores_descending(
    seed, n_items, n_queries, k, batch_size, data
):
    items, queries = _int_data(seed, n_items=n_items, n_queries=n_queries, dim=2)
    exclude = [
        data.draw(st.lists(st.integers(0, n_items - 1), max_size=n_items)) for _ in range(n_queries)
    ]
    top = BruteForceIndex(batch_size=batch_size).index(items).search(queries, k, exclude=exclude)
    positions, scores = top.positions.numpy(), top.scores.numpy()
    assert positions.shape == scores.shape == top.ids.shape == (n_queries, k)
    for row in range(n_queries):
        found = positions[row][positions[row] >= 0]
        assert not set(found.tolist()) & set(exclude[row])
        assert len(set(found.tolist())) == len(found) == min(k, n_items - len(set(exclude[row])))
        assert (positions[row, len(found) :] == -1).all()  # padding only at the end
    assert (scores[:, 1:] <= scores[:, :-1]).all()  # descending; -inf padding last
    ref_positions, _ = _reference(items.numpy(), queries.numpy(), k, exclude)
    np.testing.assert_array_equal(positions, ref_positions)


# ---------------------------------------------------------------- TopK.to_frame


def test_to_frame_skips_padding_and_uses_query_ids():
    items = torch.tensor([[1.0], [2.0], [3.0]])
    index = BruteForceIndex().index(items, ids=["a", "b", "c"])
    top = index.search(torch.tensor([[1.0], [1.0]]), k=2, exclude=[[], [0, 1]])
    frame = top.to_frame(query_ids=["u1", "u2"])
    expected = pd.DataFrame(
        {
            "query": ["u1", "u1", "u2"],
            "id": ["c", "b", "c"],
            "rank": np.array([1, 2, 1], dtype=np.int64),
            "score": np.array([3.0, 2.0, 3.0], dtype=np.float32),
        }
    )
    pd.testing.assert_frame_equal(frame, expected, check_dtype=False)
    assert frame["rank"].dtype == np.int64
    assert top.to_frame()["query"].tolist() == [0, 0, 1]
    # integer ids with padding come back as integers, not objects
    padded = BruteForceIndex().index(items, ids=[7, 8, 9]).search(items[:1], k=5).to_frame()
    assert padded["id"].tolist() == [9, 8, 7] and padded["id"].dtype.kind == "i"
    with pytest.raises(ValueError, match="query_ids"):
        top.to_frame(query_ids=["u1"])


# ---------------------------------------------------------------- state, protocol, errors


def test_protocol_length_and_properties():
    index = BruteForceIndex()
    assert isinstance(index, Index)
    assert len(index) == 0 and index.dim is None and index.ids.shape == (0,)
    index.index(torch.zeros(5, 3))
    assert len(index) == 5 and index.dim == 3 and index.ids.tolist() == [0, 1, 2, 3, 4]
    assert isinstance(index, Index)


def test_index_copies_embeddings_and_pickles():
    items, queries = _int_data(4)
    index = BruteForceIndex(batch_size=5).index(items, ids=[f"i{j}" for j in range(40)])
    before = index.search(queries, k=5, exclude=_random_exclusions(4, 15, 40, 5))
    items.mul_(-1)  # the caller changes its tensor in place: the index must not see it
    clone = pickle.loads(pickle.dumps(index))
    for idx in (index, clone):
        after = idx.search(queries, k=5, exclude=_random_exclusions(4, 15, 40, 5))
        assert torch.equal(before.positions, after.positions)
        np.testing.assert_array_equal(before.ids, after.ids)


def test_empty_query_batch():
    top = BruteForceIndex().index(torch.eye(3)).search(torch.zeros(0, 3), k=2)
    assert isinstance(top, TopK)
    assert top.positions.shape == top.scores.shape == top.ids.shape == (0, 2)
    assert len(top.to_frame()) == 0


_BAD = [
    (lambda ix: ix.search(torch.zeros(1, 3), k=0), ValueError, r"k must be an integer >= 1"),
    (lambda ix: ix.search(torch.zeros(1, 4), k=1), ValueError, r"queries have dimension 4.*3"),
    (lambda ix: ix.search(torch.zeros(3), k=1), ValueError, r"queries must have shape.*unsqueeze"),
    (
        lambda ix: ix.search(torch.tensor([[0.0, float("nan"), 0.0]]), k=1),
        DataError,
        r"queries.*NaN.*positions 0",
    ),
    (
        lambda ix: ix.index(torch.tensor([[1.0, 0.0], [float("nan"), 0.0]])),
        DataError,
        r"embeddings.*1 of 2 rows.*NaN.*positions 1.*Remove or repair",
    ),
    (
        lambda ix: ix.index(torch.zeros(3, 2), ids=["a", "b", "a"]),
        DataError,
        r"ids.*id 'a' occurs more than once.*\[0, 2\]",
    ),
    (lambda ix: ix.index(torch.zeros(3, 2), ids=["a", "b"]), DataError, r"ids.*one id per row"),
    (lambda ix: ix.index(torch.zeros(0, 2)), ValueError, r"embeddings must have shape"),
    (
        lambda ix: ix.search(torch.zeros(2, 3), k=1, exclude=[[0]]),
        ValueError,
        r"exclude has 1 rows but there are 2 queries",
    ),
    (
        lambda ix: ix.search(torch.zeros(1, 3), k=1, exclude=[[5]]),
        ValueError,
        r"exclude\[0\] holds position 5, outside 0..3",
    ),
    (
        lambda ix: ix.search(torch.zeros(1, 3), k=1, exclude=[[1.5]]),
        TypeError,
        r"integer positions.*exclude_ids",
    ),
    (
        lambda ix: ix.search(torch.zeros(2, 3), k=1, exclude_ids=["a", "b"]),
        TypeError,
        r"exclude_ids\[0\] is 'a'.*wrap",
    ),
    (
        lambda ix: ix.search(torch.zeros(1, 3), k=1, exclude=scipy.sparse.csr_matrix((2, 4))),
        ValueError,
        r"exclude is a sparse matrix of shape \(2, 4\)",
    ),
]


@pytest.mark.parametrize(("call", "error", "message"), _BAD)
def test_bad_inputs_name_the_argument(call, error, message):
    index = BruteForceIndex().index(torch.eye(4, 3))
    with pytest.raises(error, match=message):
        call(index)


def test_search_before_index_and_bad_constructor_args():
    with pytest.raises(NotFittedError, match=r"call index\(embeddings, ids\) first"):
        BruteForceIndex().search(torch.zeros(1, 2), k=1)
    with pytest.raises(ValueError, match="batch_size"):
        BruteForceIndex(batch_size=0)


# ---------------------------------------------------------------- faiss


@pytest.fixture
def faiss_installed():
    """Skip without faiss; run it single-threaded (OpenMP spinning is slow on shared cores)."""
    faiss = pytest.importorskip("faiss")
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield faiss
    faiss.omp_set_num_threads(threads)


def test_faiss_missing_raises_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    with pytest.raises(MissingExtraError, match=r'FaissIndex.*pip install "wager\[ann\]"'):
        FaissIndex()


def test_faiss_flat_equals_brute_force(faiss_installed):
    g = torch.Generator().manual_seed(5)
    items, queries = torch.randn(200, 12, generator=g), torch.randn(30, 12, generator=g)
    exclude = _random_exclusions(5, 30, 200, 15)
    exclude[3] = list(range(195))  # only 5 candidates left for k=8 -> padding
    brute = BruteForceIndex().index(items).search(queries, k=8, exclude=exclude)
    flat = FaissIndex("flat", batch_size=7).index(items).search(queries, k=8, exclude=exclude)
    assert isinstance(FaissIndex("flat"), Index)
    assert torch.equal(flat.positions, brute.positions)
    np.testing.assert_allclose(flat.scores.numpy(), brute.scores.numpy(), rtol=0, atol=1e-5)
    assert flat.positions[3].tolist()[5:] == [-1, -1, -1]
    np.testing.assert_array_equal(flat.ids, brute.ids)


def test_faiss_ivf_small_catalogue_reduces_nlist_and_is_exact_when_probing_all(faiss_installed):
    g = torch.Generator().manual_seed(6)
    items, queries = torch.randn(30, 6, generator=g), torch.randn(10, 6, generator=g)
    ids = [f"i{j}" for j in range(30)]
    index = FaissIndex("ivf", nlist=100, nprobe=100).index(items, ids=ids)
    assert (index.nlist_, index.nprobe_) == (30, 30)  # reduced to n_items; every list probed
    brute = BruteForceIndex().index(items, ids=ids)
    brute = brute.search(queries, k=5, exclude_ids=[["i0", "i1"]] * 10)
    ivf = index.search(queries, k=5, exclude_ids=[["i0", "i1"]] * 10)
    assert torch.equal(ivf.positions, brute.positions)


@pytest.mark.parametrize(
    "index",
    [
        pytest.param(lambda: FaissIndex("hnsw", hnsw_m=16, ef_search=64), id="hnsw"),
        pytest.param(lambda: FaissIndex("ivf", nlist=16, nprobe=10), id="ivf"),
    ],
)
def test_faiss_approximate_recall_at_10(faiss_installed, index):
    g = torch.Generator().manual_seed(7)
    items, queries = torch.randn(2000, 16, generator=g), torch.randn(100, 16, generator=g)
    exclude = _random_exclusions(7, 100, 2000, 10)
    exact = BruteForceIndex().index(items).search(queries, k=10, exclude=exclude)
    approx = index().index(items).search(queries, k=10, exclude=exclude)
    pairs = zip(approx.positions.tolist(), exact.positions.tolist(), strict=True)
    recall = sum(len(set(a) & set(e)) for a, e in pairs) / (100 * 10)
    assert recall >= 0.9
    for row, excluded in enumerate(exclude):
        assert not set(approx.positions[row].tolist()) & set(excluded)
    assert (approx.scores[:, 1:] <= approx.scores[:, :-1]).all()


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_faiss_pickle_round_trip(faiss_installed, kind):
    g = torch.Generator().manual_seed(8)
    items, queries = torch.randn(120, 8, generator=g), torch.randn(9, 8, generator=g)
    index = FaissIndex(kind, nlist=8).index(items)
    clone = pickle.loads(pickle.dumps(index))
    a = index.search(queries, k=4, exclude=[[0, 1]] * 9)
    b = clone.search(queries, k=4, exclude=[[0, 1]] * 9)
    assert torch.equal(a.positions, b.positions) and torch.equal(a.scores, b.scores)


def test_faiss_bad_arguments(faiss_installed):
    with pytest.raises(ValueError, match="kind must be one of"):
        FaissIndex("annoy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nlist must be an integer >= 1"):
        FaissIndex("ivf", nlist=0)
    with pytest.raises(NotFittedError, match="FaissIndex holds no items"):
        FaissIndex().search(torch.zeros(1, 2), k=1)


# ---------------------------------------------------------------- masked_top_k


def _reference_masked(values, k, exclude):
    """np.argsort(-masked, kind="stable") with every stored entry of ``exclude`` set to -inf."""
    masked = np.array(values, dtype=np.float64)
    coo = exclude.tocoo()  # stored entries, explicit zeros included
    masked[coo.row, coo.col] = -np.inf
    order = np.argsort(-masked, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(masked, order, axis=1)
    pad = ((0, 0), (0, k - order.shape[1]))
    positions = np.pad(np.where(np.isneginf(top), -1, order), pad, constant_values=-1)
    return positions, np.pad(top, pad, constant_values=-np.inf)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [1, 3, 12, 15])
def test_masked_top_k_matches_stable_argsort_reference(dtype, k):
    rng = np.random.default_rng(k)
    values = np.round(rng.normal(size=(31, 12)), 1)  # many ties at the k-th value
    values[0, :] = 0.5  # one row all tied
    values[1, [2, 7]] = -np.inf  # entries scored -inf are never returned
    values[2, 4] = np.inf
    seen = rng.random((31, 12)) < 0.3
    seen[3] = True  # a row with everything excluded -> all padding
    exclude = scipy.sparse.csr_matrix(seen.astype(np.float64))
    exclude.data[exclude.indptr[4]] = 0.0  # a stored zero is excluded too (every stored entry is)
    # a non-contiguous input (transposed), chunks of 4 rows
    scores = torch.from_numpy(values.T.copy()).to(dtype).T
    before = scores.clone()
    top_values, top_positions = masked_top_k(scores, k, exclude, batch_size=4)
    positions, expected = _reference_masked(values, k, exclude)
    np.testing.assert_array_equal(top_positions.numpy(), positions)
    np.testing.assert_array_equal(top_values.numpy(), expected.astype(top_values.numpy().dtype))
    assert top_values.dtype == dtype and top_positions.dtype == torch.int64
    assert (top_positions[3] == -1).all()
    assert torch.equal(scores, before)  # the input is not modified
    # no exclusions, one chunk
    positions, _ = _reference_masked(values, k, scipy.sparse.csr_matrix(values.shape))
    np.testing.assert_array_equal(masked_top_k(scores, k)[1].numpy(), positions)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: masked_top_k(torch.tensor([[0.0, float("nan")]]), 1), ValueError, "row 0.*NaN"),
        (lambda: masked_top_k(torch.zeros(2, 3, dtype=torch.int64), 1), TypeError, "floating"),
        (lambda: masked_top_k(torch.zeros(3), 1), ValueError, r"shape \(n_rows, n_items\)"),
        (lambda: masked_top_k(torch.zeros(2, 3), 0), ValueError, "k must be an integer >= 1"),
        (
            lambda: masked_top_k(torch.zeros(2, 3), 1, scipy.sparse.csr_matrix((2, 4))),
            ValueError,
            r"exclude has shape \(2, 4\) but scores has shape \(2, 3\)",
        ),
        (lambda: masked_top_k(torch.zeros(2, 3), 1, [[0]]), TypeError, "scipy sparse"),
    ],
)
def test_masked_top_k_bad_inputs(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_set_search_changes_the_knob_of_a_built_index(faiss_installed):
    g = torch.Generator().manual_seed(8)
    items, queries = torch.randn(300, 8, generator=g), torch.randn(20, 8, generator=g)
    brute = BruteForceIndex().index(items).search(queries, k=5)
    with pytest.raises(RuntimeError, match="before index"):
        FaissIndex("ivf").set_search(nprobe=2)
    ivf = FaissIndex("ivf", nlist=10, nprobe=1).index(items)
    assert ivf.set_search(nprobe=50) is ivf and (ivf.nprobe, ivf.nprobe_) == (50, 10)
    assert torch.equal(ivf.search(queries, k=5).positions, brute.positions)  # all lists
    with pytest.raises(ValueError, match="ef_search is for kind 'hnsw'"):
        ivf.set_search(ef_search=8)
    hnsw = FaissIndex("hnsw", ef_search=4).index(items).set_search(ef_search=300)
    assert hnsw.ef_search == 300 and hnsw._faiss_index.hnsw.efSearch == 300
    with pytest.raises(ValueError, match="nprobe is for kind 'ivf'"):
        hnsw.set_search(nprobe=2)
    with pytest.raises(ValueError, match="nprobe must be an integer >= 1"):
        ivf.set_search(nprobe=0)
