"""Saving and loading a fitted recommender as a run folder (via :class:`~wager.runs.RunDirectory`).

Files: ``config.toml``, ``weights.safetensors``, ``encoders.json``, ``user_features.parquet``
/ ``item_features.parquet`` (when the model has feature tables; items added after fit included),
``catalogue.npz`` (the current catalogue: its items, retired ids and their seen columns),
``uncertainty.json`` (the post-hoc chain and the population cold-start draws),
``metrics.json``, the plots of the evaluation, and ``manifest.json`` with their checksums.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from wager.config import RunConfig
from wager.data.features import InteractionEncoder
from wager.recommender import fitting
from wager.recommender.catalogue import Catalogue
from wager.recommender.scoring import Scorer
from wager.runs import RunDirectory, RunError
from wager.training.trainer import resolve_device

if TYPE_CHECKING:
    from wager.recommender.facade import Recommender

RUN_FILES = {
    "config": "config.toml",
    "weights": "weights.safetensors",
    "encoders": "encoders.json",
    "user_features": "user_features.parquet",
    "item_features": "item_features.parquet",
    "catalogue": "catalogue.npz",
    "metrics": "metrics.json",
    "uncertainty": "uncertainty.json",
}


def _json_writer(obj: Any, indent: int | None = 1) -> Any:
    def write(p: Path) -> None:
        p.write_text(json.dumps(obj, indent=indent, default=float), encoding="utf-8")

    return write


def _table_writer(table: pd.DataFrame) -> Any:
    def write(p: Path) -> None:
        out = table.copy()
        out.index = out.index.astype(str)
        out.to_parquet(p)

    return write


def save(
    rec: Recommender,
    directory: Path,
    *,
    overwrite: bool = False,
    prepare: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``rec`` as a run folder at ``directory`` (whole or not at all). ``prepare``
    is called first with the folder being written (e.g. to evaluate with its plots drawn
    there, updating ``rec.metrics_``); metrics.json is written after it. Returns the folder."""
    scorer = rec.scorer_
    enc = scorer.encoder
    state = {k: v.contiguous() for k, v in scorer.stack.state_dict().items()}
    post_hoc = rec.chain_.state_dict()
    if scorer.population_picks:
        post_hoc["population_picks"] = {k: v.tolist() for k, v in scorer.population_picks.items()}
    writers = {
        RUN_FILES["config"]: rec.config.save,
        RUN_FILES["weights"]: lambda p: save_file(state, str(p)),
        RUN_FILES["encoders"]: _json_writer(enc.state_dict()),
        RUN_FILES["catalogue"]: scorer.catalogue.save,
        RUN_FILES["uncertainty"]: _json_writer(post_hoc),
        RUN_FILES["metrics"]: lambda p: _json_writer(rec.metrics_, indent=2)(p),
    }
    for name, table in (("user_features", enc.users.table_), ("item_features", enc.items.table_)):
        if table is not None:
            writers[RUN_FILES[name]] = _table_writer(table)
    RunDirectory(directory).write(
        writers, overwrite=overwrite, prepare=prepare, extra={"model": rec.config.model.type}
    )
    return directory


def load(cls: type[Recommender], directory: Path, device: str | None = None) -> Recommender:
    """Verify and read the run folder at ``directory`` (RunError names what is wrong)."""
    run = RunDirectory(directory)
    files = run.verify()
    for key in ("config", "weights", "encoders", "catalogue", "uncertainty", "metrics"):
        if RUN_FILES[key] not in files:
            raise RunError(f"{directory}: the run has no {RUN_FILES[key]}; retrain the run")
    config = RunConfig.load(directory / RUN_FILES["config"], device=device)
    rec = cls(config)
    rec.spec.validate()
    try:
        tables = {
            name: pd.read_parquet(directory / RUN_FILES[name]) if RUN_FILES[name] in files else None
            for name in ("user_features", "item_features")
        }
        enc = InteractionEncoder.from_state_dict(
            json.loads((directory / RUN_FILES["encoders"]).read_text(encoding="utf-8")),
            tables["user_features"],
            tables["item_features"],
        )
        catalogue = Catalogue.load(directory / RUN_FILES["catalogue"])
        stack = fitting.build_stack(
            rec.spec,
            fitting.fields_of(enc),
            catalogue.label_mean,
            resolve_device(config.training.device),
            catalogue.n_items,
        )
        stack.load_state_dict(load_file(str(directory / RUN_FILES["weights"])))
        stack.train(False)
        post_hoc = json.loads((directory / RUN_FILES["uncertainty"]).read_text(encoding="utf-8"))
        picks = post_hoc.get("population_picks")
        rec.chain_.load_state_dict(post_hoc, source=str(directory / RUN_FILES["uncertainty"]))
        rec.metrics_ = json.loads((directory / RUN_FILES["metrics"]).read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        if isinstance(exc, RunError):
            raise
        raise RunError(f"{directory}: the run cannot be read ({exc}); retrain the run") from exc
    rec.encoder_ = enc
    rec._scorer = Scorer(
        rec.spec,
        enc,
        stack,
        catalogue,
        {k: torch.tensor(v, dtype=torch.int64) for k, v in picks.items()} if picks else None,
    )
    return rec
