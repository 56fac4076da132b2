"""Reading one table file by its extension: CSV / TSV / text, Parquet, JSON lines / JSON.

:func:`read_table` picks the reader from the extension (:data:`SUPPORTED_EXTENSIONS`,
optionally followed by a compression suffix such as ``.gz``), reads id and categorical
columns as text when asked (exactly as written in delimited files; 7 and 7.0 read "7" in
typed formats), and turns every way a file can fail to read (no such file, unknown
format, empty, corrupt, not UTF-8, a column named twice) into a
:class:`~wager.errors.DataError` that names the file and, where the parser says, the line.
The loaders of :mod:`wager.data.loaders.table`, which re-exports :func:`read_table` and
:data:`SUPPORTED_EXTENSIONS`, check and assemble what it returns.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import json
import lzma
import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES  # not in pandas-stubs: typed Any

from wager.data.checks_common import column_name_report
from wager.data.column_encoders import categorical_keys
from wager.errors import DataError, ValidationReport, data_error, make_finding, require_path

#: File extensions :func:`read_table` understands (optionally followed by a compression suffix).
SUPPORTED_EXTENSIONS = (".csv", ".tsv", ".txt", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")
_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".zip")
_SNIFF_BYTES = 64 * 1024
# pandas' default missing-value markers; id columns read as text take only "" as missing
_DEFAULT_NA: list[str] = sorted(STR_NA_VALUES)


# ----------------------------------------------------------------------------- reading


def _extension(path: Path) -> tuple[str, str | None]:
    """(format extension, compression suffix or None), both lower-case."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        return (suffixes[-2] if len(suffixes) >= 2 else ""), suffixes[-1]
    return (suffixes[-1] if suffixes else ""), None


def _open_text(path: Path, compression: str | None) -> IO[str] | None:
    """Open a (possibly compressed) text file, or None for compressions we cannot stream."""
    if compression is None:
        return open(path, encoding="utf-8", errors="replace")
    opener: Any = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}.get(compression)
    if opener is None:
        return None
    return opener(path, "rt", encoding="utf-8", errors="replace")


def _sniff_delimiter(path: Path, ext: str, compression: str | None) -> str:
    """The delimiter of a delimited text file: ',' for .csv, tab for .tsv, sniffed otherwise."""
    if ext == ".tsv":
        return "\t"
    handle = _open_text(path, compression)
    if handle is None:
        return ","
    with handle:
        head = handle.read(_SNIFF_BYTES)
    lines = head.splitlines()
    first = lines[0] if lines else ""
    if ext == ".csv" and "," in first:
        return ","
    try:
        delimiter = csv.Sniffer().sniff("\n".join(lines[:50]), delimiters=",\t;| ").delimiter
    except csv.Error:
        delimiter = "\t" if "\t" in first else ("," if ext == ".csv" or "," in first else r"\s+")
    return r"\s+" if delimiter == " " else delimiter


def _parser_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _na_values(names: Sequence[str], text_columns: Collection[str]) -> dict[str, list[str]]:
    """Missing-value markers per column: only the empty cell for text columns."""
    return {n: ([""] if n in text_columns else _DEFAULT_NA) for n in names}


def _read_delimited(
    path: Path, ext: str, compression: str | None, text_columns: Collection[str]
) -> pd.DataFrame:
    source = str(path)
    sep = _sniff_delimiter(path, ext, compression)
    shown_sep = {"\t": "tab", r"\s+": "whitespace"}.get(sep, f"'{sep}'")
    try:
        header = pd.read_csv(
            path,
            sep=sep,
            header=None,
            nrows=1,
            dtype=str,
            keep_default_na=False,
            skipinitialspace=True,
            compression="infer",
        )
        names = [str(c) for c in header.iloc[0].tolist()] if len(header) else []
        column_name_report(names, source).raise_if_errors()
        return pd.read_csv(
            path,
            sep=sep,
            skipinitialspace=True,
            low_memory=False,
            compression="infer",
            dtype={n: str for n in names if n in text_columns},
            keep_default_na=False,
            na_values=_na_values(names, text_columns),
        )
    except pd.errors.EmptyDataError:
        raise data_error(
            "empty_table",
            "the file is empty (no header, no rows)",
            source=source,
            fix="Check that the right file was given and that it is not truncated",
        ) from None
    except pd.errors.ParserError as exc:
        text = str(exc).strip()
        line = _parser_line(text)
        detail = re.sub(r"^.*C error: ", "", text)
        if line is not None and line >= 2:
            raise data_error(
                "parse_error",
                f"line {line} of the file cannot be parsed as {shown_sep}-delimited ({detail})",
                source=source,
                rows=[line - 2],
                fix=f"Quote values that contain the delimiter {shown_sep}, or fix the line",
            ) from None
        raise data_error(
            "parse_error",
            f"the file cannot be parsed as a {shown_sep}-delimited table ({text})",
            source=source,
            fix="Check the delimiter and quoting, or save the table as Parquet",
        ) from None
    except UnicodeDecodeError as exc:
        raise data_error(
            "bad_encoding",
            f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})",
            source=source,
            fix="Re-save the file with UTF-8 encoding",
        ) from None


