"""Implicit-feedback matrix factorisation fitted by alternating least squares (ALS).

score(u, i) = <x_u, y_i>: one factor table per side, over the id fields only (row 0 is the
out-of-vocabulary id, as the encoder gives it). The model holds the factors and scores
pairs; it has no gradient loss: :mod:`wager.training.als` fits the tables in closed form
(Hu, Koren & Volinsky 2008, with the conjugate-gradient solver of Takacs et al. 2011, as
the ``implicit`` library's ``AlternatingLeastSquares(use_cg=True)``).

The table parameters are named ``vectors.user__<id>.weight`` / ``vectors.item__<id>.weight``
as :class:`~wager.models.fields.FieldEmbedding`'s, so the cold-start machinery
(:mod:`wager.uncertainty.cold_start`) finds their OOV rows.

Scores rank items for a user (about 1 for a liked item, 0 for the rest); they are not
probabilities.
"""

from __future__ import annotations

from torch import Tensor, nn

from wager.models.fields import Field


class ImplicitALS(nn.Module):
    """User and item factor tables whose dot product scores (user, item) pairs.

    Batch keys read: ``"user.<id>"`` (B,) int64 and ``"item.<id>"`` (B,) int64 (or under
    another prefix for :meth:`item_embedding`), index 0 = unknown id.

    Args:
        user_fields: the user fields: exactly one, the user id (kind "index").
        item_fields: the item fields: exactly one, the item id (kind "index").
        dim: factors per side (>= 1).
        init_std: width of the uniform U(0, init_std) start of every factor, as implicit's
            ``AlternatingLeastSquares`` starts (its width is 0.01). ALS is not convex: the
            start matters, and a small positive one, with 15 or so iterations, ranks better
            on MovieLens than a zero-mean normal start, which reaches a lower objective
            (over-fitting). Ensemble members differ by it.

    Raises:
        ValueError: a side has feature fields besides its id, or the id is not an index.

    Example:
        >>> import torch
        >>> m = ImplicitALS([Field("user.u", "index", 3)], [Field("item.i", "index", 4)], dim=2)
        >>> batch = {"user.u": torch.tensor([1, 2]), "item.i": torch.tensor([3, 0])}
        >>> m(batch).shape, m.user_factors(batch).shape
        (torch.Size([2]), torch.Size([2, 2]))
    """

    def __init__(
        self, user_fields: list[Field], item_fields: list[Field], dim: int, init_std: float = 0.05
    ) -> None:
        super().__init__()
        for side, fields in (("user", user_fields), ("item", item_fields)):
            if len(fields) != 1 or fields[0].kind != "index":
                raise ValueError(
                    f"ImplicitALS factorises the {side} id alone, got the {side} fields "
                    f"{[f.key for f in fields]}: drop the {side} features (ALS uses ids only)"
                )
        if dim < 1:
            raise ValueError(f"ImplicitALS needs dim >= 1, got {dim}")
        self.user_key = user_fields[0].key
        self.item_key = item_fields[0].key
        self.user_name = self.user_key.replace(".", "__")
        self.item_name = self.item_key.replace(".", "__")
        self.dim = dim
        users, items = (
            nn.Embedding(user_fields[0].size, dim),
            nn.Embedding(item_fields[0].size, dim),
        )
        for table in (users, items):
            nn.init.uniform_(table.weight, 0.0, init_std)
        self.vectors = nn.ModuleDict({self.user_name: users, self.item_name: items})

    @property
    def table_names(self) -> tuple[str, str]:
        """Parameter names of the (user, item) tables, e.g. "vectors.user__u.weight"."""
        return f"vectors.{self.user_name}.weight", f"vectors.{self.item_name}.weight"

    def user_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim) user factors of the batch's user ids."""
        return self.vectors[self.user_name](batch[self.user_key])

    def item_embedding(self, batch: dict[str, Tensor], prefix: str = "item.") -> Tensor:
        """(..., dim) item factors of the item ids under ``prefix`` (leading shape kept)."""
        key = prefix + self.item_key.removeprefix("item.")
        return self.vectors[self.item_name](batch[key])

    def user_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim) user side of the score: <user_factors(u), item_factors(i)> = forward."""
        return self.user_embedding(batch)

    def item_factors(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, dim) item side of the score."""
        return self.item_embedding(batch)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) scores <x_u, y_i> of the batch's (user, item) pairs."""
        return (self.user_embedding(batch) * self.item_embedding(batch)).sum(-1)

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """ALS has no minibatch loss: its tables are fitted by :mod:`wager.training.als`.

        Raises:
            TypeError: always (the gradient trainer cannot train this model).
        """
        raise TypeError(
            "ImplicitALS is fitted by alternating least squares (wager.training.als.fit_als), "
            "not by the gradient trainer: train it through Recommender.fit"
        )
