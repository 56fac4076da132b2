"""One training loop for every model: M stacked members (M = 1 for a single model).

Parameters are held stacked (leading member dimension, as from
``torch.func.stack_module_state``) in a :class:`StackedModel`, which evaluates any method of
the model (``forward``, ``loss``, ``user_embedding``...) for all members in one
``torch.func.vmap`` pass (a plain call when M = 1). The caller supplies a function that
returns the per-member losses of a batch (it builds the batch: slicing, negative sampling),
so one loop trains single models and ensembles alike.

The loop: AdamW / Adam / Adagrad, a per-step learning-rate schedule (constant, cosine or
linear decay, with linear warm-up), gradient clipping, bfloat16 autocast on CUDA when
``mixed_precision`` is set, and early stopping on a validation metric run between epochs
(never inside the loss step); each member keeps its best epoch's parameters. After each
epoch the loop can save its whole state to a :class:`~wager.training.checkpoint.Checkpoint`
(and continue from it later, bit for bit) and report the epoch to an ``on_epoch`` hook.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap

from wager.config import TrainConfig
from wager.errors import TrainingDivergedError
from wager.training.checkpoint import Checkpoint, EpochHook, EpochReport
from wager.training.distributed import DataParallel, init_from_environment, launched_by_torchrun
from wager.training.history import History

Params = dict[str, Tensor]
Batch = dict[str, Tensor]


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without CUDA is an error. Under
    torchrun, CUDA is the process's own GPU (``LOCAL_RANK``)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "training.device = 'cuda' but CUDA is not available; use 'cpu' or 'auto'"
        )
    if device == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def make_optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config.optimizer``.

    Adagrad starts its accumulators at 0.1 (as Keras does), which keeps the first steps of
    sparse embedding rows from being huge.
    """
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.Adagrad(
        params,
        lr=config.learning_rate,
        weight_decay=config.weight_decay,
        initial_accumulator_value=0.1,
        eps=1e-7,
    )


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``config.warmup_steps`` steps, then ``config.lr_schedule``:
    "constant" (1), "cosine" (half cosine from 1 to 0 at ``total_steps``) or "linear"
    (straight line from 1 to 0 at ``total_steps``).
    """
    warm = config.warmup_steps
    if warm and step < warm:
        return (step + 1) / warm
    if config.lr_schedule == "constant":
        return 1.0
    span = max(total_steps - warm, 1)
    t = min(max(step - warm, 0) / span, 1.0)
    if config.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    return 1.0 - t


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA when ``enabled``; a no-op elsewhere (CPU stays float32)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Dispatch(nn.Module):
    """Wraps a model so that ``functional_call`` can run any of its methods by name."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.model, method)(*args)


def call_view(module: nn.Module, training: bool | None = None) -> nn.Module:
    """A copy of ``module``'s tree for one ``functional_call``: it shares every tensor and
    attribute but owns its ``_parameters`` / ``_buffers`` / ``_modules`` dicts.

    ``functional_call`` swaps the given tensors into those dicts for the length of the call
    and swaps the originals back afterwards, so two threads calling it on one module see
    each other's tensors (or the meta placeholders restored in between). Each call on its
    own view cannot; the copy costs a few microseconds per submodule and no tensor memory.

    Args:
        module: the (meta-device) model tree.
        training: the view's mode (dropout on or off), or None for ``module``'s own; the
            mode of ``module`` itself never changes.

    Returns:
        the view: same classes, attributes and tensors as ``module``, fresh dicts.
    """
    memo: dict[int, nn.Module] = {}

    def copy_tree(m: nn.Module) -> nn.Module:
        if id(m) in memo:  # a submodule registered twice stays one module
            return memo[id(m)]
        view = memo[id(m)] = object.__new__(type(m))  # a shallow copy (no __init__)
        view.__dict__.update(m.__dict__)
        view.__dict__["_parameters"] = dict(m._parameters)
        view.__dict__["_buffers"] = dict(m._buffers)
        view.__dict__["_modules"] = {
            k: None if c is None else copy_tree(c) for k, c in m._modules.items()
        }
        return view

    view = copy_tree(module)
    return view if training is None else view.train(training)


