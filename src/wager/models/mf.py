"""Feature-aware factorisation model (a factorisation machine restricted to user x item).

logit(u, i, c) = b0 + bias_user(u) + bias_item(i) + bias_context(c) + <e_user(u), e_item(i)>

where e_user(u) is the sum of the embeddings of the user's id and of every user feature
(categorical, multi-valued, text, numeric), likewise for items; context features contribute
biases (e.g. a position bias). Because cold-start users/items have the OOV id row, their
vector comes from their features (plus the shared OOV row), never a KeyError.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wager.models.fields import Field, FieldEmbedding
from wager.models.heads import BernoulliHead


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

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """Scalar weighted BCE of the batch's "label" (weights default to batch["weight"])."""
        if weights is None:
            weights = batch.get("weight")
        return self.head.loss(self(batch), batch["label"], weights)
