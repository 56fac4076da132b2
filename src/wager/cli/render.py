"""Terminal rendering of what library code returns: validation reports, dataset
summaries, metrics, recommendations and the quickstart result (rich tables; everything that
came from data printed as plain text)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wager.cli.common import console
from wager.errors import ValidationReport

if TYPE_CHECKING:
    import pandas as pd

    from wager.recommender import Recommender

# ----------------------------------------------------------------------------- rendering
# Everything that came from data goes into a rich Text (or through ``_text``), never into
# a markup string, so that an id such as "[/]" or "[bold]x" prints as written.


def _text(value: Any, style: str = "") -> Text:
    return Text(str(value), style=style)


def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=_text(title), title_justify="left")
    for c in columns:
        table.add_column(_text(c))
    return table


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def render_report(report: ValidationReport, console: Console, err_console: Console) -> None:
    """Print a validation report: errors in red to ``err_console``; the rest to ``console``.

    Lines are not wrapped (``soft_wrap``) so that file names, columns and row numbers stay
    on one line, and messages are printed as plain text (no rich markup is interpreted).

    Args:
        report: what ``wager.data.validate.validate_path`` (or a loader) found.
        console: where warnings, info, dropped counts and the summary go (stdout).
        err_console: where errors go (stderr).
    """

    def line(label: str, style: str, message: str) -> Text:
        return Text.assemble((label, f"bold {style}"), (message, style))

    for f in report.errors:
        err_console.print(line("error: ", "red", f.message), soft_wrap=True, highlight=False)
    for f in report.warnings:
        console.print(line("warning: ", "yellow", f.message), soft_wrap=True, highlight=False)
    for f in report.findings:
        if f.severity == "info":
            console.print(line("info: ", "cyan", f.message), soft_wrap=True, highlight=False)
    if report.dropped:
        total = sum(report.dropped.values())
        parts = "; ".join(f"{why}: {n}" for why, n in report.dropped.items())
        console.print(
            Text(f"dropped {_plural(total, 'row')} in all ({parts})", style="cyan"),
            soft_wrap=True,
            highlight=False,
        )
    n_warn = len(report.warnings)
    if report.ok:
        tail = f" ({_plural(n_warn, 'warning')})" if n_warn else ""
        console.print(Text.assemble(("OK", "bold green"), tail), highlight=False)
    else:
        tail = f", {_plural(n_warn, 'warning')}" if n_warn else ""
        console.print(
            Text.assemble((_plural(len(report.errors), "error"), "bold red"), tail),
            highlight=False,
        )


def render_description(summary: dict[str, Any], console: Console) -> None:
    """Print a ``wager.data.info.describe`` summary as rich tables: overview, label,
    features, findings (every value as plain text).

    Args:
        summary: the dict returned by ``describe``.
        console: where to print.
    """
    console.print(_overview_table(summary))
    label = summary.get("label")
    if label:
        lt = Table(
            title=_text(f"Label '{label['column']}' ({label['kind']})"),
            title_justify="left",
            show_header=False,
        )
        lt.add_column("what", style="bold")
        lt.add_column("value")
        for key in ("rating_range", "min", "max", "mean", "std", "missing"):
            if key in label:
                lt.add_row(key, _text(_fmt(label[key])))
        if label.get("value_counts"):
            counts = ", ".join(f"{k}: {v:,}" for k, v in label["value_counts"].items())
            lt.add_row("counts", _text(counts))
        console.print(lt)
    ft = Table(title="Features", title_justify="left")
    for col in ("table", "name", "type", "unique", "missing"):
        ft.add_column(col, no_wrap=True)
    ft.add_column("details")
    for group in ("user_features", "item_features", "context"):
        for feat in summary.get(group) or []:
            ft.add_row(
                group.replace("_features", ""),
                _text(feat["name"]),
                _text(feat["type"] + ("" if feat.get("in_schema", True) else " (unused)")),
                _fmt_int(feat.get("n_unique")),
                _fmt_int(feat.get("missing")),
                _text(_details(feat)),
            )
    if ft.row_count:
        console.print(ft)
    report = summary.get("report") or {}
    findings = report.get("findings") or []
    if findings:
        rt = Table(title="Findings", title_justify="left")
        rt.add_column("severity")
        rt.add_column("message", overflow="fold")
        style = {"error": "red", "warning": "yellow", "info": "dim"}
        for f in findings:
            rt.add_row(_text(f["severity"], style.get(f["severity"], "")), _text(f["message"]))
        console.print(rt)
    dropped = report.get("dropped") or {}
    if dropped:
        console.print(
            _text("dropped rows: " + ", ".join(f"{k}: {v:,}" for k, v in dropped.items())),
            highlight=False,
        )


def _overview_table(summary: dict[str, Any]) -> Table:
    rows: list[tuple[str, str]] = [
        ("layout", str(summary.get("layout"))),
        ("interactions", f"{summary['n_interactions']:,}"),
        ("users", _fmt_int(summary.get("n_users"))),
        ("items", _fmt_int(summary.get("n_items"))),
    ]
    if summary.get("density") is not None:
        rows.append(("density", f"{summary['density']:.4%} (sparsity {summary['sparsity']:.4%})"))
    if "n_impressions" in summary:
        rows.append(("impressions", _fmt_int(summary["n_impressions"])))
        rows.append(("clicks", _fmt_int(summary.get("n_clicks"))))
        ctr = summary.get("ctr")
        rows.append(("CTR", "-" if ctr is None else f"{ctr:.4f}"))
    ts = summary.get("timestamp")
    if ts:
        rows.append(("time range", f"{ts['min']} .. {ts['max']}"))
    pos = summary.get("positions")
    if pos:
        rows.append(("positions", f"{pos['count']}: {', '.join(map(str, pos['values']))}"))
        if pos.get("ctr_by_position"):
            by_position = ", ".join(f"{k}: {v:.4f}" for k, v in pos["ctr_by_position"].items())
            rows.append(("CTR by position", by_position))
    for key in ("propensity", "weight"):
        info = summary.get(key)
        if info:
            stats = f"min {_fmt(info['min'])}, max {_fmt(info['max'])}, mean {_fmt(info['mean'])}"
            rows.append((f"{key} ({info['column']})", stats))
    for name, table in summary.get("tables", {}).items():
        if name != "interactions":
            rows.append(
                (name.replace("_", " "), f"{table['n_rows']:,} rows keyed by {table['key']}")
            )
    folds = summary.get("folds") or {}
    if folds:
        text = ", ".join(f"{k} ({v['n_train']:,}/{v['n_test']:,})" for k, v in folds.items())
        rows.append(("folds", text))
    overview = Table(
        title=_text(f"Dataset {summary.get('source', '')}"), title_justify="left", show_header=False
    )
    overview.add_column("what", style="bold")
    overview.add_column("value")
    for what, value in rows:
        overview.add_row(_text(what), _text(value))
    return overview


def _details(feat: dict[str, Any]) -> str:
    t = feat["type"]
    if feat.get("present") is False:
        return "column not found"
    if t == "numeric":
        return (
            f"min {_fmt(feat.get('min'))}, max {_fmt(feat.get('max'))}, "
            f"mean {_fmt(feat.get('mean'))}"
        )
    if t == "text":
        return f"mean {_fmt(feat.get('mean_tokens'))} tokens, max {feat.get('max_tokens')}"
    if t == "datetime":
        midnight = "T00:00:00+00:00"
        return f"{feat.get('min')} .. {feat.get('max')}".replace(midnight, "")
    if t == "other":
        return f"dtype {feat.get('dtype')}"
    top = feat.get("top") or []
    text = ", ".join(f"{_short(d['value'])} ({d['count']:,})" for d in top)
    if t == "multi_categorical":
        text = f"{_fmt(feat.get('mean_values_per_row'))} per row; " + text
    return text


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list):
        return " .. ".join(_fmt(x) for x in v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _fmt_int(v: Any) -> str:
    return "-" if v is None else f"{int(v):,}"


def _short(text: str, width: int = 14) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# ----------------------------------------------------------------------------- quickstart


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
                text = f"{value:.4f}" if isinstance(value, float) else str(value)
                table.add_row(_text(key), _text(text))
    for key, value in metrics.get("oov_std_ratio", {}).items():
        table.add_row(_text(f"oov_std_ratio[{key}]"), _text(f"{value:.4f}"))
    for task, values in metrics.get("tasks", {}).items():  # [[model.tasks]]
        for key in ("rmse", "mae", "auc", "log_loss", "ece", "nll", "coverage@0.9"):
            if isinstance(values.get(key), int | float):
                table.add_row(_text(f"{task}.{key}"), _text(f"{values[key]:.4f}"))
    for name, file in metrics.get("plots", {}).items():
        table.add_row(_text(f"plot: {name}"), _text(file))
    return table


def _print_recommendations(
    rec: Recommender, frame: pd.DataFrame, title: str, confidence_level: float
) -> None:
    level = f"{confidence_level:.0%}"
    chosen = "propensity" in frame.columns  # picked by a policy (``--policy``)
    table = _table(
        title,
        ["user", "rank", "item", "mean", "std", f"{level} low", f"{level} high", "confidence"]
        + (["propensity"] if chosen else []),
    )
    for r in frame.itertuples(index=False):
        table.add_row(
            _text(r.user),
            _text(r.rank),
            _text(r.item),
            f"{r.mean:.4f}",
            f"{r.std:.4f}",
            f"{r.low:.4f}",
            f"{r.high:.4f}",
            f"{r.confidence:.3f}",
            *([f"{r.propensity:.4g}"] if chosen else []),
        )
    console.print(table)
    policy = frame.attrs.get("policy")
    if chosen and policy is not None:
        how = "exact" if policy["draws"] is None else f"Monte Carlo over {policy['draws']} draws"
        console.print(
            _text(
                f"policy {policy['name']} over {policy['candidates']} candidates per user: "
                f"propensities {how}, floored at {policy['propensity_floor']:g}"
            ),
            highlight=False,
        )
    lists = rec.list_confidence(frame)
    if lists["expected_hits"].notna().any():
        for r in lists.itertuples(index=False):
            console.print(
                _text(
                    f"user {r.user}: expected relevant items in the list "
                    f"{r.expected_hits:.2f}, probability of at least one "
                    f"{r.prob_at_least_one:.3f}"
                ),
                highlight=False,
            )
