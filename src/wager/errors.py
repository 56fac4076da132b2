"""Errors and validation findings shared by every layer.

Every user-facing error names where the problem is (file, column, rows) and how
to fix it. Validation collects :class:`Finding` objects into a
:class:`ValidationReport` so that a whole table is checked at once instead of
stopping at the first problem, and so that rows dropped for any reason are
counted and reported, never dropped silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, SupportsInt, TypeAlias

Severity = Literal["error", "warning", "info"]

RowPositions: TypeAlias = Collection[SupportsInt]
"""0-based data row positions: a list, tuple, NumPy integer array or pandas index."""

_MAX_ROWS_SHOWN = 5


class WagerError(Exception):
    """Base class of every error wager raises on purpose."""


class MissingExtraError(WagerError, ImportError):
    """An optional dependency is missing; the message says which extra installs it."""


class NotFittedError(WagerError, RuntimeError):
    """A fitted-state method was called before ``fit()``."""


class TrainingDivergedError(WagerError, RuntimeError):
    """Training produced a non-finite loss or validation metric: nothing is kept as fitted;
    the message names the epoch and members and how to fix it."""


def format_rows(rows: RowPositions, total: int | None = None) -> str:
    """Render row numbers as 'row 3' or 'rows 3, 7, 9 (and 12 more)'.

    Args:
        rows: 0-based data row positions (the first data row after any header is 0).
        total: how many rows are affected in all, if more than ``len(rows)``.

    Returns:
        Human-readable text with 1-based data-row numbers, as a spreadsheet user counts them.
    """
    shown = [int(r) + 1 for r in list(rows)[:_MAX_ROWS_SHOWN]]
    n = len(rows) if total is None else total
    if not shown:
        return ""
    word = "row" if n == 1 else "rows"
    text = f"{word} {', '.join(str(r) for r in shown)}"
    if n > len(shown):
        text += f" (and {n - len(shown)} more)"
    return text


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest candidate names, or ''."""
    close = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=3, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"


@dataclass(frozen=True)
class Finding:
    """One validation result.

    Attributes:
        severity: "error" stops loading; "warning" is reported and the data are used
            (e.g. ids absent from a feature table, handled as out-of-vocabulary);
            "info" records an action taken (e.g. rows dropped, with their count).
        code: stable machine-readable identifier, e.g. "missing_column".
        message: the full human sentence, naming source, column, rows and the fix.
        source: the file or table the finding is about.
        column: the offending column, if any.
        rows: 0-based positions of (the first few) offending rows.
        count: how many rows are affected in all.
    """

    severity: Severity
    code: str
    message: str
    source: str | None = None
    column: str | None = None
    rows: tuple[int, ...] = ()
    count: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "source": self.source,
            "column": self.column,
            "rows": [int(r) for r in self.rows],
            "count": int(self.count),
        }


def make_finding(
    severity: Severity,
    code: str,
    problem: str,
    *,
    source: str | None = None,
    column: str | None = None,
    rows: RowPositions = (),
    count: int | None = None,
    fix: str | None = None,
) -> Finding:
    """Build a :class:`Finding` whose message reads 'SOURCE: column 'C', rows ...: PROBLEM. FIX'."""
    n = len(rows) if count is None else count
    where = []
    if source:
        where.append(str(source))
    if column is not None:
        where.append(f"column '{column}'")
    if len(rows):
        where.append(format_rows(rows, n))
    prefix = ", ".join(where)
    message = f"{prefix}: {problem}" if prefix else problem
    if fix:
        message = message.rstrip(".") + ". " + fix
    return Finding(
        severity=severity,
        code=code,
        message=message,
        source=source,
        column=column,
        rows=tuple(int(r) for r in list(rows)[:_MAX_ROWS_SHOWN]),
        count=int(n),
    )


class DataError(WagerError, ValueError):
    """Data cannot be used as given. ``findings`` holds every problem found."""

    def __init__(self, findings: Finding | Sequence[Finding]) -> None:
        self.findings: tuple[Finding, ...] = (
            (findings,) if isinstance(findings, Finding) else tuple(findings)
        )
        super().__init__("\n".join(f.message for f in self.findings))


def data_error(
    code: str,
    problem: str,
    *,
    source: str | None = None,
    column: str | None = None,
    rows: RowPositions = (),
    count: int | None = None,
    fix: str | None = None,
) -> DataError:
    """Shorthand: a :class:`DataError` holding one error finding."""
    return DataError(
        make_finding(
            "error", code, problem, source=source, column=column, rows=rows, count=count, fix=fix
        )
    )


@dataclass
class ValidationReport:
    """All findings from loading/validating a dataset, plus dropped-row counts.

    Attributes:
        findings: every finding in the order found.
        dropped: reason -> number of rows dropped for it; never silent.
    """

    findings: list[Finding] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        """Findings with severity "error"."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings with severity "warning"."""
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error."""
        return not self.errors

    def add(self, finding: Finding) -> None:
        """Append a finding."""
        self.findings.append(finding)

    def extend(self, other: ValidationReport) -> None:
        """Merge another report into this one (dropped counts add up)."""
        self.findings.extend(other.findings)
        for reason, n in other.dropped.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def drop(
        self, reason: str, n: int, *, source: str | None = None, rows: RowPositions = ()
    ) -> None:
        """Record that ``n`` rows were dropped for ``reason`` (an info finding too)."""
        if n <= 0:
            return
        self.dropped[reason] = self.dropped.get(reason, 0) + int(n)
        self.add(
            make_finding(
                "info",
                "rows_dropped",
                f"dropped {n} rows: {reason}",
                source=source,
                rows=rows,
                count=n,
            )
        )

    def raise_if_errors(self) -> None:
        """Raise :class:`DataError` with every error finding, if there is any."""
        if self.errors:
            raise DataError(self.errors)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "info": [f.to_dict() for f in self.findings if f.severity == "info"],
            "dropped": dict(self.dropped),
        }


def require_path(path: str | Path, fix: str) -> Path:
    """Return ``Path(path)`` if it exists, else raise a "missing_path" :class:`DataError`.

    Args:
        path: file or directory the user named.
        fix: what to do instead, e.g. "Pass the directory the MovieLens archive unzips to."
    """
    p = Path(path)
    if not p.exists():
        parent = p.parent
        problem = "no such file or directory"
        if str(parent) not in ("", ".") and not parent.exists():
            problem += f" (the directory '{parent}' does not exist)"
        raise data_error("missing_path", problem, source=str(p), fix=fix)
    return p
