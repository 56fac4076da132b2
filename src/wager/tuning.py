"""Hyper-parameter search over a run config's ``[search]`` section (``wager tune``).

A search config is a run config plus a ``[search]`` table of dotted field names, any section
but ``[data]`` and ``[schema]`` (every trial must be judged on the same validation rows)::

    [search]
    "model.dim" = [16, 256]                  # two integers: an integer range
    "training.learning_rate" = [1e-4, 1e-2]  # two numbers: a float range
    "model.type" = ["biased_mf", "ncf"]      # anything else: a choice
    "ensemble.members" = {choices = [2, 5]}  # a choice of numbers
    "training.weight_decay" = {low = 0.0, high = 0.1, log = false}

A range is searched on a log scale when its bounds are > 0 and span a decade or more
(``high / low >= 10``), unless ``log`` says otherwise. The search space is checked before
any data is read: every key must name a config field and each range's bounds and each choice
must make a valid config.

An Optuna study (TPE sampler seeded by the config's ``seed``; median pruner) runs the trials
one after another: each fits the trial's config on the training rows with early stopping on
the validation rows and is scored by its metric on the validation rows (default: the metric
early stopping watches, e.g. rmse or ndcg@10; the test rows are never read; a trial whose
training diverges is recorded as failed and the search goes on). Each epoch's
validation metric is reported to the pruner, which stops trials that trail the median of the
earlier ones at the same epoch. The study lives in ``OUT/study.db`` (SQLite), so an
interrupted search resumes where it stopped; ``OUT/best.toml`` is the best trial's config
(what ``wager train`` takes as it is), ``OUT/trials.csv`` the table of trials and
``OUT/trials.png`` the objective against each searched field.
"""

from __future__ import annotations

import copy
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from wager._optional import require
from wager.config import ConfigError, RunConfig
from wager.config_types import dumps_toml
from wager.errors import TrainingDivergedError
from wager.pipeline import load_run_data
from wager.recommender import Recommender
from wager.recommender.fitting import validation_metric_name
from wager.training.checkpoint import EpochReport
from wager.training.fanout import RayRunner

__all__ = ["Dimension", "SearchConfig", "TuneResult", "tune"]

#: metrics where higher is better (the others are minimised)
_HIGHER = ("ndcg", "recall", "precision", "top_k_accuracy", "auc", "coverage", "hit")
#: sections a search may not change: the data every trial is judged on
_FIXED = ("data", "schema")
#: the files ``tune`` writes in its output folder
OUTPUTS = ("study.db", "best.toml", "trials.csv", "trials.png")


@dataclass(frozen=True)
class Dimension:
    """One searched config field.

    Attributes:
        key: dotted name, e.g. "model.dim" ("seed" for the top-level seed).
        kind: "int" or "float" (a range), or "choice".
        low, high: a range's bounds (inclusive).
        log: sample a range on a log scale.
        choices: a choice's values.
    """

    key: str
    kind: Literal["int", "float", "choice"]
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        """The trial's value of this field (an ``optuna.Trial``)."""
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        return trial.suggest_categorical(self.key, list(self.choices))

    def extremes(self) -> list[Any]:
        """The values whose configs the check builds: each bound, or each choice."""
        if self.kind == "choice":
            return list(self.choices)
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _dimension(key: str, spec: object) -> Dimension:
    """One ``[search]`` entry as a :class:`Dimension` (errors name the key)."""
    where = f'[search] "{key}"'
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"low", "high", "log", "choices"}
        if unknown:
            raise ConfigError(
                f"{where}: unknown keys {sorted(unknown)}; use low/high/log or choices"
            )
        if "choices" in spec:
            if set(spec) != {"choices"}:
                raise ConfigError(f"{where}: give either choices or low/high, not both")
            if not isinstance(spec["choices"], list):
                raise ConfigError(f"{where}: choices must be a list, got {spec['choices']!r}")
            return _choice(where, key, spec["choices"])
        if not ("low" in spec and "high" in spec):
            raise ConfigError(f"{where}: a range needs both low and high")
        return _range(where, key, spec["low"], spec["high"], spec.get("log"))
    if isinstance(spec, list) and len(spec) == 2 and all(_number(x) for x in spec):
        return _range(where, key, spec[0], spec[1], None)
    if isinstance(spec, list):
        return _choice(where, key, spec)
    raise ConfigError(
        f"{where} = {spec!r}: give [low, high] (a range), a list of values (a choice), "
        "{choices = [...]} or {low = ..., high = ..., log = true|false}"
    )


