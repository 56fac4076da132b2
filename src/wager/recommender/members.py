"""Ensemble members trained in loops of their own (``[ensemble] fit = "separate"``).

Member m starts from the same initial weights as in a stacked run (``StackedModel`` seeds
member m with ``[run] seed`` + m) and trains alone: its own shuffles, bootstrap draw,
negatives, holdout and early stopping, all seeded by ``seed + m``, its dropout draws by
the same seed, with ``[ensemble] member_threads`` torch threads. Nothing it computes
depends on the other members or on where it runs, so the members can train one after
another here or in parallel on a Ray cluster (:class:`~wager.training.fanout.RayRunner`,
``wager train --ray``) and come out identical.

A checkpoint of a separate run holds the finished members (each saved as it finishes) and,
when they train here, the current member's loop state after each epoch; a resumed run
skips the finished members and continues the current one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from wager.recommender import fitting
from wager.recommender.scoring import Batch, Scorer
from wager.recommender.spec import ModelSpec
from wager.training.checkpoint import Checkpoint, EpochHook, EpochReport
from wager.training.fanout import Runner, SequentialRunner, TaskResources
from wager.training.history import History

_FORMAT = "members-1"


@dataclass
class MemberJob:
    """What every member's loop reads (put once in Ray's object store).

    Attributes:
        scorer: the run's scorer: its spec, encoder, catalogue, and the stack whose members
            hold their initial weights.
        train_t: encoded training rows (fit rows), "weight" (n,) optional.
        fit_rows: the training rows the model fits.
        train: every training row (what validation lists exclude).
        valid: validation rows for early stopping, or None.
        base_seed: member m is seeded with ``base_seed + m``.
    """

    scorer: Scorer
    train_t: Batch
    fit_rows: pd.DataFrame
    train: pd.DataFrame
    valid: pd.DataFrame | None
    base_seed: int


@dataclass
class MemberTask:
    """One member's loop: its 0-based index, and the hooks it gets when it trains in this
    process (a checkpoint of its own loop, per-epoch reports, a progress bar)."""

    index: int
    checkpoint: Checkpoint | None = None
    on_epoch: EpochHook | None = None
    show_progress: bool = False


@dataclass
class MemberResult:
    """A trained member: its (1, ...) parameters and buffers on the CPU, and its history."""

    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    history: History


def member_spec(spec: ModelSpec, seed: int) -> ModelSpec:
    """The spec of one member trained alone: one member, seeded with ``seed``."""
    return replace(spec, members=1, config=replace(spec.config, seed=seed))


def fit_member(job: MemberJob, task: MemberTask) -> MemberResult:
    """Train member ``task.index`` of ``job`` alone; the same result in any process.

    Runs with ``[ensemble] member_threads`` torch threads and torch's global random state
    seeded with the member's seed (both restored afterwards).
    """
    scorer = job.scorer
    spec = scorer.spec
    ens = spec.config.ensemble
    assert ens is not None
    m, seed = task.index, job.base_seed + task.index
    threads = torch.get_num_threads()
    devices = [scorer.device] if scorer.device.type == "cuda" else []
    try:
        torch.set_num_threads(ens.member_threads)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            alone = Scorer(
                member_spec(spec, seed), scorer.encoder, scorer.stack.select(m), scorer.catalogue
            )
            train_t = {k: v.to(alone.device) for k, v in job.train_t.items()}
            on_epoch = task.on_epoch
            if on_epoch is not None:
                hook = on_epoch

                def on_epoch(report: EpochReport) -> None:
                    hook(replace(report, member=m + 1, members=spec.members))

            history, _ = fitting.train_stack(
                alone,
                train_t,
                job.fit_rows,
                job.train,
                job.valid,
                task.show_progress,
                on_epoch,
                task.checkpoint,
                description=f"member {m + 1}/{spec.members}",
            )
    finally:
        torch.set_num_threads(threads)
    stack = alone.stack
    return MemberResult(
        {k: v.detach().cpu() for k, v in stack.params.items()},
        {k: v.detach().cpu() for k, v in stack.buffers.items()},
        history,
    )


def train_separately(
    scorer: Scorer,
    train_t: Batch,
    fit_rows: pd.DataFrame,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    runner: Runner | None = None,
    show_progress: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
) -> History:
    """Train each of the scorer's members in a loop of its own (see the module docstring),
    on ``runner`` (default: here, one after another); the trained members replace the
    stack's, and the cold-start step follows. Returns the merged history.

    With a runner other than the sequential one, each member's epoch reports reach
    ``on_epoch`` when the member finishes (its loop ran elsewhere), and the checkpoint
    keeps finished members only.
    """
    runner = runner or SequentialRunner()
    here = isinstance(runner, SequentialRunner)
    spec, stack = scorer.spec, scorer.stack
    ens = spec.config.ensemble
    assert ens is not None
    seed = spec.config.seed
    base_seed = seed if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    saved = _Saved(checkpoint, spec.members, base_seed)
    base_seed = saved.base_seed  # a resumed run goes on with the seeds it started with
    done = saved.done()
    start = time.perf_counter() - saved.seconds
    tasks = [
        MemberTask(m) if not here else MemberTask(m, saved.member(m), on_epoch, show_progress)
        for m in range(spec.members)
        if m not in done
    ]
    if not here:  # a CPU copy crosses to the workers
        train_t = {k: v.cpu() for k, v in train_t.items()}
    job = MemberJob(scorer, train_t, fit_rows, train, valid, base_seed)
    gpus = 1.0 if scorer.device.type == "cuda" and not here else 0.0
    resources = TaskResources(cpus=ens.member_threads, gpus=gpus)
    for i, result in runner.run(fit_member, tasks, job, resources):
        m = tasks[i].index
        done[m] = result
        saved.finish(m, result, time.perf_counter() - start)
        if not here and on_epoch is not None:
            for report in member_reports(result.history, spec, m):
                on_epoch(report)
    with torch.no_grad():
        for store, part in ((stack.params, "params"), (stack.buffers, "buffers")):
            for k in store:
                rows = [getattr(done[m], part)[k] for m in range(spec.members)]
                store[k] = torch.cat(rows).to(stack.device)
    stack.train(False)  # dropout off: the trained members predict
    history = History.merge(
        [done[m].history for m in range(spec.members)], time.perf_counter() - start
    )
    gen = torch.Generator().manual_seed(base_seed)
    fitting.finish_cold_start(scorer, gen)
    return history


def member_reports(history: History, spec: ModelSpec, m: int) -> list[EpochReport]:
    """The epoch reports of member ``m``'s finished loop, rebuilt from its history (for
    a member that trained elsewhere); ``seconds`` are the epochs' training steps."""
    metric_name = fitting.validation_metric_name(spec)
    reports, best, best_epoch = [], None, 0
    for e, loss in enumerate(history.train_loss):
        metric = history.valid_metric[e][0] if e < len(history.valid_metric) else None
        if metric is not None and (best is None or metric < best):
            best, best_epoch = metric, e + 1
        reports.append(
            EpochReport(
                epoch=e + 1,
                epochs=spec.config.training.epochs,
                loss=loss,
                metric=metric,
                metric_name=metric_name if metric is not None else "",
                seconds=history.epoch_seconds[e],
                best_epoch=best_epoch,
                best_metric=best,
                higher_is_better=spec.ranking,
                member=m + 1,
                members=spec.members,
            )
        )
    return reports


