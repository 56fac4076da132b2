"""The run commands: ``wager quickstart``, ``train``, ``evaluate``, ``calibrate`` and
``recommend`` (and the checked, atomic ``recommend --out`` file)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from wager.cli.common import (
    JsonFlag,
    _flag_error,
    _load_config,
    _load_run,
    app,
    console,
    err_console,
    print_json,
    ray_flag,
)
from wager.cli.render import (
    _metrics_table,
    _print_recommendations,
    _render_quickstart,
    _text,
)

if TYPE_CHECKING:
    import pandas as pd

    from wager.config import RunConfig
    from wager.policies import Policy, PolicyState
    from wager.recommender import Recommender
    from wager.training.checkpoint import EpochReport
    from wager.training.fanout import Runner

#: the recommendation file formats ``wager recommend --out`` writes, by file extension
OUT_FORMATS = (".parquet", ".csv", ".jsonl")

PolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--policy",
        help="Pick the k items with a policy: greedy, epsilon_greedy, ucb, thompson or softmax "
        "(adds a propensity column; default: the best k by the mean, no propensity).",
    ),
]
BetaOpt = Annotated[float | None, typer.Option("--beta", help="UCB's weight on the std, >= 0.")]
EpsilonOpt = Annotated[
    float | None,
    typer.Option(
        "--epsilon", help="Exploration rate in [0, 1]: epsilon_greedy's (required), UCB's floor."
    ),
]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="Softmax temperature, > 0 (mean's units).")
]
PolicySeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Seed of the policy's random draws (default: fixed).")
]


# ----------------------------------------------------------------------------- quickstart


@app.command("quickstart")
def quickstart(
    out: Annotated[Path, typer.Option("--out", help="Run directory to write.")] = Path(
        "runs/quickstart"
    ),
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed for world and training (config: seed).")
    ] = None,
    members: Annotated[
        int | None,
        typer.Option("--members", help="Ensemble members, >= 2 ([ensemble] members)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train examples/synthetic.toml on the synthetic world, report its confidence, save it."""
    from dataclasses import replace

    from wager.quickstart import quickstart_config, run_quickstart

    cfg = quickstart_config()
    try:
        if seed is not None:
            cfg = replace(cfg, seed=seed)
        if members is not None and cfg.ensemble is not None:
            cfg = replace(cfg, ensemble=replace(cfg.ensemble, members=members))
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = run_quickstart(out, cfg, show_progress=not as_json)
    if as_json:
        print_json(result)
    else:
        _render_quickstart(result)


# ----------------------------------------------------------------------------- runs

DataDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="Dataset location; overrides [data] path in the config."),
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="random | temporal | leave-last-out | a predefined fold (u1..u5); "
        "overrides [data] split.",
    ),
]


NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc",
        min=1,
        help="Train with N data-parallel processes on this machine (torchrun: gloo on CPU, "
        "NCCL on GPU, one GPU each): the same optimiser steps as one process, each process "
        "computing 1/N of every batch. On several machines run `torchrun --nnodes M "
        "--nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m wager.cli "
        "train CONFIG --out DIR` on each.",
    ),
]


RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="auto|ADDRESS",
        help="Train the ensemble members in parallel as Ray tasks (needs [ensemble] fit = "
        '"separate"; the same members as without --ray): "auto" joins the Ray cluster this '
        "machine belongs to or starts a local one; ADDRESS is a cluster's, e.g. "
        'ray://head:10001. Needs the [dist] extra: pip install "wager[dist]".',
    ),
]