def _choice(where: str, key: str, values: list[Any]) -> Dimension:
    if len(values) < 1:
        raise ConfigError(f"{where}: a choice needs at least one value")
    if any(isinstance(v, list | dict) for v in values):
        raise ConfigError(f"{where}: choices must be single values (numbers, strings, booleans)")
    return Dimension(key, "choice", choices=tuple(values))


def _range(where: str, key: str, low: object, high: object, log: object) -> Dimension:
    if not (_number(low) and _number(high)):
        raise ConfigError(f"{where}: a range's low and high must be numbers, got {low!r}, {high!r}")
    lo, hi = float(low), float(high)  # type: ignore[arg-type]
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"{where}: a range needs finite low < high, got [{low!r}, {high!r}]")
    if log is not None and not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false, got {log!r}")
    wide = lo > 0 and hi / lo >= 10
    if log and lo <= 0:
        raise ConfigError(f"{where}: a log-scale range needs low > 0, got {low!r}")
    kind: Literal["int", "float"] = (
        "int" if isinstance(low, int) and isinstance(high, int) else "float"
    )
    return Dimension(key, kind, lo, hi, log=wide if log is None else bool(log))


def _set(data: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A deep copy of the nested config dict with the dotted ``key`` set to ``value``."""
    out = copy.deepcopy(data)
    _put(out, key, value)
    return out


def _put(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of the nested config dict to ``value``, in place."""
    node = data
    *path, last = key.split(".")
    for part in path:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f'[search] "{key}": {part} is not a section')
        node = child
    node[last] = value


