"""Top-k lists of the facade: candidates ranked by the mean, then scored with uncertainty.

:func:`recommend_frame` is what ``Recommender.recommend`` runs: for each chunk of users it
ranks the candidates by the ensemble-mean score (one matrix product for factorised models),
drops seen items, and predicts the k chosen items with the full uncertainty model. With a
:class:`~wager.policies.Policy` the index brings each user's ``candidates`` best items by the
mean instead (default :func:`default_candidates`), the full uncertainty model predicts all of
them, and the policy picks the k shown, in slate order, with their propensities.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import Tensor

from wager.data.features import categorical_keys
from wager.evaluation import ranking
from wager.policies import Policy, PolicyState
from wager.prediction import MixturePrediction, Prediction
from wager.recommender.candidates import CandidateIndex
from wager.recommender.changes import recommendable
from wager.recommender.scoring import masked
from wager.uncertainty.conformal import ConformalPrediction
from wager.uncertainty.recalibration import OnlineRecalibration

if TYPE_CHECKING:
    from wager.recommender.facade import Recommender

COLUMNS = ["user", "item", "rank", "score", "mean", "std", "low", "high", "confidence"]
#: the column a policy adds: the probability of each choice given the earlier positions
PROPENSITY = "propensity"


def default_candidates(k: int) -> int:
    """Candidates per user the index brings for a policy to choose k from: max(10 k, 100)."""
    return max(10 * k, 100)


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
    policy: Policy | None = None,
    state: PolicyState | None = None,
    candidates: int | None = None,
    online: OnlineRecalibration | None = None,
) -> pd.DataFrame:
    """The rows of ``Recommender.recommend`` (see there for the arguments and columns).

    Without a policy: each user's k best items by the ensemble-mean score, predicted with
    the full uncertainty model. With one: each user's ``candidates`` best items by that
    score (fewer where fewer are left after exclusion; a user with fewer than k gets them
    all), all predicted with the full uncertainty model as a (users, candidates)
    :class:`~wager.prediction.Prediction`; ``policy.select`` (with ``state``, default
    ``PolicyState()``: torch's default seed) picks the k shown. ``rank`` is then the slate
    position, ``score`` still the index's score of the item, and a ``propensity`` column
    holds the slate's propensities; ``frame.attrs["policy"]`` records the policy, its
    propensity floor, its Monte Carlo draws (None when exact) and the candidates per user.
    """
    scorer = rec.scorer_  # NotFittedError before any work
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not 0 < confidence_level < 1:
        raise ValueError(f"confidence_level must be in (0, 1), got {confidence_level!r}")
    n_cand = _check_policy_args(k, policy, state, candidates)
    state = state if state is not None or policy is None else PolicyState()
    cat = scorer.catalogue
    cand = (
        cat.items if items is None else np.asarray(categorical_keys(list(items)).to_numpy(), object)
    )
    cand = cand if items is None else recommendable(cat, cand)  # retired items never listed
    users = list(user_ids)
    frames = []
    slates: list[dict[str, Any]] = []
    index = rec.candidates_ if items is None and not context else None
    for start in range(0, len(users), batch_users):
        chunk = users[start : start + batch_users]
        exclude = None
        if exclude_seen:
            exclude = cat.seen_rows(chunk)
            if items is not None:
                exclude = _candidate_seen(exclude, cand, cat.item_index)
        scores = _chunk_scores(rec, chunk, None if items is None else cand, context, n_cand,
                               exclude, index)  # fmt: skip
        top = scores.top
        if policy is None:
            rows = [(r, top[r][top[r] >= 0]) for r in range(len(chunk))]
            rows = [(r, sel) for r, sel in rows if sel.size]
            if rows:
                pred = _pair_prediction(rec, chunk, rows, cand, context, online)
                frames.append(_rows_frame(rec, chunk, rows, cand, pred, scores,
                                          confidence_level, horizon))  # fmt: skip
        else:
            assert state is not None
            part = _policy_frame(rec, chunk, k, cand, context, scores, confidence_level,
                                 horizon, policy, state, slates, online)  # fmt: skip
            if part is not None:
                frames.append(part)
        if progress is not None:
            progress(len(chunk))
    columns = COLUMNS if policy is None else [*COLUMNS, PROPENSITY]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    if policy is not None:
        first = slates[0] if slates else {"policy": repr(policy), "floor": None, "draws": None}
        out.attrs["policy"] = {
            "name": first["policy"],
            "propensity_floor": first["floor"],
            "draws": first["draws"],
            "candidates": n_cand,
        }
    return out


def _check_policy_args(
    k: int, policy: Policy | None, state: PolicyState | None, candidates: int | None
) -> int:
    """How many candidates the index brings: k without a policy, else ``candidates``
    (default :func:`default_candidates`); refuses a state or candidates without a policy."""
    if policy is None:
        for name, value in (("state", state), ("candidates", candidates)):
            if value is not None:
                raise ValueError(
                    f"recommend(): {name} applies only with a policy; pass policy= (e.g. "
                    "wager.policies.UCB(beta=1.0)) or drop it"
                )
        return k
    if not isinstance(policy, Policy):
        raise TypeError(
            f"recommend(): policy must be a wager.policies.Policy (select and "
            f"action_distribution), got {type(policy).__name__}"
        )
    if state is not None and not isinstance(state, PolicyState):
        raise TypeError(
            f"recommend(): state must be a wager.policies.PolicyState, got {type(state).__name__}"
        )
    if candidates is None:
        return default_candidates(k)
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < k:
        raise ValueError(
            f"recommend(): candidates must be an integer >= k = {k} (the items the index "
            f"brings for the policy to choose from), got {candidates!r}"
        )
    return candidates


def _pair_prediction(
    rec: Recommender,
    chunk: list[Any],
    rows: list[tuple[int, np.ndarray]],
    cand: np.ndarray,
    context: Mapping[str, Any] | None,
    online: OnlineRecalibration | None = None,
) -> Prediction:
    """(n,) predictions of the (user, item) pairs of ``rows`` in order: the full uncertainty
    model (head noise, members, MC dropout, calibration; then ``online``, a serving-time
    recalibration, when given) for pointwise models, the members' scores for retrieval /
    implicit ones."""
    pair_users = [chunk[r] for r, sel in rows for _ in range(sel.size)]
    pair_items = np.concatenate([cand[sel] for _, sel in rows])
    if rec.spec.pointwise:
        pred = rec.predict(pair_users, pair_items, context)
        return pred if online is None else online.apply(pred)
    scorer = rec.scorer_
    return scorer.prediction_of(scorer.pair_member_scores(pair_users, pair_items, context), None)


@dataclass
class _ChunkScores:
    """The candidate step's result for one chunk of users.

    Attributes:
        top: (U, n) candidate columns by the ensemble-mean score, best first, -1 padded.
        score_of: (chunk row, candidate columns) -> their mean scores.
        stats: () -> (U, 3) each user's list statistics over the whole masked score row
            (retrieval / implicit list confidence), computed when first asked.
    """

    top: np.ndarray
    score_of: Callable[[int, np.ndarray], torch.Tensor]
    stats: Callable[[], torch.Tensor]


def _chunk_scores(
    rec: Recommender,
    chunk: list[Any],
    items: np.ndarray | None,
    context: Mapping[str, Any] | None,
    n: int,
    exclude: sp.csr_matrix | None,
    index: CandidateIndex | None,
) -> _ChunkScores:
    """Each user's ``n`` candidates by the ensemble-mean score: by ``index`` (a top-k index
    over the catalogue; ``items`` None, no context) or by scoring every item (one product
    of the concatenated member factors for factorised models)."""
    scorer = rec.scorer_
    cal = rec.chain_.list_relevance

    def stats_of(mean_scores: torch.Tensor) -> torch.Tensor:
        assert cal is not None
        return cal.row_statistics(masked(mean_scores.cpu(), exclude))

    if index is None:
        mean_scores = scorer.mean_scores(chunk, items, context)
        top = ranking.top_k_from_scores(mean_scores, n, exclude)  # (U, n), -1 padded
        return _ChunkScores(
            top, lambda r, sel: mean_scores[r, torch.as_tensor(sel)], lambda: stats_of(mean_scores)
        )
    top, top_scores = index.top(scorer, chunk, n, exclude)

    def score_of(r: int, sel: np.ndarray) -> torch.Tensor:
        where = {int(c): j for j, c in enumerate(top[r]) if c >= 0}
        return top_scores[r, torch.as_tensor([where[int(c)] for c in sel], dtype=torch.long)]

    def stats() -> torch.Tensor:  # exact, a few users' whole rows at a time
        step = max(1, 2**24 // max(scorer.catalogue.n_items, 1))
        parts = []
        for lo in range(0, len(chunk), step):
            part = exclude[lo : lo + step] if exclude is not None else None
            mean_scores = scorer.mean_scores(chunk[lo : lo + step])
            parts.append(cal.row_statistics(masked(mean_scores.cpu(), part)))  # type: ignore[union-attr]
        return torch.cat(parts)

    return _ChunkScores(top, score_of, stats)


def _rows_frame(
    rec: Recommender,
    chunk: list[Any],
    rows: list[tuple[int, np.ndarray]],
    cand: np.ndarray,
    pred: Prediction,
    scores: _ChunkScores,
    confidence_level: float,
    horizon: float | None,
) -> pd.DataFrame:
    """The output rows of the chosen items ``rows`` ((chunk row, candidate columns in rank
    order)) with their (n,) predictions ``pred``."""
    pair_users = [chunk[r] for r, sel in rows for _ in range(sel.size)]
    pair_items = np.concatenate([cand[sel] for _, sel in rows])
    ranked = torch.cat([scores.score_of(r, sel) for r, sel in rows])
    has_std = pred.std is not None
    # a homoscedastic conformal interval needs no std
    iv = (
        pred.interval(confidence_level)
        if has_std or isinstance(pred, ConformalPrediction)
        else None
    )
    conf = rec.relevance_confidence(pred)
    cal = rec.chain_.list_relevance
    if not rec.spec.pointwise and cal is not None:
        # P(among the next H positives) under the softmax over each user's candidates
        norm = scores.stats()
        conf = torch.cat(
            [
                cal.probability(
                    scores.score_of(r, sel).cpu().unsqueeze(0), norm[r : r + 1], horizon
                )[0]
                for r, sel in rows
            ]
        )
    return pd.DataFrame(
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


def _policy_frame(
    rec: Recommender,
    chunk: list[Any],
    k: int,
    cand: np.ndarray,
    context: Mapping[str, Any] | None,
    scores: _ChunkScores,
    confidence_level: float,
    horizon: float | None,
    policy: Policy,
    state: PolicyState,
    slates: list[dict[str, Any]],
    online: OnlineRecalibration | None = None,
) -> pd.DataFrame | None:
    """The output rows of one chunk of users chosen by ``policy`` from ``scores.top`` ((U,
    n) candidate columns by the mean, -1 padded), or None when no user has a candidate.

    Users are grouped by their number of candidates (all of them, unless exclusion left
    some with fewer than n): one prediction and one ``policy.select`` per group, then the
    rows are put back in the users' order. ``slates`` collects each slate's policy name,
    floor and draws."""
    top = scores.top
    counts = (top >= 0).sum(axis=1)
    parts = []
    for n in sorted(set(counts.tolist()) - {0}):  # distinct candidate counts, not users
        group = np.flatnonzero(counts == n)
        sel = top[group, :n]  # the -1 padding is at the end of each row
        pairs = [(int(r), s) for r, s in zip(group, sel, strict=True)]
        pred = _pair_prediction(rec, chunk, pairs, cand, context, online)
        slate = policy.select(as_matrix(pred, len(group), n), min(k, n), state)
        slates.append(
            {"policy": slate.policy, "floor": slate.propensity_floor, "draws": slate.draws}
        )
        chosen = slate.items.cpu().numpy()
        flat = (np.arange(len(group))[:, None] * n + chosen).ravel()
        rows = [(int(r), sel[g, chosen[g]]) for g, r in enumerate(group)]
        part = _rows_frame(rec, chunk, rows, cand, pred[torch.as_tensor(flat)], scores,
                           confidence_level, horizon)  # fmt: skip
        part[PROPENSITY] = slate.propensities.cpu().numpy().ravel()
        part["_row"] = np.repeat(group, chosen.shape[1])
        parts.append(part)
    if not parts:
        return None
    out = pd.concat(parts, ignore_index=True).sort_values(["_row", "rank"], kind="stable")
    return out.drop(columns="_row").reset_index(drop=True)


def as_matrix(prediction: Prediction, b: int, c: int) -> Prediction:
    """A flat (b * c,) prediction of b users' c candidates each (user-major) as a (b, c)
    one, the shape a :class:`~wager.policies.Policy` takes: every per-element field is
    reshaped (``samples`` to (S, b, c), mixture components to (b, c, K)). A conformal
    prediction becomes a plain one (policies use the mean, std and draws, not intervals).
    """

    def grid(t: Tensor) -> Tensor:
        return t.reshape(b, c, *t.shape[1:])

    def maybe(t: Tensor | None) -> Tensor | None:
        return None if t is None else grid(t)

    samples = prediction.samples
    fields: dict[str, Any] = {
        "mean": grid(prediction.mean),
        "std": maybe(prediction.std),
        "aleatoric_std": maybe(prediction.aleatoric_std),
        "epistemic_std": maybe(prediction.epistemic_std),
        "samples": None if samples is None else samples.reshape(samples.shape[0], b, c),
        "method": prediction.method,
        "support": prediction.support,
        "df": prediction.df,
    }
    if isinstance(prediction, MixturePrediction):
        return MixturePrediction(
            **fields,
            weights=grid(prediction.weights),
            means=grid(prediction.means),
            stds=grid(prediction.stds),
            measurement_std=maybe(prediction.measurement_std),
        )
    return Prediction(**fields)