@app.command("train")
def train(
    config: Annotated[Path, typer.Argument(help="Run config TOML (see examples/).")],
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory to write (default runs/<name>).")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a previous wager run at --out.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the stopped run to --out from its checkpoint (the hidden folder "
            ".NAME.checkpoint beside it), with the same config and data.",
        ),
    ] = False,
    nproc: NprocOpt = 1,
    ray: RayOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the model a config describes, evaluate it on the test split, save the run.

    Each finished epoch is checkpointed beside --out; Ctrl-C keeps it, --resume goes on
    from it. On a terminal a progress bar is drawn (stderr); otherwise one line per epoch
    is written to stderr. stdout holds only the results (the table, or JSON with --json).
    With --nproc N, N processes train it data-parallel (torchrun); rank 0 reports and saves.
    With --ray, the members of an [ensemble] fit = "separate" run train as Ray tasks.
    """
    from wager.runs import CheckpointDirectory, RunDirectory
    from wager.training.distributed import launched_by_torchrun, torchrun_rank

    out = out or Path("runs") / config.stem
    # check first, then work: the config and the output folder before torch or any data
    cfg = _load_config(config)
    runner = _ray_runner(ray, cfg, nproc)
    if nproc > 1 and cfg.model.type == "als":
        raise _flag_error(
            "--nproc",
            f'--nproc {nproc}: model.type = "als" is solved by alternating least squares, '
            "which is not split across processes; train it with --nproc 1 (the gradient-"
            "trained models take --nproc)",
        )
    main = torchrun_rank() == 0
    if main:
        RunDirectory(out).check_target(overwrite)
    checkpoint = CheckpointDirectory(out)
    if main:
        checkpoint.check_start(resume)
    if nproc > 1 and not launched_by_torchrun():  # launch the N processes, each runs this
        raise typer.Exit(_torchrun(nproc, config, out, data_dir, split, overwrite, resume,
                                   as_json))  # fmt: skip
    from wager.pipeline import train_run

    terminal = sys.stderr.isatty()
    try:
        _rec, metrics = train_run(
            cfg,
            data_dir=data_dir,
            split=split,
            out=out,
            show_progress=terminal,
            overwrite=overwrite,
            resume=resume,
            on_epoch=None if terminal else _print_epoch,
            runner=runner,
        )
    except KeyboardInterrupt:
        if not main:
            raise typer.Exit(code=130) from None
        if not checkpoint.has_state():
            raise  # before the first epoch: "nothing was saved"
        command = ["wager", "train", str(config), "--out", str(out), "--resume"]
        command += ["--data-dir", str(data_dir)] if data_dir is not None else []
        command += ["--split", split] if split is not None else []
        command += ["--overwrite"] * overwrite + ["--json"] * as_json
        err_console.print(
            _text(
                f"interrupted: no run was saved to {out}; {checkpoint.progress()} is "
                f"checkpointed in {checkpoint.path}. Continue with: {shlex.join(command)}"
            ),
            soft_wrap=True,
            highlight=False,
        )
        raise typer.Exit(code=130) from None
    if not main:
        return  # rank 0 reports and saves
    metrics = {"ok": True, "run": str(out), **metrics}
    if as_json:
        print_json(metrics)
        return
    console.print(
        _metrics_table(f"{config.name}: {metrics['model']} on {metrics['split']}", metrics)
    )
    console.print(Text.assemble("run saved to ", (str(out), "bold")), highlight=False)


def _ray_runner(address: str | None, cfg: RunConfig, nproc: int) -> Runner | None:
    """The Ray runner ``--ray`` asks for (None without it), after checking that the run can
    use it: an ensemble of separately trained members, one process, Ray installed."""
    if address is None:
        return None
    ens = cfg.ensemble
    if ens is None or ens.fit != "separate":
        raise _flag_error(
            "--ray",
            "--ray trains the members of an ensemble in parallel, each in a loop of its own: "
            'set [ensemble] fit = "separate" in the config (members >= 2; the members then '
            "differ from a stacked run's, and are the same with or without --ray), or drop "
            "--ray",
        )
    if nproc > 1:
        raise _flag_error(
            "--ray",
            f"--ray with --nproc {nproc}: the members train as Ray tasks of one process each; "
            "use one of the two",
        )
    return ray_flag(address)


def _torchrun(
    nproc: int,
    config: Path,
    out: Path,
    data_dir: Path | None,
    split: str | None,
    overwrite: bool,
    resume: bool,
    as_json: bool,
) -> int:
    """Run ``wager train`` in ``nproc`` data-parallel processes on this machine through
    torchrun (``--standalone``: a local rendezvous); returns its exit code."""
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "wager.cli", "train", str(config),
               "--out", str(out)]  # fmt: skip
    command += ["--data-dir", str(data_dir)] if data_dir is not None else []
    command += ["--split", split] if split is not None else []
    command += ["--overwrite"] * overwrite + ["--resume"] * resume + ["--json"] * as_json
    try:
        return subprocess.run(command, check=False).returncode
    except KeyboardInterrupt:  # torchrun passes it on to the processes, which stop
        return 130


def epoch_line(report: EpochReport) -> str:
    """One log line of a finished epoch, the validation metric with its natural sign, e.g.
    ``epoch 3/30  loss 5.1234  valid ndcg@10 0.2311 (best 0.2311 at epoch 3)  12.3 s``."""
    parts = [f"epoch {report.epoch}/{report.epochs}", f"loss {report.loss:.4f}"]
    if report.member:
        parts.insert(0, f"member {report.member}/{report.members}")
    metric, best = report.shown(report.metric), report.shown(report.best_metric)
    if metric is not None:
        valid = f"valid {report.metric_name} {metric:.4f}".replace("  ", " ")
        if best is not None and report.best_epoch:
            valid += f" (best {best:.4f} at epoch {report.best_epoch})"
        parts.append(valid)
    parts.append(f"{report.seconds:.1f} s")
    return "  ".join(parts)


def _print_epoch(report: EpochReport) -> None:
    """Write :func:`epoch_line` to stderr (plain text: not a terminal, no progress bar)."""
    sys.stderr.write(epoch_line(report) + "\n")
    sys.stderr.flush()


@app.command("evaluate")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `wager train`.")],
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a saved run on the test split of its data (or another split)."""
    from wager.pipeline import evaluate_run

    metrics = evaluate_run(run, data_dir=data_dir, split=split, recommender=_load_run(run))
    if as_json:
        print_json({"ok": True, "run": str(run), **metrics})
        return
    console.print(_metrics_table(f"{run}: {metrics['split']}", metrics))
    if metrics.get("plots"):
        console.print(
            _text(f"plots ({', '.join(metrics['plots'])}) in {metrics['plots_dir']}"),
            highlight=False,
        )


