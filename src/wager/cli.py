"""The ``wager`` command line: thin; every flag maps onto a config or schema field.

Every command that reports results prints a readable rich table, or JSON with ``--json``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wager.errors import DataError, WagerError

app = typer.Typer(
    name="wager",
    help="Recommender systems whose every prediction carries a calibrated confidence.",
    no_args_is_help=True,
    add_completion=False,
)
data_app = typer.Typer(help="Inspect, validate and download datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="auto | movielens | obd | table | ctr")
]


def print_json(obj: Any) -> None:
    """Write ``obj`` as strict JSON to stdout (no rich markup, safe to pipe): NaN and
    infinite numbers become null, which every JSON parser reads."""
    text = json.dumps(_strict(obj), indent=2, default=_json_default, allow_nan=False)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _strict(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, +-inf, NumPy floats too) replaced by None."""
    import numpy as np

    if isinstance(obj, float | np.floating):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _strict(obj.tolist())
    return obj


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _fail(exc: WagerError, as_json: bool) -> None:
    """Report a wager error (all its findings) and exit with status 1."""
    if as_json:
        findings = [f.to_dict() for f in exc.findings] if isinstance(exc, DataError) else []
        print_json({"ok": False, "error": str(exc), "findings": findings})
    else:
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
    raise typer.Exit(code=1)


# ----------------------------------------------------------------------------- data


def _table_schema(
    user_col: str,
    item_col: str,
    label_col: str | None,
    label_kind: str,
    rating_min: float | None,
    rating_max: float | None,
    weight_col: str | None,
    impressions_col: str | None,
    clicks_col: str | None,
    timestamp_col: str | None,
    propensity_col: str | None = None,
):
    from wager.data.schema import Schema

    rating_range = None
    if rating_min is not None or rating_max is not None:
        if rating_min is None or rating_max is None:
            raise typer.BadParameter("--rating-min and --rating-max go together")
        rating_range = (rating_min, rating_max)
    return Schema(
        user=user_col,
        item=item_col,
        label=label_col,
        label_kind=label_kind,  # type: ignore[arg-type]
        rating_range=rating_range,
        weight=weight_col,
        impressions=impressions_col,
        clicks=clicks_col,
        timestamp=timestamp_col,
        propensity=propensity_col,
    )


UserColOpt = Annotated[str, typer.Option("--user-col", help="User id column (table formats).")]
ItemColOpt = Annotated[str, typer.Option("--item-col", help="Item id column (table formats).")]
LabelColOpt = Annotated[
    str | None, typer.Option("--label-col", help="Label column: rating, 0/1 click or CTR.")
]
LabelKindOpt = Annotated[str, typer.Option("--label-kind", help="rating | click | ctr")]
RatingMinOpt = Annotated[float | None, typer.Option("--rating-min", help="Lowest valid rating.")]
RatingMaxOpt = Annotated[float | None, typer.Option("--rating-max", help="Highest valid rating.")]
WeightColOpt = Annotated[str | None, typer.Option("--weight-col", help="Sample weight column.")]
ImpColOpt = Annotated[
    str | None, typer.Option("--impressions-col", help="Impression count column (CTR data).")
]
ClicksColOpt = Annotated[
    str | None, typer.Option("--clicks-col", help="Click count column (CTR data).")
]
TsColOpt = Annotated[str | None, typer.Option("--timestamp-col", help="Timestamp column.")]
PropColOpt = Annotated[
    str | None, typer.Option("--propensity-col", help="Logging propensity column, in (0, 1].")
]
UserFeatOpt = Annotated[
    Path | None, typer.Option("--user-features", help="User feature table keyed by user id.")
]
ItemFeatOpt = Annotated[
    Path | None, typer.Option("--item-features", help="Item feature table keyed by item id.")
]