class StackedModel:
    """M copies of a model with stacked parameters, evaluated together.

    Member m is initialised under ``torch.manual_seed(seed + m)``. ``call("forward", batch)``
    returns the (M, ...) outputs of every member in one ``torch.func.vmap`` pass (dropout
    draws differ between members); with M = 1 the model is called directly (no vmap cost).

    Args:
        factory: () -> a fresh model (``nn.Module``).
        members: M >= 1.
        seed: base seed, or None for the current global RNG state.
        device: where the parameters live.

    Example:
        >>> from wager.models.mf import FeatureFactorization
        >>> from wager.models.fields import Field
        >>> make = lambda: FeatureFactorization([Field("user.u", "index", 3)],
        ...                                     [Field("item.i", "index", 3)], [], dim=2)
        >>> stack = StackedModel(make, members=2, seed=0)
        >>> stack.call("forward", {"user.u": torch.tensor([1]), "item.i": torch.tensor([2])}).shape
        torch.Size([2, 1])
    """

    def __init__(
        self,
        factory: Callable[[], nn.Module],
        members: int = 1,
        seed: int | None = 0,
        device: torch.device | str = "cpu",
    ) -> None:
        if members < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        models = []
        for m in range(members):
            if seed is not None:
                torch.manual_seed(seed + m)
            models.append(_Dispatch(factory()))
        params, buffers = stack_module_state(models)
        self.members = members
        self.device = torch.device(device)
        self.params: Params = {k: v.detach().clone().to(self.device) for k, v in params.items()}
        self.buffers: Params = {k: v.detach().clone().to(self.device) for k, v in buffers.items()}
        self.base = copy.deepcopy(models[0]).to("meta")

    @property
    def model(self) -> nn.Module:
        """The (parameter-less, meta-device) model: its attributes, not its weights."""
        return self.base.model

    def train(self, mode: bool = True) -> StackedModel:
        """Switch dropout etc. on (training) or off (evaluation)."""
        self.base.train(mode)
        return self

    def call(
        self,
        method: str,
        *args: Any,
        params: Params | None = None,
        per_member: bool = False,
        training: bool | None = None,
    ) -> Any:
        """Run ``model.<method>(*args)`` for every member; outputs gain a leading M dimension.

        Safe to call from several threads at once: each call runs on its own
        :func:`call_view` of the model (nothing shared is written).

        Args:
            method: method name, e.g. "forward", "loss", "user_embedding".
            args: arguments shared by all members (tensors / dicts of tensors), or with
                ``per_member`` one slice per member along a leading M dimension (member m
                gets ``arg[m]``, e.g. each member's own held-out rows).
            params: stacked parameters to use instead of the held ones (for training).
            per_member: whether ``args`` carry a leading M dimension.
            training: dropout etc. on (True) or off (False) for this call only, or None for
                the mode set by :meth:`train`.
        """
        p = self.params if params is None else params
        base = call_view(self.base, training)
        if self.members == 1:
            one = {k: v[0] for k, v in p.items()}
            bufs = {k: v[0] for k, v in self.buffers.items()}
            if per_member:
                args = torch.utils._pytree.tree_map(lambda t: t[0], args)
            out = functional_call(base, (one, bufs), (method, *args))
            return torch.utils._pytree.tree_map(lambda t: t.unsqueeze(0), out)

        def run(p_m: Params, b_m: Params, *a: Any) -> Any:
            return functional_call(base, (p_m, b_m), (method, *a))

        in_dims = (0, 0) + (0 if per_member else None,) * len(args)
        return vmap(run, in_dims=in_dims, randomness="different")(p, self.buffers, *args)

    def call_weighted(
        self, method: str, batch: Batch, weights: Tensor, *, params: Params | None = None
    ) -> Tensor:
        """``model.<method>(batch, weights[m])`` per member: e.g. bootstrap-weighted losses.

        Args:
            method: usually "loss".
            batch: shared batch.
            weights: (M, B) per-member row weights.

        Returns:
            (M,) per-member results.
        """
        p = self.params if params is None else params
        base = call_view(self.base)
        if self.members == 1:
            one = {k: v[0] for k, v in p.items()}
            bufs = {k: v[0] for k, v in self.buffers.items()}
            return functional_call(base, (one, bufs), (method, batch, weights[0])).unsqueeze(0)

        def run(p_m: Params, b_m: Params, x: Batch, w: Tensor) -> Tensor:
            return functional_call(base, (p_m, b_m), (method, x, w))

        return vmap(run, in_dims=(0, 0, None, 0), randomness="different")(
            p, self.buffers, batch, weights
        )

    def state_dict(self) -> dict[str, Tensor]:
        """Stacked parameters and buffers (for safetensors), on CPU."""
        return {
            **{f"param.{k}": v.detach().cpu() for k, v in self.params.items()},
            **{f"buffer.{k}": v.detach().cpu() for k, v in self.buffers.items()},
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> StackedModel:
        """Load tensors saved by :meth:`state_dict`; names and shapes must match."""
        for store, prefix in ((self.params, "param."), (self.buffers, "buffer.")):
            for k in store:
                key = prefix + k
                if key not in state:
                    raise KeyError(
                        f"saved weights lack '{key}': they were written by a different model "
                        "configuration"
                    )
                if state[key].shape != store[k].shape:
                    raise ValueError(
                        f"saved weights '{key}' have shape {tuple(state[key].shape)}, the model "
                        f"expects {tuple(store[k].shape)}: the config does not match the weights"
                    )
                store[k] = state[key].clone().to(self.device)
        return self

    def select(self, m: int) -> StackedModel:
        """A one-member stack holding a copy of member ``m``'s current parameters and
        buffers (the same model): e.g. to train that member on its own."""
        if not 0 <= m < self.members:
            raise IndexError(f"member {m} out of range for {self.members} members")
        out = StackedModel.__new__(StackedModel)
        out.members, out.device = 1, self.device
        out.params = {k: v[m : m + 1].detach().clone() for k, v in self.params.items()}
        out.buffers = {k: v[m : m + 1].detach().clone() for k, v in self.buffers.items()}
        out.base = copy.deepcopy(self.base)
        return out

    def member(self, m: int) -> nn.Module:
        """A standalone copy of member ``m`` (an ordinary module with real weights)."""
        if not 0 <= m < self.members:
            raise IndexError(f"member {m} out of range for {self.members} members")
        module = copy.deepcopy(self.base).to_empty(device=self.device)
        module.load_state_dict(
            {
                **{k: v[m] for k, v in self.params.items()},
                **{k: v[m] for k, v in self.buffers.items()},
            }
        )
        return module.model


def _batches(n_rows: int, batch_size: int, generator: torch.Generator | None) -> Iterator[Tensor]:
    order = torch.randperm(n_rows, generator=generator)
    for start in range(0, n_rows, batch_size):
        yield order[start : start + batch_size]


def _anchored_decay(
    leaves: list[Tensor], anchors: list[Tensor], config: TrainConfig, lr: float
) -> None:
    """Anchored weight decay towards ``anchors`` (same-shape initial values), in the
    optimiser's own convention: Adam / Adagrad (L2 through the gradient) grad += wd * (p - p0);
    AdamW (decoupled) p -= lr * wd * (p - p0) with the step's scheduled ``lr``, before the
    optimiser step. Every parameter decays every step, as with the built-in decay.
    """
    wd = config.weight_decay
    with torch.no_grad():
        for p, p0 in zip(leaves, anchors, strict=True):
            if config.optimizer == "adamw":
                p.sub_(p - p0, alpha=lr * wd)
            elif p.grad is not None:
                p.grad.add_(p - p0, alpha=wd)
            else:
                p.grad = wd * (p - p0)


def _diverged(what: str, epoch: int, config: TrainConfig) -> TrainingDivergedError:
    return TrainingDivergedError(
        f"training diverged at epoch {epoch + 1}: {what}; nothing was kept. Lower [training] "
        f"learning_rate (now {config.learning_rate:g}), set grad_clip (e.g. 1.0), or check the "
        "labels and numeric features for huge or non-finite values"
    )


def train_stacked(
    params: Params,
    batch_losses: Callable[[Params, Any], Tensor],
    n_rows: int,
    config: TrainConfig,
    *,
    validate: Callable[[Params], Tensor] | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
    description: str = "training",
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
    metric_name: str = "",
    higher_is_better: bool = False,
    batches: Callable[[int], Iterable[Any]] | None = None,
) -> History:
    """Train stacked parameters in place with early stopping.

    After each epoch the whole loop state (see :class:`_Loop`) is saved to ``checkpoint``
    and then ``on_epoch`` gets the epoch's report; a ``checkpoint`` that holds a state when
    the loop starts is loaded first and the loop continues at the next epoch, giving the same
    parameters and history as a run that was never stopped (same config, same data).

    Args:
        params: name -> (M, ...) leaf tensors; updated in place, best epoch restored.
        batch_losses: (params, batch) -> (M,) per-member mean losses; the batch is row
            indices (B,) int64, or what ``batches`` gives.
        n_rows: number of training rows (indices 0..n_rows-1 are shuffled each epoch).
        config: optimiser, schedule, epochs, batch size, patience, clipping, precision.
        validate: params -> (M,) validation metric (lower is better), run between epochs;
            without it every epoch counts as an improvement (no early stopping).
        generator: seeded generator for the shuffles (and the caller's samplers: its state is
            part of the checkpoint).
        show_progress: draw a rich progress bar (on stderr) with running loss and metric.
        description: label of the progress bar.
        on_epoch: called with an :class:`EpochReport` after each epoch (and its checkpoint).
        checkpoint: where the loop state is saved after each epoch and loaded at the start.
        metric_name: what ``validate`` measures, for the reports (e.g. "rmse", "ndcg@10").
        higher_is_better: ``validate`` returns minus the metric (e.g. minus NDCG).
        batches: epoch (0-based) -> its batches, passed to ``batch_losses`` as they are
            (e.g. dicts of streamed rows, :mod:`wager.data.streaming`) instead of shuffled
            row indices: ``ceil(n_rows / batch_size)`` of them, the same for one epoch.
    """
    if n_rows <= 0:
        raise ValueError("cannot train on 0 rows: the training split is empty")
    parallel = init_from_environment(next(iter(params.values())).device)
    main = parallel is None or parallel.main  # rank 0 alone shows, reports and saves
    if not main:
        show_progress, on_epoch = False, None
    leaves = list(params.values())
    for p in leaves:
        p.requires_grad_(True)
    opt, anchors = _stacked_optimizer(leaves, config)
    steps_per_epoch = (n_rows + config.batch_size - 1) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: lr_factor(step, total_steps, config)
    )
    loop = _Loop(params, opt, sched, anchors, generator)
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is not None:
        loop.restore(saved)
    history = loop.history
    history.processes = 1 if parallel is None else parallel.world_size
    start = time.perf_counter() - history.seconds
    step = _EpochStep(params, batch_losses, config, opt, sched, anchors, parallel, history, batches)
    progress = _progress_bar(show_progress)
    with progress:
        task = progress.add_task(
            description, total=total_steps, completed=loop.epoch * steps_per_epoch, status=""
        )
        while loop.epoch < config.epochs and not loop.stopped:
            epoch = loop.epoch
            epoch_start = time.perf_counter()
            history.train_loss.append(
                step.run(n_rows, generator, epoch, progress if show_progress else None, task)
            )
            history.epoch_seconds.append(time.perf_counter() - epoch_start)
            if not math.isfinite(history.train_loss[-1]):
                raise _diverged(f"the training loss is {history.train_loss[-1]}", epoch, config)
            metric = loop.validate(validate, epoch, config)
            if metric is not None:
                progress.update(
                    task,
                    status=f"epoch {epoch + 1} loss {history.train_loss[-1]:.4f} "
                    f"valid {float(metric.mean()):.4f}",
                )
            loop.epoch = epoch + 1
            history.seconds = time.perf_counter() - start
            if checkpoint is not None and main:
                checkpoint.save(loop.state_dict())
            if on_epoch is not None:
                seconds = time.perf_counter() - epoch_start
                on_epoch(loop.report(config.epochs, metric, seconds, metric_name, higher_is_better))
        if loop.stopped:
            progress.update(task, completed=total_steps)
    _restore(params, loop.best)
    history.seconds = time.perf_counter() - start
    return history


