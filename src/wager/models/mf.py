"""Matrix-factorisation models over any user/item features.

:class:`FeatureFactorization` is a feature-aware factorisation model (a factorisation machine
restricted to user x item) with a Bernoulli head:

logit(u, i, c) = b0 + bias_user(u) + bias_item(i) + bias_context(c) + <e_user(u), e_item(i)>

where e_user(u) is the sum of the embeddings of the user's id and of every user feature
(categorical, multi-valued, text, numeric), likewise for items; context features contribute
biases (e.g. a position bias). Because cold-start users/items have the OOV id row, their
vector comes from their features (plus the shared OOV row), never a KeyError.

:class:`BiasedMF` is biased matrix factorisation (Koren's SVD, as in Surprise) with side
features and a choice of head (point, Gaussian, Bernoulli) for explicit ratings.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wager.models.fields import Field, FieldEmbedding
from wager.models.heads import BernoulliHead, Head, PointHead
from wager.models.losses import weighted_mean
from wager.models.towers import check_rate


class FeatureFactorization(nn.Module):
    """User x item factorisation over any features, with a Bernoulli head.

    Args:
        user_fields: encoded user fields (keys "user.*").
        item_fields: encoded item fields (keys "item.*").
        context_fields: encoded context fields (keys "context.*"); biases only.
        dim: embedding dimension.
        init_std: std of the embedding initialisation.

    Example:
        >>> m = FeatureFactorization([Field("user.user_id", "index", 3)],
        ...                          [Field("item.item_id", "index", 4)], [], dim=2)
        >>> m({"user.user_id": torch.tensor([1]), "item.item_id": torch.tensor([2])}).shape
        torch.Size([1])
    """

    def __init__(
        self,
        user_fields: list[Field],
        item_fields: list[Field],
        context_fields: list[Field],
        dim: int = 16,
        init_std: float = 0.05,
    ) -> None:
        super().__init__()
        self.user = FieldEmbedding(user_fields, dim, init_std)
        self.item = FieldEmbedding(item_fields, dim, init_std)
        self.context = FieldEmbedding(context_fields, 0) if context_fields else None
        self.global_bias = nn.Parameter(torch.zeros(()))
        self.head = BernoulliHead()

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) logits."""
        u, bu = self.user(batch)
        v, bv = self.item(batch)
        logit = self.global_bias + bu + bv
        if u is not None and v is not None:
            logit = logit + (u * v).sum(-1)
        if self.context is not None:
            logit = logit + self.context(batch)[1]
        return logit

    def user_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim + 2) user side of the factorised logit: [e_user, b0 + b_user, 1].

        <user_factors(u), item_factors(i)> equals forward(u, i) when the model has no
        context fields (context biases are not separable), so a (users x items) score matrix
        is one matrix product.
        """
        u, bu = self.user(batch)
        assert u is not None
        one = torch.ones_like(bu)
        return torch.cat([u, (self.global_bias + bu).unsqueeze(-1), one.unsqueeze(-1)], -1)

    def item_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim + 2) item side of the factorised logit: [e_item, 1, b_item]."""
        v, bv = self.item(batch)
        assert v is not None
        return torch.cat([v, torch.ones_like(bv).unsqueeze(-1), bv.unsqueeze(-1)], -1)

    def item_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim) item vectors (for similarity and diversity)."""
        v, _ = self.item(batch)
        assert v is not None
        return v

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """Scalar weighted BCE of the batch's "label" (weights default to batch["weight"])."""
        if weights is None:
            weights = batch.get("weight")
        return self.head.loss(self(batch), batch["label"], weights)


