"""The candidate step of ``recommend`` through a top-k index over the catalogue.

Lists are ranked by the ensemble-mean score. For factorised models (dot products of user
and item factors, no context) that score is an inner product: the members' concatenated
user factors over M (:meth:`~wager.recommender.scoring.Scorer.query_vectors`) with the
concatenated item factors (:meth:`~wager.recommender.scoring.Scorer.item_vectors_concat`),
mapped through the head. Without an index, ``recommend`` scores the whole catalogue for
every user; with a :class:`CandidateIndex` (``Recommender.index_items``) it asks the index
for each user's best candidates: exactly (:class:`~wager.retrieval.BruteForceIndex`) or
approximately (:class:`~wager.retrieval.FaissIndex`, IVF or HNSW: much faster on
catalogues of 10^5-10^6 items, at a recall the benchmark ``scale.py --part ann``
measures). The candidates are then predicted with the full uncertainty model as before.

The index is built from the catalogue as it is; when the catalogue changes (items added
or retired) it is rebuilt at the next call. Retrieval / implicit runs with a list
relevance calibrator still need each user's whole score row for the list confidence's
normaliser: that pass is exact and memory-bounded, so there the index saves the top-k
selection, not the scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from torch import Tensor

from wager.recommender.scoring import Scorer, mean_of_location


@dataclass
class CandidateIndex:
    """A top-k index over the catalogue's item vectors, rebuilt when the catalogue changes.

    Attributes:
        index: an unbuilt or built :class:`~wager.retrieval.Index` (``BruteForceIndex``,
            ``FaissIndex("ivf" | "hnsw" | "flat", ...)``).
        built_for: (catalogue identity, version) it was built from, or None.
    """

    index: Any
    built_for: tuple[int, int] | None = field(default=None)

    def refresh(self, scorer: Scorer) -> None:
        """(Re)build the index over the scorer's catalogue if it changed since the last build.

        Raises:
            ValueError: the model is not factorised (no item vectors to index).
        """
        if not scorer.factorised:
            raise ValueError(
                f"[model] type = {scorer.spec.model_type.name!r} scores users and items "
                "together (or reads context), so its catalogue has no item vectors to index: "
                "recommend() scores every item instead; index_items() takes factorised models "
                "(biased_mf, two_tower, als, ...)"
            )
        key = (id(scorer.catalogue), scorer.catalogue.version)
        if self.built_for != key:
            self.index.index(scorer.item_vectors_concat().float().cpu())
            self.built_for = key

    def top(
        self, scorer: Scorer, users: Sequence[Any], n: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, Tensor]:
        """Each user's ``n`` best catalogue rows by the ensemble-mean score.

        Returns:
            (U, n) int64 catalogue rows, best first, -1 where fewer are left after
            ``exclude``; (U, n) their mean scores (the head's), -inf at the padding.
        """
        self.refresh(scorer)
        found = self.index.search(scorer.query_vectors(users).float().cpu(), n, exclude=exclude)
        scores = mean_of_location(scorer.spec.head, found.scores)
        return found.positions.numpy(), scores.masked_fill(found.positions < 0, float("-inf"))


def attach(scorer: Scorer, index: Any = None) -> CandidateIndex:
    """A :class:`CandidateIndex` of ``index`` (None: an exact ``BruteForceIndex``) built
    over the scorer's catalogue now (so a model without item vectors fails here)."""
    if index is None:
        from wager.retrieval import BruteForceIndex

        index = BruteForceIndex()
    candidates = CandidateIndex(index)
    candidates.refresh(scorer)
    return candidates
