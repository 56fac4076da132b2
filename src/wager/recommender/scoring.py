"""Scorer: every way a fitted model scores users and items; what policies and serving call.

Three shapes of scoring, all on the raw model (before the post-hoc chain):

- pairs: :meth:`Scorer.prediction` of (user, item[, context]) rows -> a
  :class:`~wager.prediction.Prediction` with the members' / head's uncertainty;
- catalogue scores: :meth:`Scorer.mean_scores` (U, I) what lists are ranked by (for
  factorised models one product of the members' concatenated factors) and
  :meth:`Scorer.member_scores` (M, U, I) per member;
- encoded pairs: :meth:`Scorer.encode_pairs`, the model inputs of (user, item) rows.

Unknown users and items go through the out-of-vocabulary row and their features.

Example:
    >>> scorer = rec.scorer  # doctest: +SKIP
    >>> scorer.mean_scores(["42"]).shape  # doctest: +SKIP
    torch.Size([1, 1682])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import Tensor

from wager.data.features import InteractionEncoder, vector_columns
from wager.data.schema import Vector
from wager.errors import suggest
from wager.models.heads import (
    BernoulliHead,
    DeepDensityHead,
    GaussianHead,
    Head,
    MixtureDensityHead,
    PointHead,
)
from wager.prediction import MixturePrediction, Prediction
from wager.recommender.catalogue import Catalogue
from wager.recommender.spec import ModelSpec
from wager.training.trainer import StackedModel
from wager.uncertainty.cold_start import oov_rows, population_batch

Batch = dict[str, Tensor]
Context = pd.DataFrame | Mapping[str, Any] | None
# pairs scored per forward pass when a model has no factorised (dot-product) form
PAIRS_PER_PASS = 262_144
# rows x population draws per forward pass of cold_start = "population"
POPULATION_ROWS = 65536


def to_tensors(arrays: Mapping[str, np.ndarray], device: torch.device | None = None) -> Batch:
    """numpy arrays -> torch tensors (int64 stays int64, floats become float32)."""
    out = {}
    for k, v in arrays.items():
        t = torch.from_numpy(np.require(v, requirements=["C", "W"]))
        t = t.float() if t.is_floating_point() else t
        out[k] = t.to(device) if device is not None else t
    return out


def mean_of_location(head: Head | None, location: Tensor) -> Tensor:
    """The head's predicted mean from the location of its output (the mean's raw value)."""
    if head is None:  # retrieval scores
        return location
    if isinstance(head, GaussianHead):
        return head.mean(torch.stack([location, torch.zeros_like(location)], dim=-1))
    return head.mean(location)


def masked(scores: Tensor, exclude: sp.csr_matrix | None) -> Tensor:
    """(U, I) copy of ``scores`` with the ``exclude`` entries set to -inf."""
    out = scores.clone()
    if exclude is not None and exclude.nnz:
        ex = exclude.tocoo()
        out[
            torch.as_tensor(ex.row.astype(np.int64)), torch.as_tensor(ex.col.astype(np.int64))
        ] = -math.inf
    return out


def _warn_missing_ids(ids: Sequence[Any] | np.ndarray, what: str) -> None:
    missing = pd.isna(pd.Series(list(ids), dtype=object)).to_numpy()
    if missing.any():
        first = int(np.flatnonzero(missing)[0])
        warnings.warn(
            f"{what}[{first}] is missing (None / NaN), {int(missing.sum())} of {len(missing)} "
            f"in all: predicted as unknown (cold-start) {what.split('_')[0]}s; pass real ids "
            "to get their own predictions",
            stacklevel=3,
        )


class Scorer:
    """Scores of a fitted model (see the module docstring).

    Args:
        spec: the run's model spec.
        encoder: the fitted interaction encoder.
        stack: the trained (stacked) members.
        catalogue: the known items and users.
        population_picks: ``cold_start = "population"``: {field key: (M, K) known rows
            standing in for an OOV value}, or None.
    """

    def __init__(
        self,
        spec: ModelSpec,
        encoder: InteractionEncoder,
        stack: StackedModel,
        catalogue: Catalogue,
        population_picks: dict[str, Tensor] | None = None,
    ) -> None:
        self.spec = spec
        self.encoder = encoder
        self.stack = stack
        self.catalogue = catalogue
        self.population_picks = population_picks or None
        self._item_cache: dict[tuple[str, int, int], Batch] = {}

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live."""
        return self.stack.device

    @property
    def factorised(self) -> bool:
        """Scores are dot products of user and item factors (no context fields)."""
        model = self.stack.model
        return hasattr(model, "user_factors") and getattr(model, "context", None) is None

    # ------------------------------------------------------------------ encoding
    def encode_users(self, user_ids: Sequence[Any]) -> Batch:
        """Encoded "user.*" tensors of ``user_ids`` on the model's device."""
        return to_tensors(self.encoder.transform_users(list(user_ids)), self.device)

    def encode_items(self, items: Sequence[Any] | np.ndarray | None = None) -> Batch:
        """Encoded "item.*" tensors of ``items`` (default: the catalogue as it is now, cached
        until it changes)."""
        if items is not None:
            return to_tensors(self.encoder.transform_items(list(items)), self.device)
        key = (str(self.device), id(self.catalogue), self.catalogue.version)
        # read once, replace whole: a thread never looks up a key another one just evicted
        encoded = self._item_cache.get(key)
        if encoded is None:
            items = list(self.catalogue.items)
            encoded = to_tensors(self.encoder.transform_items(items), self.device)
            self._item_cache = {key: encoded}
        return encoded

    def context_rows(self, n: int, context: Context) -> pd.DataFrame:
        """(n rows) context columns of the schema from ``context``: a DataFrame with one row
        per pair (every context column present; None / NaN cells are missing values), a
        mapping applied to every pair (an absent key is a missing value -> OOV), or None.

        Raises:
            ValueError: a mapping names a column the schema does not have, or a DataFrame
                lacks one of the schema's context columns.
        """
        names = [f.name for f in self.spec.schema.context]
        given = list(context.columns) if isinstance(context, pd.DataFrame) else list(context or {})
        extra = [c for c in given if c not in names and not isinstance(context, pd.DataFrame)]
        if extra:
            raise ValueError(
                f"context key {extra[0]!r} is not a context column of the schema (context "
                f"columns: {names or 'none'}).{suggest(extra[0], names)}"
            )
        rows = pd.DataFrame(index=range(n))
        for f in self.spec.schema.context:
            name = f.name
            if isinstance(context, pd.DataFrame):
                cols = [name] if name in context.columns else []
                if isinstance(f, Vector) and not cols:
                    cols = vector_columns(f, list(context.columns), "context")
                if not cols:
                    raise ValueError(
                        f"the context DataFrame lacks the context column {name!r} of the "
                        "schema: add it (None / NaN cells are missing values), or pass a "
                        "mapping of the columns you know"
                    )
                for c in cols:
                    rows[c] = context[c].to_numpy()
            elif context is not None and name in context:
                value = context[name]
                # one vector for every pair: a column of n copies, not n scalars
                rows[name] = [value] * n if isinstance(f, Vector) else value
            else:
                rows[name] = None  # missing context: OOV / missing indicator
        return rows

    def encode_pairs(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context = None,
    ) -> Batch:
        """Model inputs for (user, item) pairs: the encoded "user.*", "item.*" and
        "context.*" tensors (B, ...) on the model's device, B = len(user_ids)."""
        s = self.spec.schema
        rows = self.context_rows(len(user_ids), context)
        rows[s.user] = list(user_ids)
        rows[s.item] = list(item_ids)
        return self.encode_rows(rows)

    def encode_rows(self, rows: pd.DataFrame) -> Batch:
        """Model inputs of interaction ``rows`` (label and weight dropped)."""
        batch = to_tensors(self.encoder.transform(rows), self.device)
        batch.pop("label", None)
        batch.pop("weight", None)
        return batch

    def pair_batches(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context,
        batch_size: int,
    ) -> Iterator[Batch]:
        """Encoded batches of at most ``batch_size`` (user, item) pairs, in order (one empty
        batch for no pairs); the ids are checked before any batch is made."""
        if len(user_ids) != len(item_ids):
            raise ValueError(
                f"user_ids and item_ids must pair up: got {len(user_ids)} and {len(item_ids)}"
            )
        if isinstance(context, pd.DataFrame) and len(context) != len(user_ids):
            raise ValueError(
                f"context has {len(context)} rows but there are {len(user_ids)} pairs: pass "
                "one context row per pair, or a mapping applied to every pair"
            )
        self.context_rows(0, context)  # unknown context keys fail before any work
        _warn_missing_ids(user_ids, "user_ids")
        _warn_missing_ids(item_ids, "item_ids")

        def batches() -> Iterator[Batch]:
            for start in range(0, max(len(user_ids), 1), batch_size):
                stop = start + batch_size
                ctx = context.iloc[start:stop] if isinstance(context, pd.DataFrame) else context
                yield self.encode_pairs(user_ids[start:stop], item_ids[start:stop], ctx)

        return batches()

    def known_pairs(
        self, user_ids: Sequence[Any] | pd.Series, item_ids: Sequence[Any] | pd.Series
    ) -> np.ndarray:
        """(n,) bool: both ids are in the model's vocabulary (not OOV: seen in training at
        least ``min_count`` times)."""
        users, items = self.encoder.users.id_encoder_, self.encoder.items.id_encoder_
        assert users is not None and items is not None
        return (users.transform(pd.Series(list(user_ids))) != 0) & (
            items.transform(pd.Series(list(item_ids))) != 0
        )

    # ------------------------------------------------------------------ raw outputs
    def outputs(self, batch: Batch, task: int = 0) -> Tensor:
        """(R, B, ...) raw outputs of task ``task``: R = M members, or M * S with MC dropout
        (one pass)."""
        mc = self.spec.mc_dropout
        if mc is not None:
            return self.spec.task_output(mc.sample_outputs(self.stack, batch), task)
        with torch.no_grad():
            return self.spec.task_output(self.stack.call("forward", batch), task)

    def head_moments(self, out: Tensor, task: int = 0) -> tuple[Tensor, Tensor | None]:
        """(R, B) means and (R, B) head stds (None without a noise head) of task ``task``'s
        raw (R, B, ...) outputs. Mixture heads report the std of each member's mixture (for
        "ddn" the clean-CTR mixture; the measurement noise of an observed CTR is not added)."""
        head = self.spec.tasks[task].head
        if head is None:
            return out, None
        if isinstance(head, GaussianHead):  # elementwise: every draw in one call
            return head.mean(out), head.aleatoric_std(out)
        if isinstance(head, BernoulliHead | PointHead):
            return head.mean(out), None
        means = torch.stack([head.mean(out[r]) for r in range(out.shape[0])])
        if isinstance(head, GaussianHead | MixtureDensityHead | DeepDensityHead):
            stds = [head.aleatoric_std(out[r]) for r in range(out.shape[0])]
            return means, torch.stack([s for s in stds if s is not None])
        return means, None

    def population_outputs(self, batch: Batch, task: int = 0) -> Tensor:
        """(M, K, B, ...) raw outputs of every row under each member's K population draws
        (``[uncertainty] cold_start = "population"``; known values are left as they are)."""
        picks = self.population_picks
        assert picks is not None
        pm = population_batch(batch, picks)
        with torch.no_grad():
            raw = self.stack.call("forward", pm, per_member=True)  # (M, K B, ...)
        raw = self.spec.task_output(raw, task)
        m, k = next(iter(picks.values())).shape
        return raw.reshape(m, k, -1, *raw.shape[2:])

    def member_outputs(
        self, batch: Batch, task: int = 0
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """(R, B) member / sample means, (R, B) head stds (None without a noise head) and
        (B,) population variance (None when no row has a population-drawn OOV value).

        With ``cold_start = "population"`` a row holding an OOV value gets, per member, the
        average of its K draws' means (and the root mean square of their head stds), and
        the population variance is the variance over the draws averaged over the members,
        so that adding it to the variance of the member means gives the variance over all
        M * K draws (law of total variance). Other rows cost one pass as usual.
        """
        means, stds = self.head_moments(self.outputs(batch, task), task)
        picks = self.population_picks
        if not picks:
            return means, stds, None
        rows = oov_rows(batch, picks)
        if not bool(rows.any()):
            return means, stds, None
        idx = torch.nonzero(rows).squeeze(1)
        k = next(iter(picks.values())).shape[1]
        step = max(1, POPULATION_ROWS // k)  # at most ~POPULATION_ROWS rows per pass
        parts_m, parts_s = [], []
        for start in range(0, idx.numel(), step):
            sel = idx[start : start + step]
            raw = self.population_outputs({key: v[sel] for key, v in batch.items()}, task)
            m, _, b = raw.shape[:3]
            pm, ps = self.head_moments(raw.reshape(m, k * b, *raw.shape[3:]), task)
            parts_m.append(pm.reshape(m, k, b))
            if ps is not None:
                parts_s.append(ps.reshape(m, k, b))
        d_means = torch.cat(parts_m, dim=2)
        d_stds = torch.cat(parts_s, dim=2) if parts_s else None
        member_mean = d_means.mean(dim=1)
        means = means.clone()
        means[:, rows] = member_mean
        population = torch.zeros(means.shape[1], dtype=means.dtype, device=means.device)
        within = (d_means.square().mean(dim=1) - member_mean.square()).clamp_min(0.0)
        population[rows] = within.mean(dim=0)
        if stds is not None and d_stds is not None:
            stds = stds.clone()
            stds[:, rows] = d_stds.square().mean(dim=1).sqrt()
        return means, stds, population

    # ------------------------------------------------------------------ predictions
    def prediction_of(
        self,
        member_means: Tensor,
        member_std: Tensor | None,
        population_var: Tensor | None = None,
        task: int = 0,
    ) -> Prediction:
        """Prediction from (R, n) member means and optional (R, n) head stds / (n,) population
        variance (law of total variance over R >= 2 draws; one draw keeps its head std)."""
        head = self.spec.tasks[task].head
        support = head.support if head is not None else None
        if member_means.shape[0] >= 2:
            return Prediction.from_members(
                member_means,
                member_std,
                method=self.spec.method,
                support=support,
                population_var=population_var,
            )
        std = member_std[0] if member_std is not None else None
        return Prediction(
            mean=member_means[0],
            std=std,
            aleatoric_std=std,
            epistemic_std=None,
            method=self.spec.method,
            support=support,
        )

    def batch_prediction(self, batch: Batch) -> Prediction:
        """Raw (pre-calibration) Prediction for an encoded batch (on the CPU)."""
        mean, std, population = self.member_outputs(batch)
        return self.prediction_of(
            mean.cpu(),
            None if std is None else std.cpu(),
            None if population is None else population.cpu(),
        )

    def prediction(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context = None,
        batch_size: int = 65536,
        covariates: Callable[[Batch], np.ndarray | None] | None = None,
        task: int = 0,
    ) -> tuple[Prediction, np.ndarray | None]:
        """Raw Prediction of (user, item) pairs (mean (n,)) for task ``task`` (0: the
        primary one) and, with ``covariates``, the (n, p) covariates it gives for the same
        encoded pairs (else None)."""
        means, stds, pops, covs = [], [], [], []
        for batch in self.pair_batches(user_ids, item_ids, context, batch_size):
            cov = covariates(batch) if covariates is not None else None
            if cov is not None:
                covs.append(cov)
            m, sd, pop = self.member_outputs(batch, task)
            means.append(m)
            pops.append(torch.zeros(m.shape[1], dtype=m.dtype) if pop is None else pop.cpu())
            if sd is not None:
                stds.append(sd)
        mean = torch.cat(means, dim=1).cpu()
        std = torch.cat(stds, dim=1).cpu() if stds else None
        population = torch.cat(pops) if self.population_picks else None
        cov = np.concatenate(covs) if covs else None
        return self.prediction_of(mean, std, population, task), cov

    def mixture(
        self,
        user_ids: Sequence[Any] | np.ndarray,
        item_ids: Sequence[Any] | np.ndarray,
        context: Context = None,
        impressions: Sequence[float] | np.ndarray | Tensor | None = None,
        batch_size: int = 65536,
    ) -> MixturePrediction:
        """The pooled CTR mixture of a "mdn" / "ddn" model (see ``Recommender.predict_mixture``)."""
        head = self.spec.head
        likelihood = self.spec.config.model.likelihood
        if not self.spec.mixture or head is None:
            raise ValueError(
                f"predict_mixture needs a mixture likelihood, but [model] likelihood = "
                f"{likelihood!r} for a {self.spec.task} model of type "
                f"{self.spec.config.model.type!r}; train with [model] type = 'dcn' and "
                "likelihood = 'mdn' or 'ddn' on a click / CTR label, or use predict()"
            )
        n = len(user_ids)
        encoded = self.pair_batches(user_ids, item_ids, context, batch_size)
        n_imp = None if impressions is None else _impressions(head, impressions, n, likelihood)
        parts: list[tuple[Tensor, Tensor, Tensor]] = []
        for batch in encoded:
            if self.population_picks:  # R = M * draws: known rows repeat each member
                raw = self.population_outputs(batch)
                raw = raw.reshape(raw.shape[0] * raw.shape[1], *raw.shape[2:])
            else:
                raw = self.outputs(batch)
            parts.append(head.mixture_components(raw.cpu()))  # type: ignore[attr-defined]
        w, mu, s = (torch.cat(p, dim=1) for p in zip(*parts, strict=True))
        pred = MixturePrediction.from_members(
            w,
            mu,
            s,
            method=f"{self.spec.method}, {likelihood}(components={w.shape[-1]})",
            support=head.support,
        )
        if n_imp is None:
            return pred
        assert isinstance(head, DeepDensityHead)
        # the DDN head's noise variance m (1 - m) / n at the pooled mixture mean m
        return replace(pred, measurement_std=head.noise_var(pred.weights, pred.means, n_imp).sqrt())

    # ------------------------------------------------------------------ catalogue scores
    def mean_scores(
        self,
        user_ids: Sequence[Any],
        items: Sequence[Any] | np.ndarray | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """(n_users, n_items) ensemble-mean scores, what lists are ranked by.

        For factorised models (no context) this is ONE matrix product of the members'
        concatenated factors, [u_1 .. u_M] . [v_1 .. v_M] / M = the mean location, mapped
        through the head (exact for linear heads; for clipped ratings and sigmoid CTRs the
        head of the mean location, which ranks like the mean of the heads up to members
        straddling a bound). Dropout is off: for a dot product of inverted-dropout vectors
        the mean over dropout masks is the dropout-free score, so MC dropout needs no
        sampling here. Other models average the members' outputs.
        """
        if not self.factorised:
            return self.member_scores(user_ids, items, context).mean(dim=0)
        u_mean = self.query_vectors(user_ids)
        v_cat = self.item_vectors_concat(items)
        with torch.no_grad():
            return mean_of_location(self.spec.head, u_mean @ v_cat.T)

    def query_vectors(self, user_ids: Sequence[Any]) -> Tensor:
        """(U, M d') the members' concatenated user factors over M, factorised models: their
        inner product with :meth:`item_vectors_concat` is the mean location of the members
        (what a top-k index over the items searches)."""
        with torch.no_grad():
            u = self.stack.call("user_factors", self.encode_users(user_ids))  # (M, U, d')
            return u.permute(1, 0, 2).reshape(u.shape[1], -1) / u.shape[0]

    def item_vectors_concat(self, items: Sequence[Any] | np.ndarray | None = None) -> Tensor:
        """(I, M d') the members' concatenated item factors of ``items`` (default: the
        catalogue), factorised models."""
        with torch.no_grad():
            v = self.stack.call("item_factors", self.encode_items(items))  # (M, I, d')
            return v.permute(1, 0, 2).reshape(v.shape[1], -1)

    def member_scores(
        self,
        user_ids: Sequence[Any],
        items: Sequence[Any] | np.ndarray | None = None,
        context: Mapping[str, Any] | None = None,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """(M, n_users, n_items) per-member predicted means (ratings, CTRs or scores).

        ``items`` defaults to the catalogue; ``params`` to the trained weights (the fitting
        code passes the weights being trained). Users / items unknown at fit time use the
        OOV row plus their features.
        """
        ub = self.encode_users(user_ids)
        ib = self.encode_items(items)
        n_u = len(user_ids)
        n_i = len(next(iter(ib.values())))
        head = self.spec.head
        with torch.no_grad():
            if self.factorised:
                u = self.stack.call("user_factors", ub, params=params)  # (M, U, d')
                v = self.stack.call("item_factors", ib, params=params)  # (M, I, d')
                return mean_of_location(head, torch.einsum("mud,mid->mui", u, v))
            ctx: Batch = {}
            if self.spec.schema.context:
                raw = self.encoder.context.transform(self.context_rows(1, context))
                ctx = to_tensors({f"context.{k}": v for k, v in raw.items()}, self.device)
            chunk = max(1, PAIRS_PER_PASS // max(n_i, 1))
            parts = []
            for start in range(0, n_u, chunk):
                c = min(chunk, n_u - start)
                pair: Batch = {
                    k: v[start : start + c].repeat_interleave(n_i, dim=0) for k, v in ub.items()
                }
                pair.update({k: v.repeat((c,) + (1,) * (v.ndim - 1)) for k, v in ib.items()})
                pair.update({k: v.expand(c * n_i, *v.shape[1:]) for k, v in ctx.items()})
                out = self.spec.task_output(self.stack.call("forward", pair, params=params))
                means = out if head is None else torch.stack([head.mean(o) for o in out])
                parts.append(means.reshape(-1, c, n_i))
            return torch.cat(parts, dim=1)

    def pair_member_scores(
        self,
        user_ids: Sequence[Any],
        item_ids: Sequence[Any] | np.ndarray,
        context: Mapping[str, Any] | None = None,
    ) -> Tensor:
        """(M, n) per-member scores of n (user, item) pairs, as :meth:`member_scores` gives
        them, without scoring the rest of the catalogue.

        Factorised models gather each pair's member factors (n dot products per member);
        other models score the pairs' users against the pairs' distinct items.
        """
        # missing ids (None / NaN) are a key of their own: the encoder sends them to OOV
        u_pos, u_keys = pd.factorize(pd.Series(list(user_ids), dtype=object), use_na_sentinel=False)
        i_pos, i_keys = pd.factorize(pd.Series(list(item_ids), dtype=object), use_na_sentinel=False)
        if self.factorised:
            with torch.no_grad():
                u = self.stack.call("user_factors", self.encode_users(list(u_keys)))
                v = self.stack.call("item_factors", self.encode_items(list(i_keys)))
                loc = (u[:, torch.as_tensor(u_pos)] * v[:, torch.as_tensor(i_pos)]).sum(-1)
                return mean_of_location(self.spec.head, loc)
        scores = self.member_scores(list(u_keys), list(i_keys), context)  # (M, U', I')
        return scores[:, torch.as_tensor(u_pos), torch.as_tensor(i_pos)]

    def masked_score_chunks(
        self, users: list[Any], seen: sp.csr_matrix | None = None
    ) -> Iterator[tuple[int, list[Any], Tensor]]:
        """(start, users, (U_c, I) ensemble-mean catalogue scores on the CPU with ``seen``
        items at -inf; default: the catalogue's seen matrix) for chunks of ``users``."""
        chunk = max(1, min(1024, PAIRS_PER_PASS * 4 // max(self.catalogue.n_items, 1)))
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            yield (
                start,
                part,
                masked(self.mean_scores(part).cpu(), self.catalogue.seen_rows(part, seen)),
            )

    def n_beaten(
        self,
        user_keys: np.ndarray,
        item_rows: np.ndarray,
        params: dict[str, Tensor] | None = None,
        per_member: bool = False,
    ) -> Tensor:
        """For each (user, catalogue row) pair, how many catalogue items score strictly
        higher: (M, n) per member, or (1, n) for the members' mean score. A pair is a top-k
        hit of the factorized top-k accuracy (TensorFlow Recommenders' rule) when this is < k.
        """
        codes, uniq = pd.factorize(user_keys)
        items = torch.as_tensor(item_rows.astype(np.int64))
        codes_t = torch.as_tensor(codes)
        out: Tensor | None = None
        chunk = max(1, PAIRS_PER_PASS * 4 // max(self.catalogue.n_items, 1))
        for start in range(0, len(uniq), chunk):
            part = list(uniq[start : start + chunk])
            scores = self.member_scores(part, params=params)  # (M, U, I)
            if not per_member:
                scores = scores.mean(dim=0, keepdim=True)
            sel = torch.nonzero((codes_t >= start) & (codes_t < start + len(part))).flatten()
            if out is None:
                out = torch.zeros(scores.shape[0], len(items), dtype=torch.long)
            # the pairs' score rows in slices of about PAIRS_PER_PASS cells: a user's many
            # test pairs do not multiply the memory
            step = max(1, PAIRS_PER_PASS // max(self.catalogue.n_items, 1))
            for lo in range(0, sel.numel(), step):
                rows = sel[lo : lo + step]
                pair_scores = scores[:, codes_t[rows] - start]  # (M, n_rows, I)
                pos = pair_scores[:, torch.arange(rows.numel()), items[rows]]
                out[:, rows] = (pair_scores > pos.unsqueeze(-1)).sum(-1).cpu()
        assert out is not None
        return out

    def item_vectors(self) -> np.ndarray | None:
        """(n_items, d) catalogue item embeddings (members averaged) if the model has them."""
        if not hasattr(self.stack.model, "item_embedding"):
            return None
        with torch.no_grad():
            v = self.stack.call("item_embedding", self.encode_items()).mean(dim=0)
        return v.cpu().numpy()


def _impressions(
    head: Head, impressions: Sequence[float] | np.ndarray | Tensor, n: int, likelihood: str
) -> Tensor:
    """(n,) impression counts checked for a "ddn" head."""
    if not isinstance(head, DeepDensityHead):
        raise ValueError(
            f"impressions apply to [model] likelihood = 'ddn' (measurement noise of an "
            f"observed CTR), not to {likelihood!r}; pass impressions=None"
        )
    n_imp = torch.as_tensor(np.asarray(impressions, dtype=np.float32))
    if n_imp.shape != (n,):
        raise ValueError(
            f"impressions must have shape ({n},), one count per pair, got {tuple(n_imp.shape)}"
        )
    if n and not bool((n_imp >= 1).all()):
        raise ValueError(
            "impressions must be counts >= 1 (the CTR is measured over n impressions), "
            f"got a minimum of {float(n_imp.min())}"
        )
    return n_imp
