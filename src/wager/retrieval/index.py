"""The :class:`Index` protocol, its :class:`TopK` result, and the exact :class:`BruteForceIndex`.

An index holds item embeddings and answers "which k items score highest for each query?".
The score of item ``j`` for query ``q`` is the inner product ``q · e_j``. For cosine
similarity, L2-normalise both the item embeddings and the queries before calling
(``torch.nn.functional.normalize(x, dim=1)``); the index never normalises on its own.

Results are addressed two ways: *positions* are row numbers into the indexed embeddings
(0..n_items-1) and *ids* are the item ids given to :meth:`Index.index`. Exclusions (e.g. each
user's already-seen items) are given per query, by position (``exclude``) or by id
(``exclude_ids``).

:func:`masked_top_k` is the exact, tie-stable top-k with exclusions on an already computed
(n_rows, n_items) score matrix; :class:`BruteForceIndex` applies it to each chunk of
query-item inner products, and full-ranking evaluation applies it to a model's scores.

Indexes hold no learned state beyond the embeddings they were built from: a saved model
rebuilds its index from its embeddings when it is loaded. Both indexes pickle (the faiss one
through ``faiss.serialize_index``) and give identical results after unpickling.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, NamedTuple, Protocol, Self, TypeAlias, TypeGuard, runtime_checkable

import numpy as np
import pandas as pd
import scipy.sparse
import torch
from torch import Tensor

from wager.errors import NotFittedError, data_error

__all__ = ["BruteForceIndex", "Index", "TopK", "masked_top_k"]

ExcludePositions: TypeAlias = (
    Sequence[Sequence[int]] | scipy.sparse.csr_matrix | scipy.sparse.csr_array
)
ExcludeIds: TypeAlias = Sequence[Sequence[Hashable]]
_CPU_CHUNK_ELEMENTS = 2**20  # scores per chunk in masked_top_k on the CPU (4 MiB of float32)
ItemIds: TypeAlias = Sequence[Hashable] | np.ndarray


@dataclass(frozen=True, eq=False)
class TopK:
    """The k best items for each query, best first.

    Rows with fewer than k candidates left after exclusion are padded at the end: position
    -1, score ``-inf``, id None.

    Attributes:
        scores: (n_queries, k) float32 inner products, descending along each row.
        ids: (n_queries, k) item ids as given to :meth:`Index.index`. The array keeps the
            dtype of the indexed ids when no row is padded, and is an object array with None
            in the padded slots otherwise.
        positions: (n_queries, k) int64 row positions into the indexed embeddings; -1 marks
            padding.

    Example:
        >>> import torch
        >>> top = BruteForceIndex().index(torch.eye(3), ids=["a", "b", "c"]).search(
        ...     torch.tensor([[0.0, 2.0, 1.0]]), k=2)
        >>> top.ids.tolist(), top.positions.tolist()
        ([['b', 'c']], [[1, 2]])
        >>> top.to_frame(query_ids=["u1"])[["query", "id", "rank"]].values.tolist()
        [['u1', 'b', 1], ['u1', 'c', 2]]
    """

    scores: Tensor
    ids: np.ndarray
    positions: Tensor

    def to_frame(self, query_ids: Sequence[Hashable] | np.ndarray | None = None) -> pd.DataFrame:
        """Long table of the results, one row per (query, found item); padding is skipped.

        Args:
            query_ids: (n_queries,) labels for the query rows (e.g. user ids); None uses the
                query row numbers 0..n_queries-1.

        Returns:
            DataFrame with columns query, id, rank (1-based within the query), score.
        """
        n_queries = self.positions.shape[0]
        if query_ids is None:
            labels = np.arange(n_queries)
        else:
            labels = np.asarray(query_ids)
            if labels.ndim != 1 or len(labels) != n_queries:
                raise ValueError(
                    f"query_ids has shape {labels.shape} but the result holds {n_queries} "
                    f"queries; pass one label per query row, in query order"
                )
        found = self.positions.cpu().numpy() >= 0
        rows, cols = np.nonzero(found)
        frame = pd.DataFrame(
            {
                "query": labels[rows],
                "id": self.ids[rows, cols],
                "rank": (cols + 1).astype(np.int64),
                "score": self.scores.cpu().numpy()[rows, cols],
            }
        )
        return frame.infer_objects()


@runtime_checkable
class Index(Protocol):
    """Anything that indexes item embeddings and returns the top-k items per query.

    Scores are inner products. Implementations: :class:`BruteForceIndex` (exact, core) and
    :class:`~wager.retrieval.faiss_index.FaissIndex` (extra ``[ann]``). Before :meth:`index`
    an index is empty (``len`` 0, ``dim`` None, ``ids`` empty) and :meth:`search` raises
    :class:`~wager.errors.NotFittedError`.
    """

    def index(self, embeddings: Tensor, ids: ItemIds | None = None) -> Self:
        """Replace the indexed items with ``embeddings`` (n_items, dim); return self."""
        ...

    def search(
        self,
        queries: Tensor,
        k: int,
        exclude: ExcludePositions | None = None,
        *,
        exclude_ids: ExcludeIds | None = None,
    ) -> TopK:
        """Top ``k`` items for each row of ``queries`` (n_queries, dim)."""
        ...

    def __len__(self) -> int:
        """Number of indexed items (0 before :meth:`index`)."""
        ...

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the indexed items; None before :meth:`index`."""
        ...

    @property
    def ids(self) -> np.ndarray:
        """(n_items,) item ids, in position order; empty before :meth:`index`."""
        ...