@dataclass(frozen=True)
class SearchConfig:
    """A run config (without ``[search]``) and its search space, checked.

    Attributes:
        base: the nested dict of the run config (what every trial starts from).
        dimensions: the searched fields, in the file's order.
        source: the file read.
    """

    base: dict[str, Any]
    dimensions: tuple[Dimension, ...]
    source: str

    @classmethod
    def load(cls, path: str | Path) -> SearchConfig:
        """Read and check a search config (see the module docstring).

        Raises:
            FileNotFoundError: no such file.
            ConfigError: the file, the run config or the search space has a mistake (each
                named by section and key).
        """
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{p}: search config not found") from None
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{p}: not a UTF-8 TOML file: {exc}", p) from None
        raw = data.pop("search", None)
        if not isinstance(raw, dict) or not raw:
            raise ConfigError(
                f'{p}: no [search] section; add one, e.g. [search] "model.dim" = [16, 128]', p
            )
        RunConfig.from_dict(data)  # the run config alone
        dims = []
        for key, spec in raw.items():
            if key.split(".")[0] in _FIXED:
                raise ConfigError(
                    f'{p}: [search] "{key}": the [{key.split(".")[0]}] section is not '
                    "searched (every trial is judged on the same validation rows)",
                    p,
                )
            dim = _dimension(key, spec)
            for value in dim.extremes():  # each bound / choice must make a valid config
                try:
                    RunConfig.from_dict(_set(data, key, value))
                except ConfigError as exc:
                    raise ConfigError(f'{p}: [search] "{key}" = {value!r}: {exc}', p) from None
            dims.append(dim)
        return cls(data, tuple(dims), str(p))

    def config(self, values: Mapping[str, Any]) -> RunConfig:
        """The run config with the searched fields set to ``values`` (dotted key -> value)."""
        data = copy.deepcopy(self.base)
        for key, value in values.items():
            _put(data, key, value)
        return RunConfig.from_dict(data)


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` found.

    Attributes:
        metric: the objective's name; direction: "minimize" or "maximize".
        best_value: the best trial's objective; best_params: its searched values.
        trials: one row per trial (number, state, objective, seconds, each searched field).
        files: name -> path of each file written.
    """

    metric: str
    direction: str
    best_value: float
    best_params: dict[str, Any]
    trials: pd.DataFrame
    files: dict[str, str]


def _direction(metric: str) -> str:
    return "maximize" if metric.split("@")[0] in _HIGHER else "minimize"


def tune(
    search: SearchConfig,
    out: str | Path,
    trials: int,
    *,
    data_dir: str | Path | None = None,
    split: str | None = None,
    metric: str | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
    runner: RayRunner | None = None,
    parallel: int | None = None,
) -> TuneResult:
    """Run (or resume) the search until ``trials`` trials are finished.

    Args:
        search: the checked search config.
        out: the folder of the study and its outputs (created; an existing ``study.db`` is
            resumed).
        trials: finished trials wanted in all (those of an earlier run count).
        data_dir, split: override the config's data path and split.
        metric: the objective, a key of ``Recommender.evaluate``'s output on the validation
            rows; default the metric early stopping watches.
        on_trial: called with each finished trial's row (e.g. to print it).
        runner: run the trials as Ray tasks, ``parallel`` at a time (see
            :func:`_tune_on_ray`); None: one after another here.
        parallel: trials at once on Ray (default: the cluster's CPUs).
    """
    optuna = require("optuna", "tune", "wager tune")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    base = search.config({})
    rd = load_run_data(base, data_dir, split)
    if data_dir is not None or split is not None:  # best.toml trains on the same data
        data = {**search.base.get("data", {}), "split": rd.split}
        data["path"] = str(data_dir) if data_dir is not None else data.get("path")
        search = replace(search, base={**search.base, "data": data})
        base = search.config({})
    valid = rd.valid
    if valid is None or len(valid) == 0:
        raise ConfigError(
            f"{search.source}: [data] valid_fraction is 0: the search scores trials on the "
            "validation rows; set valid_fraction > 0"
        )
    name = metric or validation_metric_name(Recommender(replace(base, schema=rd.schema)).spec)
    direction = _direction(name)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # trials are reported by on_trial
    study = optuna.create_study(
        study_name="wager",
        storage=f"sqlite:///{(folder / 'study.db').resolve()}",
        load_if_exists=True,
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=_pruner(optuna),
    )
    stored_metric = study.user_attrs.get("metric")
    if stored_metric is not None and stored_metric != name:
        raise ConfigError(f"{folder / 'study.db'}: a study of {stored_metric!r}, not {name!r}")
    study.set_user_attr("metric", name)

    shared = _TrialData(rd.train, valid, rd.user_features, rd.item_features, name, direction)

    def objective(trial: Any) -> float:
        values = {d.key: d.suggest(trial) for d in search.dimensions}
        return _score(shared, replace(search.config(values), schema=rd.schema), trial)

    def callback(_study: Any, trial: Any) -> None:
        if on_trial is not None:
            on_trial(_row(trial, search.dimensions))

    done = sum(t.state.is_finished() for t in study.trials)
    if trials > done and runner is not None:
        _tune_on_ray(study, search, rd.schema, shared, trials - done, runner, parallel, callback)
    elif trials > done:
        # a trial whose training diverges (e.g. too high a learning rate) is recorded as
        # failed and the search goes on; any other error stops it
        study.optimize(objective, n_trials=trials - done, callbacks=[callback],
                       catch=(TrainingDivergedError,))  # fmt: skip
    return _outputs(study, search, folder, name, direction)


@dataclass
class _TrialData:
    """What every trial reads: the training and validation rows, the feature tables, and
    the objective (``metric``, to ``direction``)."""

    train: pd.DataFrame
    valid: pd.DataFrame
    user_features: pd.DataFrame | None
    item_features: pd.DataFrame | None
    metric: str
    direction: str


def _score(data: _TrialData, cfg: RunConfig, trial: Any) -> float:
    """Fit ``cfg`` on the training rows, reporting each epoch's validation metric to
    ``trial`` (which may prune it: ``optuna.TrialPruned``); its metric on the validation
    rows."""
    optuna = require("optuna", "tune", "wager tune")
    name = data.metric

    def report(epoch: EpochReport) -> None:
        shown = epoch.shown(epoch.metric)
        if shown is not None and epoch.metric_name == name:
            trial.report(float(shown), epoch.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

    rec = Recommender(cfg).fit(data.train, data.valid, user_features=data.user_features,
                               item_features=data.item_features, on_epoch=report)  # fmt: skip
    found = rec.evaluate(data.valid)
    if name not in found:
        raise ConfigError(
            f"--metric {name!r} is not among the validation metrics "
            f"({', '.join(sorted(k for k, v in found.items() if _number(v)))})"
        )
    return float(found[name])


@dataclass
class _TrialTask:
    """One trial sent to a Ray worker: its config, and the study's completed trials at the
    time (the median pruner's reference)."""

    config: RunConfig
    completed: list[Any]


def _ray_trial(data: _TrialData, task: _TrialTask) -> dict[str, Any]:
    """Run one trial in a Ray worker against an in-memory copy of the study's completed
    trials (Optuna's own median pruner decides, as in the study); returns its state
    ("complete", "pruned" or "fail"), value, error and reported intermediate values."""
    optuna = require("optuna", "tune", "wager tune")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    local = optuna.create_study(direction=data.direction, pruner=_pruner(optuna))
    local.add_trials(task.completed)
    trial = local.ask()
    out: dict[str, Any] = {"state": "complete", "value": None, "error": None}
    try:
        out["value"] = _score(data, task.config, trial)
    except optuna.TrialPruned:
        out["state"] = "pruned"
    except TrainingDivergedError as exc:
        out["state"], out["error"] = "fail", str(exc)
    out["intermediate"] = dict(local.trials[-1].intermediate_values)
    return out


def _pruner(optuna: Any) -> Any:
    """The median pruner of every study: from the 4th trial, after the first epoch."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)


def _tune_on_ray(
    study: Any,
    search: SearchConfig,
    schema: Any,
    data: _TrialData,
    trials: int,
    runner: RayRunner,
    parallel: int | None,
    callback: Callable[[Any, Any], None],
) -> None:
    """Run ``trials`` more trials as Ray tasks, in rounds of ``parallel``: the sampler
    proposes a round's trials together (its startup trials are the same as one at a time;
    later proposals see the results of finished rounds only), each worker fits its trial
    and prunes it against the study's completed trials, and the driver records each
    result in the study as it comes. A trial's objective is the same as in a sequential
    search with the same parameters. Ctrl-C records the round's unfinished trials as
    failed."""
    optuna = require("optuna", "tune", "wager tune")
    states = optuna.trial.TrialState
    with runner:
        width = parallel or runner.cpus()
        left = trials
        while left > 0:
            asked = [study.ask() for _ in range(min(width, left))]
            completed = study.get_trials(deepcopy=False, states=(states.COMPLETE,))
            tasks = [
                _TrialTask(
                    replace(
                        search.config({d.key: d.suggest(t) for d in search.dimensions}),
                        schema=schema,
                    ),
                    list(completed),
                )
                for t in asked
            ]
            told: set[int] = set()
            try:
                for i, result in runner.run(_ray_trial, tasks, data):
                    trial = asked[i]
                    for step, value in sorted(result["intermediate"].items()):
                        trial.report(value, step)
                    if result["state"] == "complete":
                        frozen = study.tell(trial, result["value"])
                    else:
                        state = states.PRUNED if result["state"] == "pruned" else states.FAIL
                        frozen = study.tell(trial, state=state)
                    told.add(i)
                    callback(study, frozen)
            finally:
                for i, trial in enumerate(asked):
                    if i not in told:
                        study.tell(trial, state=states.FAIL)
            left -= len(asked)


def _row(trial: Any, dims: tuple[Dimension, ...]) -> dict[str, Any]:
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else math.nan
    )
    row = {"trial": trial.number, "state": trial.state.name.lower(),
           "objective": math.nan if trial.value is None else float(trial.value),
           "seconds": seconds}  # fmt: skip
    row.update({d.key: trial.params.get(d.key) for d in dims})
    return row


def _outputs(
    study: Any, search: SearchConfig, folder: Path, metric: str, direction: str
) -> TuneResult:
    """Write best.toml, trials.csv and trials.png; the result."""
    table = pd.DataFrame([_row(t, search.dimensions) for t in study.trials])
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not complete:
        raise RuntimeError(f"{folder / 'study.db'}: no trial completed; nothing to report")
    best = study.best_trial
    config = search.config(best.params)
    best_path = folder / "best.toml"
    header = (
        f"# wager tune {search.source}: trial {best.number} of {len(table)}, "
        f"{metric} {best.value:.6g} on the validation rows ({direction})\n"
    )
    best_path.write_text(header + dumps_toml(config.to_dict()), encoding="utf-8")
    table.to_csv(folder / "trials.csv", index=False)
    _plot(table, search.dimensions, metric, folder / "trials.png")
    files = {name: str(folder / name) for name in OUTPUTS}
    return TuneResult(metric, direction, float(best.value), dict(best.params), table, files)


def _plot(table: pd.DataFrame, dims: tuple[Dimension, ...], metric: str, path: Path) -> None:
    """The objective of each completed trial against each searched field (one panel each)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    done = table[table["state"] == "complete"]
    fig = Figure(figsize=(3.6 * len(dims), 3.2))
    for n, dim in enumerate(dims):
        ax = fig.add_subplot(1, len(dims), n + 1)
        x = done[dim.key]
        if dim.kind == "choice":
            labels = [str(c) for c in dim.choices]
            xs = np.array([labels.index(str(v)) for v in x], dtype=float)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=7)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        else:
            xs = x.to_numpy(dtype=float)
            if dim.log:
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.scatter(xs, done["objective"], s=16)
        ax.set_xlabel(dim.key)
        ax.set_ylabel(metric if n == 0 else "")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{metric} on the validation rows, {len(done)} completed trials", fontsize=9)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=110)
