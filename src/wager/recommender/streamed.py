"""Fitting on training rows streamed from Parquet (``[data] stream = true``).

:func:`fit_streamed` is :meth:`Recommender.fit_stream`'s work: the encoders from the first
pass (exact id counts, a uniform sample for the context encoders), the catalogue from its
items, the members built as in memory, and :func:`train_streamed`, the training loop over
each epoch's stream of shuffled batches (:class:`~wager.data.streaming.StreamedRows`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from wager.config import RunConfig
from wager.data.features import InteractionEncoder, categorical_keys
from wager.data.loaders.table import coerce_roles
from wager.data.schema import Schema
from wager.data.streaming import ParquetSource, StreamedRows, memory_plan, scan
from wager.recommender import fitting
from wager.recommender.catalogue import Catalogue
from wager.recommender.scoring import Scorer, to_tensors
from wager.recommender.spec import ModelSpec
from wager.training.checkpoint import Checkpoint, EpochHook
from wager.training.history import History
from wager.training.trainer import resolve_device
from wager.uncertainty.ensemble import row_bootstrap_weights


def open_stream(
    config: RunConfig, schema: Schema, path: str | Path, show_progress: bool = False
) -> StreamedRows:
    """The Parquet source at ``path`` with the schema's columns, its memory plan checked
    against ``[data] memory_budget_mb`` (from the files' metadata, before any row is read),
    then its first pass (:func:`~wager.data.streaming.scan`, a progress bar with
    ``show_progress``).

    Raises:
        ValueError: the plan exceeds the budget (naming each part and what to change).
        DataError: the files (see :class:`~wager.data.streaming.ParquetSource`) or a row
            group's rows (see :func:`~wager.data.streaming.scan`).
    """
    data = config.data
    roles = (schema.user, schema.item, schema.label, schema.weight, schema.impressions)
    columns = [c for c in roles if c is not None] + [f.name for f in schema.context]
    source = ParquetSource(path, columns)
    seed = config.seed if config.seed is not None else 0
    plan = memory_plan(
        source,
        valid_fraction=data.valid_fraction,
        test_fraction=data.test_fraction,
        buffer_rows=data.shuffle_buffer,
        batch_rows=config.training.batch_size,
        sample_rows=data.stream_sample_rows,
        encoded_row_bytes=8 * (3 + len(schema.context)) + 12,
    )
    budget = data.memory_budget_mb * 2**20
    if sum(plan.values()) > budget:
        parts = ", ".join(f"{k} {v / 2**20:.0f} MiB" for k, v in plan.items())
        raise ValueError(
            f"[data] memory_budget_mb = {data.memory_budget_mb}: streaming {source.path} "
            f"({source.n_rows:,} rows) would need about {sum(plan.values()) / 2**20:.0f} MiB "
            f"({parts}). Lower [data] shuffle_buffer, valid_fraction / test_fraction (their "
            "rows are kept in memory) or stream_sample_rows, write smaller row groups, or "
            "raise memory_budget_mb"
        )
    with _scan_progress(show_progress, source.n_rows) as advance:
        found = scan(
            source,
            schema,
            seed=seed,
            valid_fraction=data.valid_fraction,
            test_fraction=data.test_fraction,
            sample_rows=data.stream_sample_rows,
            coerce=lambda df: coerce_roles(df, schema),
            on_group=advance,
        )
    return StreamedRows(
        source, found, seed, data.valid_fraction, data.test_fraction, data.shuffle_buffer
    )


@contextlib.contextmanager
def _scan_progress(show: bool, rows: int) -> Iterator[Callable[[int], None]]:
    """A progress bar over the rows of a first pass (on stderr; nothing unless ``show``);
    yields the callback that advances it."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]reading the stream"), BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,} rows"), TimeElapsedColumn(),
        console=Console(stderr=True), disable=not show,
    )  # fmt: skip
    with bar:
        task = bar.add_task("scan", total=rows)
        yield lambda n: bar.update(task, advance=n)


