"""The ``wager`` command line: thin; every flag maps onto a config or schema field.

Every command that reports results prints a readable rich table, or JSON with ``--json``.
This module is the only place that renders for a terminal: library code returns data
(dicts, reports, frames) and raises named errors; everything here that came from data
(ids, titles, file names, finding messages) is printed as plain text, never read as rich
markup, and help text is printed as written (``rich_markup_mode=None``).

Errors are reported in one place, :func:`_reports_errors`, which every command of
:data:`app` gets (see :class:`_WagerTyper`). It draws the line between a mistake a user
can make and a bug:

- reported as one ``error: ...`` line (exit 1; 2 for a bad flag), or with ``--json`` one
  JSON object ``{"ok": false, "error": {"type", "message", "path", "flag", "findings"}}``:
  every :class:`~wager.errors.WagerError` (raised on purpose, message for the user); every
  ``OSError`` (the file system: missing file, permission denied, a directory where a file
  belongs, disk full), named by its file; a ``ValueError`` that a ``raise`` statement in
  wager's own code raised (the library's convention for a bad argument or config value
  until each is a named error; one that NumPy or PyTorch raised is a bug); a
  :class:`CliError` (a bad flag or output path, found here); and any failure while reading
  a run folder or config file, turned into a :class:`CliError` that names the damaged
  file (:func:`_load_run`, :func:`_load_config`).
- anything else (``TypeError``, ``IndexError``, a ``ValueError`` from inside NumPy or
  PyTorch, ...) is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import linecache
import math
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from wager.errors import DataError, ValidationReport, WagerError

if TYPE_CHECKING:
    import pandas as pd

    from wager.config import RunConfig
    from wager.recommender import Recommender

F = TypeVar("F", bound=Callable[..., Any])

#: the recommendation file formats ``wager recommend --out`` writes, by file extension
OUT_FORMATS = (".parquet", ".csv", ".jsonl")
#: files that mark a folder as a wager run (``wager recommend --out`` never writes into one)


# ----------------------------------------------------------------------------- errors


class CliError(Exception):
    """A user's mistake found by the command line itself: a bad flag, an output path that
    must not be written, a damaged run folder or config file.

    Args:
        message: one line naming the flag or file and how to fix it.
        flag: the offending flag (e.g. "--out"), if any.
        path: the offending file or folder, if any.
        kind: the error's type in the ``--json`` error object.
        exit_code: 2 for a bad flag (as for any other usage error), else 1.
    """

    def __init__(
        self,
        message: str,
        *,
        flag: str | None = None,
        path: str | Path | None = None,
        kind: str = "UsageError",
        exit_code: int = 1,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.flag = flag
        self.path = None if path is None else str(path)
        self.kind = kind
        self.exit_code = exit_code


def _flag_error(flag: str, message: str) -> CliError:
    return CliError(message, flag=flag, kind="UsageError", exit_code=2)


@dataclass(frozen=True)
class _Failure:
    """What the user is told about an error: the ``--json`` object and the text lines."""

    kind: str
    lines: tuple[str, ...]
    path: str | None = None
    flag: str | None = None
    findings: list[dict[str, object]] = field(default_factory=list)
    exit_code: int = 1

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": False,
            "error": {
                "type": self.kind,
                "message": "\n".join(self.lines),
                "path": self.path,
                "flag": self.flag,
                "findings": self.findings,
            },
        }


_OS_HINTS: dict[type[OSError], str] = {
    FileNotFoundError: "check the path",
    IsADirectoryError: "a directory is where a file belongs; pass the file",
    NotADirectoryError: "a file is where a directory belongs; pass the directory",
    PermissionError: "check the file's permissions",
}


def _lines(text: str) -> tuple[str, ...]:
    return tuple(line for line in str(text).splitlines() if line.strip()) or (repr(text),)


def _raised_in_wager(exc: BaseException) -> bool:
    """True when a ``raise`` statement in wager's own code raised ``exc`` (a message meant
    for the user), not a call into NumPy, PyTorch or the standard library."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = tb.tb_frame.f_code.co_filename
    if not Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        return False
    return linecache.getline(filename, tb.tb_lineno).lstrip().startswith("raise")


