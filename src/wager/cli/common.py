"""What every ``wager`` command shares: the :data:`app` and its ``data`` group, the
consoles, ``--json`` output, the flag types used by several commands, and error reporting.

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
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.text import Text

from wager.errors import DataError, WagerError

if TYPE_CHECKING:
    from wager.config import RunConfig
    from wager.recommender import Recommender
    from wager.training.fanout import Runner

F = TypeVar("F", bound=Callable[..., Any])


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


def check_out_folder(out: Path | None, names: tuple[str, ...], overwrite: bool) -> None:
    """Before any work: ``--out`` must be a folder (or not exist yet), and may hold none of
    the files ``names`` the command writes unless ``--overwrite`` is given (wager never
    replaces a file silently)."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise _flag_error("--out", f"--out {out} is a file; give a folder for the output files")
    clash = [name for name in names if (out / name).exists()]
    if clash and not overwrite:
        raise _flag_error(
            "--out",
            f"--out {out} already holds {', '.join(clash)}: pass --overwrite to replace "
            "them, or choose another folder",
        )


_DB_SCHEMES = ("sqlite://", "postgresql://", "postgresql+psycopg://")


def check_event_db(db: str) -> None:
    """The checks of a ``--db`` that a command only reads (``wager export-logs``, ``wager
    abtest report``), made before the database is opened: an event-store URL, and for SQLite
    a file that exists (opening a missing one would create it). Raises :class:`CliError`
    naming ``--db``."""
    if not db.startswith(_DB_SCHEMES):
        raise _flag_error(
            "--db",
            f"--db {db}: not an event-store URL; use sqlite:///PATH/events.db or "
            "postgresql://USER:PASSWORD@HOST/DB (what `wager serve --db` was given)",
        )
    if db.startswith("sqlite://"):
        import sqlalchemy as sa

        try:
            database = sa.make_url(db).database or ""
        except (sa.exc.ArgumentError, ValueError):
            database = ""
        if not database or not Path(database).is_file():
            raise _flag_error(
                "--db",
                f"--db {db}: no such SQLite database file; give the events.db that `wager "
                "serve` wrote (in the registry folder unless --db was given)",
            )


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
    if not Path(filename).resolve().is_relative_to(Path(__file__).resolve().parents[1]):
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
        except KeyboardInterrupt:
            # Ctrl-C: a run folder is written whole or not at all, so nothing half-done stays
            err_console.print(
                Text("interrupted: nothing was saved (a run folder is written whole or not at "
                     "all)"),
                soft_wrap=True,
            )  # fmt: skip
            raise typer.Exit(code=130) from None
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


def ray_flag(address: str | None) -> Runner | None:
    """The Ray runner of ``--ray`` (None without it), or a usage error naming the flag."""
    if address is None:
        return None
    from wager.errors import MissingExtraError
    from wager.training.fanout import RayRunner

    try:
        return RayRunner(address)
    except (MissingExtraError, ValueError) as exc:
        raise _flag_error("--ray", str(exc)) from None
