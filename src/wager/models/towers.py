"""Towers: the embedding of one side (user, item or context) from any mix of features.

A tower sums the embeddings of its fields (ids, categoricals, bags, projected numerics and
precomputed vectors; see :class:`~wager.models.fields.FieldEmbedding`) and optionally passes
the sum through an MLP. The same tower embeds other keys holding the same fields, e.g.
sampled negatives under ``"neg.item.<field>"``, with any leading shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from wager.models.fields import Field, FieldEmbedding


def check_rate(name: str, value: float) -> None:
    """Raise a ValueError naming ``name`` unless ``0 <= value < 1`` (a dropout rate)."""
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def check_widths(name: str, widths: Sequence[int]) -> None:
    """Raise a ValueError naming ``name`` unless every layer width is a positive int."""
    if any(int(w) != w or w < 1 for w in widths):
        raise ValueError(f"{name} must hold positive layer widths, got {tuple(widths)!r}")


def mlp(
    in_dim: int, hidden: Sequence[int], dropout: float, *, final_activation: bool
) -> nn.Sequential:
    """Linear layers of widths ``hidden`` with ReLU and dropout between them.

    Args:
        in_dim: input width.
        hidden: output width of each layer (empty: the identity).
        dropout: dropout rate after every ReLU.
        final_activation: whether the last layer has ReLU (+ dropout) too; False leaves it
            linear (an output projection).

    Returns:
        A module mapping (..., in_dim) to (..., hidden[-1]) (or (..., in_dim) when empty).
    """
    layers: list[nn.Module] = []
    widths = [in_dim, *hidden]
    for i in range(len(hidden)):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if i < len(hidden) - 1 or final_activation:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def _rename(key: str, prefix: str) -> str:
    # "item.genre" read under prefix "neg.item." -> "neg.item.genre"
    return prefix + key.partition(".")[2] if "." in key else prefix + key


class Tower(nn.Module):
    """Sum of field embeddings followed by an optional MLP.

    ``forward`` = MLP(dropout(sum over fields of the field's embedding)); the MLP has a Linear +
    ReLU (+ Dropout) per hidden width except the last, which is linear. Without hidden
    layers the output is the (dropped-out) embedding sum.

    Args:
        fields: the side's encoded fields (keys such as "item.item_id", "item.genre").
        dim: embedding dimension of every field.
        hidden: MLP layer widths; the output width is ``hidden[-1]`` (``dim`` when empty).
        dropout: dropout rate on the embedding sum and after every hidden ReLU.
        init_std: std of the normal initialisation of the embeddings.
        normalize: L2-normalise the output (cosine-similarity retrieval).

    Attributes:
        out_dim: width of the output.

    Example:
        >>> import torch
        >>> tower = Tower([Field("item.item_id", "index", 5), Field("item.tags", "bag", 4)],
        ...               dim=8, hidden=(16, 4))
        >>> batch = {"neg.item.item_id": torch.tensor([[1, 2, 3]]),
        ...          "neg.item.tags": torch.tensor([[[1, 0], [2, 3], [0, 0]]])}
        >>> tower(batch, prefix="neg.item.").shape
        torch.Size([1, 3, 4])
    """

    def __init__(
        self,
        fields: list[Field],
        dim: int,
        hidden: tuple[int, ...] = (),
        dropout: float = 0.0,
        init_std: float = 0.05,
        normalize: bool = False,
    ) -> None:
        super().__init__()
        if not fields:
            raise ValueError("Tower needs at least one field (e.g. the id field)")
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        check_widths("hidden", hidden)
        check_rate("dropout", dropout)
        self.fields = list(fields)
        self.embedding = FieldEmbedding(self.fields, dim, init_std, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.mlp = mlp(dim, hidden, dropout, final_activation=False)
        self.normalize = normalize
        self.out_dim = int(hidden[-1]) if hidden else dim

    def input_keys(self, prefix: str | None = None) -> list[str]:
        """Batch keys this tower reads: the fields' keys, or with their side replaced by
        ``prefix`` (``"item.genre"`` under ``prefix="neg.item."`` is ``"neg.item.genre"``)."""
        if prefix is None:
            return [f.key for f in self.fields]
        return [_rename(f.key, prefix) for f in self.fields]

    def has_inputs(self, batch: dict[str, Tensor], prefix: str | None = None) -> bool:
        """Whether ``batch`` holds this tower's inputs under ``prefix``.

        Returns:
            True when every key is present, False when none is.

        Raises:
            ValueError: when only some are present (naming the missing keys).
        """
        keys = self.input_keys(prefix)
        present = [k in batch for k in keys]
        if all(present):
            return True
        if not any(present):
            return False
        missing = [k for k, p in zip(keys, present, strict=True) if not p]
        raise ValueError(
            f"batch has some but not all of the keys {keys}: missing {missing}; supply every "
            "field of the tower under this prefix, or none of them"
        )

    def forward(self, batch: dict[str, Tensor], prefix: str | None = None) -> Tensor:
        """Embed the tower's fields.

        Args:
            batch: encoded inputs. Index fields (...,) int64, bag fields (..., L) int64,
                numeric and vector fields (..., width) float32, all with the same leading
                shape.
            prefix: read the fields under this side prefix instead of their own keys, e.g.
                ``"neg.item."`` for negatives shaped (N, ...) or (B, K, ...).

        Returns:
            (..., out_dim) float32 embeddings with the inputs' leading shape.
        """
        if prefix is not None:
            batch = {f.key: batch[_rename(f.key, prefix)] for f in self.fields}
        vec, _ = self.embedding(batch)
        assert vec is not None
        out = self.mlp(self.dropout(vec))
        if self.normalize:
            out = F.normalize(out, dim=-1)
        return out