def _first_bad_json_line(path: Path, compression: str | None) -> tuple[int, int, str] | None:
    """(1-based file line, 0-based data row, error) of the first line that is not a JSON object."""
    handle = _open_text(path, compression)
    if handle is None:
        return None
    row = 0
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                return number, row, exc.msg
            if not isinstance(value, dict):
                return number, row, f"expected an object {{...}}, found {type(value).__name__}"
            row += 1
    return None


def _check_json_keys(path: Path, compression: str | None, lines: bool) -> None:
    """Raise when a JSON object names one key twice (JSON parsers keep the last silently)."""
    handle = _open_text(path, compression)
    if handle is None:
        return
    repeated: dict[str, list[int]] = {}  # key -> 0-based data rows (JSON lines)
    row = [-1]

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            for key, n in Counter(k for k, _ in pairs).items():
                if n > 1:
                    repeated.setdefault(key, []).append(row[0])
        return obj

    with handle:
        try:
            if lines:
                for line in handle:
                    if line.strip():
                        row[0] += 1
                        json.loads(line, object_pairs_hook=pairs_hook)
            else:
                json.load(handle, object_pairs_hook=pairs_hook)
        except json.JSONDecodeError:
            return  # reported by the reader, with its line
    report = ValidationReport()
    for key, rows in repeated.items():
        at = sorted({r for r in rows if r >= 0})
        report.add(
            make_finding(
                "error",
                "duplicate_column",
                "an object names this key more than once; JSON readers keep only the last "
                "value, so the others would be lost silently",
                source=str(path),
                column=key,
                rows=at,
                count=len(at) if at else None,
                fix="Write each key once per object",
            )
        )
    report.raise_if_errors()


def _read_json(path: Path, ext: str, compression: str | None) -> pd.DataFrame:
    source = str(path)
    lines = True
    if ext == ".json":
        handle = _open_text(path, compression)
        if handle is not None:
            with handle:
                start = handle.read(4096).lstrip()[:1]
            lines = start != "["
    _check_json_keys(path, compression, lines)
    try:
        return pd.read_json(path, lines=lines, dtype=False, compression="infer")
    except ValueError as exc:
        if ext == ".json" and lines:
            try:
                return pd.read_json(path, dtype=False, compression="infer")
            except ValueError:
                pass
        bad = _first_bad_json_line(path, compression) if lines else None
        if bad is not None:
            number, row, msg = bad
            raise data_error(
                "parse_error",
                f"line {number} of the file is not a JSON object ({msg})",
                source=source,
                rows=[row],
                fix='Write one JSON object per line, e.g. {"user_id": 1, "item_id": 2}',
            ) from None
        raise data_error(
            "parse_error",
            f"the file cannot be read as JSON ({exc})",
            source=source,
            fix="Write one JSON object per line (JSON lines), or an array of objects",
        ) from None


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names: list[str] = []
    try:
        if path.is_file():
            names = list(pq.read_schema(path).names)
    except (pa.ArrowException, OSError, ValueError):
        pass  # reported below by the reader
    column_name_report(names, str(path)).raise_if_errors()
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise data_error(
            "parse_error",
            f"the file cannot be read as Parquet ({exc})",
            source=str(path),
            fix="Check that the file is complete (not truncated) and really Parquet; "
            "re-export it if needed",
        ) from None


def _unknown_format(path: Path, ext: str) -> DataError:
    what = f"extension '{ext}'" if ext else "no extension"
    return data_error(
        "unknown_format",
        f"the file has {what}, which is not a table format wager reads",
        source=str(path),
        fix=f"Save it as one of {', '.join(SUPPORTED_EXTENSIONS)} (optionally compressed: "
        f"{', '.join(_COMPRESSIONS)})",
    )