def _restore(params: Params, best: Params) -> None:
    """Copy each member's best parameters back into ``params`` and end their training."""
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(best[k])
            v.requires_grad_(False)


class _Loop:
    """The state of :func:`train_stacked` between epochs, and its checkpoint form.

    Attributes:
        history: what happened so far (``seconds``: loop time up to the last epoch).
        best: name -> (M, ...) each member's best parameters so far.
        best_metric: (M,) each member's best validation metric (inf before the first).
        stale: epochs since the last improvement of any member.
        epoch: epochs finished.
        stopped: early stopping ended the run (patience reached).
        best_mean: the best mean-over-members metric so far (for the reports), and
            ``best_mean_epoch`` its 1-based epoch (0 = none yet).
    """

    def __init__(
        self,
        params: Params,
        opt: torch.optim.Optimizer,
        sched: torch.optim.lr_scheduler.LRScheduler,
        anchors: list[Tensor] | None,
        generator: torch.Generator | None,
    ) -> None:
        self.params, self.opt, self.sched = params, opt, sched
        self.anchors, self.generator = anchors, generator
        self.members = next(iter(params.values())).shape[0]
        self.device = next(iter(params.values())).device
        self.history = History(best_epoch=[0] * self.members)
        self.best = {k: v.detach().clone() for k, v in params.items()}
        self.best_metric = torch.full((self.members,), float("inf"))
        self.stale = 0
        self.epoch = 0
        self.stopped = False
        self.best_mean = float("inf")
        self.best_mean_epoch = 0

    def validate(
        self, validate: Callable[[Params], Tensor] | None, epoch: int, config: TrainConfig
    ) -> Tensor | None:
        """After 0-based ``epoch``: run ``validate`` and :meth:`record` its (M,) metric
        (returned); without it, keep this epoch's parameters as every member's best."""
        if validate is None:
            self.best = {k: v.detach().clone() for k, v in self.params.items()}
            self.history.best_epoch = [epoch] * self.members
            self.best_mean_epoch = epoch + 1
            return None
        metric = _validation_metric(validate, self.params, self.history, epoch, config)
        self.record(metric, epoch, config.patience)
        return metric

    def record(self, metric: Tensor, epoch: int, patience: int) -> None:
        """Take the (M,) validation metric of 0-based ``epoch``: keep improved members'
        parameters, count stale epochs, stop at ``patience``."""
        improved = metric < self.best_metric - 1e-6
        if bool(improved.any()):
            self.stale = 0
            self.best_metric = torch.where(improved, metric, self.best_metric)
            _keep_improved(self.params, self.best, improved, self.history, epoch)
        else:
            self.stale += 1
        mean = float(metric.mean())
        if mean < self.best_mean:
            self.best_mean, self.best_mean_epoch = mean, epoch + 1
        self.stopped = self.stale >= patience

    def report(
        self,
        epochs: int,
        metric: Tensor | None,
        seconds: float,
        metric_name: str,
        higher_is_better: bool,
    ) -> EpochReport:
        """The report of the epoch just finished, whose (M,) metric is ``metric`` (or None
        without validation) and which took ``seconds``."""
        return EpochReport(
            epoch=self.epoch,
            epochs=epochs,
            loss=self.history.train_loss[-1],
            metric=None if metric is None else float(metric.mean()),
            metric_name=metric_name if metric is not None else "",
            seconds=seconds,
            best_epoch=self.best_mean_epoch,
            best_metric=None if metric is None else self.best_mean,
            higher_is_better=higher_is_better,
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything the loop needs to continue: parameters, best parameters and metrics,
        counters, history, optimiser and schedule, and the random states (the shuffle
        generator, torch's global RNG for dropout, CUDA's when the parameters are there)."""
        cpu = {k: v.detach().cpu() for k, v in self.params.items()}
        return {
            "format": 1,
            "members": self.members,
            "epoch": self.epoch,
            "stopped": self.stopped,
            "stale": self.stale,
            "best_mean": self.best_mean,
            "best_mean_epoch": self.best_mean_epoch,
            "best_metric": self.best_metric.clone(),
            "params": cpu,
            "best": {k: v.detach().cpu() for k, v in self.best.items()},
            "anchors": None if self.anchors is None else [a.cpu() for a in self.anchors],
            "history": self.history.to_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "generator": None if self.generator is None else self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": (
                torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
            ),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (the parameters in place).

        Raises:
            ValueError: the state was saved by another model (members, parameter names or
                shapes differ).
        """
        saved = state.get("params", {})
        shapes = {k: tuple(v.shape) for k, v in self.params.items()}
        if state.get("format") != 1 or {k: tuple(v.shape) for k, v in saved.items()} != shapes:
            raise ValueError(
                "the checkpoint was saved by another model (its parameters differ from this "
                "config's); delete the checkpoint to start fresh"
            )
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(saved[k])
        self.best = {k: v.to(self.device).clone() for k, v in state["best"].items()}
        if self.anchors is not None and state["anchors"] is not None:
            for a, s in zip(self.anchors, state["anchors"], strict=True):
                a.copy_(s)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.history = History(**state["history"])
        self.best_metric = state["best_metric"].clone()
        self.stale, self.epoch, self.stopped = state["stale"], state["epoch"], state["stopped"]
        self.best_mean, self.best_mean_epoch = state["best_mean"], state["best_mean_epoch"]
        if self.generator is not None and state["generator"] is not None:
            self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)


