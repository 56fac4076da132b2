"""Config-driven runs: load the data a run config names, split it, train, evaluate, save.

This is what ``wager train`` / ``wager evaluate`` do, as functions that notebooks and
benchmarks can call:

- :func:`load_run_data`: dataset (MovieLens, Open Bandit, a table, or the synthetic world)
  -> train / valid / test frames and feature tables, with the split the config names;
- :func:`train_run`: fit a :class:`~wager.recommender.Recommender`, evaluate it on the test
  split, save the run directory;
- :func:`evaluate_run`: reload a run directory and evaluate it on a split again.

The validation rows (``data.valid_fraction`` of the training rows) are carved out of the
training split the same way the test split was made (random rows, the latest rows, or each
user's latest interaction), so early stopping never sees the test split.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from wager.config import RunConfig
from wager.data.dataset import Dataset
from wager.data.loaders import load_dataset
from wager.data.schema import Schema
from wager.data.splits import Split, leave_last_out, random_split, split_dataset, temporal_split
from wager.data.synthetic import SyntheticWorld, WorldConfig
from wager.recommender import Recommender


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
    config: RunConfig, data_dir: str | Path | None = None, split: str | None = None
) -> RunData:
    """Load and split the data that ``config.data`` names.

    Args:
        config: the run configuration.
        data_dir: overrides ``config.data.path``.
        split: overrides ``config.data.split``.

    Raises:
        DataError: the data or the split has errors (every finding named).
    """
    data = config.data
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
    ds = replace(ds, schema=schema)
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


def train_run(
    config: RunConfig,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    show_progress: bool = False,
) -> tuple[Recommender, dict[str, Any]]:
    """Train on the config's data, evaluate on its test split, save the run directory.

    Returns:
        The fitted recommender and its metrics (also in ``out/metrics.json``).
    """
    rd = load_run_data(config, data_dir, split)
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
    rec = Recommender(cfg).fit(
        rd.train,
        rd.valid,
        user_features=rd.user_features,
        item_features=rd.item_features,
        show_progress=show_progress,
    )
    start = time.perf_counter()
    metrics = rec.evaluate(rd.test, plots_dir=out)
    metrics["evaluate_seconds"] = time.perf_counter() - start
    metrics.update(
        {
            "split": rd.split,
            "source": rd.source,
            "n_train": len(rd.train),
            "n_valid": 0 if rd.valid is None else len(rd.valid),
            "n_test": len(rd.test),
            "model": cfg.model.type,
            "epochs": rec.metrics_.get("epochs"),
            "epoch_seconds": rec.metrics_.get("epoch_seconds"),
        }
    )
    rec.metrics_.update(metrics)
    if out is not None:
        rec.save(out)
    return rec, metrics


def evaluate_run(
    run_dir: str | Path, *, data_dir: str | Path | None = None, split: str | None = None
) -> dict[str, Any]:
    """Reload a run directory and evaluate it on the test split of its config's data.

    Args:
        run_dir: a directory written by :func:`train_run` / ``wager train``.
        data_dir: overrides the data path saved in the run's config.
        split: overrides the saved split (e.g. evaluate a u1 model on u2's test rows).

    Returns:
        The metrics, with "plots_dir": the run directory itself when the split and data are
        those of training (the same plots metrics.json lists), else its subfolder
        ``evaluation-<split>`` so that the training-time plots stay as listed.
    """
    rec = Recommender.load(run_dir)
    rd = load_run_data(rec.config, data_dir, split)
    trained_on = (rec.metrics_.get("split"), rec.metrics_.get("source"))
    plots_dir = Path(run_dir)
    if trained_on != (rd.split, rd.source):
        # another split / data set: its plots must not overwrite the ones metrics.json lists
        tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(rd.split))
        plots_dir = plots_dir / f"evaluation-{tag}"
    metrics = rec.evaluate(rd.test, plots_dir=plots_dir)
    metrics.update({"split": rd.split, "source": rd.source, "n_test": len(rd.test)})
    metrics["plots_dir"] = str(plots_dir)
    return metrics