def _as_text(series: pd.Series) -> pd.Series:
    """A typed column (Parquet, JSON) as text: numbers as their plain text (7 and 7.0 -> "7").

    Columns holding lists (multi-valued features read from JSON or Parquet) are kept.
    """
    values = series.dropna()
    if len(values) and any(isinstance(v, list | tuple | np.ndarray) for v in values.iloc[:100]):
        return series
    keys = categorical_keys(series)
    return pd.Series(keys.to_numpy(), index=series.index, name=series.name, dtype="str")


def read_table(path: str | Path, *, text_columns: Collection[str] = ()) -> pd.DataFrame:
    """Read one table file, choosing the reader by extension.

    - ``.csv`` (comma, or a sniffed delimiter when the header has no comma), ``.tsv``
      (tab), ``.txt`` (sniffed: comma, tab, semicolon, pipe or whitespace);
    - ``.parquet`` / ``.pq`` (also a directory of Parquet files: a partitioned dataset);
    - ``.jsonl`` / ``.ndjson`` (one JSON object per line), ``.json`` (JSON lines, or an
      array of objects).

    Text formats may be compressed (``.csv.gz``, ``.jsonl.bz2``, ...). Values are read
    as their file types (pandas inference for CSV; JSON types kept as they are), except
    ``text_columns``: those are text, exactly as written in delimited files (``007``,
    ``7.0`` and ``1e3`` stay as they are; only an empty cell is missing), and with
    numbers given their plain text in typed formats (7 and 7.0 read "7").

    Args:
        path: the file.
        text_columns: columns read as text (ids, categorical features); names the file
            does not have are ignored.

    Returns:
        The table, index 0..n-1 (0 = first data row).

    Raises:
        DataError: "missing_path" (no such file), "not_a_file" (a directory that is not a
            Parquet dataset), "unknown_format" (unsupported extension; the message lists
            the supported ones), "empty_table" (empty file), "parse_error" (corrupt
            file; names the line when the parser reports one), "bad_encoding",
            "unreadable" (permissions), "duplicate_column" (a header or JSON object names
            a column twice). Each names the file.
    """
    p = require_path(
        path, "Check the path (it is relative to the current directory unless absolute)"
    )
    if p.is_dir():
        if any(p.glob("*.parquet")) or any(p.glob("*/*.parquet")):
            return _with_text(_read_parquet(p), text_columns)
        listing = sorted(c.name for c in p.iterdir())
        held = ", ".join(listing[:8])
        if len(listing) > 8:
            held += f" (and {len(listing) - 8} more)"
        raise data_error(
            "not_a_file",
            f"this is a directory (holding {held or 'nothing'}), but a table file was expected",
            source=str(p),
            fix="Pass one table file inside it, or --format movielens|obd for a dataset directory",
        )
    ext, compression = _extension(p)
    if ext not in SUPPORTED_EXTENSIONS:
        raise _unknown_format(p, ext)
    try:
        if ext in (".parquet", ".pq"):
            if compression is not None:
                raise _unknown_format(p, ext + compression)
            df = _with_text(_read_parquet(p), text_columns)
        elif ext in (".jsonl", ".ndjson", ".json"):
            df = _with_text(_read_json(p, ext, compression), text_columns)
        else:
            df = _read_delimited(p, ext, compression, text_columns)
    except PermissionError as exc:
        raise data_error(
            "unreadable",
            f"the file cannot be read ({exc.strerror})",
            source=str(p),
            fix="Check the file's permissions",
        ) from None
    if df.shape == (0, 0):
        raise data_error(
            "empty_table",
            "the file is empty (no columns, no rows)",
            source=str(p),
            fix="Check that the right file was given and that it is not truncated",
        )
    df.columns = [str(c) for c in df.columns]
    return df.reset_index(drop=True)


def _with_text(df: pd.DataFrame, text_columns: Collection[str]) -> pd.DataFrame:
    """``df`` with its ``text_columns`` as text (see :func:`_as_text`)."""
    cols = [c for c in df.columns if str(c) in text_columns]
    if not cols:
        return df
    df = df.copy()
    for c in cols:
        df[c] = _as_text(df[c])
    return df
