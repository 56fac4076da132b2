"""Config-driven runs: load the data a run config names, split it, train, evaluate, save
(what ``wager train`` / ``wager evaluate`` do; see :mod:`wager.pipeline`).

The validation rows (``data.valid_fraction`` of the training rows) are carved out of the
training split the same way the test split was made (random rows, the latest rows, or each
user's latest interaction), so early stopping never sees the test split.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from wager.config import RunConfig
from wager.data.dataset import Dataset
from wager.data.duplicates import resolve_duplicates
from wager.data.loaders import load_dataset
from wager.data.schema import Schema
from wager.data.splits import Split, leave_last_out, random_split, split_dataset, temporal_split
from wager.data.streaming import StreamedRows
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.recommender import ModelSpec, Recommender
from wager.recommender.streamed import open_stream
from wager.runs import CheckpointDirectory, RunDirectory
from wager.training.checkpoint import EpochHook
from wager.training.distributed import torchrun_rank
from wager.training.fanout import Runner


@dataclass
class RunData:
    """The frames a run trains and evaluates on.

    Attributes:
        train: training rows (validation rows removed).
        valid: validation rows (early stopping), or None when ``valid_fraction`` is 0.
        test: test rows.
        user_features: user feature table, or None.
        item_features: item feature table, or None.
        schema: the schema used (the config's, or the loader's suggestion).
        source: where the data came from.
        split: the split's name.
    """

    train: pd.DataFrame
    valid: pd.DataFrame | None
    test: pd.DataFrame
    user_features: pd.DataFrame | None
    item_features: pd.DataFrame | None
    schema: Schema
    source: str
    split: str
    stream: StreamedRows | None = None

    @property
    def n_train(self) -> int:
        """Training rows (a streamed run's: counted by its first pass)."""
        return self.stream.scan.train_rows if self.stream is not None else len(self.train)


def _load(config: RunConfig, data_dir: str | Path | None) -> Dataset:
    data = config.data
    if data.format == "synthetic":
        world = synthetic_world(config)
        log = world.sample_log(data.synthetic_rows, seed=config.seed)
        return Dataset(
            interactions=log,
            schema=world.schema(),
            user_features=world.users,
            item_features=world.items,
            source="synthetic world",
        )
    path = data_dir if data_dir is not None else data.path
    if path is None:
        raise ValueError(
            "[data] path is not set: give the dataset location in the config or with --data-dir"
        )
    return load_dataset(path, data.format, config.schema)


def synthetic_world(config: RunConfig) -> SyntheticWorld:
    """The synthetic world that ``format = "synthetic"`` draws its log from.

    Built from ``[data] synthetic_users`` and the run's seed, so the same config gives the
    same world (its true CTRs and catalogue) to whoever rebuilds it.
    """
    seed = config.seed if config.seed is not None else 0
    return SyntheticWorld(WorldConfig(n_users=config.data.synthetic_users, seed=seed))


def _carve(split_name: str, df: pd.DataFrame, schema: Schema, fraction: float, seed: int) -> Split:
    """Validation rows from the training rows, made the same way as the test split."""
    src = "training split"
    if split_name == "temporal" and schema.timestamp is not None:
        return temporal_split(df, schema, test_fraction=fraction, source=src)
    if split_name == "leave-last-out" and schema.timestamp is not None:
        return leave_last_out(df, schema, n=1, source=src)
    return random_split(df, schema, test_fraction=fraction, seed=seed, source=src)


def load_run_data(
    config: RunConfig,
    data_dir: str | Path | None = None,
    split: str | None = None,
    show_progress: bool = False,
) -> RunData:
    """Load and split the data that ``config.data`` names (``[data] stream``: open the
    Parquet source and make the first pass over it, see :func:`_stream_run_data`).

    Args:
        config: the run configuration.
        data_dir: overrides ``config.data.path``.
        split: overrides ``config.data.split``.
        show_progress: draw a progress bar over a streamed source's first pass.

    Raises:
        DataError: the data or the split has errors (every finding named).
    """
    data = config.data
    if data.stream:
        return _stream_run_data(config, data_dir, split, show_progress)
    split_name = split or data.split
    ds = _load(config, data_dir)
    schema = config.schema or ds.schema
    if not data.user_features:
        schema = replace(schema, user_features=())
    if not data.item_features:
        schema = replace(schema, item_features=())
    if data.drop_features:
        # names absent from this dataset are ignored, so one config serves every layout
        schema = replace(
            schema,
            user_features=tuple(
                f for f in schema.user_features if f.name not in data.drop_features
            ),
            item_features=tuple(
                f for f in schema.item_features if f.name not in data.drop_features
            ),
        )
    ds = resolve_duplicates(replace(ds, schema=schema), data.duplicates)
    seed = config.seed if config.seed is not None else 0
    sp = split_dataset(ds, split_name, seed=seed, test_fraction=data.test_fraction)
    sp.report.raise_if_errors()
    train, valid = sp.train, None
    if data.valid_fraction > 0:
        carved = _carve(split_name, sp.train, schema, data.valid_fraction, seed)
        carved.report.raise_if_errors()
        train, valid = carved.train, carved.test
    return RunData(
        train=train,
        valid=valid,
        test=sp.test,
        user_features=ds.user_features if schema.user_features else None,
        item_features=ds.item_features if schema.item_features else None,
        schema=schema,
        source=ds.source,
        split=split_name,
    )


def _stream_run_data(
    config: RunConfig, data_dir: str | Path | None, split: str | None, show_progress: bool
) -> RunData:
    """``[data] stream = true``: the Parquet source and its first pass
    (:func:`~wager.recommender.streamed.open_stream`); ``train`` is empty (the rows stay on
    disk), ``stream`` holds them."""
    data, schema = config.data, config.schema
    if schema is None:
        raise ValueError(
            "[data] stream = true needs the [schema] section (column names and label kind): "
            "a stream is not loaded, so no loader can suggest one"
        )
    if split not in (None, "random"):
        raise ValueError(f"--split {split}: a streamed run splits at random (hashed) only")
    path = data_dir if data_dir is not None else data.path
    if path is None:
        raise ValueError(
            "[data] path is not set: give the Parquet file or folder in the config or with "
            "--data-dir"
        )
    rows = open_stream(config, schema, path, show_progress)
    return RunData(
        train=rows.scan.sample.iloc[:0],
        valid=rows.scan.valid,
        test=rows.scan.test,
        user_features=None,
        item_features=None,
        schema=schema,
        source=str(rows.source.path),
        split="random",
        stream=rows,
    )


def check_run(
    config: RunConfig, out: str | Path | None, overwrite: bool = False, resume: bool = False
) -> None:
    """Everything about a run that can be checked before any data is read: the config's
    cross-section rules (when it names its schema), the output folder and its checkpoint.

    Raises:
        ValueError: a config rule, naming section and key; ``resume`` without ``out``.
        RunError: the output folder would lose or expose files (see ``RunDirectory``); a
            checkpoint of a stopped run is there and ``resume`` is False, or none and it is
            True (see ``CheckpointDirectory.check_start``).
    """
    if config.schema is not None:
        ModelSpec.from_config(config).validate()
    if out is None:
        if resume:
            raise ValueError("resume=True needs the run folder out= whose checkpoint to resume")
        return
    RunDirectory(out).check_target(overwrite)
    CheckpointDirectory(out).check_start(resume)


def run_identity(config: RunConfig, rd: RunData) -> dict[str, Any]:
    """What a checkpoint records of its run, so that ``--resume`` refuses another one: the
    config (as TOML writes it, ``[data] path`` left out: the data are compared by content)
    with its canonical SHA-256, and a fingerprint of the training data (every row of the
    train / valid frames and feature tables, hashed with pandas).

    Args:
        config: the run config after the data's schema and any ``--data-dir`` / ``--split``.
        rd: the run's data.
    """
    cfg = config.to_dict()
    cfg.get("data", {}).pop("path", None)
    canonical = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    h = hashlib.sha256()
    if rd.stream is not None:  # the rows stay on disk: their files' names, sizes and times
        h.update(json.dumps(rd.stream.source.fingerprint()).encode())
    frames = (rd.train, rd.valid, rd.user_features, rd.item_features)
    for name, frame in zip(("train", "valid", "users", "items"), frames, strict=True):
        h.update(name.encode())
        if frame is None:
            continue
        h.update(json.dumps([list(map(str, frame.columns)), len(frame)]).encode())
        for column in frame.columns:
            values = frame[column]
            try:
                hashed = pd.util.hash_pandas_object(values, index=False)
            except TypeError:  # unhashable cells (lists of a multi-valued feature)
                hashed = pd.util.hash_pandas_object(values.astype(str), index=False)
            h.update(hashed.to_numpy().tobytes())
    return {
        "config": json.loads(canonical),
        "config_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        "training data": {
            "train_rows": rd.n_train,
            "valid_rows": 0 if rd.valid is None else len(rd.valid),
            "sha256": h.hexdigest(),
        },
    }


