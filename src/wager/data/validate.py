"""``wager data validate``: load a dataset, run every check, optionally check a split.

:func:`validate_path` is the back end of ``wager data validate``; it never raises for
problems in the data, it reports them. The checks themselves live in
:mod:`wager.data.checks`, below the loaders; this module sits above both (it loads and
splits), so the module graph has no cycle.
"""

from __future__ import annotations

from pathlib import Path

from wager.data.checks import ReportedDataError
from wager.data.loaders import load_dataset
from wager.data.schema import Schema
from wager.data.splits import split_dataset
from wager.errors import (
    DataError,
    ValidationReport,
    WagerError,
    make_finding,
)

__all__ = [
    "validate_path",
]


def _src(source: str | None) -> str | None:
    return str(source) if source else None


# ----------------------------------------------------------------------------- the command


def _findings_of(exc: DataError) -> ValidationReport:
    if isinstance(exc, ReportedDataError):
        return exc.report
    report = ValidationReport()
    for f in exc.findings:
        report.add(f)
    return report


def validate_path(
    path: str | Path,
    fmt: str,
    schema: Schema | None,
    *,
    user_features_path: str | Path | None = None,
    item_features_path: str | Path | None = None,
    split: str | None = None,
    seed: int = 0,
) -> ValidationReport:
    """Load a dataset, run every check, and optionally check a split; never raises for data.

    What ``wager data validate`` runs. Problems that stop loading (a missing file, an
    unknown format, a bad column) become error findings; the loader's own warnings and
    dropped-row counts are kept; zero rows left after loading is an error. With
    ``split``, the dataset is also split (``wager.data.splits.split_dataset``) and that
    split's findings (e.g. users or items that occur only in test) are added.

    Args:
        path: a data directory or a table file.
        fmt: a format name of :data:`wager.data.loaders.FORMATS`.
        schema: column mapping for the table formats.
        user_features_path: optional user feature table.
        item_features_path: optional item feature table.
        split: "random", "temporal", "leave-last-out" or a predefined fold name, or None.
        seed: seed of the random split.

    Returns:
        Every finding; ``report.ok`` is False when any error was found.
    """
    try:
        dataset = load_dataset(
            path,
            fmt,
            schema,
            user_features_path=user_features_path,
            item_features_path=item_features_path,
        )
    except DataError as exc:
        return _findings_of(exc)
    report = ValidationReport()
    report.extend(dataset.report)
    source = _src(dataset.source or str(path))
    if len(dataset.interactions) == 0:
        if not any(f.code in ("empty_after_filtering", "empty_table") for f in report.errors):
            dropped = "; ".join(f"{n} rows: {why}" for why, n in report.dropped.items())
            report.add(
                make_finding(
                    "error",
                    "empty_after_filtering",
                    "no rows are left after filtering"
                    + (f" (dropped {dropped})" if dropped else ""),
                    source=source,
                    fix="Check the filters and the input; nothing can be trained on",
                )
            )
        return report
    if split is not None:
        try:
            result = split_dataset(dataset, split, seed=seed)
        except DataError as exc:
            report.extend(_findings_of(exc))
        except (WagerError, ValueError) as exc:
            report.add(
                make_finding(
                    "error",
                    "bad_split",
                    f"split '{split}' failed: {exc}",
                    source=source,
                )
            )
        else:
            report.extend(result.report)
    return report
