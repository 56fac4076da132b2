"""Ranking metrics for recommenders: full ranking, sampled leave-one-out, factorized top-k,
and beyond-accuracy metrics. Pure functions: numpy arrays / torch tensors in, floats out.

Orientation: rows are users (or test queries), columns are items. A recommendation list
``top_items`` is an (n_users, k) integer array of item indices, rank 1 in column 0; ``-1``
marks an empty slot (padding) when a user had fewer than k candidates. Padding counts as a
miss at its rank; it never counts as an item.

Three evaluation protocols live here:

* Full ranking (:func:`top_k_from_scores` then :func:`ranking_metrics`): every item the user
  has not already seen is a candidate; the held-out items are the relevant ones.
* Sampled leave-one-out (:func:`sampled_negatives`, :func:`leave_one_out_metrics`): the
  NeuMF protocol (He et al., 2017) that ranks one held-out item among 99 sampled negatives.
* Factorized top-k accuracy (:func:`factorized_top_k_accuracy`): TensorFlow Recommenders'
  ``FactorizedTopK`` metric, where the true item competes against every candidate.

Example:
    >>> import numpy as np, torch
    >>> scores = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.1, 0.7]])
    >>> top = top_k_from_scores(scores, k=2)
    >>> top.tolist()
    [[0, 2], [1, 3]]
    >>> ranking_metrics(top, [np.array([2]), np.array([0])], k=2)["hit_rate@2"]
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import scipy.sparse as sp
import torch

from wager.evaluation.metrics import _to_numpy
from wager.retrieval.index import _is_sparse, masked_top_k

RelevantItems: TypeAlias = Sequence[np.ndarray] | sp.spmatrix | sp.sparray
"""Relevant items per user: a list of (n_relevant_u,) int arrays, or an (n_users, n_items)
scipy sparse matrix whose stored non-zero entries are the relevant items."""


_RANKING_KEYS = ("precision", "recall", "ndcg", "map", "mrr", "hit_rate")


# ---------------------------------------------------------------------------------------------
# validation helpers


def _check_k(k: object, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {k!r}")
    return int(k)


def _check_top_items(
    top_items: np.ndarray | torch.Tensor, n_items: int | None, k: int | None = None
) -> np.ndarray:
    """Validate a recommendation list; return it as an int64 (n_users, k) array."""
    top = _to_numpy(top_items)
    if top.ndim != 2:
        raise ValueError(
            f"top_items must be a 2-D (n_users, k) array of item indices, got shape {top.shape}"
        )
    if top.size and not np.issubdtype(top.dtype, np.integer):
        raise ValueError(
            f"top_items must hold integer item indices (-1 for padding), got dtype {top.dtype}"
        )
    top = top.astype(np.int64, copy=False)
    if k is not None:
        if top.shape[1] < k:
            raise ValueError(
                f"top_items has {top.shape[1]} columns but k={k}; pass k <= {top.shape[1]} or "
                "longer lists (pad with -1 where a user has fewer candidates)"
            )
        top = top[:, :k]
    bad = np.argwhere(top < -1)
    if bad.size:
        r, c = bad[0]
        raise ValueError(
            f"top_items[{r}, {c}] = {top[r, c]} is negative; item indices are >= 0 and -1 is "
            "the only padding value"
        )
    if n_items is not None:
        bad = np.argwhere(top >= n_items)
        if bad.size:
            r, c = bad[0]
            raise ValueError(
                f"top_items[{r}, {c}] = {top[r, c]} is out of range for n_items={n_items}; "
                f"item indices must be < {n_items}"
            )
    if top.shape[1] > 1:
        srt = np.sort(top, axis=1)
        dup = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
        rows = np.flatnonzero(dup.any(axis=1))
        if rows.size:
            r = rows[0]
            item = srt[r, 1:][dup[r]][0]
            raise ValueError(
                f"top_items row {r} lists item {item} more than once; a recommendation list "
                "holds distinct items"
            )
    return top


def _check_scores(x: np.ndarray | torch.Tensor, name: str, ndim: int) -> torch.Tensor:
    """Return scores as a floating torch tensor of the given rank with no NaN."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach()
    if t.dim() != ndim:
        shape = "(n,)" if ndim == 1 else "(n, n_items)"
        raise ValueError(f"{name} must be a {ndim}-D {shape} array, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN; score every candidate before evaluating")
    return t