def _load(
    path: Path, fmt: str, schema: Any, user_features: Path | None, item_features: Path | None
):
    from wager.data.loaders import load_dataset

    return load_dataset(
        path, fmt, schema, user_features_path=user_features, item_features_path=item_features
    )


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="Data directory or table file.")],
    fmt: FormatOpt = "auto",
    user_col: UserColOpt = "user_id",
    item_col: ItemColOpt = "item_id",
    label_col: LabelColOpt = None,
    label_kind: LabelKindOpt = "rating",
    rating_min: RatingMinOpt = None,
    rating_max: RatingMaxOpt = None,
    weight_col: WeightColOpt = None,
    impressions_col: ImpColOpt = None,
    clicks_col: ClicksColOpt = None,
    timestamp_col: TsColOpt = None,
    propensity_col: PropColOpt = None,
    user_features: UserFeatOpt = None,
    item_features: ItemFeatOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Summarise a dataset: users, items, interactions, labels, features, sparsity."""
    from wager.data.info import describe, render_description

    try:
        schema = _table_schema(
            user_col,
            item_col,
            label_col,
            label_kind,
            rating_min,
            rating_max,
            weight_col,
            impressions_col,
            clicks_col,
            timestamp_col,
            propensity_col,
        )
        ds = _load(path, fmt, schema, user_features, item_features)
        summary = describe(ds)
    except WagerError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print_json(summary)
    else:
        render_description(summary, console)


@data_app.command("validate")
def data_validate(
    path: Annotated[Path, typer.Argument(help="Data directory or table file.")],
    fmt: FormatOpt = "auto",
    user_col: UserColOpt = "user_id",
    item_col: ItemColOpt = "item_id",
    label_col: LabelColOpt = None,
    label_kind: LabelKindOpt = "rating",
    rating_min: RatingMinOpt = None,
    rating_max: RatingMaxOpt = None,
    weight_col: WeightColOpt = None,
    impressions_col: ImpColOpt = None,
    clicks_col: ClicksColOpt = None,
    timestamp_col: TsColOpt = None,
    propensity_col: PropColOpt = None,
    user_features: UserFeatOpt = None,
    item_features: ItemFeatOpt = None,
    split: Annotated[
        str | None,
        typer.Option("--split", help="Also check a split: random | temporal | leave-last-out"),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random split.")] = 0,
    as_json: JsonFlag = False,
) -> None:
    """Run every data check; exit 1 when any error is found (warnings alone exit 0)."""
    from wager.data.validate import render_report, validate_path

    try:
        schema = _table_schema(
            user_col,
            item_col,
            label_col,
            label_kind,
            rating_min,
            rating_max,
            weight_col,
            impressions_col,
            clicks_col,
            timestamp_col,
            propensity_col,
        )
    except ValueError as exc:
        if as_json:
            print_json({"ok": False, "error": str(exc), "findings": []})
        else:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}")
        raise typer.Exit(code=1) from None
    report = validate_path(
        path,
        fmt,
        schema,
        user_features_path=user_features,
        item_features_path=item_features,
        split=split,
        seed=seed,
    )
    if as_json:
        print_json(report.to_dict())
    else:
        render_report(report, console, err_console)
    if not report.ok:
        raise typer.Exit(code=1)


@data_app.command("download")
def data_download(
    name: Annotated[
        str, typer.Argument(help="movielens-100k | movielens-1m | movielens-latest-small")
    ],
    cache_dir: Annotated[
        Path | None,
        typer.Option(
            "--cache-dir", help="Where archives go (default: $WAGER_CACHE or ~/.cache/wager)."
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fetch an official dataset archive, verify its SHA-256 and unpack it."""
    from wager.data.loaders.download import download

    try:
        target = download(name, cache_dir=cache_dir)
    except WagerError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        print_json({"ok": True, "name": name, "path": str(target)})
    else:
        console.print(f"[green]downloaded[/] {name} -> {target}")


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


