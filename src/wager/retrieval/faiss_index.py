"""Approximate (and exact flat) inner-product search with faiss (extra ``[ann]``).

faiss is imported lazily, when a :class:`FaissIndex` is created; without it the constructor
raises :class:`~wager.errors.MissingExtraError` with the install command.
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, Literal, Self

import numpy as np
import torch
from torch import Tensor

from wager._optional import require
from wager.retrieval.index import (
    ExcludeIds,
    ExcludePositions,
    ItemIds,
    TopK,
    _IndexBase,
)

__all__ = ["FaissIndex"]

FaissKind = Literal["flat", "ivf", "hnsw"]
_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")


def _faiss() -> Any:
    return require("faiss", "ann", "FaissIndex")


def _check_positive(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class FaissIndex(_IndexBase):
    """Top-k by inner product through a faiss index: exact ("flat") or approximate.

    Kinds:

    - ``"flat"``: ``IndexFlatIP``, exhaustive and exact (same results as
      :class:`~wager.retrieval.index.BruteForceIndex` up to float rounding).
    - ``"ivf"``: ``IndexIVFFlat`` with the inner-product metric, its coarse quantizer trained
      (k-means) on the indexed embeddings; a query visits ``nprobe`` of ``nlist`` lists. When
      there are fewer items than ``nlist``, ``nlist`` is reduced to the number of items
      (and ``nprobe`` to at most ``nlist``); the values in use are ``nlist_`` and ``nprobe_``.
    - ``"hnsw"``: ``IndexHNSWFlat`` with the inner-product metric, ``hnsw_m`` links per node
      and a search beam of ``ef_search`` (faiss widens it to at least the number fetched).

    Exclusion is done by over-fetching: for each chunk of ``batch_size`` queries the index
    fetches k + (the largest number of exclusions of any query in the chunk) items, drops the
    excluded ones and keeps the best k. This is exact for "flat"; for the approximate kinds
    the results are as good as the fetched candidates. Fetched candidates are ordered by
    score, equal scores by lower position; rows left with fewer than k candidates are
    padded (position -1, score -inf, id None). Scores are float32 inner products; for
    cosine similarity normalise embeddings and queries first.

    Args:
        kind: which faiss index to build.
        nlist: number of inverted lists (``"ivf"`` only).
        nprobe: lists visited per query (``"ivf"`` only).
        hnsw_m: graph links per node (``"hnsw"`` only).
        ef_search: search beam width (``"hnsw"`` only).
        batch_size: queries per faiss call (the unit over which over-fetching is sized).

    Example:
        >>> import torch
        >>> items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
        >>> index = FaissIndex("flat").index(items, ids=["a", "b", "c"])  # doctest: +SKIP
        >>> index.search(torch.tensor([[1.0, 0.5]]), k=2).ids.tolist()  # doctest: +SKIP
        [['c', 'a']]
    """

    def __init__(
        self,
        kind: FaissKind = "flat",
        nlist: int = 100,
        nprobe: int = 10,
        hnsw_m: int = 32,
        ef_search: int = 64,
        batch_size: int = 4096,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {', '.join(map(repr, _KINDS))}, got {kind!r}")
        self.kind: FaissKind = kind
        self.nlist = _check_positive("nlist", nlist)
        self.nprobe = _check_positive("nprobe", nprobe)
        self.hnsw_m = _check_positive("hnsw_m", hnsw_m, minimum=2)
        self.ef_search = _check_positive("ef_search", ef_search)
        self.batch_size = _check_positive("batch_size", batch_size)
        _faiss()  # fail now, with the install hint, rather than at index()
        self._faiss_index: Any = None
        self.nlist_: int | None = None
        self.nprobe_: int | None = None
        self._reset()

    def __repr__(self) -> str:
        return (
            f"FaissIndex(kind={self.kind!r}, nlist={self.nlist}, nprobe={self.nprobe}, "
            f"hnsw_m={self.hnsw_m}, ef_search={self.ef_search}, batch_size={self.batch_size})"
        )

    def index(self, embeddings: Tensor, ids: ItemIds | None = None) -> Self:
        """Build a faiss index over the items (replacing any previous one).

        Args:
            embeddings: (n_items, dim) float item embeddings; must be finite.
            ids: (n_items,) unique item ids (any hashable values), or None for 0..n_items-1.

        Returns:
            self.
        """
        faiss = _faiss()
        x = np.ascontiguousarray(self._set_items(embeddings, ids).numpy(), dtype=np.float32)
        n_items, dim = x.shape
        if self.kind == "flat":
            built = faiss.IndexFlatIP(dim)
        elif self.kind == "ivf":
            self.nlist_ = min(self.nlist, n_items)
            self.nprobe_ = min(self.nprobe, self.nlist_)
            quantizer = faiss.IndexFlatIP(dim)
            built = faiss.IndexIVFFlat(quantizer, dim, self.nlist_, faiss.METRIC_INNER_PRODUCT)
            built.train(x)
            built.nprobe = self.nprobe_
        else:
            built = faiss.IndexHNSWFlat(dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            built.hnsw.efSearch = self.ef_search
        built.add(x)
        self._faiss_index = built
        return self

    def set_search(self, *, nprobe: int | None = None, ef_search: int | None = None) -> Self:
        """Change the accuracy knob of the built index without rebuilding it (e.g. to pick
        the smallest one reaching a recall on validation queries).

        Args:
            nprobe: lists visited per query ("ivf"; at most ``nlist_``).
            ef_search: search beam width ("hnsw").

        Returns:
            self.
        """
        if self._faiss_index is None:
            raise RuntimeError("FaissIndex.set_search before index(): build the index first")
        if nprobe is not None:
            if self.kind != "ivf":
                raise ValueError(f"nprobe is for kind 'ivf', this index is {self.kind!r}")
            assert self.nlist_ is not None
            self.nprobe = _check_positive("nprobe", nprobe)
            self.nprobe_ = min(self.nprobe, self.nlist_)
            self._faiss_index.nprobe = self.nprobe_
        if ef_search is not None:
            if self.kind != "hnsw":
                raise ValueError(f"ef_search is for kind 'hnsw', this index is {self.kind!r}")
            self.ef_search = _check_positive("ef_search", ef_search)
            self._faiss_index.hnsw.efSearch = self.ef_search
        return self

    def search(
        self,
        queries: Tensor,
        k: int,
        exclude: ExcludePositions | None = None,
        *,
        exclude_ids: ExcludeIds | None = None,
    ) -> TopK:
        """Top ``k`` items for each query (exact for "flat", approximate otherwise).

        Args:
            queries: (n_queries, dim) float query embeddings; must be finite.
            k: items per query (>= 1). Rows with fewer than k candidates left are padded.
            exclude: positions to leave out, per query: a sequence of n_queries sequences of
                row numbers into the indexed embeddings, or an (n_queries, n_items) scipy CSR
                matrix whose stored nonzeros mark excluded items.
            exclude_ids: item ids to leave out, per query (n_queries sequences). Ids the
                index does not hold are ignored. Combined with ``exclude`` as a union.

        Returns:
            :class:`~wager.retrieval.index.TopK` with (n_queries, k) scores, ids, positions.
        """
        q, excl = self._prepare_search(queries, k, exclude, exclude_ids)
        q_np = np.ascontiguousarray(q.numpy(), dtype=np.float32)
        n_queries, n_items, k = q_np.shape[0], self._n_items, int(k)
        k_eff = min(k, n_items)
        counts = excl.counts() if excl is not None else None
        all_scores = np.full((n_queries, k_eff), -np.inf, dtype=np.float32)
        all_positions = np.full((n_queries, k_eff), -1, dtype=np.int64)
        for start in range(0, n_queries, self.batch_size):
            stop = min(start + self.batch_size, n_queries)
            extra = int(counts[start:stop].max()) if counts is not None else 0
            fetch = min(k_eff + extra, n_items)
            scores, labels = self._faiss_index.search(q_np[start:stop], fetch)
            valid = labels >= 0
            if extra:
                assert excl is not None
                rows, cols = excl.chunk(start, stop)
                excluded_keys = rows * n_items + cols
                keys = np.arange(stop - start)[:, None] * n_items + np.where(valid, labels, 0)
                valid &= ~np.isin(keys, excluded_keys)
            # valid first, then score descending, then position ascending
            order = np.lexsort((labels, -scores, ~valid), axis=1)[:, :k_eff]
            kept = np.take_along_axis(valid, order, axis=1)
            all_scores[start:stop] = np.where(
                kept, np.take_along_axis(scores, order, axis=1), -np.inf
            )
            all_positions[start:stop] = np.where(
                kept, np.take_along_axis(labels, order, axis=1), -1
            )
        return self._assemble(torch.from_numpy(all_scores), torch.from_numpy(all_positions), k)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self._faiss_index is not None:
            state["_faiss_index"] = _faiss().serialize_index(self._faiss_index)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self._faiss_index is not None:
            self._faiss_index = _faiss().deserialize_index(self._faiss_index)