def _stacked_optimizer(
    leaves: list[Tensor], config: TrainConfig
) -> tuple[torch.optim.Optimizer, list[Tensor] | None]:
    """The optimiser of the stacked leaves, and the anchors of anchored weight decay.

    With ``config.anchored`` and a weight decay > 0 the anchors are copies of the initial
    values and the optimiser gets no decay of its own (see :func:`_anchored_decay`);
    otherwise the anchors are None.
    """
    if config.anchored and config.weight_decay > 0:
        # anchored weight decay: the decay term wd * (p - p0) replaces the optimiser's own
        anchors = [p.detach().clone() for p in leaves]
        return make_optimizer(leaves, replace(config, weight_decay=0.0)), anchors
    return make_optimizer(leaves, config), None


def _progress_bar(show_progress: bool) -> Progress:
    """The rich progress bar of :func:`train_stacked`, on stderr (stdout stays for results,
    e.g. ``--json``); disabled unless ``show_progress``."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not show_progress,
        transient=False,
    )


@dataclass
class _EpochStep:
    """One epoch of optimiser steps over shuffled batches of :func:`train_stacked`."""

    params: Params
    batch_losses: Callable[[Params, Any], Tensor]
    config: TrainConfig
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    anchors: list[Tensor] | None
    parallel: DataParallel | None = None
    history: History | None = None  # where the time in the gradient sums is added
    batches: Callable[[int], Iterable[Any]] | None = None  # see train_stacked

    def run(
        self,
        n_rows: int,
        generator: torch.Generator | None,
        epoch: int,
        progress: Progress | None,
        task: TaskID,
    ) -> float:
        """Run one epoch; return the mean over batches of the per-member mean loss.

        Args:
            n_rows: training rows, shuffled with ``generator``.
            generator: seeded generator for the shuffle.
            epoch: 0-based epoch, shown on the progress bar.
            progress: the progress bar to advance each step, or None.
            task: the bar's task.
        """
        config, opt, leaves = self.config, self.opt, list(self.params.values())
        device = leaves[0].device
        n_members = leaves[0].shape[0]
        total = torch.zeros((), device=device)
        count = 0
        source = (
            _batches(n_rows, config.batch_size, generator)
            if self.batches is None
            else self.batches(epoch)
        )
        for idx in source:
            loss = self._loss(idx, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.parallel is not None:  # the whole batch's gradient, in every process
                start = time.perf_counter()
                loss = self.parallel.reduce(leaves, loss)
                if self.history is not None:
                    self.history.reduce_seconds += time.perf_counter() - start
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(leaves, config.grad_clip)
            if self.anchors is not None:
                _anchored_decay(leaves, self.anchors, config, opt.param_groups[0]["lr"])
            opt.step()
            self.sched.step()
            total += loss.detach() / n_members
            count += 1
            if progress is not None:
                progress.update(
                    task,
                    advance=1,
                    status=f"epoch {epoch + 1} loss {float(total) / count:.4f}",
                )
        return float(total) / max(count, 1)

    def _loss(self, idx: Any, device: torch.device) -> Tensor:
        """The batch's summed per-member mean loss; in a data-parallel group, this process's
        shard's share of it (an empty shard: zero, with zero gradients). ``idx``: row
        indices, or a dict batch of equal-length arrays / tensors."""
        weight = 1.0
        if self.parallel is not None:
            if isinstance(idx, dict):
                rows, weight = self.parallel.shard(torch.arange(len(next(iter(idx.values())))))
                idx = {k: v[rows.numpy()] for k, v in idx.items()}
                empty = len(rows) == 0
            else:
                idx, weight = self.parallel.shard(idx)
                empty = idx.numel() == 0
            if empty:
                return sum(
                    (p.sum() * 0.0 for p in self.params.values()), torch.zeros((), device=device)
                )
        with autocast(device, self.config.mixed_precision):
            losses = self.batch_losses(self.params, idx)
        return losses.float().sum() * weight


def _validation_metric(
    validate: Callable[[Params], Tensor],
    params: Params,
    history: History,
    epoch: int,
    config: TrainConfig,
) -> Tensor:
    """Run ``validate`` without gradients and record its (M,) metric in ``history``.

    Returns:
        (M,) float32 CPU metric of each member (lower is better).

    Raises:
        TrainingDivergedError: some member's metric is not finite (after recording it).
    """
    with torch.no_grad():
        metric = validate(params).detach().cpu().float()
    history.valid_metric.append(metric.tolist())
    bad = torch.nonzero(~torch.isfinite(metric)).flatten().tolist()
    if bad:
        raise _diverged(f"the validation metric of members {bad} is not finite", epoch, config)
    return metric


def _keep_improved(
    params: Params, best: Params, improved: Tensor, history: History, epoch: int
) -> None:
    """Copy into ``best`` (in place) the members whose validation metric improved, and
    record ``epoch`` as their best epoch in ``history``.

    Args:
        params: name -> (M, ...) current stacked values.
        best: name -> (M, ...) best values so far; updated in place.
        improved: (M,) bool, True for members that improved this epoch.
        history: the history whose ``best_epoch`` is updated.
        epoch: the 0-based epoch just validated.
    """
    for k, v in params.items():
        mask = improved.to(v.device).view(-1, *([1] * (v.ndim - 1)))
        best[k] = torch.where(mask, v.detach(), best[k])
    for m in torch.nonzero(improved).flatten().tolist():
        history.best_epoch[m] = epoch