def _failure_of(exc: Exception) -> _Failure | None:
    """The report of a user's mistake, or None for a bug (which keeps its traceback)."""
    if isinstance(exc, CliError):
        return _Failure(exc.kind, _lines(exc.message), exc.path, exc.flag, [], exc.exit_code)
    if isinstance(exc, DataError):
        findings = [f.to_dict() for f in exc.findings]
        path = exc.findings[0].source if exc.findings else None
        return _Failure(type(exc).__name__, _lines(str(exc)), path, None, findings)
    if isinstance(exc, WagerError):
        path, flag = getattr(exc, "path", None), getattr(exc, "flag", None)
        return _Failure(
            type(exc).__name__,
            _lines(str(exc)),
            None if path is None else str(path),
            None if flag is None else str(flag),
        )
    if isinstance(exc, OSError):
        if exc.filename is None:  # raised by wager with its own message, or a bare OS error
            return _Failure(type(exc).__name__, _lines(str(exc)))
        reason = exc.strerror or str(exc)
        hint = next((h for t, h in _OS_HINTS.items() if isinstance(exc, t)), None)
        text = f"{exc.filename}: {reason}" + (f"; {hint}" if hint else "")
        return _Failure(type(exc).__name__, (text,), str(exc.filename))
    if isinstance(exc, ValueError) and _raised_in_wager(exc):
        return _Failure(type(exc).__name__, _lines(str(exc)))
    return None


def _report_failure(failure: _Failure, as_json: bool) -> None:
    if as_json:
        print_json(failure.to_dict())
        return
    for line in failure.lines:
        err_console.print(
            Text.assemble(("error: ", "bold red"), line), soft_wrap=True, highlight=False
        )


