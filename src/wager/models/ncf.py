"""Neural matrix factorisation (NeuMF, He et al. 2017) over any user/item features.

logit(u, i) = w^T [gmf_u * gmf_i ; MLP([mlp_u ; mlp_i])] + b

where gmf_* and mlp_* are separate embeddings (each the sum of the side's field embeddings)
and the MLP has a ReLU after every layer. Implicit feedback: the caller supplies K sampled
negatives per positive under ``"neg.item.<field>"``; the model never samples by itself.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wager.models.fields import Field
from wager.models.heads import BernoulliHead
from wager.models.losses import bce_with_negatives, weighted_mean
from wager.models.towers import Tower, check_rate, check_widths, mlp

NEG_ITEM_PREFIX = "neg.item."


class NeuMF(nn.Module):
    """GMF and MLP branches fused by a linear layer into one click logit.

    Batch keys read: ``"user.<field>"`` (B, ...), ``"item.<field>"`` (B, ...); in
    :meth:`loss` either ``"neg.item.<field>"`` (B, K, ...) (K negatives per row) or else
    ``"label"`` (B,), and optional ``"weight"`` (B,).

    Args:
        user_fields: encoded user fields (keys "user.*").
        item_fields: encoded item fields (keys "item.*").
        gmf_dim: embedding dimension of the GMF branch.
        mlp_dim: embedding dimension of the MLP branch (its input is 2 * mlp_dim wide).
        hidden: MLP layer widths, each followed by ReLU (and dropout).
        dropout: dropout rate after every MLP layer.
        init_std: std of the embedding initialisation.

    Attributes:
        head: :class:`~wager.models.heads.BernoulliHead` (outputs are logits).

    Example:
        >>> import torch
        >>> m = NeuMF([Field("user.user_id", "index", 3)], [Field("item.item_id", "index", 4)])
        >>> batch = {"user.user_id": torch.tensor([1, 2]), "item.item_id": torch.tensor([3, 1]),
        ...          "neg.item.item_id": torch.tensor([[2, 0, 1], [3, 2, 0]])}
        >>> m(batch).shape, m(batch, prefix="neg.item.").shape, m.loss(batch).shape
        (torch.Size([2]), torch.Size([2, 3]), torch.Size([]))
    """

    def __init__(
        self,
        user_fields: list[Field],
        item_fields: list[Field],
        gmf_dim: int = 16,
        mlp_dim: int = 32,
        hidden: tuple[int, ...] = (64, 32, 16),
        dropout: float = 0.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        check_widths("hidden", hidden)
        check_rate("dropout", dropout)
        self.gmf_user = Tower(user_fields, gmf_dim, init_std=init_std)
        self.gmf_item = Tower(item_fields, gmf_dim, init_std=init_std)
        self.mlp_user = Tower(user_fields, mlp_dim, init_std=init_std)
        self.mlp_item = Tower(item_fields, mlp_dim, init_std=init_std)
        self.mlp = mlp(2 * mlp_dim, hidden, dropout, final_activation=True)
        self.predict = nn.Linear(gmf_dim + (hidden[-1] if hidden else 2 * mlp_dim), 1)
        self.head = BernoulliHead()

    def forward(self, batch: dict[str, Tensor], prefix: str | None = None) -> Tensor:
        """Logits of (user, item) pairs.

        Args:
            batch: encoded inputs.
            prefix: read the item fields under this prefix instead of "item.", e.g.
                ``"neg.item."`` for negatives shaped (B, K, ...); users are broadcast.

        Returns:
            (B,) logits, or (B, K) for items shaped (B, K, ...).
        """
        gi = self.gmf_item(batch, prefix)
        mi = self.mlp_item(batch, prefix)
        gu = self.gmf_user(batch)
        mu = self.mlp_user(batch)
        extra = gi.ndim - gu.ndim
        if extra:
            # (B, d) users against (B, K, d) items: (B, 1, d) broadcast to (B, K, d)
            gu = gu.reshape(gu.shape[:1] + (1,) * extra + gu.shape[1:])
            mu = mu.reshape(mu.shape[:1] + (1,) * extra + mu.shape[1:]).expand(
                *mi.shape[:-1], mu.shape[-1]
            )
        h = self.mlp(torch.cat([mu, mi], dim=-1))
        return self.predict(torch.cat([gu * gi, h], dim=-1)).squeeze(-1)

    def item_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, gmf_dim + mlp_dim) item vectors: the GMF and MLP item embeddings side by side
        (for similarity and diversity; NeuMF scores are not a dot product of these)."""
        return torch.cat([self.gmf_item(batch), self.mlp_item(batch)], dim=-1)

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """Weighted mean binary cross-entropy.

        With ``"neg.item.*"`` keys (B, K, ...): each row's positive (label 1) and its K
        negatives (label 0), averaged per row (:func:`~wager.models.losses.bce_with_negatives`),
        then weighted over rows. Otherwise: BCE of the logits against ``batch["label"]``.

        Args:
            batch: see the class docstring.
            weights: (B,) non-negative row weights; None uses batch["weight"] when present.

        Returns:
            scalar loss in nats.
        """
        if weights is None:
            weights = batch.get("weight")
        if self.gmf_item.has_inputs(batch, NEG_ITEM_PREFIX):
            per_row = bce_with_negatives(self(batch), self(batch, NEG_ITEM_PREFIX))
            return weighted_mean(per_row, weights)
        return self.head.loss(self(batch), batch["label"], weights)
