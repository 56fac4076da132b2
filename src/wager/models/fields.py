"""Embedding of encoded feature fields (ids, categoricals, multi-valued, text, numerics,
precomputed vectors).

A batch is a flat ``dict[str, Tensor]`` whose keys are ``"<side>.<field>"`` (side is
"user", "item" or "context") plus "label" and "weight"; see
:class:`wager.data.features.InteractionEncoder` for the encodings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

FieldKind = Literal["index", "bag", "numeric", "vector"]
_DENSE: tuple[str, ...] = ("numeric", "vector")  # float inputs, projected linearly


@dataclass(frozen=True)
class Field:
    """One encoded input field.

    Attributes:
        key: batch key, e.g. "user.segment".
        kind: "index" ((B,) int64, 0 = OOV), "bag" ((B, L) int64 padded with 0),
            "numeric" ((B, width) float32) or "vector" ((B, width) float32: a precomputed
            embedding, its entries then a missing indicator).
        size: embedding rows for index/bag fields; input width for numeric and vector
            fields (a vector of dim d has width d + 1).
    """

    key: str
    kind: FieldKind
    size: int


class FieldEmbedding(nn.Module):
    """Sum of per-field embeddings (a vector) and per-field scalar biases.

    For a bag field the embedding is the mean over its non-padding entries (an empty bag
    contributes zero). Numeric and vector fields are projected linearly (no bias term) to
    ``dim``; a vector field's projection starts with std ``init_std / sqrt(size)``, so that a
    vector of standardised entries starts with embeddings of the scale of an id's, however
    wide the vector. Implemented with plain ``nn.Embedding`` so that it works under
    ``torch.func.vmap`` (ensembles with stacked parameters).

    Every method accepts any leading shape: an index field of shape (...,) or a bag field of
    shape (..., L) gives (..., dim) vectors and (...,) biases.

    Args:
        fields: the input fields.
        dim: embedding dimension (0 = biases only).
        init_std: std of the normal initialisation of embedding vectors.
        bias: whether to hold per-field scalar biases (zero-initialised). Without them
            :meth:`forward` returns zero biases and no bias parameters exist.
    """

    def __init__(
        self, fields: list[Field], dim: int, init_std: float = 0.05, bias: bool = True
    ) -> None:
        super().__init__()
        if dim < 0 or (dim == 0 and not bias):
            raise ValueError(
                f"FieldEmbedding needs dim >= 1, or dim = 0 with bias=True; got dim={dim}, "
                f"bias={bias}"
            )
        self.fields = list(fields)
        self.dim = dim
        self.has_bias = bias
        self.vectors = nn.ModuleDict()
        self.biases = nn.ModuleDict()
        for f in self.fields:
            name = f.key.replace(".", "__")
            if f.kind in _DENSE:
                if dim:
                    std = init_std / math.sqrt(f.size) if f.kind == "vector" else init_std
                    linear = nn.Linear(f.size, dim, bias=False)
                    nn.init.normal_(linear.weight, std=std)
                    self.vectors[name] = linear
                if bias:
                    linear = nn.Linear(f.size, 1, bias=False)
                    nn.init.zeros_(linear.weight)
                    self.biases[name] = linear
            else:
                if dim:
                    table = nn.Embedding(f.size, dim)
                    nn.init.normal_(table.weight, std=init_std)
                    self.vectors[name] = table
                if bias:
                    table = nn.Embedding(f.size, 1)
                    nn.init.zeros_(table.weight)
                    self.biases[name] = table

    def _embed(
        self, batch: dict[str, Tensor], norms: bool
    ) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor | None]:
        vec: Tensor | None = None
        bias: Tensor | None = None
        sq_vec: Tensor | None = None
        sq_bias: Tensor | None = None
        for f in self.fields:
            name = f.key.replace(".", "__")
            x = batch[f.key]
            if f.kind in _DENSE or f.kind == "index":
                v = self.vectors[name](x) if self.dim else None
                b = self.biases[name](x).squeeze(-1) if self.has_bias else None
            else:
                mask = (x > 0).to(torch.float32)
                count = mask.sum(-1, keepdim=True).clamp_min(1.0)
                v = (
                    (self.vectors[name](x) * mask.unsqueeze(-1)).sum(-2) / count
                    if self.dim
                    else None
                )
                b = (
                    (self.biases[name](x).squeeze(-1) * mask).sum(-1) / count.squeeze(-1)
                    if self.has_bias
                    else None
                )
            if v is not None:
                vec = v if vec is None else vec + v
                if norms:
                    sq = v.square().sum(-1)
                    sq_vec = sq if sq_vec is None else sq_vec + sq
            if b is not None:
                bias = b if bias is None else bias + b
                if norms:
                    sq_bias = b.square() if sq_bias is None else sq_bias + b.square()
        if vec is None and bias is None:
            raise ValueError("FieldEmbedding has no fields")
        if bias is None:
            assert vec is not None
            bias = vec.new_zeros(vec.shape[:-1])
        return vec, bias, sq_vec, sq_bias

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor | None, Tensor]:
        """Returns ((B, dim) summed vectors or None when dim == 0, (B,) summed biases).

        With ``bias=False`` the biases are zeros.
        """
        vec, bias, _, _ = self._embed(batch, norms=False)
        return vec, bias

    def forward_with_norms(
        self, batch: dict[str, Tensor]
    ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """:meth:`forward` plus the per-field L2 norms that regularisers penalise.

        Returns:
            (vectors (B, dim) or None, biases (B,), sum over fields of ||v_f||^2 (B,),
            sum over fields of b_f^2 (B,)), where v_f / b_f are field f's own vector and
            bias for the row (a bag's mean entry). Penalising each field separately, rather
            than the summed vector, shrinks every feature embedding in proportion to how
            often it is used, as per-example L2 on ids does.
        """
        vec, bias, sq_vec, sq_bias = self._embed(batch, norms=True)
        zeros = bias.new_zeros(bias.shape)
        return (
            vec,
            bias,
            sq_vec if sq_vec is not None else zeros,
            sq_bias if sq_bias is not None else zeros,
        )

    def forward_fields(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-field vectors, not summed (the input of feature-crossing models such as DCN).

        Args:
            batch: encoded inputs; reads the key of every field.

        Returns:
            (B, n_fields, dim) float32: field f's vector in slot f, in ``fields`` order (a bag
            field's vector is the mean over its non-padding entries; a numeric field's is
            its linear projection, as is a vector field's).
        """
        if not self.dim:
            raise ValueError("forward_fields needs dim >= 1 (this FieldEmbedding has dim=0)")
        if not self.fields:
            raise ValueError("FieldEmbedding has no fields")
        out = []
        for f in self.fields:
            x = batch[f.key]
            v = self.vectors[f.key.replace(".", "__")](x)
            if f.kind == "bag":
                mask = (x > 0).to(v.dtype)
                count = mask.sum(-1, keepdim=True).clamp_min(1.0)
                v = (v * mask.unsqueeze(-1)).sum(-2) / count
            out.append(v)
        return torch.stack(out, dim=-2)