class _Exclusion(NamedTuple):
    """Excluded positions per query in CSR form: query i excludes indices[indptr[i]:indptr[i+1]]."""

    indptr: np.ndarray
    indices: np.ndarray

    def counts(self) -> np.ndarray:
        """(n_queries,) number of distinct excluded positions per query."""
        return np.diff(self.indptr)

    def chunk(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows relative to ``start``, positions) of every exclusion of queries start..stop-1."""
        lo, hi = int(self.indptr[start]), int(self.indptr[stop])
        rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start : stop + 1]))
        return rows, self.indices[lo:hi]


def _as_id_array(ids: object, n_items: int) -> np.ndarray:
    """(n_items,) array of item ids; numbers keep a numeric dtype, anything else is object."""
    if isinstance(ids, Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        arr = ids
    else:
        items = list(ids)  # type: ignore[call-overload]  # any iterable; list() raises if not
        arr = np.asarray(items) if items else np.empty(0, dtype=np.int64)
        if arr.ndim != 1 or arr.dtype.kind not in "biuf":
            arr = np.fromiter(items, dtype=object, count=len(items))
    if arr.ndim != 1 or len(arr) != n_items:
        raise data_error(
            "ids_length",
            f"got {arr.shape} ids for {n_items} embedding rows",
            source="ids",
            fix="Pass exactly one id per row of embeddings, in the same order, or ids=None "
            "to use the positions 0..n_items-1.",
        )
    return arr


def _check_finite(x: Tensor, name: str) -> None:
    """Raise a DataError naming the rows of ``x`` (n, d) that hold NaN or infinite values."""
    bad = ~torch.isfinite(x).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(str(r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
        raise data_error(
            "non_finite_embeddings",
            f"{len(rows)} of {x.shape[0]} rows hold NaN or infinite values "
            f"(0-based positions {shown})",
            source=name,
            count=len(rows),
            fix=f"Remove or repair those rows of {name} (e.g. retrain with a lower learning "
            "rate, or drop the items) before indexing or searching.",
        )


def _flatten_rows(rows: object, name: str, n_queries: int) -> tuple[np.ndarray, list[object]]:
    """(counts per query, flat list of values) of a per-query nested sequence."""
    if isinstance(rows, str | bytes) or not hasattr(rows, "__len__"):
        raise TypeError(
            f"{name} must hold one sequence per query (a list of lists), got {type(rows).__name__}"
        )
    seqs = list(rows)  # type: ignore[call-overload]  # has __len__: a sequence (checked above)
    if len(seqs) != n_queries:
        raise ValueError(
            f"{name} has {len(seqs)} rows but there are {n_queries} queries; pass one "
            f"sequence per query row (an empty one where nothing is excluded)"
        )
    for i, row in enumerate(seqs):
        if isinstance(row, str | bytes) or not hasattr(row, "__len__"):
            raise TypeError(
                f"{name}[{i}] is {row!r}, not a sequence; {name} must hold one sequence per "
                f"query, e.g. [[3, 7], [], [1]] — wrap a single value in a list"
            )
    counts = np.fromiter((len(r) for r in seqs), dtype=np.int64, count=len(seqs))
    return counts, list(itertools.chain.from_iterable(seqs))


def _build_exclusion(
    exclude: ExcludePositions | None,
    exclude_ids: ExcludeIds | None,
    n_queries: int,
    n_items: int,
    id_lookup: pd.Index,
) -> _Exclusion | None:
    """Union of position and id exclusions as canonical CSR (sorted, no duplicates)."""
    row_parts: list[np.ndarray] = []
    col_parts: list[np.ndarray] = []
    if exclude is not None:
        if _is_sparse(exclude):
            shape = tuple(exclude.shape)
            if shape != (n_queries, n_items):
                raise ValueError(
                    f"exclude is a sparse matrix of shape {shape} but the search has "
                    f"{n_queries} queries and the index {n_items} items; pass a "
                    f"(n_queries, n_items) matrix whose stored nonzeros mark excluded items"
                )
            csr = scipy.sparse.csr_array(exclude, copy=True)
            csr.eliminate_zeros()
            counts = np.diff(csr.indptr)
            cols = csr.indices.astype(np.int64, copy=False)
        else:
            counts, flat = _flatten_rows(exclude, "exclude", n_queries)
            cols = np.asarray(flat) if flat else np.empty(0, dtype=np.int64)
            if cols.ndim != 1 or cols.dtype.kind not in "iu":
                raise TypeError(
                    f"exclude must hold integer positions (row numbers into the indexed "
                    f"embeddings), got values of dtype {cols.dtype}; to exclude by item id "
                    f"pass exclude_ids instead"
                )
            cols = cols.astype(np.int64, copy=False)
            bad = (cols < 0) | (cols >= n_items)
            if bad.any():
                first = int(np.argmax(bad))
                row = int(np.searchsorted(np.cumsum(counts), first, side="right"))
                raise ValueError(
                    f"exclude[{row}] holds position {int(cols[first])}, outside 0..{n_items - 1} "
                    f"(the index holds {n_items} items); positions are row numbers into the "
                    f"indexed embeddings — to exclude by item id pass exclude_ids instead"
                )
        row_parts.append(np.repeat(np.arange(n_queries), counts))
        col_parts.append(cols)
    if exclude_ids is not None:
        counts, flat = _flatten_rows(exclude_ids, "exclude_ids", n_queries)
        values = np.fromiter(flat, dtype=object, count=len(flat))
        cols = (
            id_lookup.get_indexer(pd.Index(values)) if len(values) else np.empty(0, dtype=np.int64)
        )
        known = cols >= 0
        row_parts.append(np.repeat(np.arange(n_queries), counts)[known])
        col_parts.append(cols[known].astype(np.int64))
    if not row_parts:
        return None
    rows = np.concatenate(row_parts)
    cols = np.concatenate(col_parts)
    if rows.size == 0:
        return None
    csr = scipy.sparse.csr_array(
        (np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n_queries, n_items)
    )
    csr.sum_duplicates()
    return _Exclusion(csr.indptr.astype(np.int64), csr.indices.astype(np.int64))


def _is_sparse(value: object) -> TypeGuard[scipy.sparse.spmatrix | scipy.sparse.sparray]:
    """``scipy.sparse.issparse``, typed so that a checker narrows ``value`` to sparse."""
    return bool(scipy.sparse.issparse(value))


def _is_integer(value: object) -> bool:
    """True for an integer that is not a bool: an int, a NumPy integer, any ``Integral``.

    Takes ``object`` so that a checker does not narrow an ``int`` argument by the
    ``Integral`` test (which typeshed cannot reconcile with ``int``).
    """
    return isinstance(value, Integral) and not isinstance(value, bool)


def masked_top_k(
    scores: Tensor,
    k: int,
    exclude: scipy.sparse.spmatrix | scipy.sparse.sparray | None = None,
    batch_size: int = 4096,
) -> tuple[Tensor, Tensor]:
    """Top ``k`` columns of each row of ``scores``, excluded entries left out, ties by column.

    Equals ``np.argsort(-masked, axis=1, kind="stable")[:, :k]`` on the scores with every
    excluded entry set to ``-inf``, except that slots holding a ``-inf`` score get position
    -1: a row with fewer than k candidates left (or k > n_items) is padded at the end with
    score ``-inf`` and position -1. Entries whose own score is ``-inf`` are therefore never
    returned either. ``scores`` is not modified. Rows are processed in chunks of at most
    ``batch_size`` (on the CPU fewer, so that a chunk stays in cache), so extra memory is at
    most about batch_size * n_items elements; the computation runs on ``scores``' device and
    in its dtype, and its result does not depend on the chunking.

    Ties are exact: ``torch.topk`` picks arbitrarily among values equal to the k-th largest,
    so rows where such a value was left out are recomputed (the lowest columns among the
    tied values are kept), and the kept entries are ordered by score, then column.

    Args:
        scores: (n_rows, n_items) floating scores, higher = better; must hold no NaN.
        k: entries per row (>= 1); may exceed n_items, the extra slots are padding.
        exclude: optional (n_rows, n_items) scipy sparse matrix or array; every stored entry
            is excluded (explicit zeros too: call ``eliminate_zeros()`` first to keep them).
        batch_size: rows per chunk (>= 1).

    Returns:
        ((n_rows, k) scores in ``scores``' dtype, descending along each row, ``-inf`` in
        padded slots; (n_rows, k) int64 column positions, -1 in padded slots), both on
        ``scores``' device.

    Raises:
        TypeError: scores is not a floating torch tensor, or exclude not scipy sparse.
        ValueError: k or batch_size < 1; scores not 2-D or holding NaN; exclude's shape
            differs from scores'.

    Example:
        >>> import scipy.sparse, torch
        >>> scores = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.5, 0.0, 0.0, 0.0]])
        >>> exclude = scipy.sparse.csr_array([[0, 0, 0, 1], [1, 0, 0, 0]])
        >>> values, positions = masked_top_k(scores, k=3, exclude=exclude)
        >>> positions.tolist(), values.tolist()
        ([[1, 2, 0], [1, 2, 3]], [[3.0, 3.0, 1.0], [0.0, 0.0, 0.0]])
    """
    csr = _check_top_k_inputs(scores, k, exclude, batch_size)
    n_rows, n_items = scores.shape
    k, batch_size = int(k), int(batch_size)
    device = scores.device
    out_values = torch.full((n_rows, k), float("-inf"), dtype=scores.dtype, device=device)
    out_positions = torch.full((n_rows, k), -1, dtype=torch.int64, device=device)
    k_eff = min(k, n_items)
    if k_eff == 0:
        return out_values, out_positions
    step = batch_size
    if device.type == "cpu":  # cache-sized chunks: the masked copy and top-k stay in cache
        step = min(batch_size, max(1, _CPU_CHUNK_ELEMENTS // n_items))
    buffer: Tensor | None = None  # reused across chunks for the masked copy
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        chunk = scores[start:stop]
        if csr is not None and csr.indptr[stop] > csr.indptr[start]:
            if buffer is None:
                buffer = torch.empty(
                    (min(step, n_rows), n_items), dtype=scores.dtype, device=device
                )
            chunk = _mask_chunk(chunk, csr, start, stop, buffer)
        values, positions = _top_k_rows(chunk, k_eff)
        nan_rows = torch.isnan(values[:, 0])  # topk ranks NaN above every number
        if bool(nan_rows.any()):
            row = start + int(torch.nonzero(nan_rows)[0, 0])
            raise ValueError(f"scores row {row} contains NaN; score every item before ranking")
        out_values[start:stop, :k_eff] = values
        out_positions[start:stop, :k_eff] = torch.where(torch.isneginf(values), -1, positions)
    return out_values, out_positions


def _check_top_k_inputs(
    scores: Tensor,
    k: int,
    exclude: scipy.sparse.spmatrix | scipy.sparse.sparray | None,
    batch_size: int,
) -> scipy.sparse.csr_array | None:
    """Check :func:`masked_top_k`'s arguments; return ``exclude`` as CSR (None if not given).

    Raises:
        TypeError, ValueError: as documented on :func:`masked_top_k`.
    """
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        what = f"a tensor of dtype {scores.dtype}" if isinstance(scores, Tensor) else type(scores)
        raise TypeError(
            f"scores must be a floating torch.Tensor of shape (n_rows, n_items), got {what}; "
            f"convert with torch.as_tensor(scores, dtype=torch.float32)"
        )
    if scores.ndim != 2:
        raise ValueError(
            f"scores must have shape (n_rows, n_items), got shape {tuple(scores.shape)}"
        )
    if not _is_integer(k) or k < 1:
        raise ValueError(f"k must be an integer >= 1 (entries per row), got {k!r}")
    if not _is_integer(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1 (rows per chunk), got {batch_size!r}")
    n_rows, n_items = scores.shape
    if exclude is not None:
        if not scipy.sparse.issparse(exclude):
            raise TypeError(
                f"exclude must be a scipy sparse matrix or array of shape {(n_rows, n_items)} "
                f"whose stored entries mark excluded items, got {type(exclude).__name__}"
            )
        if tuple(exclude.shape) != (n_rows, n_items):
            raise ValueError(
                f"exclude has shape {tuple(exclude.shape)} but scores has shape "
                f"{(n_rows, n_items)}; pass one row per score row and one column per item"
            )
        return scipy.sparse.csr_array(exclude)  # no copy when already CSR
    return None


def _mask_chunk(
    chunk: Tensor, csr: scipy.sparse.csr_array, start: int, stop: int, buffer: Tensor
) -> Tensor:
    """Copy rows ``start:stop`` of the scores into ``buffer`` with their excluded entries -inf.

    Args:
        chunk: (stop - start, n_items) scores of the rows; not modified.
        csr: (n_rows, n_items) exclusions, CSR.
        start: first row of the chunk; stop: one past its last row.
        buffer: (>= stop - start, n_items) scratch tensor in the scores' dtype and device.

    Returns:
        A view of ``buffer``, (stop - start, n_items): the masked copy.
    """
    n_items = chunk.shape[1]
    lo, hi = int(csr.indptr[start]), int(csr.indptr[stop])
    rows = np.repeat(np.arange(stop - start), np.diff(csr.indptr[start : stop + 1]))
    flat = rows * n_items + csr.indices[lo:hi].astype(np.int64)
    masked = buffer[: stop - start].copy_(chunk)
    masked.view(-1).index_fill_(0, torch.from_numpy(flat).to(chunk.device), float("-inf"))
    return masked


def _top_k_rows(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top ``k`` (1 <= k <= n) of each row of ``scores`` (b, n), ties broken by lower column.

    ``torch.topk`` chooses arbitrarily among values tied with the k-th largest. A row can
    only be affected when its (k+1)-th largest value equals its k-th; in those rows the
    values above the k-th are kept and the remaining slots take the lowest columns holding
    the k-th value (found by binary search in the running count of tied columns). Rows whose
    k-th value is ``-inf`` are skipped: those slots become padding anyway. Finally the kept
    entries are ordered by score descending, then column ascending.

    Returns:
        ((b, k) scores descending, (b, k) int64 columns).
    """
    fetch = min(k + 1, scores.shape[1])
    top_values, top_columns = torch.topk(scores, fetch, dim=1, sorted=True)
    values, columns = top_values[:, :k], top_columns[:, :k]
    if fetch > k:
        kth = values[:, -1:]
        straddle = ((top_values[:, k:] == kth) & ~torch.isneginf(kth)).flatten()
        if bool(straddle.any()):
            rows = torch.nonzero(straddle).flatten()
            sub = scores if rows.numel() == scores.shape[0] else scores[rows]
            sub_kth = kth[rows]
            n_greater = (values[rows] > sub_kth).sum(dim=1, keepdim=True)  # (r, 1)
            tie_count = torch.cumsum(sub == sub_kth, dim=1, dtype=torch.int32)  # (r, n)
            slots = torch.arange(k, device=scores.device)
            # slot j >= n_greater takes the (j - n_greater + 1)-th tied column
            wanted = (slots - n_greater + 1).clamp_(min=1).to(torch.int32)
            tie_columns = torch.searchsorted(tie_count, wanted)
            fixed = torch.where(slots < n_greater, columns[rows], tie_columns)
            columns = columns.clone()
            values = values.clone()
            columns[rows] = fixed
            values[rows] = sub.gather(1, fixed)
    columns, order = torch.sort(columns, dim=1)
    values = values.gather(1, order)
    values, order = torch.sort(values, dim=1, descending=True, stable=True)
    return values, columns.gather(1, order)


