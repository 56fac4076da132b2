"""The training loop for M stacked members (M = 1 for a single model).

Parameters are held stacked (leading member dimension, as from
``torch.func.stack_module_state``); the caller supplies a function that returns the
per-member losses of a batch, so one loop trains single models and vmapped ensembles.
Corpus-level validation runs between epochs, never inside the loss step. Early stopping is
per member: each member keeps its best epoch's parameters.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from torch import Tensor

from wager.config import TrainConfig

Params = dict[str, Tensor]


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "training.device = 'cuda' but CUDA is not available; use 'cpu' or 'auto'"
        )
    return torch.device(device)


def make_optimizer(params: list[Tensor], config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser named by ``config.optimizer``."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.Adagrad(params, lr=config.learning_rate, weight_decay=config.weight_decay)


@dataclass
class History:
    """What happened in training.

    Attributes:
        train_loss: mean training loss per epoch (averaged over members).
        valid_metric: (epochs, M) validation metric per epoch and member (lower is better).
        best_epoch: per member, the 0-based epoch whose parameters were kept.
        seconds: wall time of the loop.
    """

    train_loss: list[float] = field(default_factory=list)
    valid_metric: list[list[float]] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    seconds: float = 0.0


def train_stacked(
    params: Params,
    batch_losses: Callable[[Params, Tensor], Tensor],
    n_rows: int,
    config: TrainConfig,
    *,
    validate: Callable[[Params], Tensor] | None = None,
    generator: torch.Generator | None = None,
    show_progress: bool = False,
    description: str = "training",
) -> History:
    """Train stacked parameters in place with early stopping.

    Args:
        params: name -> (M, ...) leaf tensors; updated in place, best epoch restored.
        batch_losses: (params, row_indices (B,) int64) -> (M,) per-member mean losses.
        n_rows: number of training rows (indices 0..n_rows-1 are shuffled each epoch).
        config: optimiser, epochs, batch size, patience, clipping.
        validate: params -> (M,) validation metric (lower is better), run between epochs;
            without it every epoch counts as an improvement (no early stopping).
        generator: seeded generator for the shuffles.
        show_progress: draw a rich progress bar with running loss and validation metric.
        description: label of the progress bar.
    """
    if n_rows <= 0:
        raise ValueError("cannot train on 0 rows: the training split is empty")
    leaves = list(params.values())
    for p in leaves:
        p.requires_grad_(True)
    opt = make_optimizer(leaves, config)
    n_members = leaves[0].shape[0]
    history = History(best_epoch=[0] * n_members)
    best_metric = torch.full((n_members,), float("inf"))
    best = {k: v.detach().clone() for k, v in params.items()}
    stale = 0
    start = time.perf_counter()
    steps_per_epoch = (n_rows + config.batch_size - 1) // config.batch_size
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not show_progress,
        transient=False,
    )
    with progress:
        task = progress.add_task(description, total=steps_per_epoch * config.epochs, status="")
        for epoch in range(config.epochs):
            order = torch.randperm(n_rows, generator=generator)
            total, count = 0.0, 0
            for start_i in range(0, n_rows, config.batch_size):
                idx = order[start_i : start_i + config.batch_size]
                losses = batch_losses(params, idx)
                loss = losses.sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(leaves, config.grad_clip)
                opt.step()
                total += float(loss.detach()) / n_members
                count += 1
                progress.update(
                    task, advance=1, status=f"epoch {epoch + 1} loss {total / count:.4f}"
                )
            history.train_loss.append(total / max(count, 1))
            if validate is None:
                best = {k: v.detach().clone() for k, v in params.items()}
                history.best_epoch = [epoch] * n_members
                continue
            with torch.no_grad():
                metric = validate(params).detach().cpu().float()
            history.valid_metric.append(metric.tolist())
            improved = metric < best_metric - 1e-6
            if bool(improved.any()):
                stale = 0
                best_metric = torch.where(improved, metric, best_metric)
                for k, v in params.items():
                    mask = improved.to(v.device).view(-1, *([1] * (v.ndim - 1)))
                    best[k] = torch.where(mask, v.detach(), best[k])
                for m in torch.nonzero(improved).flatten().tolist():
                    history.best_epoch[m] = epoch
            else:
                stale += 1
            progress.update(
                task,
                status=f"epoch {epoch + 1} loss {history.train_loss[-1]:.4f} "
                f"valid {float(metric.mean()):.4f}",
            )
            if stale >= config.patience:
                progress.update(task, completed=steps_per_epoch * config.epochs)
                break
    with torch.no_grad():
        for k, v in params.items():
            v.copy_(best[k])
    history.seconds = time.perf_counter() - start
    return history
