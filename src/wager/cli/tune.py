"""``wager tune``: hyper-parameter search over a config's ``[search]`` section
(:mod:`wager.tuning`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from wager.cli.common import (
    JsonFlag,
    _flag_error,
    app,
    console,
    err_console,
    print_json,
    ray_flag,
)

OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Folder of the study (study.db: an interrupted search resumes from it), "
        "best.toml, trials.csv and trials.png.",
    ),
]


@app.command("tune")
def tune_command(
    config: Annotated[Path, typer.Argument(help="Run config TOML with a [search] section.")],
    trials: Annotated[
        int, typer.Option("--trials", min=1, help="Finished trials wanted in all.")
    ] = 20,
    out: OutOpt = Path("runs/tune"),
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Overrides [data] path.")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Overrides [data] split.")] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            help="Objective on the validation rows (a key of the evaluation, e.g. rmse, nll, "
            "ndcg@10); default the metric early stopping watches.",
        ),
    ] = None,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|ADDRESS",
            help='Run the trials as Ray tasks, --parallel at a time: "auto" joins this '
            "machine's Ray cluster or starts a local one; ADDRESS is a cluster's. A trial "
            "scores as it would one at a time; the sampler proposes each round together. "
            'Needs the [dist] extra: pip install "wager[dist]".',
        ),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option("--parallel", min=1, help="Trials at once with --ray (default: its CPUs)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Search the config's [search] fields with Optuna (TPE, median pruning); every trial
    trains on the training rows and is scored on the validation rows, never the test rows.
    Writes OUT/best.toml (what `wager train` takes as it is), OUT/trials.csv and
    OUT/trials.png; a second run with the same OUT resumes the study."""
    from wager.tuning import OUTPUTS, SearchConfig, tune

    # check first: the search space and the output folder, before any data
    search = SearchConfig.load(config)
    if out.exists() and not out.is_dir():
        raise _flag_error("--out", f"--out {out} is a file; give a folder for the study")
    if out.is_dir() and not (out / "study.db").exists():
        clash = [name for name in OUTPUTS if (out / name).exists()]
        if clash:
            raise _flag_error(
                "--out",
                f"--out {out} holds {', '.join(clash)} but no study.db: not a wager tune "
                "folder to resume; give another --out",
            )

    runner = _runner(ray, parallel)

    def show(row: dict[str, Any]) -> None:
        if as_json:
            return
        value = row["objective"]
        shown = "pruned" if row["state"] == "pruned" else f"{value:.6g}"
        params = ", ".join(f"{k}={row[k]!r}" for k in row if k not in _ROW_KEYS)
        err_console.print(f"trial {row['trial']}: {shown}  ({params})", highlight=False,
                          markup=False)  # fmt: skip

    try:
        result = tune(search, out, trials, data_dir=data_dir, split=split, metric=metric,
                      on_trial=show, runner=runner, parallel=parallel)  # fmt: skip
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: {out / 'study.db'} keeps the finished trials (the interrupted one "
            "counts as failed); run the same command again to resume",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
        raise typer.Exit(code=130) from None
    _report(result, config, as_json)


def _report(result: Any, config: Path, as_json: bool) -> None:
    """Print the search's result: JSON, or the table of trials and the best config."""
    table = result.trials
    payload = {
        "ok": True,
        "metric": result.metric,
        "direction": result.direction,
        "best_value": result.best_value,
        "best_params": result.best_params,
        "trials": [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            for row in table.to_dict("records")
        ],
        "files": result.files,
    }
    if as_json:
        print_json(payload)
        return
    from rich.table import Table

    shown = Table(title=f"{config.name}: {result.metric} on the validation rows "
                  f"({result.direction})")  # fmt: skip
    for column in table.columns:
        shown.add_column(str(column))
    for row in table.itertuples(index=False):
        shown.add_row(*[_cell(v) for v in row])
    console.print(shown)
    console.print(f"best: {result.metric} {result.best_value:.6g} with {result.best_params}",
                  highlight=False, markup=False)  # fmt: skip
    console.print(f"best config: {result.files['best.toml']}", highlight=False, markup=False)


def _runner(ray: str | None, parallel: int | None) -> Any:
    """The Ray runner of ``--ray`` (None without it), checked before any data."""
    if parallel is not None and ray is None:
        raise _flag_error("--parallel", "--parallel sets the trials at once on Ray: add --ray")
    return ray_flag(ray)


_ROW_KEYS = ("trial", "state", "objective", "seconds")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return str(value)
