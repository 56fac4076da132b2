"""Top-k lists of the facade: candidates ranked by the mean, then scored with uncertainty.

:func:`recommend_frame` is what ``Recommender.recommend`` runs: for each chunk of users it
ranks the candidates by the ensemble-mean score (one matrix product for factorised models),
drops seen items, and predicts the k chosen items with the full uncertainty model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from wager.data.features import categorical_keys
from wager.evaluation import ranking
from wager.recommender.changes import recommendable
from wager.recommender.scoring import masked
from wager.uncertainty.conformal import ConformalPrediction

if TYPE_CHECKING:
    from wager.recommender.facade import Recommender

COLUMNS = ["user", "item", "rank", "score", "mean", "std", "low", "high", "confidence"]


def _candidate_seen(
    seen: sp.csr_matrix, cand: np.ndarray, item_index: Mapping[Any, int]
) -> sp.csr_matrix:
    """(U, len(cand)) seen flags of explicit candidates (unknown candidates: never seen)."""
    cols_idx = [item_index.get(c, -1) for c in cand]
    keep = np.array([c >= 0 for c in cols_idx])
    mapped = sp.lil_matrix((seen.shape[0], len(cand)), dtype=np.float32)
    mapped[:, np.flatnonzero(keep)] = seen[:, [c for c in cols_idx if c >= 0]]
    return sp.csr_matrix(mapped)


def recommend_frame(
    rec: Recommender,
    user_ids: Sequence[Any] | np.ndarray,
    k: int,
    items: Sequence[Any] | np.ndarray | None,
    exclude_seen: bool,
    context: Mapping[str, Any] | None,
    confidence_level: float,
    batch_users: int,
    progress: Callable[[int], None] | None,
    horizon: float | None,
) -> pd.DataFrame:
    """The rows of ``Recommender.recommend`` (see there for the arguments and columns)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    scorer, chain = rec.scorer_, rec.chain_
    cat = scorer.catalogue
    cand = (
        cat.items if items is None else np.asarray(categorical_keys(list(items)).to_numpy(), object)
    )
    cand = cand if items is None else recommendable(cat, cand)  # retired items never listed
    users = list(user_ids)
    frames = []
    pointwise = rec.spec.pointwise
    for start in range(0, len(users), batch_users):
        chunk = users[start : start + batch_users]
        # ranked by the ensemble mean: one product of the concatenated member factors
        mean_scores = scorer.mean_scores(chunk, None if items is None else cand, context)
        exclude = None
        if exclude_seen:
            exclude = cat.seen_rows(chunk)
            if items is not None:
                exclude = _candidate_seen(exclude, cand, cat.item_index)
        top = ranking.top_k_from_scores(mean_scores, k, exclude)  # (U, k), -1 padded
        rows = [(r, top[r][top[r] >= 0]) for r in range(len(chunk))]
        rows = [(r, sel) for r, sel in rows if sel.size]
        if not rows:
            continue
        ranked = torch.cat([mean_scores[r, torch.as_tensor(sel)] for r, sel in rows])
        pair_users = [chunk[r] for r, sel in rows for _ in range(sel.size)]
        pair_items = np.concatenate([cand[sel] for _, sel in rows])
        if pointwise:
            # the full uncertainty model (head noise, members, MC dropout, calibration) only
            # for the k chosen items
            pred = rec.predict(pair_users, pair_items, context)
        else:
            # the members' scores only for the k chosen items of each user
            pred = scorer.prediction_of(
                scorer.pair_member_scores(pair_users, pair_items, context), None
            )
        has_std = pred.std is not None
        # a homoscedastic conformal interval needs no std
        iv = (
            pred.interval(confidence_level)
            if has_std or isinstance(pred, ConformalPrediction)
            else None
        )
        conf = rec.relevance_confidence(pred)
        cal = chain.list_relevance
        if not pointwise and cal is not None:
            # P(among the next H positives) under the softmax over each user's candidates
            mean_cpu = mean_scores.cpu()
            norm = cal.row_statistics(masked(mean_cpu, exclude))
            conf = torch.cat(
                [
                    cal.probability(
                        mean_cpu[r, torch.as_tensor(sel)].unsqueeze(0), norm[r : r + 1], horizon
                    )[0]
                    for r, sel in rows
                ]
            )
        frames.append(
            pd.DataFrame(
                {
                    "user": pair_users,
                    "item": pair_items,
                    "rank": np.concatenate([np.arange(1, sel.size + 1) for _, sel in rows]),
                    "score": ranked.cpu().numpy(),
                    "mean": pred.mean.cpu().numpy(),
                    "std": pred.std.cpu().numpy() if pred.std is not None else np.nan,
                    "low": iv.low.cpu().numpy() if iv is not None else np.nan,
                    "high": iv.high.cpu().numpy() if iv is not None else np.nan,
                    "confidence": conf.cpu().numpy() if conf is not None else np.nan,
                }
            )
        )
        if progress is not None:
            progress(len(chunk))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