def _render_quickstart(result: dict[str, Any]) -> None:
    """Print the quickstart result (:func:`wager.quickstart.run_quickstart`) as tables."""
    level = result["confidence_level"]
    pct = f"{level:.0%}"
    table = _table(
        f"Top-{result['k']} recommendations at position 1: predicted CTR ± std, {pct} interval, "
        "true CTR",
        ["user", "#", "item", "mean", "std", f"{pct} interval", "true", "in?", "new?"],
    )
    last_user = None
    for r in result["recommendations"]:
        if last_user is not None and r["user"] != last_user:
            table.add_section()
        last_user = r["user"]
        table.add_row(
            escape(str(r["user"])),
            str(r["rank"]),
            escape(str(r["item"])),
            f"{r['mean']:.4f}",
            f"{r['std']:.4f}",
            f"{r['low']:.3f}–{r['high']:.3f}",
            f"{r['true_ctr']:.4f}",
            "yes" if r["inside"] else "[red]no[/]",
            "new" if r["new_item"] else "",
        )
    console.print(table)
    m = result["metrics"]
    mt = _table(
        f"Test rows: {m['n_test']:,} impressions ({m['n_test_cold_item_rows']:,} on cold-start "
        "items)",
        ["metric", "wager", "reference"],
    )
    key = f"{level:g}"
    mt.add_row("AUC", f"{m['auc']:.4f}", f"{m['auc_true_ctr_oracle']:.4f} (true CTR)")
    mt.add_row(
        "log-loss",
        f"{m['log_loss']:.4f}",
        f"{m['log_loss_true_ctr_oracle']:.4f} (true CTR), "
        f"{m['log_loss_base_rate']:.4f} (base rate)",
    )
    mt.add_row("ECE vs clicks (15 equal-mass bins)", f"{m['ece']:.4f}", "0 = calibrated")
    mt.add_row("ECE vs true CTR", f"{m['ece_true_ctr']:.4f}", "0 = calibrated")
    mt.add_row(
        f"true CTR inside {pct} interval",
        f"{m[f'coverage_true_ctr@{key}']:.3f}",
        f"{level:.2f} nominal",
    )
    mt.add_row(f"mean {pct} interval width", f"{m[f'width@{key}']:.4f}", "")
    mt.add_row(
        "mean std: known / cold-start items",
        f"{m['mean_std_known_items']:.4f} / {m['mean_std_cold_items']:.4f}",
        "cold should be larger",
    )
    for name, ratio in result["oov_std_ratio"].items():
        mt.add_row(f"OOV std ratio {escape(name)}", f"{ratio:.2f}", "> 1: less sure when unknown")
    mt.add_row("training seconds", f"{m['train_seconds']:.1f}", "")
    console.print(mt)
    console.print(
        f"Run directory: [bold]{escape(result['run_dir'])}[/] "
        f"({escape(', '.join(result['files']))}); total {result['seconds']:.1f} s"
    )


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

_METRIC_ORDER = (
    "rmse",
    "mae",
    "auc",
    "log_loss",
    "precision@",
    "recall@",
    "ndcg@",
    "map@",
    "mrr@",
    "hit_rate@",
    "top_k_accuracy@",
    "coverage@",
    "width@",
    "ece",
    "mce",
    "brier",
    "nll",
    "crps",
    "spearman_std_abs_error",
    "auroc_std_error",
    "rmse_most_confident_50pct",
    "diversity@",
    "novelty@",
    "popularity_bias@",
    "train_seconds",
    "epoch_seconds",
)


def _metrics_table(title: str, metrics: dict[str, Any]) -> Table:
    table = _table(title, ["metric", "value"])
    shown = set()
    for prefix in _METRIC_ORDER:
        for key, value in metrics.items():
            if key.startswith(prefix) and key not in shown and isinstance(value, int | float):
                shown.add(key)
                table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    for key, value in metrics.get("oov_std_ratio", {}).items():
        table.add_row(f"oov_std_ratio[{key}]", f"{value:.4f}")
    for name, file in metrics.get("plots", {}).items():
        table.add_row(f"plot: {name}", str(file))
    return table


def _run_error(exc: Exception, as_json: bool) -> None:
    if isinstance(exc, WagerError):
        _fail(exc, as_json)
    if as_json:
        print_json({"ok": False, "error": str(exc), "findings": []})
    else:
        err_console.print(
            f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
        )
    raise typer.Exit(code=1)


