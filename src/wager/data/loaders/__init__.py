"""Loaders: read local files into a :class:`~wager.data.dataset.Dataset`. Nothing downloads here.

``load_dataset`` dispatches on ``format``:

- "movielens": a MovieLens directory (100k ``u.data``, 1M ``ratings.dat``, or
  latest/25m ``ratings.csv`` layout), see :mod:`wager.data.loaders.movielens`.
- "obd": an Open Bandit Dataset policy directory (``{campaign}.csv`` + ``item_context.csv``),
  see :mod:`wager.data.loaders.obd`.
- "table": a CSV / Parquet / JSON-lines interaction table with a column mapping given by
  ``schema``, see :mod:`wager.data.loaders.table`.
- "ctr": an aggregated CTR table (target, context, impressions, clicks), see
  :mod:`wager.data.loaders.table`.
- "auto": detect from what is on disk.

:mod:`wager.data.loaders.event_log` reads (and writes) the Parquet log of ``wager
export-logs`` as :class:`~wager.data.logged.LoggedFeedback`; as a table it loads with
"table" (label column ``label``).
"""

from __future__ import annotations

from pathlib import Path

from wager.data.dataset import Dataset
from wager.data.schema import Schema
from wager.errors import data_error, require_path

FORMATS = ("auto", "movielens", "obd", "table", "ctr")


def detect_format(path: str | Path) -> str:
    """Guess the format of ``path`` from the files it holds.

    Raises:
        DataError: the path does not exist, or holds nothing wager can read.
    """
    p = require_path(path, "Check the path, or pass the directory that holds the data.")
    if p.is_dir():
        if any((p / n).exists() for n in ("u.data", "ratings.dat", "ratings.csv")):
            return "movielens"
        if (p / "item_context.csv").exists():
            return "obd"
        raise data_error(
            "unknown_format",
            "directory holds neither a MovieLens layout (u.data, ratings.dat, ratings.csv) "
            "nor an Open Bandit layout (item_context.csv)",
            source=str(p),
            fix="Pass a table file with --format table, or --format movielens|obd for a directory.",
        )
    return "table"


def load_dataset(
    path: str | Path,
    format: str = "auto",
    schema: Schema | None = None,
    *,
    user_features_path: str | Path | None = None,
    item_features_path: str | Path | None = None,
) -> Dataset:
    """Load ``path`` in the given format; see the module docstring.

    Args:
        path: a directory (MovieLens, Open Bandit) or a table file.
        format: one of :data:`FORMATS`.
        schema: column mapping for "table"/"ctr" (required there); ignored by the
            fixed-layout formats, which suggest their own.
        user_features_path: optional user feature table for "table"/"ctr".
        item_features_path: optional item feature table for "table"/"ctr".

    Raises:
        DataError: naming file, column and rows, for every problem found.
    """
    if format not in FORMATS:
        raise data_error(
            "unknown_format",
            f"format '{format}' is not known",
            source=str(path),
            fix=f"Use one of: {', '.join(FORMATS)}.",
        )
    if format == "auto":
        format = detect_format(path)
    if format == "movielens":
        from wager.data.loaders.movielens import load_movielens

        return load_movielens(path)
    if format == "obd":
        from wager.data.loaders.obd import load_obd

        return load_obd(path)
    from wager.data.loaders.table import load_ctr_table, load_table

    if schema is None:
        raise data_error(
            "missing_mapping",
            "a table needs a column mapping",
            source=str(path),
            fix="Pass --user-col, --item-col and --label-col (or a Schema in Python).",
        )
    loader = load_ctr_table if format == "ctr" else load_table
    return loader(
        path, schema, user_features_path=user_features_path, item_features_path=item_features_path
    )