def _reports_errors(command: F) -> F:
    """Wrap a command so that a user's mistake exits non-zero with its message (JSON with
    ``--json``) instead of a traceback; see the module docstring for where the line is."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except Exception as exc:
            if isinstance(exc, typer.Exit | typer.Abort | typer.BadParameter):
                raise
            failure = _failure_of(exc)
            if failure is None:
                raise
            _report_failure(failure, bool(kwargs.get("as_json", False)))
            raise typer.Exit(code=failure.exit_code) from None

    return wrapper  # type: ignore[return-value]  # wraps() keeps F's signature


class _WagerTyper(typer.Typer):
    """A Typer whose every command reports errors through :func:`_reports_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(fn: F) -> F:
            register(_reports_errors(fn))
            return fn

        return decorator


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _not_utf8(path: Path, exc: UnicodeDecodeError) -> str:
    byte = exc.object[exc.start : exc.start + 1].hex()
    return f"{path}: not UTF-8 text (byte 0x{byte} at offset {exc.start}); save it as UTF-8"


def _load_run(run: Path) -> Recommender:
    """``Recommender.load(run)``: the run folder's manifest is verified first, so a missing,
    truncated or corrupt file is a ``RunError`` naming it (reported by the command wrapper)."""
    from wager.recommender import Recommender

    return Recommender.load(run)


def _load_config(path: Path) -> RunConfig:
    """``RunConfig.load(path)``; a file that is not UTF-8 text, or a value of the wrong
    type, is reported naming the file."""
    from wager.config import RunConfig

    try:
        return RunConfig.load(path)
    except UnicodeDecodeError as exc:
        raise CliError(_not_utf8(path, exc), path=path, kind="ConfigError") from None
    except (ValueError, TypeError) as exc:
        if isinstance(exc, WagerError):
            raise
        text = " ".join(_lines(str(exc)))
        message = text if str(path) in text else f"{path}: {text}"
        raise CliError(message, path=path, kind="ConfigError") from None


# ----------------------------------------------------------------------------- app


def _print_version(value: bool) -> None:
    if value:
        from wager import __version__

        sys.stdout.write(f"wager {__version__}\n")
        raise typer.Exit()


app = _WagerTyper(
    name="wager",
    help="Recommender systems whose every prediction carries a calibrated confidence.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)
data_app = _WagerTyper(
    help="Inspect, validate and download datasets.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(data_app, name="data")


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Recommender systems whose every prediction carries a calibrated confidence."""


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
            raise _flag_error("--rating-min", "--rating-min and --rating-max go together")
        rating_range = (rating_min, rating_max)
    return Schema(
        user=user_col,
        item=item_col,
        label=label_col,
        label_kind=label_kind,  # type: ignore[arg-type]  # a str; Schema checks the value
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
    from wager.data.info import describe

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
    summary = describe(_load(path, fmt, schema, user_features, item_features))
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
    from wager.data.validate import validate_path

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

    target = download(name, cache_dir=cache_dir)
    if as_json:
        print_json({"ok": True, "name": name, "path": str(target)})
    else:
        console.print(
            Text.assemble(("downloaded", "green"), f" {name} -> {target}"), highlight=False
        )


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
    as_json: JsonFlag = False,
) -> None:
    """Train the model a config describes, evaluate it on the test split, save the run."""
    from wager.runs import RunDirectory

    out = out or Path("runs") / config.stem
    # check first, then work: the config and the output folder before torch or any data
    cfg = _load_config(config)
    RunDirectory(out).check_target(overwrite)
    from wager.pipeline import train_run

    _rec, metrics = train_run(
        cfg,
        data_dir=data_dir,
        split=split,
        out=out,
        show_progress=not as_json,
        overwrite=overwrite,
    )
    metrics = {"ok": True, "run": str(out), **metrics}
    if as_json:
        print_json(metrics)
        return
    console.print(
        _metrics_table(f"{config.name}: {metrics['model']} on {metrics['split']}", metrics)
    )
    console.print(Text.assemble("run saved to ", (str(out), "bold")), highlight=False)


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
        Path | None,
        typer.Option(
            "--out",
            help="Write the recommendations to a file instead of printing them; the format "
            "follows the extension: .parquet, .csv or .jsonl (one JSON object a line). Never "
            "inside a run folder.",
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
    as_json: JsonFlag = False,
) -> None:
    """Top-k recommendations with confidence for some users (or all, in batch)."""
    from rich.progress import Progress

    _check_recommend_flags(bool(user), all_users, k, confidence_level, horizon)
    if out is not None:
        _check_out(out, run, overwrite)
    rec = _load_run(run)
    users: list[Any] = list(rec.scorer_.catalogue.users) if all_users else list(user or [])
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
        _write_table(frame, out)
    if as_json:
        print_json(_recommend_payload(rec, frame, run, k, len(users), cold, notices, out))
        return
    for n in notices:
        err_console.print(Text.assemble(("notice: ", "yellow"), n), highlight=False, soft_wrap=True)
    if out is not None:
        console.print(
            _text(f"{len(frame):,} recommendations for {len(users):,} users written to {out}"),
            highlight=False,
        )
        return
    _print_recommendations(rec, frame, f"top-{k} from {run}", confidence_level)


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
    }


def _print_recommendations(
    rec: Recommender, frame: pd.DataFrame, title: str, confidence_level: float
) -> None:
    level = f"{confidence_level:.0%}"
    table = _table(
        title,
        ["user", "rank", "item", "mean", "std", f"{level} low", f"{level} high", "confidence"],
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
        )
    console.print(table)
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


# ----------------------------------------------------------------------------- output files


def _is_run_folder(folder: Path) -> bool:
    from wager.runs import RunDirectory

    return RunDirectory(folder).is_run()


def _check_out(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an ``--out`` path before any work: an unknown extension, a directory, a path
    inside the run being read or inside any run folder, an existing file (without
    ``--overwrite``)."""
    choices = ", ".join(OUT_FORMATS)
    if out.suffix.lower() not in OUT_FORMATS:
        found = f"'{out.suffix}'" if out.suffix else "no extension"
        raise _flag_error(
            "--out", f"--out {out}: {found} is not a format wager writes; end it in {choices}"
        )
    if out.is_dir():
        raise _flag_error("--out", f"--out {out}: is a directory; give a file name ({choices})")
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


def _write_table(frame: pd.DataFrame, out: Path) -> None:
    """Write ``frame`` to ``out`` in the format its extension names, whole or not at all:
    into a hidden temporary file beside it, then renamed over it (an interrupted write
    leaves no partial ``out``; the temporary file is removed)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    frame = frame.astype({"user": str, "item": str})  # ids are values as written
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    try:
        suffix = out.suffix.lower()
        if suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        elif suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
        os.replace(tmp, out)
    except OSError as exc:  # e.g. disk full: name the file the user asked for
        raise OSError(exc.errno, exc.strerror or str(exc), str(out)) from exc
    finally:
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":  # pragma: no cover
    app()