class _IndexBase:
    """Item bookkeeping and input checks shared by the index implementations."""

    _n_items: int
    _dim: int
    _ids: np.ndarray | None
    _id_lookup: pd.Index | None

    def _reset(self) -> None:
        self._n_items = 0
        self._dim = 0
        self._ids = None
        self._id_lookup = None

    def __len__(self) -> int:
        """Number of indexed items (0 before :meth:`index`)."""
        return self._n_items

    @property
    def dim(self) -> int | None:
        """Embedding dimension of the indexed items; None before :meth:`index`."""
        return None if self._ids is None else self._dim

    @property
    def ids(self) -> np.ndarray:
        """(n_items,) item ids, in position order; empty before :meth:`index`."""
        return np.empty(0, dtype=np.int64) if self._ids is None else self._ids

    def _check_indexed(self) -> None:
        if self._ids is None:
            raise NotFittedError(
                f"{type(self).__name__} holds no items yet: call index(embeddings, ids) first"
            )

    def _set_items(self, embeddings: Tensor, ids: ItemIds | None) -> Tensor:
        """Validate ``embeddings`` (n_items, dim) and ``ids``; return a detached float32 copy."""
        if not isinstance(embeddings, Tensor):
            raise TypeError(
                f"embeddings must be a torch.Tensor of shape (n_items, dim), got "
                f"{type(embeddings).__name__}; wrap arrays with torch.as_tensor(...)"
            )
        if embeddings.ndim != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
            raise ValueError(
                f"embeddings must have shape (n_items, dim) with at least one item and one "
                f"dimension, got shape {tuple(embeddings.shape)}"
            )
        x = embeddings.detach().to(dtype=torch.float32, device="cpu", copy=True)
        _check_finite(x, "embeddings")
        n_items = x.shape[0]
        arr = np.arange(n_items) if ids is None else _as_id_array(ids, n_items)
        lookup = pd.Index(arr)
        if not lookup.is_unique:
            dup = lookup[lookup.duplicated()][0]
            where = np.flatnonzero(lookup == dup)[:5].tolist()
            raise data_error(
                "duplicate_id",
                f"id {dup!r} occurs more than once (at positions {where})",
                source="ids",
                fix="Pass one unique id per embedding row; deduplicate the item table first.",
            )
        self._n_items = n_items
        self._dim = x.shape[1]
        self._ids = arr
        self._id_lookup = lookup
        return x

    def _prepare_search(
        self,
        queries: Tensor,
        k: int,
        exclude: ExcludePositions | None,
        exclude_ids: ExcludeIds | None,
    ) -> tuple[Tensor, _Exclusion | None]:
        """Validate a search call; return ((n_queries, dim) float32 CPU queries, exclusions)."""
        self._check_indexed()
        assert self._id_lookup is not None
        if not _is_integer(k) or k < 1:
            raise ValueError(f"k must be an integer >= 1 (items per query), got {k!r}")
        if not isinstance(queries, Tensor):
            raise TypeError(
                f"queries must be a torch.Tensor of shape (n_queries, dim), got "
                f"{type(queries).__name__}; wrap arrays with torch.as_tensor(...)"
            )
        if queries.ndim != 2:
            raise ValueError(
                f"queries must have shape (n_queries, dim), got shape {tuple(queries.shape)}; "
                f"for a single query use queries.unsqueeze(0)"
            )
        if queries.shape[1] != self._dim:
            raise ValueError(
                f"queries have dimension {queries.shape[1]} but the indexed embeddings have "
                f"dimension {self._dim}; pass query embeddings from the model (tower) that "
                f"produced the indexed item embeddings, or re-index"
            )
        q = queries.detach().to(dtype=torch.float32, device="cpu")
        _check_finite(q, "queries")
        excl = _build_exclusion(exclude, exclude_ids, q.shape[0], self._n_items, self._id_lookup)
        return q, excl

    def _assemble(self, scores: Tensor, positions: Tensor, k: int) -> TopK:
        """Pad (n_queries, k') results to k columns and attach ids.

        Args:
            scores: (n_queries, k') float32, -inf where no candidate is left.
            positions: (n_queries, k') int64 positions, any value where scores is -inf.
            k: the requested number of columns (>= k').
        """
        assert self._ids is not None
        scores = scores.to(device="cpu", dtype=torch.float32)
        positions = positions.to(device="cpu", dtype=torch.int64)
        positions = torch.where(torch.isneginf(scores), -1, positions)
        missing = k - scores.shape[1]
        if missing > 0:
            scores = torch.nn.functional.pad(scores, (0, missing), value=float("-inf"))
            positions = torch.nn.functional.pad(positions, (0, missing), value=-1)
        pos = positions.numpy()
        found = pos >= 0
        if found.all():
            ids = self._ids[pos]
        else:
            ids = np.full(pos.shape, None, dtype=object)
            ids[found] = self._ids[pos[found]].astype(object)
        return TopK(scores=scores.contiguous(), ids=ids, positions=positions.contiguous())


