"""Deep & Cross Network v2 ranker (Wang et al. 2021) over user, item and context fields.

The input x0 is the concatenation of every field's embedding (ids, categoricals, bags,
projected numerics). A cross network learns explicit bounded-degree feature crosses and a
deep MLP implicit ones, either stacked (cross then deep) or in parallel (concatenated). One
linear output layer serves one or several tasks, each with its own head and label.

Any head of :mod:`wager.models.heads` fits, density heads included: the output layer has
``head.out_dim`` units per task (3K for a K-component :class:`MixtureDensityHead` or
:class:`DeepDensityHead`), and heads whose ``loss`` takes the keyword ``impressions`` (the
deep density head, for aggregated CTR labels) get ``batch["impressions"]``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from wager.models.fields import Field, FieldEmbedding
from wager.models.heads import BernoulliHead, Head
from wager.models.towers import check_rate, check_widths, mlp


class CrossNetwork(nn.Module):
    """DCN-v2 cross layers: x_{l+1} = x0 * (W_l x_l + b_l) + x_l.

    With ``low_rank = r`` each W_l is factorised as U_l V_l^T (U_l, V_l of shape
    (in_dim, r)), i.e. W_l x = U_l (V_l^T x).

    Args:
        in_dim: width of x0.
        layers: number of cross layers (0: the identity).
        low_rank: rank r of the factorised weight matrices, or None for full matrices.

    Example:
        >>> net = CrossNetwork(6, layers=2, low_rank=2)
        >>> net(torch.randn(4, 6)).shape
        torch.Size([4, 6])
    """

    def __init__(self, in_dim: int, layers: int = 3, low_rank: int | None = None) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {in_dim!r}")
        if layers < 0:
            raise ValueError(f"layers must be >= 0, got {layers!r}")
        if low_rank is not None and low_rank < 1:
            raise ValueError(f"low_rank must be None or >= 1, got {low_rank!r}")
        self.in_dim = in_dim
        self.low_rank = low_rank
        self.layers = nn.ModuleList()
        for _ in range(layers):
            if low_rank is None:
                self.layers.append(nn.Linear(in_dim, in_dim))
            else:
                # first V^T (no bias), then U with the layer's bias b
                v_t = nn.Linear(in_dim, low_rank, bias=False)
                self.layers.append(nn.Sequential(v_t, nn.Linear(low_rank, in_dim)))

    def forward(self, x0: Tensor) -> Tensor:
        """(..., in_dim) -> (..., in_dim) crossed features."""
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


@dataclass(frozen=True)
class Task:
    """One prediction task of a (multi-task) ranker.

    Attributes:
        name: task name, e.g. "click".
        label_key: batch key of the task's label, e.g. "label" or "purchase".
        head: the task's output head (its likelihood).
        weight: the task's weight in the summed loss, >= 0.
    """

    name: str
    label_key: str
    head: Head
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("Task.name must be a non-empty string")
        if not self.weight >= 0:
            raise ValueError(f"Task '{self.name}': weight must be >= 0, got {self.weight!r}")


def needs_impressions(head: Head) -> bool:
    """Whether ``head.loss`` takes the keyword ``impressions`` (e.g. DeepDensityHead).

    Example:
        >>> from wager.models.heads import DeepDensityHead, MixtureDensityHead
        >>> needs_impressions(DeepDensityHead()), needs_impressions(MixtureDensityHead())
        (True, False)
    """
    try:
        params = inspect.signature(head.loss).parameters
    except (TypeError, ValueError):  # builtins without a signature: no impressions
        return False
    p = params.get("impressions")
    return p is not None and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)


def task_output(out: Tensor, heads: tuple[Head, ...], i: int) -> Tensor:
    """Task ``i``'s raw outputs from a ranker's outputs over tasks with ``heads``.

    One task: ``out`` itself. Several: the task's ``head.out_dim`` columns of the last
    dimension (tasks side by side in order), squeezed to (...) when that is 1.

    Example:
        >>> from wager.models.heads import GaussianHead, PointHead
        >>> out = torch.arange(6.0).reshape(2, 3)  # (B=2, 1 + 2 outputs)
        >>> task_output(out, (PointHead(), GaussianHead()), 1).tolist()
        [[1.0, 2.0], [4.0, 5.0]]
    """
    if len(heads) == 1:
        return out
    start = sum(h.out_dim for h in heads[:i])
    width = heads[i].out_dim
    part = out[..., start : start + width]
    return part.squeeze(-1) if width == 1 else part


class DCNRanker(nn.Module):
    """DCN-v2 ranking model with one output per task.

    Output layout of :meth:`forward`: (B,) for one task whose head has ``out_dim`` 1;
    (B, out_dim) for one task with a multi-output head (e.g. (B, 2) for a GaussianHead,
    (B, 3K) for a K-component MixtureDensityHead or DeepDensityHead); for T tasks
    (B, sum of out_dims), the tasks' columns side by side in order (:func:`task_output`
    picks one task's).

    Batch keys read: ``"user.<field>"``, ``"item.<field>"``, ``"context.<field>"`` (B, ...);
    in :meth:`loss` each task's ``label_key`` (B,), optional ``"weight"`` (B,), and
    ``"impressions"`` (B,) float32 counts n >= 1 when a task's head needs them
    (:class:`~wager.models.heads.DeepDensityHead`; the encoder adds the key when
    ``Schema.impressions`` is set).

    Args:
        user_fields: encoded user fields (keys "user.*").
        item_fields: encoded item fields (keys "item.*").
        context_fields: encoded context fields (keys "context.*"), possibly empty.
        dim: embedding dimension of every field; x0 is n_fields * dim wide.
        cross_layers: number of cross layers.
        low_rank: rank of the cross layers' factorised weights, or None for full.
        deep: widths of the deep MLP's layers (each followed by ReLU and dropout).
        dropout: dropout rate after every deep layer.
        init_std: std of the embedding initialisation.
        tasks: the tasks; names must be unique.
        structure: "parallel" (output from [cross(x0); deep(x0)]) or "stacked" (output
            from deep(cross(x0))).

    Attributes:
        head: the single task's head, or None for multi-task models.

    Example:
        >>> m = DCNRanker([Field("user.user_id", "index", 3)], [Field("item.item_id", "index", 4)],
        ...               [Field("context.hour", "numeric", 2)], dim=4, deep=(8,))
        >>> batch = {"user.user_id": torch.tensor([1]), "item.item_id": torch.tensor([2]),
        ...          "context.hour": torch.zeros(1, 2)}
        >>> m(batch).shape
        torch.Size([1])
        >>> from wager.models.heads import DeepDensityHead
        >>> task = Task("ctr", "label", DeepDensityHead(components=2))
        >>> users, items = [Field("user.user_id", "index", 3)], [Field("item.item_id", "index", 4)]
        >>> ddn = DCNRanker(users, items, [], dim=4, deep=(8,), tasks=(task,))
        >>> batch = {"user.user_id": torch.tensor([1, 2]), "item.item_id": torch.tensor([2, 3]),
        ...          "label": torch.tensor([0.1, 0.0]), "impressions": torch.tensor([10.0, 3.0])}
        >>> ddn(batch).shape, ddn.loss(batch).shape
        (torch.Size([2, 6]), torch.Size([]))
    """

    def __init__(
        self,
        user_fields: list[Field],
        item_fields: list[Field],
        context_fields: list[Field],
        dim: int = 16,
        cross_layers: int = 3,
        low_rank: int | None = None,
        deep: tuple[int, ...] = (256, 128),
        dropout: float = 0.0,
        init_std: float = 0.05,
        tasks: tuple[Task, ...] = (Task("label", "label", BernoulliHead(), 1.0),),
        structure: Literal["stacked", "parallel"] = "parallel",
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim!r}")
        check_widths("deep", deep)
        check_rate("dropout", dropout)
        if structure not in ("stacked", "parallel"):
            raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
        if not tasks:
            raise ValueError("tasks must hold at least one Task")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, got {names}")
        fields = [*user_fields, *item_fields, *context_fields]
        if not fields:
            raise ValueError("DCNRanker needs at least one field")
        self.tasks = tuple(tasks)
        self._needs_impressions = tuple(needs_impressions(t.head) for t in self.tasks)
        self.structure = structure
        self.head: Head | None = tasks[0].head if len(tasks) == 1 else None
        self.embedding = FieldEmbedding(fields, dim, init_std, bias=False)
        in_dim = len(fields) * dim
        self.cross = CrossNetwork(in_dim, cross_layers, low_rank)
        self.deep = mlp(in_dim, deep, dropout, final_activation=True)
        deep_out = deep[-1] if deep else in_dim
        top = in_dim + deep_out if structure == "parallel" else deep_out
        self.n_outputs = sum(t.head.out_dim for t in tasks)
        self.output = nn.Linear(top, self.n_outputs)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Raw outputs: (B,), (B, out_dim) or (B, T); see the class docstring."""
        x0 = self.embedding.forward_fields(batch).flatten(-2)
        if self.structure == "parallel":
            h = torch.cat([self.cross(x0), self.deep(x0)], dim=-1)
        else:
            h = self.deep(self.cross(x0))
        out = self.output(h)
        if len(self.tasks) == 1 and self.tasks[0].head.out_dim == 1:
            return out.squeeze(-1)
        return out

    def loss(self, batch: dict[str, Tensor], weights: Tensor | None = None) -> Tensor:
        """sum over tasks of weight_t * head_t.loss(output_t, batch[label_key_t], weights).

        Heads whose ``loss`` takes the keyword ``impressions`` (DeepDensityHead) get
        ``impressions=batch["impressions"]``.

        Args:
            batch: encoded inputs plus each task's label (B,) float32, and "impressions"
                (B,) float32 impression counts n >= 1 when a head needs them.
            weights: (B,) non-negative row weights; None uses batch["weight"] when present.

        Returns:
            scalar loss.
        """
        if weights is None:
            weights = batch.get("weight")
        missing = [t.label_key for t in self.tasks if t.label_key not in batch]
        if missing:
            raise ValueError(
                f"batch lacks the label keys {missing} of tasks "
                f"{[t.name for t in self.tasks if t.label_key in missing]}; add them to the "
                "batch or change Task.label_key"
            )
        impressions = batch.get("impressions")
        if impressions is None and any(self._needs_impressions):
            needy = [
                f"'{t.name}' ({type(t.head).__name__})"
                for t, need in zip(self.tasks, self._needs_impressions, strict=True)
                if need
            ]
            raise ValueError(
                f"batch lacks the key 'impressions' that task {', '.join(needy)} needs (the "
                "impression count n >= 1 behind each CTR label): set the schema field "
                "`impressions` (Schema(impressions=..., clicks=...)) so that "
                "InteractionEncoder.transform adds it, or put a (B,) float32 'impressions' "
                "tensor in the batch"
            )
        out = self(batch)
        if len(self.tasks) == 1:
            t = self.tasks[0]
            return t.weight * self._task_loss(0, out, batch, weights, impressions)
        heads = tuple(t.head for t in self.tasks)
        total = out.new_zeros(())
        for i, t in enumerate(self.tasks):
            part = task_output(out, heads, i)
            total = total + t.weight * self._task_loss(i, part, batch, weights, impressions)
        return total

    def _task_loss(
        self,
        i: int,
        out: Tensor,
        batch: dict[str, Tensor],
        weights: Tensor | None,
        impressions: Tensor | None,
    ) -> Tensor:
        """Task ``i``'s head loss, with ``impressions=`` for heads that take it."""
        t = self.tasks[i]
        labels = batch[t.label_key]
        if self._needs_impressions[i]:
            # a DeepDensityHead-like loss: Head's protocol has no impressions keyword
            loss_fn: Callable[..., Tensor] = t.head.loss
            return loss_fn(out, labels, weights, impressions=impressions)
        return t.head.loss(out, labels, weights)
