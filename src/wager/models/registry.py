"""The model types a run config can name: one registry, one home for each type's facts.

Each :class:`ModelType` says what the model learns (its task, given the label kind of the
data), which ``[model]`` settings it reads (so a setting it ignores can be refused when a
config names it) and how to build it from the encoded fields. The config's ``[model] type``
choices, the facade's task dispatch and the model factory all read this table; there is no
second list kept by hand. Importing it imports no torch (the builders import their
model class when called), so ``wager train`` refuses a bad config within a fraction of a
second.

Example:
    >>> from wager.models.registry import MODEL_TYPES, task_of
    >>> sorted(MODEL_TYPES)
    ['als', 'biased_mf', 'dcn', 'factorization', 'neumf', 'two_tower']
    >>> task_of("dcn", "rating"), task_of("dcn", "click")
    ('rating', 'click')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the table itself needs no torch: a config is checked without it
    from torch import nn

    from wager.models.fields import Field
    from wager.models.heads import Head
    from wager.models.ranking import Task

TaskKind = Literal["click", "rating", "retrieval", "implicit"]

# [model] settings every model type reads
_COMMON = frozenset({"type", "dim", "init_std", "user_min_count", "item_min_count"})


@dataclass(frozen=True)
class ModelInputs:
    """What a model type's builder needs besides the ``[model]`` settings.

    Attributes:
        user: fields of the user tower (keys ``user.*``).
        item: fields of the item tower (keys ``item.*``).
        context: context fields (keys ``context.*``).
        head: the likelihood head of pointwise models; None for retrieval scores.
        global_mean: mean training label (rating models start their bias there).
        item_id_key: the batch key of the item id (``item.<column>``).
        tasks: the tasks of a multi-task model (the DCN ranker), or () for one task with
            ``head``.
        n_items: the catalogue size (it decides full vs sampled softmax, see
            :func:`softmax_kind`), or None when unknown (a loaded run: the loss is unused).
    """

    user: list[Field]
    item: list[Field]
    context: list[Field]
    head: Head | None
    global_mean: float
    item_id_key: str
    tasks: tuple[Task, ...] = ()
    n_items: int | None = None


def softmax_kind(m: Any, n_items: int | None) -> Literal["full", "sampled"]:
    """How a two-tower model with ``[model]`` settings ``m`` trains on ``n_items`` items.

    "full" when ``full_softmax`` is set and the catalogue has at most
    ``full_softmax_max_items`` items (or its size is unknown); otherwise "sampled": in-batch
    negatives plus ``negatives`` extra ones, log-Q corrected (a full softmax forms a
    (users in batch, n_items) score matrix per batch, whose cost grows with the catalogue).

    Example:
        >>> from types import SimpleNamespace as NS
        >>> m = NS(full_softmax=True, full_softmax_max_items=3)
        >>> softmax_kind(m, 3), softmax_kind(m, 4), softmax_kind(m, None)
        ('full', 'sampled', 'full')
    """
    if m.full_softmax and (n_items is None or n_items <= m.full_softmax_max_items):
        return "full"
    return "sampled"


@dataclass(frozen=True)
class ModelType:
    """One model type of ``[model] type``.

    Attributes:
        name: the config value.
        tasks: the task it learns for each label kind ("rating", "click", "ctr"); ``default``
            for any other.
        default: the task when the label kind is not in ``tasks``.
        uses: the ``[model]`` settings the type reads (besides the common ones).
        build: ``(model settings, inputs) -> nn.Module``; the settings object is
            :class:`wager.config.ModelConfig` (typed loosely here: models sit below config).
        ids_only: the model reads the user and item ids alone (no features, no context).
    """

    name: str
    default: TaskKind
    uses: frozenset[str]
    build: Callable[[Any, ModelInputs], nn.Module]
    tasks: tuple[tuple[str, TaskKind], ...] = ()
    ids_only: bool = False

    def task(self, label_kind: str | None) -> TaskKind:
        """The task for data whose label is of ``label_kind`` (None: no label)."""
        return dict(self.tasks).get(label_kind or "", self.default)

    @property
    def settings(self) -> frozenset[str]:
        """Every ``[model]`` setting this type reads."""
        return _COMMON | self.uses


def _pointwise_head(x: ModelInputs) -> Head:
    """The head of a pointwise model: its task ("rating", "click") always has one."""
    assert x.head is not None, "a pointwise model's task has a likelihood head"
    return x.head


def _factorization(m: Any, x: ModelInputs) -> nn.Module:
    from wager.models.mf import FeatureFactorization

    return FeatureFactorization(x.user, x.item, x.context, dim=m.dim, init_std=m.init_std)


def _biased_mf(m: Any, x: ModelInputs) -> nn.Module:
    from wager.models.mf import BiasedMF

    return BiasedMF(
        x.user,
        x.item,
        dim=m.dim,
        init_std=m.init_std,
        head=_pointwise_head(x),
        reg=m.reg,
        bias_reg=m.bias_reg,
        global_mean=x.global_mean,
        dropout=m.dropout,
    )


def _two_tower(m: Any, x: ModelInputs) -> nn.Module:
    from wager.models.two_tower import TwoTower

    # full softmax: the catalogue is every batch's negatives (exact, no log-Q); past its
    # catalogue cap the run falls back to in-batch + sampled negatives, log-Q corrected
    full = softmax_kind(m, x.n_items) == "full"
    return TwoTower(
        x.user,
        x.item,
        dim=m.dim,
        hidden=m.hidden,
        dropout=m.dropout,
        init_std=m.init_std,
        temperature=m.temperature,
        logq_correction=m.logq_correction if not m.full_softmax else not full,
        in_batch_negatives=m.in_batch_negatives if not m.full_softmax else not full,
        remove_accidental_hits=m.remove_accidental_hits,
        item_id_key=x.item_id_key,
        item_bias=m.item_bias,
        user_dropout=m.user_dropout,
        reg=m.reg,
        normalize=m.normalize,
        reduction=m.loss_reduction,
        hard_negatives=m.hard_negatives,
    )


def _neumf(m: Any, x: ModelInputs) -> nn.Module:
    from wager.models.ncf import NeuMF

    return NeuMF(
        x.user,
        x.item,
        gmf_dim=m.dim,
        mlp_dim=m.dim,
        hidden=m.hidden or (2 * m.dim, m.dim),
        dropout=m.dropout,
        init_std=m.init_std,
    )


def _dcn(m: Any, x: ModelInputs) -> nn.Module:
    from wager.models.ranking import DCNRanker, Task

    return DCNRanker(
        x.user,
        x.item,
        x.context,
        dim=m.dim,
        cross_layers=m.cross_layers,
        low_rank=m.low_rank,
        deep=m.hidden or (256, 128),
        dropout=m.dropout,
        init_std=m.init_std,
        tasks=x.tasks or (Task("label", "label", _pointwise_head(x), 1.0),),
    )


def _als(m: Any, x: ModelInputs) -> nn.Module:
    from wager.models.als import ImplicitALS

    return ImplicitALS(x.user, x.item, dim=m.dim, init_std=m.init_std)


MODEL_TYPES: dict[str, ModelType] = {
    t.name: t
    for t in (
        ModelType(
            "factorization",
            default="click",
            # a Bernoulli model: no likelihood choice (only 'dcn' has mixture heads)
            uses=frozenset({"oov_rate"}),
            build=_factorization,
        ),
        ModelType(
            "biased_mf",
            default="rating",
            uses=frozenset({"likelihood", "mean_loss", "reg", "bias_reg", "dropout", "oov_rate"}),
            build=_biased_mf,
        ),
        ModelType(
            "two_tower",
            default="retrieval",
            uses=frozenset(
                {
                    "hidden",
                    "dropout",
                    "temperature",
                    "logq_correction",
                    "in_batch_negatives",
                    "remove_accidental_hits",
                    "item_bias",
                    "user_dropout",
                    "reg",
                    "normalize",
                    "loss_reduction",
                    "full_softmax",
                    "full_softmax_max_items",
                    "negatives",
                    "negative_sampling",
                    "negative_power",
                    "positive_threshold",
                    "hard_negatives",
                }
            ),
            build=_two_tower,
        ),
        ModelType(
            "neumf",
            default="implicit",
            uses=frozenset({"hidden", "dropout", "negatives", "positive_threshold"}),
            build=_neumf,
        ),
        ModelType(
            "dcn",
            default="click",
            tasks=(("rating", "rating"),),
            uses=frozenset(
                {
                    "hidden",
                    "dropout",
                    "cross_layers",
                    "low_rank",
                    "likelihood",
                    "mean_loss",
                    "components",
                    "oov_rate",
                    "tasks",
                }
            ),
            build=_dcn,
        ),
        ModelType(
            "als",
            default="retrieval",  # ranks a catalogue, as the two-tower: the same evaluation
            uses=frozenset({"reg", "alpha", "cg_steps", "reg_exponent", "positive_threshold"}),
            build=_als,
            ids_only=True,
        ),
    )
}


def model_type(name: str) -> ModelType:
    """The registered model type ``name`` (KeyError names the choices)."""
    try:
        return MODEL_TYPES[name]
    except KeyError:
        raise KeyError(
            f"unknown model type {name!r}: choose one of {', '.join(MODEL_TYPES)}"
        ) from None


def task_of(name: str, label_kind: str | None) -> TaskKind:
    """What model type ``name`` learns on data whose label is of ``label_kind``."""
    return model_type(name).task(label_kind)
