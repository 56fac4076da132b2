"""Retrieval: index item embeddings and return the top-k items per query (inner product).

:class:`BruteForceIndex` is exact and needs only torch; :class:`FaissIndex` needs the
``[ann]`` extra (faiss), imported only when one is created. :func:`masked_top_k` is the exact
top-k with exclusions that :class:`BruteForceIndex` runs on each chunk of scores, for callers
that already hold an (n_rows, n_items) score matrix.
"""

from wager.retrieval.faiss_index import FaissIndex
from wager.retrieval.index import BruteForceIndex, Index, TopK, masked_top_k

__all__ = ["BruteForceIndex", "FaissIndex", "Index", "TopK", "masked_top_k"]
