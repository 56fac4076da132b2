"""Deep ensembles evaluated with stacked parameters through ``torch.func`` (no member loop).

Members are built by a factory with different seeds, their parameters stacked with
``torch.func.stack_module_state``, and trained and evaluated together through
``vmap(functional_call)``: one vectorised pass for all M members. With ``bootstrap=True``
each member weights every training row by an independent Poisson(1) draw (the online
bootstrap), so members differ in data as well as initialisation.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from wager.config import EnsembleConfig, TrainConfig
from wager.errors import NotFittedError
from wager.prediction import Prediction
from wager.training.trainer import History, train_stacked

Batch = dict[str, Tensor]


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
        self.params_: dict[str, Tensor] | None = None
        self.buffers_: dict[str, Tensor] | None = None
        self.base_: nn.Module | None = None
        self.history_: History | None = None

    @property
    def method(self) -> str:
        """Provenance string for predictions."""
        return f"ensemble(members={self.config.members}, bootstrap={self.config.bootstrap})"

    def build(self, factory: Callable[[], nn.Module]) -> Ensemble:
        """Create the members (seeded initialisation) and stack their parameters."""
        members = []
        for m in range(self.config.members):
            if self.seed is not None:
                torch.manual_seed(self.seed + m)
            members.append(factory())
        params, buffers = stack_module_state(members)
        self.params_ = {k: v.detach().clone() for k, v in params.items()}
        self.buffers_ = {k: v.detach().clone() for k, v in buffers.items()}
        self.base_ = copy.deepcopy(members[0]).to("meta")
        return self

    def _check(self) -> tuple[nn.Module, dict[str, Tensor], dict[str, Tensor]]:
        if self.params_ is None or self.base_ is None or self.buffers_ is None:
            raise NotFittedError("Ensemble is not built: call build() / fit() first")
        return self.base_, self.params_, self.buffers_

    def member_outputs(self, batch: Batch, params: dict[str, Tensor] | None = None) -> Tensor:
        """(M, B) raw outputs (e.g. logits) of every member on ``batch``, one vmapped pass."""
        base, own, buffers = self._check()
        p = own if params is None else params

        def one(p_m: dict[str, Tensor], b_m: dict[str, Tensor], x: Batch) -> Tensor:
            return functional_call(base, (p_m, b_m), (x,))

        return vmap(one, in_dims=(0, 0, None))(p, buffers, batch)

    def fit(
        self,
        factory: Callable[[], nn.Module],
        loss: Callable[[Tensor, Batch, Tensor], Tensor],
        train: Batch,
        config: TrainConfig,
        *,
        valid: Batch | None = None,
        valid_metric: Callable[[Tensor, Batch], Tensor] | None = None,
        show_progress: bool = False,
    ) -> Ensemble:
        """Build and train all members together.

        Args:
            factory: () -> a fresh model (called once per member under its seed).
            loss: (outputs (B,), batch, weights (B,)) -> scalar loss of one member.
            train: full training tensors, each with leading dimension n_rows.
            config: training settings.
            valid: validation tensors (for early stopping), or None.
            valid_metric: (outputs (M, n_valid), valid) -> (M,) metric, lower is better.
            show_progress: draw a progress bar.
        """
        self.build(factory)
        base, params, buffers = self._check()
        n_rows = len(next(iter(train.values())))
        gen = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        m = self.config.members
        weights = train.get("weight", torch.ones(n_rows))
        member_w = weights.expand(m, n_rows).clone()
        if self.config.bootstrap:
            member_w = member_w * torch.poisson(torch.ones(m, n_rows), generator=gen)

        def one_loss(p_m: dict[str, Tensor], b_m: dict[str, Tensor], x: Batch, w: Tensor) -> Tensor:
            return loss(functional_call(base, (p_m, b_m), (x,)), x, w)

        vloss = vmap(one_loss, in_dims=(0, 0, None, 0))

        def batch_losses(p: dict[str, Tensor], idx: Tensor) -> Tensor:
            x = {k: v[idx] for k, v in train.items()}
            return vloss(p, buffers, x, member_w[:, idx])

        validate = None
        if valid is not None and valid_metric is not None:

            def validate(p: dict[str, Tensor]) -> Tensor:
                return valid_metric(self.member_outputs(valid, p), valid)

        self.history_ = train_stacked(
            params,
            batch_losses,
            n_rows,
            config,
            validate=validate,
            generator=gen,
            show_progress=show_progress,
            description=f"ensemble x{m}",
        )
        for v in params.values():
            v.requires_grad_(False)
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
        _, params, buffers = self._check()
        return {
            **{f"param.{k}": v for k, v in params.items()},
            **{f"buffer.{k}": v for k, v in buffers.items()},
        }

    def load_state_dict(
        self, factory: Callable[[], nn.Module], state: dict[str, Tensor]
    ) -> Ensemble:
        """Rebuild members from ``factory`` and load stacked tensors saved by :meth:`state_dict`."""
        self.build(factory)
        _, params, buffers = self._check()
        for k in params:
            params[k] = state[f"param.{k}"].clone()
        for k in buffers:
            buffers[k] = state[f"buffer.{k}"].clone()
        self.params_, self.buffers_ = params, buffers
        return self