def _relevant_csr(relevant: RelevantItems, n_users: int) -> sp.csr_matrix:
    """Relevant items as a CSR matrix with sorted, unique column indices per row."""
    if _is_sparse(relevant):
        if relevant.ndim != 2 or relevant.shape[0] != n_users:
            raise ValueError(
                f"relevant has shape {relevant.shape} but top_items has {n_users} rows; "
                "pass one row per user"
            )
        csr = sp.csr_matrix(relevant, copy=True)
        csr.eliminate_zeros()
        csr.sum_duplicates()
        return csr
    if isinstance(relevant, np.ndarray) and relevant.dtype != object:
        raise ValueError(
            "relevant must be a list of per-user item arrays or a scipy sparse matrix, got a "
            f"numpy array of shape {relevant.shape}; wrap it with list(...) if its rows are "
            "per-user items"
        )
    if len(relevant) != n_users:
        raise ValueError(
            f"relevant has {len(relevant)} entries but top_items has {n_users} rows; "
            "pass one array of relevant items per user"
        )
    rows = []
    for u, items in enumerate(relevant):
        a = _to_numpy(items).reshape(-1)
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"relevant[{u}] must hold integer item indices, got dtype {a.dtype}")
        a = a.astype(np.int64, copy=False)
        if a.size and a.min() < 0:
            raise ValueError(f"relevant[{u}] contains item {a.min()}; item indices are >= 0")
        rows.append(np.unique(a))
    lengths = np.array([r.size for r in rows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    n_cols = int(indices.max()) + 1 if indices.size else 0
    data = np.ones(indices.size, dtype=np.int8)
    return sp.csr_matrix((data, indices, indptr), shape=(n_users, n_cols))


def _hits(top: np.ndarray, rel: sp.csr_matrix) -> np.ndarray:
    """(n_users, k) bool: is the item at each rank relevant to its user (padding never is)."""
    n_users = top.shape[0]
    n_cols = max(int(rel.shape[1]), int(top.max(initial=-1)) + 1, 1)
    rel_rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(rel.indptr))
    rel_keys = rel_rows * n_cols + rel.indices.astype(np.int64)  # sorted: rows, then items
    top_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_cols + top
    if rel_keys.size == 0:
        return np.zeros(top.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(rel_keys, top_keys), rel_keys.size - 1)
    return (rel_keys[pos] == top_keys) & (top >= 0)


# ---------------------------------------------------------------------------------------------
# full-ranking protocol


def per_user_ranking_metrics(
    top_items: np.ndarray | torch.Tensor, relevant: RelevantItems, k: int
) -> dict[str, np.ndarray]:
    """Per-user top-k ranking metrics with binary relevance.

    With ``hit_r`` = 1 when the item at rank r (1-based) is relevant and ``R`` = the number of
    distinct relevant items of the user:

    * ``precision@k`` = sum(hit) / k (padding slots count as misses),
    * ``recall@k`` = sum(hit) / R,
    * ``ndcg@k`` = DCG / IDCG with DCG = sum_r hit_r / log2(r + 1) and IDCG the DCG of
      min(k, R) hits at ranks 1..min(k, R),
    * ``map@k`` = sum_r hit_r * precision@r / min(k, R) (average precision),
    * ``mrr@k`` = 1 / (rank of the first hit), 0 without a hit in the top k,
    * ``hit_rate@k`` = 1 if any of the top k is relevant, else 0.

    Args:
        top_items: (n_users, >= k) int item indices of each user's ranked list, rank 1 first,
            -1 for padding; only the first k columns are used. Items in a row are distinct.
        relevant: relevant (held-out) items per user: a list of n_users int arrays, or an
            (n_users, n_items) scipy sparse matrix whose non-zero entries are relevant.
        k: cut-off (>= 1).

    Returns:
        Keys "precision@{k}", "recall@{k}", "ndcg@{k}", "map@{k}", "mrr@{k}",
        "hit_rate@{k}", each an (n_users,) float64 array; NaN for users without relevant
        items (the metrics are undefined for them, not 0).

    Raises:
        ValueError: k < 1; top_items not 2-D integer, shorter than k, with indices < -1,
            >= n_items (when ``relevant`` is sparse) or repeated in a row; ``relevant`` not
            one entry per user.
    """
    k = _check_k(k)
    n_items = int(relevant.shape[1]) if _is_sparse(relevant) else None
    top = _check_top_items(top_items, n_items, k)
    rel = _relevant_csr(relevant, top.shape[0])
    hits = _hits(top, rel).astype(np.float64)
    n_rel = np.diff(rel.indptr).astype(np.float64)
    has_rel = n_rel > 0
    ranks = np.arange(1, k + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1.0)
    n_hits = hits.sum(axis=1)
    ideal_len = np.minimum(k, n_rel).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        idcg = np.where(has_rel, np.cumsum(discount)[np.maximum(ideal_len - 1, 0)], np.nan)
        ap = (np.cumsum(hits, axis=1) / ranks * hits).sum(axis=1) / ideal_len
        first = np.argmax(hits, axis=1)
        out = {
            "precision": n_hits / k,
            "recall": n_hits / n_rel,
            "ndcg": (hits @ discount) / idcg,
            "map": ap,
            "mrr": np.where(n_hits > 0, 1.0 / (first + 1.0), 0.0),
            "hit_rate": (n_hits > 0).astype(np.float64),
        }
    return {f"{name}@{k}": np.where(has_rel, out[name], np.nan) for name in _RANKING_KEYS}


def ranking_metrics(
    top_items: np.ndarray | torch.Tensor, relevant: RelevantItems, k: int
) -> dict[str, float]:
    """Mean top-k ranking metrics over the users that have at least one relevant item.

    Definitions are those of :func:`per_user_ranking_metrics`. Users without relevant items
    are skipped (not scored 0); how many users were evaluated is returned under "n_users".

    Args:
        top_items: (n_users, >= k) int item indices, rank 1 first, -1 for padding.
        relevant: relevant items per user (list of int arrays or (n_users, n_items) sparse).
        k: cut-off (>= 1).

    Returns:
        "precision@{k}", "recall@{k}", "ndcg@{k}", "map@{k}", "mrr@{k}", "hit_rate@{k}"
        (floats in [0, 1]; NaN when no user has a relevant item) and "n_users" (int).
    """
    per_user = per_user_ranking_metrics(top_items, relevant, k)
    first = next(iter(per_user.values()))
    evaluated = ~np.isnan(first)
    n = int(evaluated.sum())
    result: dict[str, float] = {
        key: float(v[evaluated].mean()) if n else float("nan") for key, v in per_user.items()
    }
    result["n_users"] = n
    return result


def top_k_from_scores(
    scores: torch.Tensor | np.ndarray,
    k: int,
    exclude: sp.spmatrix | sp.sparray | None = None,
    batch_size: int = 4096,
) -> np.ndarray:
    """Each user's k best items by score, with already-seen items excluded.

    The positions of :func:`wager.retrieval.masked_top_k` (which documents the algorithm), as
    a NumPy array, after checking the inputs. Excluded entries are set to -inf before ranking,
    and so are never returned. Ties are broken by the lower item index, so the result is
    deterministic and equals ``np.argsort(-masked, kind="stable")[:, :k]`` on the
    -inf-masked scores, except that slots holding a -inf score become -1. Items whose own
    score is -inf are therefore never recommended either. Users are processed in chunks of
    ``batch_size`` rows, so extra memory is O(batch_size * n_items); the computation runs
    on ``scores``' device.

    Args:
        scores: (n_users, n_items) float scores, higher = better (torch tensor or numpy;
            integer scores are ranked as float64).
        k: list length (>= 1); may exceed n_items, the extra slots are -1.
        exclude: optional (n_users, n_items) scipy sparse matrix whose stored entries
            (typically the training interactions) are not recommended.
        batch_size: users per chunk (>= 1).

    Returns:
        (n_users, k) int64 item indices, rank 1 in column 0; -1 where fewer than k
        non-excluded items exist.

    Raises:
        ValueError: k or batch_size < 1; scores not 2-D or containing NaN; exclude's shape
            differs from scores'.
    """
    k = _check_k(k)
    batch_size = _check_k(batch_size, "batch_size")
    s = _check_scores(scores, "scores", ndim=2)
    if exclude is not None and (not sp.issparse(exclude) or exclude.shape != tuple(s.shape)):
        shape = exclude.shape if sp.issparse(exclude) else type(exclude).__name__
        raise ValueError(
            f"exclude must be a scipy sparse matrix of shape {tuple(s.shape)} (the shape of "
            f"scores), got {shape}"
        )
    return masked_top_k(s, k, exclude, batch_size)[1].cpu().numpy()


# ---------------------------------------------------------------------------------------------
# sampled leave-one-out protocol (NeuMF)


def sampled_negatives(
    n_users: int,
    n_items: int,
    positives: Sequence[np.ndarray],
    n_negatives: int = 99,
    seed: int = 0,
) -> np.ndarray:
    """Sample each user's negatives for the leave-one-out protocol of NeuMF.

    Exact procedure, so that another implementation can reproduce the draws::

        rng = numpy.random.default_rng(seed)
        for u in range(n_users):                       # users in index order, one rng
            complement = items not in positives[u], in ascending item index order
            negatives[u] = rng.choice(complement, size=n_negatives, replace=False)

    (``rng.choice`` with its defaults ``shuffle=True`` and ``p=None``.) The negatives of a
    user are distinct, and are never items the user interacted with.

    Args:
        n_users: number of users (rows of the result).
        n_items: number of items; item indices are 0..n_items-1.
        positives: n_users int arrays, all items each user interacted with (train and test),
            so that no positive is drawn as a negative.
        n_negatives: negatives per user (>= 1); 99 in the NeuMF paper.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        (n_users, n_negatives) int64 item indices.

    Raises:
        ValueError: positives has the wrong length or out-of-range items; a user has
            interacted with so many items that fewer than n_negatives remain.
    """
    n_negatives = _check_k(n_negatives, "n_negatives")
    if len(positives) != n_users:
        raise ValueError(
            f"positives has {len(positives)} entries but n_users={n_users}; "
            "pass one array of interacted items per user"
        )
    rng = np.random.default_rng(seed)
    out = np.empty((n_users, n_negatives), dtype=np.int64)
    allowed = np.ones(n_items, dtype=bool)
    for u in range(n_users):
        pos = _to_numpy(positives[u]).reshape(-1).astype(np.int64, copy=False)
        if pos.size and (pos.min() < 0 or pos.max() >= n_items):
            bad = pos[(pos < 0) | (pos >= n_items)][0]
            raise ValueError(
                f"positives[{u}] contains item {bad}, outside 0..{n_items - 1} (n_items)"
            )
        allowed[pos] = False
        complement = np.flatnonzero(allowed)
        allowed[pos] = True
        if complement.size < n_negatives:
            raise ValueError(
                f"user {u} interacted with {n_items - complement.size} of {n_items} items, "
                f"leaving {complement.size} < n_negatives={n_negatives} to sample; "
                "lower n_negatives or drop that user"
            )
        out[u] = rng.choice(complement, size=n_negatives, replace=False)
    return out


def leave_one_out_metrics(
    pos_scores: np.ndarray | torch.Tensor, neg_scores: np.ndarray | torch.Tensor, k: int = 10
) -> dict[str, float]:
    """HR@k and NDCG@k of one held-out item ranked among sampled negatives (NeuMF protocol).

    The 0-based rank of the positive is the number of negatives scoring >= it, so ties count
    against the positive (a model that scores everything equally gets no credit). The row is
    a hit when rank < k, with NDCG 1 / log2(rank + 2); a miss scores 0 on both.

    Args:
        pos_scores: (n,) score of each test row's held-out item.
        neg_scores: (n, n_negatives) scores of that row's sampled negatives.
        k: cut-off (>= 1).

    Returns:
        "hit_rate@{k}" and "ndcg@{k}": means over the n rows.

    Raises:
        ValueError: shapes disagree, n = 0, k < 1, or a score is NaN.
    """
    k = _check_k(k)
    pos = _check_scores(pos_scores, "pos_scores", ndim=1)
    neg = _check_scores(neg_scores, "neg_scores", ndim=2)
    if neg.shape[0] != pos.shape[0]:
        raise ValueError(
            f"neg_scores has {neg.shape[0]} rows but pos_scores has {pos.shape[0]}; "
            "pass one row of negatives per positive"
        )
    if pos.shape[0] == 0:
        raise ValueError("pos_scores is empty; pass at least one test row")
    dtype = torch.promote_types(pos.dtype, neg.dtype)
    rank = (neg.to(dtype) >= pos.to(dtype).to(neg.device)[:, None]).sum(dim=1).cpu().numpy()
    hit = rank < k
    ndcg = np.where(hit, 1.0 / np.log2(rank + 2.0), 0.0)
    return {f"hit_rate@{k}": float(hit.mean()), f"ndcg@{k}": float(ndcg.mean())}


# ---------------------------------------------------------------------------------------------
# factorized top-k (TensorFlow Recommenders)


def factorized_top_k_accuracy(
    pos_scores: np.ndarray | torch.Tensor,
    all_scores: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5, 10, 50, 100),
    batch_size: int = 4096,
) -> dict[str, float]:
    """Top-k categorical accuracy of TensorFlow Recommenders' ``FactorizedTopK`` metric.

    For each test row (query, true item) the true item's score is compared against the
    scores of ALL candidates, the true item included and seen items not excluded. The row is
    a hit at k when fewer than k candidates score strictly higher than the true item.

    This follows the TFRS source (``tensorflow_recommenders/metrics/factorized_top_k.py``,
    score-based branch): it prepends the true item's score to the retrieved top scores and
    calls ``tf.math.in_top_k(targets=0, k)``, whose kernel counts the predictions strictly
    greater than the target's and returns ``count < k``. Ties therefore count in favour of
    the true item (the opposite of :func:`leave_one_out_metrics`), and the true item's own
    entry in ``all_scores`` never counts against it. Differences from TF: a NaN score raises
    here, and +-inf scores are compared as ordinary values (TF's kernel returns "no hit" for
    any non-finite score). Compute ``pos_scores`` exactly as ``all_scores`` are computed (or
    gather them from ``all_scores``): a rounding difference can make the true item's entry
    in ``all_scores`` beat its own ``pos_scores``.

    Args:
        pos_scores: (n,) score of each row's true item.
        all_scores: (n, n_candidates) score of every candidate for each row's query.
        ks: cut-offs, each >= 1 (a k above n_candidates always hits).
        batch_size: rows per chunk (>= 1); extra memory is O(batch_size * n_candidates).

    Returns:
        "top_k_accuracy@{k}" for each k in ``ks``: fraction of rows that hit.

    Raises:
        ValueError: shapes disagree, n = 0, a k or batch_size < 1, or a score is NaN.
    """
    ks = [_check_k(k, "ks") for k in ks]
    if not ks:
        raise ValueError("ks is empty; pass at least one cut-off, e.g. ks=(10,)")
    batch_size = _check_k(batch_size, "batch_size")
    pos = _check_scores(pos_scores, "pos_scores", ndim=1)
    allsc = _check_scores(all_scores, "all_scores", ndim=2)
    if allsc.shape[0] != pos.shape[0]:
        raise ValueError(
            f"all_scores has {allsc.shape[0]} rows but pos_scores has {pos.shape[0]}; "
            "pass one row of candidate scores per test row"
        )
    if pos.shape[0] == 0:
        raise ValueError("pos_scores is empty; pass at least one test row")
    dtype = torch.promote_types(pos.dtype, allsc.dtype)
    n_greater = np.empty(pos.shape[0], dtype=np.int64)
    for start in range(0, pos.shape[0], batch_size):
        stop = min(start + batch_size, pos.shape[0])
        p = pos[start:stop].to(device=allsc.device, dtype=dtype)
        greater = (allsc[start:stop].to(dtype) > p[:, None]).sum(dim=1)
        n_greater[start:stop] = greater.cpu().numpy()
    return {f"top_k_accuracy@{k}": float(np.mean(n_greater < k)) for k in ks}