@app.command("calibrate")
def calibrate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `wager train`.")],
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Refit a run's post-hoc chain (calibrators, variance steps, conformal intervals,
    relevance map) on the validation rows of its data or another split, without
    retraining; evaluate and replace the run."""
    from wager.pipeline import calibrate_run

    metrics = calibrate_run(run, data_dir=data_dir, split=split, recommender=_load_run(run))
    if as_json:
        print_json({"ok": True, "run": str(run), **metrics})
        return
    console.print(_metrics_table(f"{run}: recalibrated ({metrics['chain']})", metrics))
    console.print(
        _text(f"{metrics['calibration_rows']} calibration rows of {metrics['split']}; run saved"),
        highlight=False,
    )


ChunkUsersOpt = Annotated[
    int,
    typer.Option(
        "--chunk-users",
        min=1,
        help="Users recommended and written at a time: memory stays bounded by a few "
        "chunks (--out streams each chunk to the file; a seeded random policy's draws "
        "depend on it).",
    ),
]


IndexOpt = Annotated[
    str | None,
    typer.Option(
        "--index",
        metavar="exact|ivf|hnsw",
        help="Bring each user's candidates from a top-k index over the catalogue instead "
        "of scoring every item (factorised models): exact, or FAISS ivf / hnsw for "
        'catalogues of 10^5+ items (approximate; pip install "wager[ann]").',
    ),
]


RecommendRayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="auto|ADDRESS",
        help="Recommend the chunks as Ray tasks (the same output as without --ray): "
        '"auto" joins this machine\'s Ray cluster or starts a local one. Needs the '
        '[dist] extra: pip install "wager[dist]".',
    ),
]


@app.command("recommend")
def recommend(
    run: Annotated[Path, typer.Argument(help="Run directory written by `wager train`.")],
    user: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="User id (repeat for several).")
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Recommend for every user seen in training.")
    ] = False,
    k: Annotated[int, typer.Option("-k", "--k", help="Items per user.")] = 10,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the recommendations to a file instead of printing them; the format "
            "follows the extension: .parquet, .csv or .jsonl (one JSON object a line); a name "
            "without an extension is a folder of Parquet part files, one per --chunk-users "
            "chunk. Never inside a run folder.",
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")
    ] = False,
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Do not exclude items seen in training.")
    ] = False,
    confidence_level: Annotated[
        float,
        typer.Option("--confidence-level", help="Level of the [low, high] interval, in (0, 1)."),
    ] = 0.9,
    horizon: Annotated[
        float | None,
        typer.Option(
            "--horizon",
            help="Retrieval / implicit runs: confidence = P(among the user's next H positive "
            "interactions); default: the mean validation positives per user.",
        ),
    ] = None,
    policy: PolicyOpt = None,
    beta: BetaOpt = None,
    epsilon: EpsilonOpt = None,
    temperature: TemperatureOpt = None,
    seed: PolicySeedOpt = None,
    chunk_users: ChunkUsersOpt = 50_000,
    index: IndexOpt = None,
    ray: RecommendRayOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Top-k recommendations with confidence for some users (or all, in batch)."""
    import pandas as pd

    _check_recommend_flags(bool(user), all_users, k, confidence_level, horizon)
    chosen, _state = _policy_flags(policy, beta, epsilon, temperature, seed)
    if out is not None:
        _check_out(out, run, overwrite)
    runner = ray_flag(ray)
    if index not in (None, "exact", "ivf", "hnsw"):
        raise _flag_error("--index", f"--index {index!r} is unknown; choose exact, ivf or hnsw")
    rec = _load_run(run)
    if index is not None:
        _index_items(rec, index)
    users: list[Any] = list(rec.scorer_.catalogue.users) if all_users else list(user or [])
    cold, notices = _cold_users(rec, users)
    frames = _recommend_chunks(
        rec, users, chunk_users, not as_json and len(users) >= 1000, runner, seed,
        k=k, exclude_seen=not include_seen, confidence_level=confidence_level,
        horizon=horizon, policy=chosen,
    )  # fmt: skip
    if out is not None:
        write = _write_table if out.suffix else _write_parts
        frame, written = write(frames, out, cold)
    else:
        parts = list(frames)
        frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
        frame.attrs = parts[0].attrs
        frame["cold_start"] = frame["user"].isin(cold)
    if as_json:
        print_json(_recommend_payload(rec, frame, run, k, len(users), cold, notices, out))
        return
    for n in notices:
        err_console.print(Text.assemble(("notice: ", "yellow"), n), highlight=False, soft_wrap=True)
    if out is not None:
        console.print(
            _text(f"{written:,} recommendations for {len(users):,} users written to {out}"),
            highlight=False,
        )
        return
    _print_recommendations(rec, frame, f"top-{k} from {run}", confidence_level)