@app.command("train")
def train(
    config: Annotated[Path, typer.Argument(help="Run config TOML (see examples/).")],
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Run directory to write (default runs/<name>).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the model a config describes, evaluate it on the test split, save the run."""
    from wager.config import RunConfig
    from wager.pipeline import train_run

    out = out or Path("runs") / config.stem
    try:
        cfg = RunConfig.load(config)
        _rec, metrics = train_run(
            cfg, data_dir=data_dir, split=split, out=out, show_progress=not as_json
        )
    except (WagerError, ValueError, FileNotFoundError, KeyError) as exc:
        _run_error(exc, as_json)
        return
    metrics = {"ok": True, "run": str(out), **metrics}
    if as_json:
        print_json(metrics)
        return
    console.print(
        _metrics_table(f"{config.name}: {metrics['model']} on {metrics['split']}", metrics)
    )
    console.print(f"run saved to [bold]{escape(str(out))}[/]")


@app.command("evaluate")
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run directory written by `wager train`.")],
    data_dir: DataDirOpt = None,
    split: SplitOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Evaluate a saved run on the test split of its data (or another split)."""
    from wager.pipeline import evaluate_run

    try:
        metrics = evaluate_run(run, data_dir=data_dir, split=split)
    except (WagerError, ValueError, FileNotFoundError, KeyError) as exc:
        _run_error(exc, as_json)
        return
    if as_json:
        print_json({"ok": True, "run": str(run), **metrics})
        return
    console.print(_metrics_table(f"{run}: {metrics['split']}", metrics))
    if metrics.get("plots"):
        console.print(f"plots ({', '.join(metrics['plots'])}) in {metrics['plots_dir']}")


@app.command("recommend")
def recommend(
    run: Annotated[Path, typer.Argument(help="Run directory written by `wager train`.")],
    user: Annotated[
        list[str] | None, typer.Option("--user", "-u", help="User id (repeat for several).")
    ] = None,
    all_users: Annotated[
        bool, typer.Option("--all-users", help="Recommend for every user seen in training.")
    ] = False,
    k: Annotated[int, typer.Option("-k", help="Items per user.")] = 10,
    out: Annotated[
        Path | None, typer.Option("--out", help="Write recommendations to Parquet or CSV.")
    ] = None,
    include_seen: Annotated[
        bool, typer.Option("--include-seen", help="Do not exclude items seen in training.")
    ] = False,
    confidence_level: Annotated[
        float, typer.Option("--confidence-level", help="Level of the [low, high] interval.")
    ] = 0.9,
    horizon: Annotated[
        float | None,
        typer.Option(
            "--horizon",
            help="Retrieval / implicit runs: confidence = P(among the user's next H positive "
            "interactions); default: the mean validation positives per user.",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Top-k recommendations with confidence for some users (or all, in batch)."""
    from rich.progress import Progress

    from wager.recommender import Recommender

    if not user and not all_users:
        raise typer.BadParameter("give --user U (repeatable) or --all-users")
    if k < 1:
        raise typer.BadParameter(f"-k must be >= 1, got {k}")
    if horizon is not None and not horizon > 0:
        raise typer.BadParameter(f"--horizon must be > 0 future positives, got {horizon}")
    try:
        rec = Recommender.load(run)
    except (WagerError, ValueError, FileNotFoundError, KeyError) as exc:
        _run_error(exc, as_json)
        return
    users: list[Any] = list(rec.user_index_ or {}) if all_users else list(user or [])
    known = rec.known_users(users)
    cold = [u for u, ok in zip(users, known, strict=True) if not ok]
    notices = [
        f"user {u!r} was not seen in training: cold-start recommendations "
        "(out-of-vocabulary row and features; expect wider uncertainty)"
        for u in cold
    ]
    with Progress(console=err_console, disable=as_json or len(users) < 1000) as progress:
        task = progress.add_task("recommending", total=len(users))
        frame = rec.recommend(
            users,
            k,
            exclude_seen=not include_seen,
            confidence_level=confidence_level,
            progress=lambda n: progress.advance(task, n),
            horizon=horizon,
        )
    frame["cold_start"] = frame["user"].isin(cold)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            frame.astype({"user": str, "item": str}).to_parquet(out)
    if as_json:
        print_json(
            {
                "ok": True,
                "run": str(run),
                "k": k,
                "n_users": len(users),
                "cold_start_users": [str(u) for u in cold],
                "notices": notices,
                "out": str(out) if out is not None else None,
                "recommendations": [] if out is not None else frame.to_dict(orient="records"),
                "lists": []
                if out is not None
                else rec.list_confidence(frame).to_dict(orient="records"),
            }
        )
        return
    for n in notices:
        err_console.print(f"[yellow]notice:[/] {escape(n)}", highlight=False, soft_wrap=True)
    if out is not None:
        console.print(f"{len(frame):,} recommendations for {len(users):,} users written to {out}")
        return
    level = f"{confidence_level:.0%}"
    table = _table(
        f"top-{k} from {run}",
        ["user", "rank", "item", "mean", "std", f"{level} low", f"{level} high", "confidence"],
    )
    for r in frame.itertuples(index=False):
        table.add_row(
            str(r.user),
            str(r.rank),
            str(r.item),
            f"{r.mean:.4f}",
            f"{r.std:.4f}",
            f"{r.low:.4f}",
            f"{r.high:.4f}",
            f"{r.confidence:.3f}",
        )
    console.print(table)
    lists = rec.list_confidence(frame)
    if lists["expected_hits"].notna().any():
        for r in lists.itertuples(index=False):
            console.print(
                f"user {escape(str(r.user))}: expected relevant items in the list "
                f"{r.expected_hits:.2f}, probability of at least one "
                f"{r.prob_at_least_one:.3f}",
                highlight=False,
            )


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c)
    return table


if __name__ == "__main__":  # pragma: no cover
    app()