def fit_streamed(
    spec: ModelSpec,
    rows: StreamedRows,
    show_progress: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[InteractionEncoder, Scorer, History]:
    """Fit the encoders and catalogue from ``rows``' first pass and train fresh members on
    its stream; returns the fitted encoder, the scorer and the training history."""
    s, config = spec.schema, spec.config
    scan = rows.scan
    valid = scan.valid
    mc = config.model
    enc = InteractionEncoder.from_schema(s, mc.user_min_count, mc.item_min_count)
    enc.fit_counts(scan.user_counts, scan.item_counts, scan.sample)
    label_mean = scan.label_mean if spec.task == "rating" else 0.0
    more_users: list[object] = []
    more_items: list[object] = []
    if valid is not None:
        more_users = list(categorical_keys(valid[s.user]).dropna())
        more_items = list(categorical_keys(valid[s.item]).dropna())
    catalogue = Catalogue.from_counts(
        scan.item_counts, [*scan.user_counts.index, *more_users], more_items, label_mean
    )
    device = resolve_device(config.training.device)
    stack = fitting.build_stack(spec, fitting.fields_of(enc), label_mean, device, catalogue.n_items)
    scorer = Scorer(spec, enc, stack, catalogue)
    batches = rows.batches(enc.transform, config.training.batch_size)
    history = train_streamed(
        scorer, batches, scan.train_rows, valid, show_progress, on_epoch, checkpoint
    )
    return enc, scorer, history


def train_streamed(
    scorer: Scorer,
    batches: Callable[[int], Iterable[dict[str, np.ndarray]]],
    n_rows: int,
    valid: pd.DataFrame | None,
    show_progress: bool = False,
    on_epoch: EpochHook | None = None,
    checkpoint: Checkpoint | None = None,
) -> History:
    """Train the scorer's stacked members on streamed batches, in place (rating and click
    models); returns the training history.

    Args:
        scorer: the scorer over the freshly built (untrained) members.
        batches: epoch -> batches of encoded rows, each with "row" (B,) the rows' numbers
            (see :class:`~wager.data.streaming.StreamedRows`).
        n_rows: training rows per epoch.
        valid: validation rows for early stopping, or None.
        show_progress: draw a progress bar.
        on_epoch: called after each epoch with its report.
        checkpoint: where the loop keeps its state between epochs (and resumes from).

    Each member weights a row by a Poisson(1) count drawn from (seed, member, row number)
    (:func:`~wager.uncertainty.ensemble.row_bootstrap_weights`); ids are set to OOV with
    ``[model] oov_rate`` as in memory.
    """
    spec, stack = scorer.spec, scorer.stack
    config = spec.config
    seed = config.seed if config.seed is not None else 0
    gen = torch.Generator().manual_seed(seed)
    ens = config.ensemble
    bootstrap = ens is not None and ens.bootstrap
    device = scorer.device
    validate: fitting.Validator | None = None
    if valid is not None and len(valid):
        valid_t = to_tensors(scorer.encoder.transform(valid), device)
        valid_t.pop("weight", None)
        validate = fitting.pointwise_validator(scorer, valid_t, None)
    s = spec.schema
    ids = [f"user.{s.user}", f"item.{s.item}"]
    rate = config.model.oov_rate

    def batch_losses(p: dict[str, Tensor], arrays: dict[str, np.ndarray]) -> Tensor:
        rows = arrays["row"]
        batch = to_tensors({k: v for k, v in arrays.items() if k != "row"}, device)
        row_w = batch.pop("weight", torch.ones(len(rows), device=device))
        member_w = row_bootstrap_weights(row_w, rows, spec.members, bootstrap, seed)
        drop = fitting.PointwiseSampler(batch, [k for k in ids if k in batch], rate, gen)
        return stack.call_weighted(
            "loss", drop(torch.arange(len(rows))), member_w.to(device), params=p
        )

    history = fitting.run_loop(
        scorer, batch_losses, n_rows, validate, gen, show_progress, on_epoch, checkpoint,
        batches=batches,
    )  # fmt: skip
    fitting.finish_cold_start(scorer, gen)
    return history