def _index_items(rec: Recommender, kind: str) -> None:
    """``--index``: attach the top-k index ``kind`` to the loaded run (a usage error when
    the model has no item vectors or faiss is missing)."""
    from wager.errors import MissingExtraError

    try:
        index = None
        if kind != "exact":
            from wager.retrieval import FaissIndex

            index = FaissIndex(kind)  # type: ignore[arg-type]
        rec.index_items(index)
    except (MissingExtraError, ValueError) as exc:
        raise _flag_error("--index", f"--index {kind}: {exc}") from None


def _cold_users(rec: Recommender, users: list[Any]) -> tuple[list[Any], list[str]]:
    """The users not seen in training, and a notice for each."""
    known = rec.known_users(users)
    cold = [u for u, ok in zip(users, known, strict=True) if not ok]
    notices = [
        f"user {u!r} was not seen in training: cold-start recommendations "
        "(out-of-vocabulary row and features; expect wider uncertainty)"
        for u in cold
    ]
    return cold, notices


def _check_recommend_flags(
    has_users: bool, all_users: bool, k: int, confidence_level: float, horizon: float | None
) -> None:
    """Refuse bad `wager recommend` flags (no user, k < 1, a level outside (0, 1), ...)."""
    if not has_users and not all_users:
        raise _flag_error("--user", "give --user U (repeatable) or --all-users")
    if k < 1:
        raise _flag_error("-k", f"-k must be >= 1, got {k}")
    if not 0.0 < confidence_level < 1.0:
        raise _flag_error(
            "--confidence-level",
            f"--confidence-level must be in (0, 1), e.g. 0.9 for a 90% interval; "
            f"got {confidence_level}",
        )
    if horizon is not None and not horizon > 0:
        raise _flag_error("--horizon", f"--horizon must be > 0 future positives, got {horizon}")