# ---------------------------------------------------------------------------------------------
# beyond accuracy


def _per_user_mean(values: np.ndarray, valid: np.ndarray) -> float:
    """Mean over users (rows with >= 1 valid slot) of the row mean over valid slots."""
    counts = valid.sum(axis=1)
    keep = counts > 0
    if not keep.any():
        return float("nan")
    sums = np.where(valid, values, 0.0).sum(axis=1)
    return float(np.mean(sums[keep] / counts[keep]))


def _check_popularity(item_popularity: np.ndarray | torch.Tensor) -> np.ndarray:
    pop = _to_numpy(item_popularity).astype(np.float64, copy=False)
    if pop.ndim != 1:
        raise ValueError(f"item_popularity must be a 1-D (n_items,) array, got shape {pop.shape}")
    if not np.all((pop >= 0) & (pop <= 1)):
        raise ValueError(
            "item_popularity must hold fractions of training users in [0, 1] (no NaN); "
            "divide interaction counts by the number of training users"
        )
    return pop


def catalogue_coverage(top_items: np.ndarray | torch.Tensor, n_items: int) -> float:
    """Share of the catalogue that appears in at least one recommendation list.

    Args:
        top_items: (n_users, k) int item indices, -1 for padding (ignored).
        n_items: catalogue size (>= 1).

    Returns:
        (number of distinct recommended items) / n_items, in [0, 1].
    """
    n_items = _check_k(n_items, "n_items")
    top = _check_top_items(top_items, n_items)
    return float(np.unique(top[top >= 0]).size / n_items)