def train_run(
    config: RunConfig,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    show_progress: bool = False,
    overwrite: bool = False,
    resume: bool = False,
    on_epoch: EpochHook | None = None,
    runner: Runner | None = None,
) -> tuple[Recommender, dict[str, Any]]:
    """Check the run, train on the config's data, evaluate on its test split and save the
    run folder (whole, with the evaluation's plots, or not at all).

    With ``out``, the training loop saves each finished epoch to the run's checkpoint (the
    hidden sibling ``.NAME.checkpoint``, see :class:`~wager.runs.CheckpointDirectory`),
    removed once the run folder is saved; ``resume`` continues a stopped run from it.

    Args:
        config: the run config.
        data_dir: overrides ``[data] path``.
        split: overrides ``[data] split``.
        out: the run folder to write, or None (nothing saved).
        show_progress: draw progress bars.
        overwrite: replace a previous run at ``out``.
        resume: continue the stopped run to ``out`` from its checkpoint (same config and
            data, or a RunError naming what differs).
        on_epoch: called with each epoch's report (e.g. to print a log line).
        runner: where separately fitted members train (a Ray runner), or None (here).

    Under torchrun (``wager train --nproc N``) every process trains (reading the checkpoint
    to resume from); rank 0 alone checks ``out``, evaluates and saves.

    Returns:
        The fitted recommender and its metrics (also in ``out/metrics.json``).
    """
    main = torchrun_rank() == 0
    if main:
        check_run(config, out, overwrite, resume)
    rd = load_run_data(config, data_dir, split, show_progress)
    cfg = replace(config, schema=rd.schema)
    if data_dir is not None or split is not None:
        cfg = replace(
            cfg,
            data=replace(
                cfg.data,
                path=str(data_dir) if data_dir is not None else cfg.data.path,
                split=rd.split,
            ),
        )
    rec = Recommender(cfg)
    rec.spec.validate()  # the loader's schema: still before any epoch
    checkpoint = None if out is None else CheckpointDirectory(out, run_identity(cfg, rd))
    if checkpoint is not None and resume:
        checkpoint.check_identity()
    hooks = {"show_progress": show_progress, "on_epoch": on_epoch, "checkpoint": checkpoint}
    if rd.stream is not None:  # the spec refused --ray's separate members already
        rec.fit_stream(rd.stream, **hooks)  # type: ignore[arg-type]
    else:
        rec.fit(
            rd.train,
            rd.valid,
            user_features=rd.user_features,
            item_features=rd.item_features,
            runner=runner,
            **hooks,  # type: ignore[arg-type]
        )
    metrics: dict[str, Any] = {}
    if not main:
        return rec, metrics

    def evaluate(plots_dir: Path | None) -> None:
        start = time.perf_counter()
        metrics.update(rec.evaluate(rd.test, plots_dir=plots_dir))
        metrics["evaluate_seconds"] = time.perf_counter() - start
        metrics.update(
            {
                "split": rd.split,
                "source": rd.source,
                "n_train": rd.n_train,
                "n_valid": 0 if rd.valid is None else len(rd.valid),
                "n_test": len(rd.test),
                "model": cfg.model.type,
                "epochs": rec.metrics_.get("epochs"),
                "epoch_seconds": rec.metrics_.get("epoch_seconds"),
                "processes": rec.metrics_.get("processes", 1),
                "reduce_seconds": rec.metrics_.get("reduce_seconds", 0.0),
                "trained_on": "sequential" if runner is None else runner.name,
            }
        )
        rec.metrics_.update(metrics)

    if out is None:
        evaluate(None)
    else:
        rec.save(out, overwrite=overwrite, prepare=evaluate)
        if checkpoint is not None:
            checkpoint.remove()  # the run is saved: its checkpoint is done with
    return rec, metrics