def _policy_flags(
    name: str | None,
    beta: float | None,
    epsilon: float | None,
    temperature: float | None,
    seed: int | None,
) -> tuple[Policy | None, PolicyState | None]:
    """The policy and state of `wager recommend --policy ...`, or (None, None) without
    --policy; refuses a policy flag without --policy, a flag the policy does not take, a
    missing required one and values out of range, naming the flag."""
    from wager.policies import POLICY_PARAMETERS, PolicyState, policy_from_name

    given = {"beta": beta, "epsilon": epsilon, "temperature": temperature}
    if name is None:
        for flag, value in [*given.items(), ("seed", seed)]:
            if value is not None:
                raise _flag_error(
                    f"--{flag}", f"--{flag} applies only with --policy (e.g. --policy ucb)"
                )
        return None, None
    if name not in POLICY_PARAMETERS:
        choices = ", ".join(POLICY_PARAMETERS)
        raise _flag_error("--policy", f"--policy {name!r} is unknown; choose one of {choices}")
    takes = POLICY_PARAMETERS[name]
    for flag, value in given.items():
        if value is not None and flag not in takes:
            raise _flag_error(f"--{flag}", f"--{flag} does not apply to --policy {name}")
    for flag in takes[:1]:  # the first parameter is required, the others optional
        if flag in given and given[flag] is None:
            raise _flag_error(f"--{flag}", f"--policy {name} needs --{flag}")
    try:
        chosen = policy_from_name(name, beta=beta, epsilon=epsilon, temperature=temperature)
    except ValueError as exc:
        flag = next((f"--{p}" for p in takes if str(exc).startswith(p)), "--policy")
        raise _flag_error(flag if takes else "--policy", f"--{exc}") from exc
    return chosen, PolicyState() if seed is None else PolicyState.seeded(seed)


def _recommend_payload(
    rec: Recommender,
    frame: pd.DataFrame,
    run: Path,
    k: int,
    n_users: int,
    cold: list[Any],
    notices: list[str],
    out: Path | None,
) -> dict[str, Any]:
    """The `wager recommend --json` object: recommendations and list confidences inline,
    or empty lists when they were written to ``out``."""
    return {
        "ok": True,
        "run": str(run),
        "k": k,
        "n_users": n_users,
        "cold_start_users": [str(u) for u in cold],
        "notices": notices,
        "out": str(out) if out is not None else None,
        "recommendations": [] if out is not None else frame.to_dict(orient="records"),
        "lists": [] if out is not None else rec.list_confidence(frame).to_dict(orient="records"),
        **({"policy": frame.attrs["policy"]} if "policy" in frame.attrs else {}),
    }


# ----------------------------------------------------------------------------- output files


def _is_run_folder(folder: Path) -> bool:
    from wager.runs import RunDirectory

    return RunDirectory(folder).is_run()