def intra_list_diversity(
    top_items: np.ndarray | torch.Tensor, item_vectors: np.ndarray | torch.Tensor
) -> float:
    """Mean over users of the mean pairwise cosine distance within each list.

    For a list of m >= 2 items the user's value is the mean of (1 - cos(v_i, v_j)) over the
    m(m-1)/2 pairs; lists with fewer than 2 items (after dropping padding) are skipped.

    Args:
        top_items: (n_users, k) int item indices, -1 for padding.
        item_vectors: (n_items, d) item feature vectors or embeddings; every recommended
            item needs a non-zero vector.

    Returns:
        Diversity in [0, 2] (in [0, 1] for non-negative vectors); NaN when no list has two
        items.

    Raises:
        ValueError: a recommended item's vector is zero or non-finite, or shapes disagree.
    """
    vec = _to_numpy(item_vectors).astype(np.float64, copy=False)
    if vec.ndim != 2:
        raise ValueError(f"item_vectors must be a 2-D (n_items, d) array, got shape {vec.shape}")
    top = _check_top_items(top_items, vec.shape[0])
    used = np.unique(top[top >= 0])
    norms = np.linalg.norm(vec[used], axis=1)
    bad = ~np.isfinite(norms) | (norms == 0)
    if bad.any():
        raise ValueError(
            f"item_vectors row {used[bad][0]} is zero or not finite, so its cosine similarity "
            "is undefined; give every recommended item a non-zero finite vector"
        )
    unit = np.zeros_like(vec)
    unit[used] = vec[used] / norms[:, None]
    valid = top >= 0
    m = valid.sum(axis=1)
    n_users, k = top.shape
    per_user = np.full(n_users, np.nan)
    chunk = max(1, 2**22 // max(1, k * max(k, vec.shape[1])))
    for start in range(0, n_users, chunk):
        stop = min(start + chunk, n_users)
        e = unit[np.where(valid[start:stop], top[start:stop], 0)]
        e *= valid[start:stop, :, None]
        total = e.sum(axis=1)
        # sum over ordered pairs i != j of cos = |sum_i e_i|^2 - sum_i |e_i|^2
        sim = (np.einsum("ud,ud->u", total, total) - np.einsum("ukd,ukd->u", e, e)) / 2.0
        mu = m[start:stop]
        pairs = mu * (mu - 1) / 2.0
        with np.errstate(divide="ignore", invalid="ignore"):
            per_user[start:stop] = np.where(pairs > 0, 1.0 - sim / pairs, np.nan)
    keep = ~np.isnan(per_user)
    return float(per_user[keep].mean()) if keep.any() else float("nan")


def novelty(
    top_items: np.ndarray | torch.Tensor,
    item_popularity: np.ndarray | torch.Tensor,
    n_train_users: int,
) -> float:
    """Mean self-information -log2(popularity) of recommended items (higher = less popular).

    Averaged within each list, then over users (lists that are all padding are skipped).
    An item no training user interacted with (popularity 0) counts as popularity
    1 / n_train_users, i.e. as if one user had.

    Args:
        top_items: (n_users, k) int item indices, -1 for padding.
        item_popularity: (n_items,) fraction of training users who interacted with each item.
        n_train_users: number of training users (>= 1).

    Returns:
        Novelty in bits, in [0, log2(n_train_users)]; NaN when every list is empty.
    """
    n_train_users = _check_k(n_train_users, "n_train_users")
    pop = _check_popularity(item_popularity)
    top = _check_top_items(top_items, pop.shape[0])
    valid = top >= 0
    p = pop[np.where(valid, top, 0)]
    p = np.where(p > 0, p, 1.0 / n_train_users)
    return _per_user_mean(-np.log2(p), valid)


def popularity_bias(
    top_items: np.ndarray | torch.Tensor, item_popularity: np.ndarray | torch.Tensor
) -> float:
    """Average recommendation popularity (ARP, Abdollahpouri et al., 2019).

    Mean popularity of the items in each list, averaged over users (lists that are all
    padding are skipped).

    Args:
        top_items: (n_users, k) int item indices, -1 for padding.
        item_popularity: (n_items,) fraction of training users who interacted with each item.

    Returns:
        ARP in [0, 1]; NaN when every list is empty.
    """
    pop = _check_popularity(item_popularity)
    top = _check_top_items(top_items, pop.shape[0])
    valid = top >= 0
    return _per_user_mean(pop[np.where(valid, top, 0)], valid)


def beyond_accuracy_metrics(
    top_items: np.ndarray | torch.Tensor,
    n_items: int,
    item_popularity: np.ndarray | torch.Tensor,
    n_train_users: int,
    item_vectors: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    """Coverage, diversity, novelty and popularity bias of top-k lists, k = top_items' width.

    Args:
        top_items: (n_users, k) int item indices, -1 for padding.
        n_items: catalogue size.
        item_popularity: (n_items,) fraction of training users who interacted with each item.
        n_train_users: number of training users.
        item_vectors: optional (n_items, d) item vectors for :func:`intra_list_diversity`.

    Returns:
        "coverage@{k}", "diversity@{k}", "novelty@{k}", "popularity_bias@{k}";
        "diversity@{k}" is NaN when ``item_vectors`` is None (not computed, never 0).
    """
    top = _check_top_items(top_items, n_items)
    pop = _check_popularity(item_popularity)
    if pop.shape[0] != n_items:
        raise ValueError(
            f"item_popularity has {pop.shape[0]} entries but n_items={n_items}; "
            "pass one popularity per item"
        )
    if item_vectors is not None and _to_numpy(item_vectors).shape[0] != n_items:
        raise ValueError(
            f"item_vectors has {_to_numpy(item_vectors).shape[0]} rows but n_items={n_items}; "
            "pass one vector per item"
        )
    k = top.shape[1]
    return {
        f"coverage@{k}": catalogue_coverage(top, n_items),
        f"diversity@{k}": (
            intra_list_diversity(top, item_vectors) if item_vectors is not None else float("nan")
        ),
        f"novelty@{k}": novelty(top, pop, n_train_users),
        f"popularity_bias@{k}": popularity_bias(top, pop),
    }