def evaluate_run(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    recommender: Recommender | None = None,
) -> dict[str, Any]:
    """Reload a run folder and evaluate it on the test split of its config's data.

    Args:
        run_dir: a folder written by :func:`train_run` / ``wager train``.
        data_dir: overrides the data path saved in the run's config.
        split: overrides the saved split (e.g. evaluate a u1 model on u2's test rows).
        recommender: the run already loaded from ``run_dir`` (the CLI loads it first, to
            report a damaged run apart from the evaluation); loaded here when None.

    Returns:
        The metrics, with "plots_dir": the run's subfolder ``evaluation-<split>`` where the
        plots were drawn (recorded in the run's manifest), so the training-time plots that
        metrics.json lists stay as they are.
    """
    rec = recommender if recommender is not None else Recommender.load(run_dir)
    rd = load_run_data(rec.config, data_dir, split)
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(rd.split))
    run = RunDirectory(run_dir)
    plots_dir = run.subfolder(f"evaluation-{tag}")
    metrics = rec.evaluate(rd.test, plots_dir=plots_dir)
    run.record(plots_dir.name)
    metrics.update({"split": rd.split, "source": rd.source, "n_test": len(rd.test)})
    metrics["plots_dir"] = str(plots_dir)
    return metrics


def calibrate_run(
    run_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    recommender: Recommender | None = None,
) -> dict[str, Any]:
    """Refit the post-hoc chain of a saved run on new calibration rows, without retraining
    (scikit-learn's "prefit" pattern), evaluate it and replace the run folder atomically.

    The calibration rows are the validation rows of the data and split named (the run's own
    by default): ``[data] valid_fraction`` of that split's training rows, carved as at
    training time. The weights, encoders and catalogue stay as they are; the chain's steps
    are those of the run's ``[uncertainty]`` config.

    Args:
        run_dir: a folder written by :func:`train_run` / ``wager train``.
        data_dir: overrides the data path saved in the run's config.
        split: overrides the saved split.
        recommender: the run already loaded from ``run_dir``; loaded here when None.

    Returns:
        The test metrics after recalibration, with "chain" (the fitted steps, e.g.
        "local_variance+conformal+relevance"), "calibration_rows" and the split / source.

    Raises:
        ValueError: the split has no validation rows (``[data] valid_fraction`` is 0).
    """
    rec = recommender if recommender is not None else Recommender.load(run_dir)
    rd = load_run_data(rec.config, data_dir, split)
    if rd.valid is None or not len(rd.valid):
        raise ValueError(
            f"{rd.source} (split {rd.split!r}) has no validation rows to calibrate on: set "
            "[data] valid_fraction > 0 in the run's config.toml"
        )
    rec.calibrate(rd.valid, rd.train)
    metrics: dict[str, Any] = {}

    def evaluate(folder: Path) -> None:
        metrics.update(rec.evaluate(rd.test, plots_dir=folder))
        metrics.update(
            {
                "split": rd.split,
                "source": rd.source,
                "n_test": len(rd.test),
                "calibration_rows": len(rd.valid) if rd.valid is not None else 0,
                "chain": rec.chain_.kind,
            }
        )
        rec.metrics_.update(metrics)
        rec.metrics_["calibrated_on"] = {
            "source": rd.source,
            "split": rd.split,
            "rows": metrics["calibration_rows"],
        }

    rec.save(run_dir, overwrite=True, prepare=evaluate)
    return metrics