class BiasedMF(nn.Module):
    """Biased matrix factorisation with side features (SVD with side features).

    prediction(u, i) = mu + b_u + b_i + <p_u, q_i>, where p_u / b_u are the sums of the
    embeddings / scalar biases of ALL the user's fields (id and features), likewise q_i /
    b_i for the item, and mu is a learned global offset initialised to ``global_mean``.

    With a two-output head (:class:`~wager.models.heads.GaussianHead`) the second output is
    a learned raw scale s0 + s_u + s_i (per-field scalar biases of the user's and the item's
    fields, zero-initialised), so the aleatoric std varies by user and by item.

    Batch keys read: ``"user.<field>"`` and ``"item.<field>"`` (B, ...); ``"label"`` (B,)
    and optional ``"weight"`` (B,) in :meth:`loss`.

    Args:
        user_fields: encoded user fields (keys "user.*").
        item_fields: encoded item fields (keys "item.*").
        dim: latent dimension.
        init_std: std of the latent-vector initialisation.
        head: output head with ``out_dim`` 1 (:class:`PointHead`, :class:`BernoulliHead`)
            or 2 (:class:`GaussianHead`).
        reg: L2 weight of the per-example regulariser of the factors (see :meth:`loss`).
        bias_reg: L2 weight of the per-example regulariser of the biases; None = ``reg``.
        global_mean: initial value of mu; pass the training mean of the labels.
        dropout: dropout rate on p_u and q_i.

    Example:
        >>> m = BiasedMF([Field("user.user_id", "index", 3)], [Field("item.item_id", "index", 4)],
        ...              dim=2, global_mean=3.5)
        >>> m({"user.user_id": torch.tensor([1]), "item.item_id": torch.tensor([0])}).shape
        torch.Size([1])
    """

    def __init__(
        self,
        user_fields: list[Field],
        item_fields: list[Field],
        dim: int = 32,
        init_std: float = 0.05,
        head: Head = PointHead(),
        reg: float = 0.0,
        bias_reg: float | None = None,
        global_mean: float = 0.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg!r}")
        if bias_reg is not None and not bias_reg >= 0:
            raise ValueError(f"bias_reg must be >= 0 or None, got {bias_reg!r}")
        check_rate("dropout", dropout)
        if head.out_dim not in (1, 2):
            raise ValueError(
                f"BiasedMF supports heads with out_dim 1 (PointHead, BernoulliHead) or 2 "
                f"(GaussianHead), got {head!r} with out_dim {head.out_dim}"
            )
        if not user_fields or not item_fields:
            raise ValueError("BiasedMF needs at least one user field and one item field")
        self.head = head
        self.reg = float(reg)
        self.bias_reg = float(reg if bias_reg is None else bias_reg)
        self.user = FieldEmbedding(user_fields, dim, init_std)
        self.item = FieldEmbedding(item_fields, dim, init_std)
        self.global_mean = nn.Parameter(torch.tensor(float(global_mean)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.user_scale: FieldEmbedding | None = None
        self.item_scale: FieldEmbedding | None = None
        if head.out_dim == 2:
            self.user_scale = FieldEmbedding(user_fields, 0)
            self.item_scale = FieldEmbedding(item_fields, 0)
            self.scale_bias = nn.Parameter(torch.zeros(()))

    def _side(
        self, tables: list[FieldEmbedding], batch: dict[str, Tensor]
    ) -> list[tuple[Tensor | None, Tensor]]:
        """Each table's (vectors, biases) for the batch. At inference with an ensemble
        (parameters vmapped over members) each distinct user (item) row is looked up once
        per member and gathered back: recommend() scores k items per user, so k rows of a
        user cost one lookup. Training and single models look up every row."""
        fields = tables[0].fields
        key = batch[fields[0].key]
        is_batched = torch._C._functorch.is_batchedtensor
        # pays when the lookups run once per ensemble member (vmapped, batched parameters);
        # per-member inputs (vmapped batches) have no fixed set of distinct rows
        weight = next(iter(tables[0].parameters()))
        if self.training or is_batched(key) or not is_batched(weight) or len(key) < 2:
            return [t(batch) for t in tables]
        n = len(batch[fields[0].key])
        rows = torch.cat([batch[f.key].reshape(n, -1).to(torch.float64) for f in fields], dim=1)
        uniq, inv = torch.unique(rows, dim=0, return_inverse=True)
        if uniq.shape[0] * 2 > n:  # mostly distinct rows: gathering would not pay
            return [t(batch) for t in tables]
        first = torch.zeros(uniq.shape[0], dtype=torch.int64, device=inv.device)
        first.scatter_(0, inv, torch.arange(n, device=inv.device))
        sub = {f.key: batch[f.key][first] for f in fields}
        out = []
        for t in tables:
            v, b = t(sub)
            out.append((None if v is None else v[..., inv, :], b[..., inv]))
        return out

    def _parts(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        (p, bu), *_ = self._side([self.user], batch)
        (q, bi), *_ = self._side([self.item], batch)
        assert p is not None and q is not None
        return p, q, bu, bi

    def _output(
        self,
        batch: dict[str, Tensor],
        p: Tensor,
        q: Tensor,
        bu: Tensor,
        bi: Tensor,
        samples: int = 1,
    ) -> Tensor:
        """Outputs from the looked-up parts; with ``samples`` > 1 the rows are repeated
        draw-major (rows s * B .. (s + 1) * B - 1 are draw s), each draw with its own
        dropout masks.

        Dropout enters only the dot product: with independent inverted-dropout masks on p
        and q (rate r) the term is sum_d m_d p_d q_d / (1 - r)^2, where m_d = m_p,d m_q,d
        is Bernoulli((1 - r)^2). For ``samples`` > 1 that one mask on p * q is drawn
        directly (the same distribution per row, half the random numbers: MC dropout's
        cost is its random masks); one-draw forward passes (training) keep the two masks.
        """

        def rep(t: Tensor) -> Tensor:
            return t if samples == 1 else t.repeat(samples, *([1] * (t.ndim - 1)))

        rate = self.dropout.p if isinstance(self.dropout, nn.Dropout) else 0.0
        if samples > 1 and self.training and rate > 0:
            keep = (1.0 - rate) ** 2
            dot = nn.functional.dropout(rep(p * q), p=1.0 - keep, training=True).sum(-1)
        else:
            dot = (self.dropout(rep(p)) * self.dropout(rep(q))).sum(-1)
        mean = self.global_mean + rep(bu) + rep(bi) + dot
        if self.user_scale is None or self.item_scale is None:
            return mean
        (_, su), *_ = self._side([self.user_scale], batch)
        (_, si), *_ = self._side([self.item_scale], batch)
        raw = self.scale_bias + su + si
        return torch.stack([mean, rep(raw)], dim=-1)

    def user_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim + 2) user side of the mean: [p_u, mu + b_u, 1].

        <user_factors(u), item_factors(i)> equals the predicted mean's location (before the
        head's clipping) with dropout off, so a (users x items) matrix is one matrix product.
        """
        p, bu = self.user(batch)
        assert p is not None
        one = torch.ones_like(bu)
        return torch.cat([p, (self.global_mean + bu).unsqueeze(-1), one.unsqueeze(-1)], -1)

    def item_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim + 2) item side of the mean: [q_i, 1, b_i]."""
        q, bi = self.item(batch)
        assert q is not None
        return torch.cat([q, torch.ones_like(bi).unsqueeze(-1), bi.unsqueeze(-1)], -1)

    def user_scale_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, 2) user side of a Gaussian head's raw scale: [s0 + s_u, 1].

        <user_scale_factors(u), item_scale_factors(i)> equals the raw scale output s0 + s_u
        + s_i, so serving scores a user's candidates with one product per output
        (:mod:`wager.recommender.fastpath`). ValueError without a two-output head."""
        if self.user_scale is None:
            raise ValueError(
                "user_scale_factors: this BiasedMF has no scale output (head out_dim 1)"
            )
        _, su = self.user_scale(batch)
        return torch.stack([self.scale_bias + su, torch.ones_like(su)], -1)

    def item_scale_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, 2) item side of the raw scale: [1, s_i] (see :meth:`user_scale_factors`)."""
        if self.item_scale is None:
            raise ValueError(
                "item_scale_factors: this BiasedMF has no scale output (head out_dim 1)"
            )
        _, si = self.item_scale(batch)
        return torch.stack([torch.ones_like(si), si], -1)

    def item_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim) item vectors q_i (for similarity and diversity)."""
        q, _ = self.item(batch)
        assert q is not None
        return q

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) predictions (head out_dim 1) or (B, 2) (mean, raw scale) for a Gaussian head."""
        return self._output(batch, *self._parts(batch))

    def forward_samples(self, batch: dict[str, Tensor], samples: int) -> Tensor:
        """Outputs under ``samples`` dropout draws, the embeddings looked up once per row.

        Equals :meth:`forward` on the batch tiled ``samples`` times (rows s * B .. (s + 1)
        * B - 1 are draw s) in distribution, for a fraction of the cost: only the dropout
        masks and the dot products are per draw (MC dropout at inference).

        Args:
            batch: encoded inputs with leading dimension B.
            samples: S >= 1 draws.

        Returns:
            (S * B,) or (S * B, 2) outputs, draw-major.
        """
        return self._output(batch, *self._parts(batch), samples=samples)

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """Head loss of batch["label"] plus the per-example L2 regulariser.

        loss = head.loss(outputs, label, w)
               + weighted_mean(reg * sum_f ||v_f||^2 + bias_reg * sum_f b_f^2, w)

        where f runs over the fields of the user and of the item (ids and features) and
        v_f / b_f are that field's own vector and bias for the row. As in Surprise's SVD
        (whose SGD step shrinks the factors and biases of each rating it visits), the
        penalty is paid per example, so frequent users, items and feature values are
        regularised in proportion to their number of ratings; penalising each field rather
        than the summed p_u keeps features from cancelling ids. Vectors are taken before
        dropout; the global offset and scale terms are not penalised.

        Args:
            batch: encoded inputs plus "label" (B,) float32.
            weights: (B,) non-negative row weights; None uses batch["weight"] when present.

        Returns:
            scalar loss.
        """
        if weights is None:
            weights = batch.get("weight")
        p, bu, sq_p, sq_bu = self.user.forward_with_norms(batch)
        q, bi, sq_q, sq_bi = self.item.forward_with_norms(batch)
        assert p is not None and q is not None
        loss = self.head.loss(self._output(batch, p, q, bu, bi), batch["label"], weights)
        if self.reg > 0 or self.bias_reg > 0:
            penalty = self.reg * (sq_p + sq_q) + self.bias_reg * (sq_bu + sq_bi)
            loss = loss + weighted_mean(penalty, weights)
        return loss
