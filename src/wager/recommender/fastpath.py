"""A fast top-k path for one user at a time (what ``wager serve`` calls per request).

``Recommender.recommend`` is general: it encodes every (user, candidate) pair with pandas,
runs the members through ``vmap`` and builds a DataFrame, about 80 ms per call for a 5-member
MovieLens-100k ensemble. For models whose per-member output is a dot product of a user row
and an item row (biased MF with its augmented vectors [p_u, mu + b_u, 1] . [q_i, 1, b_i],
and for a Gaussian head the raw scale [s0 + s_u, 1] . [1, s_i]; any factorised model with a
one-output head), :class:`FastPath` precomputes once per model version

- the catalogue's per-member item rows, transposed (M, d, I) (and scale rows (M, 2, I));
- each user's per-member rows, encoded input tensors, seen items and known flag (the known
  users at build time; any other id, an unknown user included, on first use, through the
  same encoder call as the generic path, so an unknown user gets exactly its OOV row),

so one request is: the user's rows -> every member's output for every item (one batched
product per output) -> ranking scores (the head of the members' mean location, as
``Scorer.mean_scores`` ranks) -> the candidates (``ranking.top_k_from_scores`` with seen and
excluded items masked) -> their (M, n) outputs, read from the products -> the head's
moments -> ``Scorer.prediction_of`` ->
``PostHocChain.transform`` (with the same covariates) -> ``Policy.select`` -> interval and
relevance confidence of the k chosen items. Every step after the products is the generic
path's own code, so the slate equals ``Recommender.recommend``'s (same items, order, mean,
std, interval, confidence and propensities, up to float rounding of the products).

:meth:`FastPath.build` returns None for what it cannot represent (retrieval / implicit
models, mixtures, MC dropout, population cold start, several tasks, models with context
fields or without factors); :meth:`FastPath.recommend` returns None for a request it does
not take (a context, a catalogue changed since the build, every item excluded). The caller
then uses ``Recommender.recommend``.

Scoring and picking are split so that a cache can keep a user's scored candidates:
:meth:`FastPath.score` -> :class:`Scored` (``to_dict()``: ``{"items", "mean", "std"}``), and
:meth:`FastPath.select` picks the slate from a :class:`Scored`, or from such a dict via
:meth:`FastPath.from_dict` (which keeps mean and std only: a Thompson draw from a cached dict
is Gaussian, not one of the members).

Example:
    >>> fast = FastPath.build(rec)  # doctest: +SKIP
    >>> fast.recommend("42", 10, policy=Greedy(), state=PolicyState.seeded(0))  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from wager.policies import Policy, PolicyState
from wager.prediction import Prediction
from wager.recommender.listing import as_matrix, default_candidates
from wager.recommender.scoring import Batch, mean_of_location
from wager.uncertainty.conformal import ConformalPrediction
from wager.uncertainty.recalibration import OnlineRecalibration

if TYPE_CHECKING:
    from wager.recommender.facade import Recommender

#: users whose rows are kept (known users at build time plus ids met since; cleared when full)
MAX_USERS = 200_000
#: most (member, user, item) products held at once by :meth:`FastPath.score_many` (64 MiB)
CHUNK_ENTRIES = 1 << 24


@dataclass(frozen=True)
class _User:
    """One user's precomputed rows: (M, d) factors, (M, 2) scale factors or None, the
    encoded "user.*" tensors (1, ...), the seen catalogue positions and the known flag."""

    factors: Tensor
    scale: Tensor | None
    encoded: Batch
    seen: np.ndarray
    known: bool


@dataclass(frozen=True)
class Scored:
    """One user's candidates scored with full uncertainty (what a cache may keep).

    Users scored together share one prediction of all their candidates (``joined``, user
    after user); each user's is a slice of it, cut only when asked for, so a round that picks
    for the same users in the same order uses ``joined`` as it is.

    Attributes:
        items: (n,) int64 catalogue positions, best first by the ensemble-mean score.
        joined: the post-hoc-transformed prediction of which rows ``start`` .. ``start + n``
            are this user's candidates (the whole of it when scored alone).
        known: whether the user had training interactions (False: cold start).
        start: this user's first row in ``joined``.
    """

    items: np.ndarray
    joined: Prediction
    known: bool
    start: int = 0

    @property
    def prediction(self) -> Prediction:
        """(n,) the post-hoc-transformed prediction of each candidate."""
        n = len(self.items)
        if self.start == 0 and self.joined.mean.shape[0] == n:
            return self.joined
        return self.joined[self.start : self.start + n]

    def to_dict(self) -> dict[str, np.ndarray]:
        """``{"items": (n,) int64, "mean": (n,) float64, "std": (n,) float64}`` (std NaN
        for a point model)."""
        n = len(self.items)
        rows = slice(self.start, self.start + n)  # this user's rows only, not the batch's
        std = self.joined.std
        return {
            "items": self.items.astype(np.int64),
            "mean": _nan_or(self.joined.mean[rows], n),
            "std": _nan_or(None if std is None else std[rows], n),
        }


@dataclass(frozen=True)
class Ask:
    """One user's scoring request of :meth:`FastPath.score_many`.

    Attributes:
        user_id: the user (known or not); n_candidates: how many best items by the ensemble
        mean to predict; exclude_seen: drop the user's training items; exclude: item ids
        never to return (unknown ids ignored).
    """

    user_id: str
    n_candidates: int
    exclude_seen: bool = True
    exclude: Collection[str] = ()


@dataclass(frozen=True)
class FastSlate:
    """The k items shown to one user, in slate order (arrays of length k).

    Attributes:
        items: catalogue keys; positions: their catalogue positions; mean, std, low, high,
        confidence, propensity: float64 (NaN where undefined); policy: the policy's name
        (``Slate.policy``); known: False for a cold-start user.
    """

    items: np.ndarray
    positions: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    confidence: np.ndarray
    propensity: np.ndarray
    policy: str
    known: bool


def top_of_row(row: np.ndarray, n: int) -> np.ndarray:
    """(<= n,) int64 positions of the n highest scores of one (I,) row, best first, ties to
    the lower position, entries of -inf (or NaN) never: what
    :func:`wager.evaluation.ranking.top_k_from_scores` returns for one user less its -1
    slots, without its (users x items) machinery (a partial sort: O(I + n log n))."""
    finite = np.flatnonzero(row > -np.inf)
    if n < finite.size:
        values = row[finite]
        threshold = values[np.argpartition(-values, n - 1)[n - 1]]
        above = finite[values > threshold]
        ties = finite[values == threshold][: n - above.size]
        finite = np.concatenate([above, ties])
    return finite[np.argsort(-row[finite], kind="stable")].astype(np.int64)


def _nan_or(t: Tensor | None, n: int) -> np.ndarray:
    return np.full(n, np.nan) if t is None else t.detach().cpu().numpy().astype(np.float64)


def _joined(preds: Sequence[Prediction]) -> Prediction:
    """The (sum n,) concatenation of flat predictions of one model (the first one's method,
    support, df and conformal calibrator; member draws joined along the candidates)."""
    first = preds[0]

    def cat(name: str, dim: int = 0) -> Tensor | None:
        values = [getattr(p, name) for p in preds]
        return None if any(v is None for v in values) else torch.cat(values, dim=dim)

    base = Prediction(
        mean=torch.cat([p.mean for p in preds]),
        std=cat("std"),
        aleatoric_std=cat("aleatoric_std"),
        epistemic_std=cat("epistemic_std"),
        samples=cat("samples", dim=1),
        method=first.method,
        support=first.support,
        df=first.df,
    )
    return first.conformal.conformalize(base) if isinstance(first, ConformalPrediction) else base


def _flat(scored: Sequence[Scored]) -> Prediction:
    """The (B n,) prediction of ``scored``'s candidates, user after user: their shared
    ``joined`` when they are all of it in order, else the concatenation of their slices."""
    first = scored[0].joined
    start = 0
    for one in scored:
        if one.joined is not first or one.start != start:
            break
        start += len(one.items)
    else:
        if start == first.mean.shape[0]:
            return first
    return _joined([s.prediction for s in scored])


def batch_key(scored: Scored) -> tuple[Any, ...]:
    """What :meth:`FastPath.select_many` needs equal across the users it picks for at once
    (candidate count and the prediction's form)."""
    p = scored.joined
    return (len(scored.items), type(p), p.std is None, p.samples is None, p.df)


class FastPath:
    """The per-version tables of the fast path (see the module docstring); build with
    :meth:`build`. Safe to call from several threads at once."""

    def __init__(self, rec: Recommender) -> None:
        scorer = rec.scorer_
        self.rec = rec
        self.catalogue = scorer.catalogue
        self.version = scorer.catalogue.version
        self.head = rec.spec.head
        self._scorer = scorer
        self._two = self.head is not None and self.head.out_dim == 2
        self._items_encoded = scorer.encode_items()
        with torch.no_grad():
            v = scorer.stack.call("item_factors", self._items_encoded)  # (M, I, d)
            self.members = int(v.shape[0])
            self._v_t = v.transpose(1, 2).contiguous()  # (M, d, I): each member's item rows
            self._vs_t = (
                scorer.stack.call("item_scale_factors", self._items_encoded)
                .transpose(1, 2)
                .contiguous()
                if self._two
                else None
            )
        self._keys = {str(k): i for i, k in enumerate(self.catalogue.items)}
        self._users: dict[str, _User] = {}
        self._lock = threading.Lock()
        known = [str(u) for u in self.catalogue.users]
        for start in range(0, len(known), 4096):
            self._add_users(known[start : start + 4096])

    # ------------------------------------------------------------------ building
    @staticmethod
    def unsupported(rec: Recommender) -> str | None:
        """Why the fast path cannot represent ``rec`` (None when it can)."""
        spec, scorer = rec.spec, rec.scorer_
        model = scorer.stack.model
        checks = (
            (not spec.pointwise, f"a {spec.task} model (only rating / click models)"),
            (spec.mixture, "a mixture likelihood"),
            (spec.mc_dropout is not None, "MC dropout"),
            (len(spec.tasks) > 1, "several tasks"),
            (scorer.population_picks is not None, 'cold_start = "population"'),
            (not scorer.factorised, "no factorised (dot-product) form, or context fields"),
            (spec.head is None, "no head"),
        )
        for failed, why in checks:
            if failed:
                return why
        assert spec.head is not None
        if spec.head.out_dim == 2 and not hasattr(model, "user_scale_factors"):
            return "a two-output head without scale factors"
        if spec.head.out_dim not in (1, 2):
            return f"a head with {spec.head.out_dim} outputs"
        return None

    @classmethod
    def build(cls, rec: Recommender) -> FastPath | None:
        """The fast path of ``rec``, or None when :meth:`unsupported` gives a reason."""
        return None if cls.unsupported(rec) is not None else cls(rec)

    def _add_users(self, user_ids: list[str]) -> list[_User]:
        """Compute and keep the rows of ``user_ids`` (the generic path's encoder calls)."""
        scorer, cat = self._scorer, self.catalogue
        encoded = scorer.encode_users(user_ids)
        with torch.no_grad():
            u = scorer.stack.call("user_factors", encoded)  # (M, U, d)
            us = scorer.stack.call("user_scale_factors", encoded) if self._two else None
        seen = cat.seen_rows(user_ids)
        known = cat.known_users(user_ids)
        out = []
        for n in range(len(user_ids)):
            row = seen.indices[seen.indptr[n] : seen.indptr[n + 1]].astype(np.int64)
            out.append(
                _User(
                    factors=u[:, n].contiguous(),
                    scale=None if us is None else us[:, n].contiguous(),
                    encoded={k: t[n : n + 1] for k, t in encoded.items()},
                    seen=np.sort(row),
                    known=bool(known[n]),
                )
            )
        with self._lock:
            if len(self._users) + len(out) > MAX_USERS:
                self._users = {}
            self._users.update(zip(user_ids, out, strict=True))
        return out

    def _users_of(self, user_ids: Sequence[str]) -> list[_User]:
        """The rows of ``user_ids``, computing the missing ones in one encoder call."""
        found = {u: self._users.get(u) for u in user_ids}  # read before a full table clears
        missing = [u for u, row in found.items() if row is None]
        if missing:
            found.update(zip(missing, self._add_users(missing), strict=True))
        return [found[u] for u in user_ids]  # type: ignore[misc]

    # ------------------------------------------------------------------ scoring
    def score(
        self,
        user_id: str,
        n_candidates: int,
        *,
        exclude_seen: bool = True,
        exclude: Collection[str] = (),
    ) -> Scored | None:
        """The user's ``n_candidates`` best items by the ensemble mean (seen items dropped
        with ``exclude_seen``, ``exclude`` ids never; unknown ids ignored), predicted with
        full uncertainty; None when the catalogue changed since the build or every item is
        excluded (use the generic path)."""
        return self.score_many([Ask(user_id, n_candidates, exclude_seen, exclude)])[0]

    def score_many(self, asks: Sequence[Ask]) -> list[Scored | None]:
        """:meth:`score` of several users at once: one (M, B, d) x (M, d, I) product gives
        every member's output for every item (their mean ranks the catalogue, as
        ``Scorer.mean_scores`` does; the candidates' are read from it) and one post-hoc chain
        call predicts all their candidates (what a service does with the requests that
        arrive together). Each result equals the user's own :meth:`score` up to float
        rounding. Users are taken :data:`CHUNK_ENTRIES` products at a time."""
        if not asks or self.catalogue.version != self.version:
            return [None] * len(asks)
        users = self._users_of([a.user_id for a in asks])
        n_items = len(self._keys)
        step = max(1, CHUNK_ENTRIES // (self.members * n_items))
        picked: list[tuple[int, np.ndarray]] = []
        outputs: list[Tensor] = []
        for first in range(0, len(asks), step):
            chunk = range(first, min(first + step, len(asks)))
            with torch.no_grad():
                u = torch.stack([users[b].factors for b in chunk], dim=1)  # (M, b, d)
                loc = torch.bmm(u, self._v_t)  # (M, b, I)
                scores = mean_of_location(self.head, loc.mean(dim=0)).cpu().numpy()  # (b, I)
            rows: list[np.ndarray] = []
            for r, b in enumerate(chunk):
                sel = self._candidates_of(asks[b], users[b], scores[r])
                if sel is not None:
                    picked.append((b, sel))
                    rows.append(r * n_items + sel)
            if rows:
                outputs.append(self._outputs_of(chunk, users, loc, np.concatenate(rows)))
        out: list[Scored | None] = [None] * len(asks)
        if not picked:
            return out
        pred = self._predict(torch.cat(outputs, dim=1), [(users[b], sel) for b, sel in picked])
        start = 0
        for b, sel in picked:
            out[b] = Scored(sel, pred, users[b].known, start)
            start += len(sel)
        return out

    def _candidates_of(self, ask: Ask, user: _User, row: np.ndarray) -> np.ndarray | None:
        """The ask's candidates from its user's (I,) ranking scores (masked in place: a
        fresh row of this call), or None when every item is excluded."""
        dropped = [self._keys[x] for x in ask.exclude if x in self._keys]
        if len(set(dropped)) >= len(self._keys):
            return None
        if ask.exclude_seen and user.seen.size:
            row[user.seen] = -np.inf
        if dropped:
            row[np.asarray(dropped, dtype=np.int64)] = -np.inf
        return top_of_row(row, ask.n_candidates)

    def _outputs_of(
        self, chunk: range, users: Sequence[_User], loc: Tensor, rows: np.ndarray
    ) -> Tensor:
        """(M, N) (or (M, N, 2) with a scale output) member outputs of the ``rows``
        (flat indices into the chunk's (b, I)) from its (M, b, I) products."""
        m = self.members
        idx = torch.as_tensor(rows)
        with torch.no_grad():
            out = loc.reshape(m, -1).index_select(1, idx)
            if self._vs_t is None:
                return out
            scale = [users[b].scale for b in chunk]
            us = torch.stack(scale, dim=1)  # type: ignore[arg-type]  # (M, b, 2)
            raw = torch.bmm(us, self._vs_t).reshape(m, -1).index_select(1, idx)
            return torch.stack([out, raw], dim=-1)

    def _predict(self, out: Tensor, picked: Sequence[tuple[_User, np.ndarray]]) -> Prediction:
        """(sum n,) transformed predictions of each user's candidates, user after user, from
        their (M, sum n[, 2]) member outputs."""
        scorer, chain = self._scorer, self.rec.chain_
        with torch.no_grad():
            means, stds = scorer.head_moments(out)
        pred = scorer.prediction_of(means.cpu(), None if stds is None else stds.cpu())
        cov = None
        if chain.support_covariates is not None:  # it reads its id fields only
            idx = torch.as_tensor(np.concatenate([sel for _, sel in picked]))
            owner = torch.as_tensor(np.repeat(np.arange(len(picked)), [len(s) for _, s in picked]))
            needed = chain.support_covariates.tables_.keys()
            batch = {
                k: torch.cat([user.encoded[k] for user, _ in picked]).index_select(0, owner)
                for k in picked[0][0].encoded
                if k in needed
            }
            batch.update(
                {k: t.index_select(0, idx) for k, t in self._items_encoded.items() if k in needed}
            )
            cov = chain.covariates(batch)
        return chain.transform(pred, cov)

    def from_dict(self, scored: Mapping[str, np.ndarray], known: bool) -> Scored:
        """A :class:`Scored` from :meth:`Scored.to_dict` (e.g. read from a cache): mean and
        std only (no member draws), with this model's support and conformal interval."""
        return self.from_dicts([scored], [known])[0]

    def from_dicts(
        self, scored: Sequence[Mapping[str, np.ndarray]], known: Sequence[bool]
    ) -> list[Scored]:
        """:meth:`from_dict` of several users at once (one joined prediction, one conformal
        step), each user's ``known`` flag given."""
        std = np.concatenate([np.asarray(d["std"], dtype=np.float64) for d in scored])
        has_std = bool(np.isfinite(std).all()) and std.size > 0
        spec = self.rec.spec
        df = float(self.members - 1) if self.members >= 3 and not self._two else None
        mean = np.concatenate([np.asarray(d["mean"], dtype=np.float32) for d in scored])
        pred = Prediction(
            mean=torch.from_numpy(mean),
            std=torch.from_numpy(std.astype(np.float32)) if has_std else None,
            method=spec.method,
            support=None if self.head is None else self.head.support,
            df=df if has_std and self.members >= 2 else None,
        )
        conformal = self.rec.chain_.conformal
        if conformal is not None:
            pred = conformal.conformalize(pred)
        out, start = [], 0
        for d, flag in zip(scored, known, strict=True):
            items = np.asarray(d["items"], dtype=np.int64)
            out.append(Scored(items, pred, bool(flag), start))
            start += len(items)
        return out

    def known(self, user_id: str) -> bool:
        """Whether ``user_id`` had training interactions (False: cold start), from the
        user table (computing the user's rows on first use)."""
        return self._users_of([user_id])[0].known

    # ------------------------------------------------------------------ picking
    def select(
        self,
        scored: Scored,
        k: int,
        policy: Policy,
        state: PolicyState,
        confidence_level: float = 0.9,
        online: OnlineRecalibration | None = None,
    ) -> FastSlate:
        """The policy's k (at most the candidates) of ``scored``, with interval, relevance
        confidence and propensities, as ``Recommender.recommend`` computes them (``online``:
        a serving-time recalibration of the candidates' predictions, applied first)."""
        return self.select_many([scored], k, policy, state, confidence_level, online)[0]

    def select_many(
        self,
        scored: Sequence[Scored],
        k: int,
        policy: Policy,
        state: PolicyState,
        confidence_level: float = 0.9,
        online: OnlineRecalibration | None = None,
    ) -> list[FastSlate]:
        """:meth:`select` for several users at once: one ``Policy.select`` over their
        (B, n) candidates and one interval / confidence call for the B k chosen items.
        Users of different :func:`batch_key` are picked group by group."""
        groups: dict[tuple[Any, ...], list[int]] = {}
        for n, one in enumerate(scored):
            groups.setdefault(batch_key(one), []).append(n)
        out: list[FastSlate | None] = [None] * len(scored)
        for members in groups.values():
            picked = self._select_group([scored[n] for n in members], k, policy, state,
                                        confidence_level, online)  # fmt: skip
            for n, slate in zip(members, picked, strict=True):
                out[n] = slate
        return out  # type: ignore[return-value]

    def _select_group(
        self,
        scored: Sequence[Scored],
        k: int,
        policy: Policy,
        state: PolicyState,
        confidence_level: float,
        online: OnlineRecalibration | None,
    ) -> list[FastSlate]:
        """:meth:`select_many` of users with the same :func:`batch_key`."""
        b, n = len(scored), len(scored[0].items)
        if n == 0:
            empty = np.empty(0)
            return [FastSlate(np.empty(0, object), np.empty(0, np.int64), empty, empty, empty,
                              empty, empty, empty, repr(policy), s.known)
                    for s in scored]  # fmt: skip
        flat = _flat(scored)
        if online is not None:
            flat = online.apply(flat)
        m = min(k, n)
        slate = policy.select(as_matrix(flat, b, n), m, state)
        chosen = slate.items.cpu()  # (B, m)
        pred = flat[(torch.arange(b).unsqueeze(1) * n + chosen).reshape(-1)]
        iv = (
            pred.interval(confidence_level)
            if pred.std is not None or isinstance(pred, ConformalPrediction)
            else None
        )
        columns = {
            "mean": _nan_or(pred.mean, b * m),
            "std": _nan_or(pred.std, b * m),
            "low": _nan_or(None if iv is None else iv.low, b * m),
            "high": _nan_or(None if iv is None else iv.high, b * m),
            "confidence": _nan_or(self.rec.relevance_confidence(pred), b * m),
        }
        propensity = slate.propensities.cpu().numpy().astype(np.float64)
        out = []
        for r, one in enumerate(scored):
            positions = one.items[chosen[r].numpy()]
            rows = slice(r * m, (r + 1) * m)
            out.append(
                FastSlate(
                    items=self.catalogue.items[positions],
                    positions=positions,
                    **{name: values[rows] for name, values in columns.items()},
                    propensity=propensity[r],
                    policy=slate.policy,
                    known=one.known,
                )
            )
        return out

    def recommend(
        self,
        user_id: str,
        k: int,
        *,
        policy: Policy,
        state: PolicyState,
        exclude: Collection[str] = (),
        exclude_seen: bool = True,
        confidence_level: float = 0.9,
        candidates: int | None = None,
        context: dict[str, Any] | None = None,
    ) -> FastSlate | None:
        """One user's slate (``Recommender.recommend([user_id], k, policy=..., ...)`` with
        ``candidates`` default max(10 k, 100)), or None when this request needs the generic
        path (a context given, a changed catalogue, every item excluded)."""
        if context:
            return None
        n = candidates if candidates is not None else default_candidates(k)
        scored = self.score(user_id, n, exclude_seen=exclude_seen, exclude=exclude)
        if scored is None:
            return None
        return self.select(scored, k, policy, state, confidence_level)