class BruteForceIndex(_IndexBase):
    """Exact top-k by inner product: one matmul and one top-k per chunk of queries.

    Excluded items get score ``-inf`` (a vectorised scatter per chunk) before the top-k, so
    results are exact. Equal scores are ordered by lower position, deterministically.
    ``index`` copies the embeddings (later in-place changes to the caller's tensor do not
    reach the index). Scores are float32; results are returned on the CPU.

    Args:
        batch_size: queries scored per chunk; peak memory is about
            batch_size * n_items * 4 bytes for the score matrix.
        device: torch device holding the embeddings and doing the matmul, e.g. "cuda".

    Example:
        >>> import torch
        >>> items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> index = BruteForceIndex().index(items, ids=[10, 20, 30])
        >>> top = index.search(torch.tensor([[1.0, 0.5]]), k=2, exclude=[[2]])
        >>> top.ids.tolist(), top.scores.tolist()
        ([[10, 20]], [[1.0, 0.5]])
    """

    def __init__(self, batch_size: int = 4096, device: str = "cpu") -> None:
        if not _is_integer(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.batch_size = int(batch_size)
        self.device = str(device)
        torch.device(self.device)  # fail early on a malformed device string
        self._embeddings: Tensor | None = None
        self._reset()

    def __repr__(self) -> str:
        return f"BruteForceIndex(batch_size={self.batch_size}, device={self.device!r})"

    def index(self, embeddings: Tensor, ids: ItemIds | None = None) -> Self:
        """Replace the indexed items.

        Args:
            embeddings: (n_items, dim) float item embeddings; must be finite.
            ids: (n_items,) unique item ids (any hashable values), or None for 0..n_items-1.

        Returns:
            self.
        """
        x = self._set_items(embeddings, ids)
        self._embeddings = x.to(self.device)
        return self

    def search(
        self,
        queries: Tensor,
        k: int,
        exclude: ExcludePositions | None = None,
        *,
        exclude_ids: ExcludeIds | None = None,
    ) -> TopK:
        """Exact top ``k`` items for each query.

        Args:
            queries: (n_queries, dim) float query embeddings; must be finite.
            k: items per query (>= 1). Rows with fewer than k candidates left are padded.
            exclude: positions to leave out, per query: a sequence of n_queries sequences of
                row numbers into the indexed embeddings, or an (n_queries, n_items) scipy CSR
                matrix whose stored nonzeros mark excluded items (the fast path).
            exclude_ids: item ids to leave out, per query (n_queries sequences). Ids the
                index does not hold are ignored. Combined with ``exclude`` as a union.

        Returns:
            :class:`TopK` with (n_queries, k) scores, ids and positions.
        """
        q, excl = self._prepare_search(queries, k, exclude, exclude_ids)
        assert self._embeddings is not None
        n_queries = q.shape[0]
        k = int(k)
        excluded = None
        if excl is not None:
            ones = np.ones(excl.indices.size, dtype=np.int8)
            excluded = scipy.sparse.csr_array(
                (ones, excl.indices, excl.indptr), shape=(n_queries, self._n_items)
            )
        all_scores = torch.empty((n_queries, k), dtype=torch.float32)
        all_positions = torch.empty((n_queries, k), dtype=torch.int64)
        for start in range(0, n_queries, self.batch_size):
            stop = min(start + self.batch_size, n_queries)
            scores = q[start:stop].to(self.device) @ self._embeddings.T  # (b, n_items)
            chunk_excluded = None if excluded is None else excluded[start:stop]
            values, positions = masked_top_k(scores, k, chunk_excluded, batch_size=stop - start)
            all_scores[start:stop] = values.cpu()
            all_positions[start:stop] = positions.cpu()
        return self._assemble(all_scores, all_positions, k)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._embeddings is not None:
            state["_embeddings"] = self._embeddings.cpu()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._embeddings is not None:
            self._embeddings = self._embeddings.to(self.device)