def _check_out(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` path before any work: an unknown extension, a directory, a path
    inside the run being read or inside any run folder, an existing file (without
    ``--overwrite``)."""
    choices = ", ".join(OUT_FORMATS)
    if out.suffix and out.suffix.lower() not in OUT_FORMATS:
        raise _flag_error(
            "--out",
            f"--out {out}: '{out.suffix}' is not a format wager writes; end it in {choices}, "
            "or give a name without an extension for a folder of Parquet parts",
        )
    if out.suffix and out.is_dir():
        raise _flag_error("--out", f"--out {out}: is a directory; give a file name ({choices})")
    if not out.suffix and (out.exists() or out.is_symlink()) and not _is_parts_folder(out):
        raise _flag_error(
            "--out",
            f"--out {out}: exists and is not a folder of recommendations wager wrote (no "
            f"{PARTS_MARKER}); wager never writes into or deletes what it did not write: "
            "give another name",
        )
    target = out.resolve()
    run_dir = run.resolve()
    for folder in target.parents:
        if folder == run_dir or _is_run_folder(folder):
            raise _flag_error(
                "--out",
                f"--out {out}: inside the run folder '{folder}', which wager never writes "
                "into; write the recommendations elsewhere",
            )
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise _flag_error("--out", f"--out {out}: already exists; pass --overwrite to replace it")


def _recommend_chunks(
    rec: Recommender,
    users: list[Any],
    chunk: int,
    progress: bool,
    runner: Runner | None,
    seed: int | None,
    **kwargs: Any,
) -> Iterator[pd.DataFrame]:
    """``rec.recommend`` of ``users``, ``chunk`` users at a time, in order (at least one
    frame, maybe empty; see :mod:`wager.recommender.batch`), with a progress bar on stderr
    when asked."""
    from rich.progress import Progress

    from wager.recommender.batch import recommend_chunks

    with Progress(console=err_console, disable=not progress) as bar:
        task = bar.add_task("recommending", total=len(users))
        yield from recommend_chunks(
            rec, users, chunk, runner=runner, seed=seed,
            on_chunk=lambda n: bar.advance(task, n), **kwargs,
        )  # fmt: skip


PARTS_MARKER = "_wager_recommendations.json"


def _is_parts_folder(folder: Path) -> bool:
    """A folder of recommendation parts that wager wrote (its marker lists them)."""
    marker = folder / PARTS_MARKER
    if folder.is_symlink() or not folder.is_dir() or marker.is_symlink():
        return False
    try:
        return json.loads(marker.read_text(encoding="utf-8")).get("written_by") == "wager"
    except (OSError, ValueError, AttributeError):
        return False


def _write_parts(
    frames: Iterable[pd.DataFrame], out: Path, cold: list[Any]
) -> tuple[pd.DataFrame, int]:
    """Write the ``frames`` (chunks of one table, a ``cold_start`` column added) as the
    Parquet files ``part-00000.parquet``, ... of the folder ``out``, with the marker
    ``_wager_recommendations.json`` (parts, rows, columns), whole or not at all: into a
    hidden temporary folder beside it, renamed into place at the end. A previous folder of
    wager's (``--overwrite``) is replaced: only the files its marker lists are deleted.
    Returns an empty frame with the first chunk's columns and attrs, and the rows
    written."""
    from wager.runs import remove_listed

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    tmp.mkdir()
    head: pd.DataFrame | None = None
    parts: list[str] = []
    written = 0
    try:
        for frame in frames:
            written += len(frame)
            frame["cold_start"] = frame["user"].isin(cold)
            name = f"part-{len(parts):05d}.parquet"
            parts.append(name)  # listed first: a failed write is removed too
            frame.astype({"user": str, "item": str}).to_parquet(tmp / name, index=False)
            if head is None:
                head = frame.iloc[:0].copy()
                head.attrs = frame.attrs
        assert head is not None
        marker = {"written_by": "wager", "parts": parts, "rows": written,
                  "columns": [str(c) for c in head.columns]}  # fmt: skip
        (tmp / PARTS_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        if _is_parts_folder(out):  # --overwrite (checked first): what the old marker lists
            old = json.loads((out / PARTS_MARKER).read_text(encoding="utf-8"))
            (out / PARTS_MARKER).unlink()
            remove_listed(out, [str(p) for p in old.get("parts", [])])
        os.replace(tmp, out)
    except OSError as exc:  # e.g. disk full: name the folder the user asked for
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    finally:
        if tmp.exists():
            remove_listed(tmp, [*parts, PARTS_MARKER])
    return head, written


def _write_table(
    frames: Iterable[pd.DataFrame], out: Path, cold: list[Any]
) -> tuple[pd.DataFrame, int]:
    """Write the ``frames`` (chunks of one table, a ``cold_start`` column added) to ``out``
    in the format its extension names, chunk by chunk (Parquet: a row group each), whole or
    not at all: into a hidden temporary file beside it, renamed over it at the end (an
    interrupted write leaves no partial ``out``; the temporary file is removed). Returns an
    empty frame with the first chunk's columns and attrs, and the rows written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    suffix = out.suffix.lower()
    writer: pq.ParquetWriter | None = None
    head: pd.DataFrame | None = None
    written = 0
    try:
        for frame in frames:
            written += len(frame)
            frame["cold_start"] = frame["user"].isin(cold)
            part = frame.astype({"user": str, "item": str})  # ids are values as written
            if suffix == ".parquet":
                table = pa.Table.from_pandas(
                    part, schema=None if writer is None else writer.schema, preserve_index=False
                )
                writer = writer or pq.ParquetWriter(tmp, table.schema)
                writer.write_table(table)
            elif suffix == ".csv":
                part.to_csv(tmp, index=False, mode="w" if head is None else "a",
                            header=head is None)  # fmt: skip
            else:
                with tmp.open("w" if head is None else "a", encoding="utf-8") as sink:
                    part.to_json(sink, orient="records", lines=True, force_ascii=False)
            if head is None:
                head = frame.iloc[:0].copy()
                head.attrs = frame.attrs
        if writer is not None:
            writer.close()
            writer = None
        os.replace(tmp, out)
    except OSError as exc:  # e.g. disk full: name the file the user asked for
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    finally:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
    assert head is not None
    return head, written