class _Saved:
    """The checkpoint of a separate run: ``{"format", "base_seed", "epoch", "seconds",
    "done": {m: {"params", "buffers", "history"}}, "member": m or -1, "loop": that member's
    loop state or None}``; "epoch" counts the epochs finished over all members (for the
    marker)."""

    def __init__(self, checkpoint: Checkpoint | None, members: int, base_seed: int) -> None:
        self.checkpoint, self.members = checkpoint, members
        state = checkpoint.load() if checkpoint is not None else None
        if state is not None and (state.get("format") != _FORMAT or len(state["done"]) > members):
            raise ValueError(
                "the checkpoint was saved by another model (not an ensemble of "
                f"{members} members trained separately); delete it to start fresh"
            )
        self.state: dict[str, Any] = state or {
            "format": _FORMAT,
            "base_seed": base_seed,
            "epoch": 0,
            "seconds": 0.0,
            "done": {},
            "member": -1,
            "loop": None,
        }

    @property
    def base_seed(self) -> int:
        """Member m's seed is this + m."""
        return int(self.state["base_seed"])

    @property
    def seconds(self) -> float:
        """Wall time spent before the stop."""
        return float(self.state["seconds"])

    def done(self) -> dict[int, MemberResult]:
        """The finished members."""
        return {
            int(m): MemberResult(r["params"], r["buffers"], History(**r["history"]))
            for m, r in self.state["done"].items()
        }

    def member(self, m: int) -> Checkpoint | None:
        """Member ``m``'s loop checkpoint, inside this one (None without a checkpoint)."""
        return None if self.checkpoint is None else _MemberLoop(self, m)

    def finish(self, m: int, result: MemberResult, seconds: float) -> None:
        """Keep finished member ``m``; its loop state is no longer needed."""
        state = self.state
        state["done"][m] = {
            "params": result.params,
            "buffers": result.buffers,
            "history": result.history.to_dict(),
        }
        state["member"], state["loop"], state["seconds"] = -1, None, seconds
        state["epoch"] = self._epochs()
        state["progress"] = self._progress(self.members)
        if self.checkpoint is not None:
            self.checkpoint.save(state)

    def save_loop(self, m: int, loop: dict[str, Any]) -> None:
        """Keep member ``m``'s loop state (after one of its epochs)."""
        self.state["member"], self.state["loop"] = m, loop
        self.state["epoch"] = self._epochs()
        self.state["progress"] = self._progress(self.members)
        assert self.checkpoint is not None
        self.checkpoint.save(self.state)

    def _progress(self, members: int) -> str:
        """The checkpoint's content in words, for the interrupted run's message."""
        state = self.state
        text = f"{len(state['done'])} of {members} members finished"
        if state["loop"] is not None:
            text += f" and member {state['member'] + 1}'s epoch {state['loop']['epoch']}"
        return text

    def _epochs(self) -> int:
        done = sum(len(r["history"]["train_loss"]) for r in self.state["done"].values())
        loop = self.state["loop"]
        return done + (int(loop["epoch"]) if loop is not None else 0)


@dataclass
class _MemberLoop:
    """Member ``m``'s view of a separate run's checkpoint (a :class:`Checkpoint`)."""

    saved: _Saved
    m: int

    def load(self) -> dict[str, Any] | None:
        state = self.saved.state
        return state["loop"] if state["member"] == self.m else None

    def save(self, state: dict[str, Any]) -> None:
        self.saved.save_loop(self.m, state)
