"""Deep ensembles evaluated with stacked parameters through ``torch.func`` (no member loop).

Members are built by a factory with different seeds, their parameters stacked in a
:class:`~wager.training.trainer.StackedModel`, and trained and evaluated together through
``vmap(functional_call)``: one vectorised pass for all M members. With ``bootstrap=True``
each member weights every training row by an independent Poisson(1) draw (the online
bootstrap), so members differ in data as well as initialisation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from wager.config import EnsembleConfig, TrainConfig
from wager.errors import NotFittedError
from wager.prediction import Prediction
from wager.training.trainer import History, StackedModel, train_stacked

Batch = dict[str, Tensor]


def bootstrap_weights(
    weights: Tensor, members: int, bootstrap: bool, generator: torch.Generator
) -> Tensor:
    """(M, n) per-member row weights: the rows' own weights times Poisson(1) draws.

    Args:
        weights: (n,) non-negative row weights.
        members: M.
        bootstrap: multiply by independent Poisson(1) counts (the online bootstrap); when
            False every member gets ``weights`` unchanged.
        generator: seeded generator for the draws.
    """
    out = weights.expand(members, -1).clone()
    if bootstrap:
        out = out * torch.poisson(torch.ones(members, weights.shape[0]), generator=generator).to(
            out.device
        )
    return out


def holdout_mask(n_rows: int, members: int, fraction: float, generator: torch.Generator) -> Tensor:
    """(M, n) bool, True where member m holds row i out of its training (for its own early
    stopping): round(fraction * n) rows per member, drawn independently for each member.

    Args:
        n_rows: n training rows.
        members: M.
        fraction: share of rows each member holds out, in [0, 1).
        generator: seeded generator for the draws.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must lie in [0, 1), got {fraction!r}")
    k = round(fraction * n_rows)
    mask = torch.zeros(members, n_rows, dtype=torch.bool)
    for m in range(members):
        mask[m, torch.randperm(n_rows, generator=generator)[:k]] = True
    return mask


class Ensemble:
    """M copies of a model trained with different seeds; spread = epistemic uncertainty.

    Args:
        config: members and bootstrap.
        seed: base seed; member m is initialised with seed + m.

    Example:
        >>> from wager.models.mf import FeatureFactorization
        >>> from wager.models.fields import Field
        >>> make = lambda: FeatureFactorization([Field("user.u", "index", 3)],
        ...                                     [Field("item.i", "index", 3)], [], dim=2)
        >>> ens = Ensemble(EnsembleConfig(members=3), seed=0).build(make)
        >>> batch = {"user.u": torch.tensor([1, 2]), "item.i": torch.tensor([0, 1])}
        >>> ens.member_outputs(batch).shape
        torch.Size([3, 2])
    """

    def __init__(self, config: EnsembleConfig | None = None, seed: int | None = 0) -> None:
        self.config = config or EnsembleConfig()
        self.seed = seed
        self.stack_: StackedModel | None = None
        self.history_: History | None = None

    @property
    def method(self) -> str:
        """Provenance string for predictions."""
        return f"ensemble(members={self.config.members}, bootstrap={self.config.bootstrap})"

    @property
    def params_(self) -> dict[str, Tensor]:
        """Stacked (M, ...) parameters."""
        return self._check().params

    def build(self, factory: Callable[[], nn.Module], device: str = "cpu") -> Ensemble:
        """Create the members (seeded initialisation) and stack their parameters."""
        self.stack_ = StackedModel(factory, self.config.members, self.seed, device)
        return self

    def _check(self) -> StackedModel:
        if self.stack_ is None:
            raise NotFittedError("Ensemble is not built: call build() / fit() first")
        return self.stack_

    def member_outputs(self, batch: Batch, params: dict[str, Tensor] | None = None) -> Tensor:
        """(M, B) raw outputs (e.g. logits) of every member on ``batch``, one vmapped pass."""
        return self._check().call("forward", batch, params=params)

    def fit(
        self,
        factory: Callable[[], nn.Module],
        loss: Callable[[Tensor, Batch, Tensor], Tensor] | None,
        train: Batch,
        config: TrainConfig,
        *,
        valid: Batch | None = None,
        valid_metric: Callable[[Tensor, Batch], Tensor] | None = None,
        show_progress: bool = False,
    ) -> Ensemble:
        """Build and train all members together on pointwise rows.

        Args:
            factory: () -> a fresh model (called once per member under its seed).
            loss: (outputs (B,), batch, weights (B,)) -> scalar loss of one member, or None
                to use the model's own ``loss(batch, weights)``.
            train: full training tensors, each with leading dimension n_rows.
            config: training settings.
            valid: validation tensors (for early stopping), or None.
            valid_metric: (outputs (M, n_valid), valid) -> (M,) metric, lower is better.
            show_progress: draw a progress bar.
        """
        self.build(factory)
        stack = self._check()
        n_rows = len(next(iter(train.values())))
        gen = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        member_w = bootstrap_weights(
            train.get("weight", torch.ones(n_rows)), self.config.members, self.config.bootstrap, gen
        )
        if loss is None:

            def batch_losses(p: dict[str, Tensor], idx: Tensor) -> Tensor:
                x = {k: v[idx] for k, v in train.items()}
                return stack.call_weighted("loss", x, member_w[:, idx], params=p)

        else:
            user_loss = loss

            def batch_losses(p: dict[str, Tensor], idx: Tensor) -> Tensor:
                x = {k: v[idx] for k, v in train.items()}
                out = stack.call("forward", x, params=p)
                return torch.stack(
                    [user_loss(out[m], x, member_w[m, idx]) for m in range(out.shape[0])]
                )

        validate = None
        if valid is not None and valid_metric is not None:

            def validate(p: dict[str, Tensor]) -> Tensor:
                stack.train(False)
                try:
                    return valid_metric(stack.call("forward", valid, params=p), valid)
                finally:
                    stack.train(True)

        stack.train(True)
        self.history_ = train_stacked(
            stack.params,
            batch_losses,
            n_rows,
            config,
            validate=validate,
            generator=gen,
            show_progress=show_progress,
            description=f"ensemble x{self.config.members}",
        )
        stack.train(False)
        return self

    def predict(
        self,
        batch: Batch,
        link: Callable[[Tensor], Tensor],
        support: tuple[float, float] | None = None,
    ) -> Prediction:
        """Prediction whose std is the spread of the members' means.

        Args:
            batch: encoded inputs, leading dimension B.
            link: maps raw outputs to the predicted quantity (e.g. sigmoid for CTR).
            support: range of the predicted quantity.
        """
        with torch.no_grad():
            means = link(self.member_outputs(batch))
        return Prediction.from_members(means, method=self.method, support=support)

    def state_dict(self) -> dict[str, Tensor]:
        """Stacked parameters and buffers (for safetensors)."""
        return self._check().state_dict()

    def load_state_dict(
        self, factory: Callable[[], nn.Module], state: dict[str, Tensor]
    ) -> Ensemble:
        """Rebuild members from ``factory`` and load stacked tensors saved by :meth:`state_dict`."""
        self.build(factory)
        self._check().load_state_dict(state)
        self._check().train(False)
        return self
