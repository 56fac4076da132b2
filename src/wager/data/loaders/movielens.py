"""MovieLens loader: the 100k, 1M and latest / 25m layouts, detected from the files present.

Layouts (GroupLens file formats):

- ``100k``: ``u.data`` (tab-separated ``user id, item id, rating, unix timestamp``),
  ``u.item`` (``|``-separated, latin-1: ``movie id | title | release date | video release
  date | IMDb URL | 19 genre 0/1 flags``; genre names from ``u.genre`` when present),
  ``u.user`` (``user id | age | gender | occupation | zip``), and the predefined folds
  ``u1..u5`` / ``ua`` / ``ub`` (``{name}.base`` + ``{name}.test``, same format as ``u.data``).
- ``1m``: ``ratings.dat`` (``UserID::MovieID::Rating::Timestamp``), ``movies.dat``
  (``MovieID::Title::Genres``, latin-1, genres ``|``-joined) and ``users.dat``
  (``UserID::Gender::Age::Occupation::Zip-code``).
- ``latest`` (also ml-latest-small, ml-20m, ml-25m, ml-32m): ``ratings.csv``
  (``userId,movieId,rating,timestamp`` with header; half-star ratings 0.5..5) and
  ``movies.csv`` (``movieId,title,genres``; ``(no genres listed)`` means none). No user table.

Every table is read with pandas' C parser, then checked: a missing file names the file and the
layout that expected it; a malformed line names the file, the column and the line number; ratings
outside the layout's range and empty or non-integer ids are errors. All problems found in a file
are reported together in one :class:`~wager.errors.DataError`.

Example:
    >>> from wager.data.loaders.movielens import load_movielens
    >>> ds = load_movielens("ml-100k")  # doctest: +SKIP
    >>> ds.interactions.columns.tolist()  # doctest: +SKIP
    ['user_id', 'item_id', 'rating', 'timestamp']
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wager.data.dataset import Dataset
from wager.data.schema import Categorical, MultiCategorical, Numeric, Schema, Text
from wager.errors import ValidationReport, data_error, make_finding, require_path

LAYOUTS = ("100k", "1m", "latest")
"""Layout names, in detection priority."""

LAYOUT_FINDING_CODE = "layout_detected"
"""Code of the info finding that records the detected layout (read by ``wager.data.info``)."""

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
"""The 19 genre names of ``u.item``'s flag columns, used when ``u.genre`` is absent."""

OCCUPATIONS_1M = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student",
    "customer service", "doctor/health care", "executive/managerial", "farmer", "homemaker",
    "K-12 student", "lawyer", "programmer", "retired", "sales/marketing", "scientist",
    "self-employed", "technician/engineer", "tradesman/craftsman", "unemployed", "writer",
)  # fmt: skip
"""Occupation names of ``users.dat`` by code 0..20 (from the ml-1m README)."""

FOLDS_100K = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
"""Predefined 100k folds: ``{name}.base`` (train) and ``{name}.test`` (test)."""

_RATING_FILES = {"100k": "u.data", "1m": "ratings.dat", "latest": "ratings.csv"}
_LAYOUT_FILES = {
    "100k": ("u.data", "u.item", "u.user"),
    "1m": ("ratings.dat", "movies.dat", "users.dat"),
    "latest": ("ratings.csv", "movies.csv"),
}
_RATING_RANGE = {"100k": (1.0, 5.0), "1m": (1.0, 5.0), "latest": (0.5, 5.0)}
_INTERACTION_COLUMNS = ["user_id", "item_id", "rating", "timestamp"]
_YEAR_IN_TITLE = re.compile(r"\((\d{4})(?:\s*[-–]\s*\d{4})?\)\s*$")
_PARSER_LINE = re.compile(r"line (\d+)")
_MAX_EXAMPLES = 3


@dataclass(frozen=True)
class _FileSpec:
    """How one MovieLens file is laid out."""

    name: str
    sep: str
    columns: tuple[str, ...]
    encoding: str = "latin-1"
    header: tuple[str, ...] | None = None  # expected header line (csv layout), renamed to columns
    text_columns: tuple[str, ...] = ()  # read as strings, never parsed as numbers
    quoted: bool = False  # standard CSV quoting (movies.csv titles hold commas)


def detect_layout(path: str | Path) -> str:
    """Which MovieLens layout ``path`` holds: "100k", "1m" or "latest".

    Args:
        path: a MovieLens directory (or one of its rating files).

    Raises:
        DataError: the path does not exist or holds none of ``u.data``, ``ratings.dat``,
            ``ratings.csv``.
    """
    root = _resolve_root(path)
    for layout in LAYOUTS:
        if (root / _RATING_FILES[layout]).is_file():
            return layout
    raise data_error(
        "unknown_layout",
        "directory holds no MovieLens rating file (u.data for 100k, ratings.dat for 1M, "
        "ratings.csv for latest/25m)",
        source=str(root),
        fix="Pass the directory that the MovieLens archive unzips to, e.g. .../ml-100k.",
    )


def load_movielens(path: str | Path) -> Dataset:
    """Read a MovieLens directory into a :class:`~wager.data.dataset.Dataset`.

    The layout (100k, 1M, latest/25m) is detected from the rating file present; see the module
    docstring for the files each layout needs.

    Args:
        path: the unzipped MovieLens directory (e.g. ``.../ml-100k``), or one of its rating files.

    Returns:
        A Dataset whose ``interactions`` has columns ``user_id`` (int64), ``item_id`` (int64),
        ``rating`` (float64, stars) and ``timestamp`` (int64, unix epoch seconds), one row per
        rating in file order. ``item_features`` has ``item_id``, ``title`` (str), ``genres``
        ("|"-joined names, "" when none) and ``release_year`` (float64, NaN when unknown); the
        100k layout adds ``release_date`` (datetime64, parsed from "01-Jan-1995"), and 1M/latest
        take the year from the title's "(1995)". ``user_features`` (100k and 1M only) has
        ``user_id``, ``age`` (int64; years for 100k, the lower bound of the age group for 1M),
        ``gender``, ``occupation`` (names; 1M codes are mapped to names) and ``zip`` (str).
        ``folds`` holds the 100k predefined (train, test) pairs that are present, with the
        interaction columns. ``schema`` suggests label "rating" with range (1, 5), or (0.5, 5)
        for latest, and declares ``id_dtype="int"``: MovieLens ids are whole numbers by the
        format's definition, checked line by line, and compared as numbers.

    Raises:
        DataError: a file is missing (naming it and the layout), a line is malformed (file,
            column, line number), a rating lies outside the range, an id is empty or not an
            integer, or a feature table repeats an id. Every problem found is reported.
    """
    root = _resolve_root(path)
    layout = detect_layout(root)
    report = ValidationReport()
    for name in _LAYOUT_FILES[layout]:
        if not (root / name).is_file():
            present = ", ".join(n for n in _LAYOUT_FILES[layout] if (root / n).is_file())
            raise data_error(
                "missing_file",
                f"file '{name}' is missing; the MovieLens {layout} layout (detected from "
                f"'{_RATING_FILES[layout]}') needs {', '.join(_LAYOUT_FILES[layout])}, "
                f"and only {present} are there",
                source=str(root / name),
                fix="Unzip the complete official archive into this directory.",
            )
    if layout == "100k":
        ds = _load_100k(root, report)
    elif layout == "1m":
        ds = _load_1m(root, report)
    else:
        ds = _load_latest(root, report)
    files = ", ".join(_LAYOUT_FILES[layout])
    fold_text = f"; folds {', '.join(ds.folds)}" if ds.folds else ""
    report.add(
        make_finding(
            "info",
            LAYOUT_FINDING_CODE,
            f"read as movielens-{layout} layout ({files}{fold_text})",
            source=str(root),
        )
    )
    return ds


# ----------------------------------------------------------------------------- layouts


def _load_100k(root: Path, report: ValidationReport) -> Dataset:
    lo_hi = _RATING_RANGE["100k"]
    ratings_spec = _FileSpec("u.data", "\t", tuple(_INTERACTION_COLUMNS))
    interactions = _read_ratings(root, ratings_spec, "100k", lo_hi, report)

    genres = _read_genre_names(root / "u.genre")
    flag_cols = tuple(f"genre_{i}" for i in range(len(genres)))
    item_spec = _FileSpec(
        "u.item",
        "|",
        ("item_id", "title", "release_date", "video_release_date", "imdb_url", *flag_cols),
        text_columns=("title", "release_date", "video_release_date", "imdb_url"),
    )
    items, lines = _read_file(root, item_spec, "100k", report)
    source = str(root / "u.item")
    problems = ValidationReport()
    _check_int(items, "item_id", source, lines, problems)
    flags = _check_flags(items, flag_cols, source, lines, problems)
    problems.raise_if_errors()
    items = items.reset_index(drop=True)
    _check_unique(items, "item_id", source, problems)
    problems.raise_if_errors()
    names = np.asarray(genres, dtype=object)
    genre_text = ["|".join(names[row.astype(bool)]) for row in flags]
    raw_dates = items["release_date"]
    dates = pd.to_datetime(raw_dates, format="%d-%b-%Y", errors="coerce")
    unparsed = dates.isna() & raw_dates.notna() & (raw_dates.astype(str).str.strip() != "")
    if unparsed.any():
        bad = np.flatnonzero(unparsed.to_numpy())
        report.add(
            make_finding(
                "warning",
                "unparsed_date",
                f"release date not in the form 01-Jan-1995 (e.g. {raw_dates.iloc[bad[0]]!r}); "
                "left empty",
                source=source,
                column="release_date",
                rows=bad,
            )
        )
    item_features = pd.DataFrame(
        {
            "item_id": items["item_id"].astype("int64"),
            "title": items["title"],
            "genres": pd.Series(genre_text, dtype="str"),
            "release_date": dates,
            "release_year": dates.dt.year.astype("float64"),
        }
    )

    user_spec = _FileSpec(
        "u.user",
        "|",
        ("user_id", "age", "gender", "occupation", "zip"),
        text_columns=("gender", "occupation", "zip"),
    )
    users, lines = _read_file(root, user_spec, "100k", report)
    source = str(root / "u.user")
    _check_int(users, "user_id", source, lines, problems)
    _check_int(users, "age", source, lines, problems)
    problems.raise_if_errors()
    users = users.reset_index(drop=True)
    _check_unique(users, "user_id", source, problems)
    problems.raise_if_errors()

    folds: dict[str, tuple[pd.DataFrame, pd.DataFrame]] = {}
    for fold in FOLDS_100K:
        base, test = root / f"{fold}.base", root / f"{fold}.test"
        if base.is_file() and test.is_file():
            folds[fold] = (
                _read_ratings(
                    root, _FileSpec(base.name, "\t", ratings_spec.columns), "100k", lo_hi, report
                ),
                _read_ratings(
                    root, _FileSpec(test.name, "\t", ratings_spec.columns), "100k", lo_hi, report
                ),
            )
        elif base.is_file() or test.is_file():
            missing = test if base.is_file() else base
            report.add(
                make_finding(
                    "warning",
                    "incomplete_fold",
                    f"fold '{fold}' has no '{missing.name}'; the fold is left out",
                    source=str(missing),
                )
            )

    _check_coverage(interactions, item_features, "item_id", str(root / "u.item"), report)
    _check_coverage(interactions, users, "user_id", str(root / "u.user"), report)
    schema = _schema("100k", with_users=True, item_numeric="release_year")
    return Dataset(
        interactions=interactions,
        schema=schema,
        user_features=users,
        item_features=item_features,
        source=str(root),
        report=report,
        folds=folds,
    )


def _load_1m(root: Path, report: ValidationReport) -> Dataset:
    interactions = _read_ratings(
        root,
        _FileSpec("ratings.dat", "::", tuple(_INTERACTION_COLUMNS)),
        "1m",
        _RATING_RANGE["1m"],
        report,
    )
    item_features = _read_movies(
        root,
        _FileSpec(
            "movies.dat", "::", ("item_id", "title", "genres"), text_columns=("title", "genres")
        ),
        "1m",
        report,
    )
    spec = _FileSpec(
        "users.dat",
        "::",
        ("user_id", "gender", "age", "occupation", "zip"),
        text_columns=("gender", "zip"),
    )
    users, lines = _read_file(root, spec, "1m", report)
    source = str(root / spec.name)
    problems = ValidationReport()
    for col in ("user_id", "age", "occupation"):
        _check_int(users, col, source, lines, problems)
    problems.raise_if_errors()
    users = users.reset_index(drop=True)
    _check_unique(users, "user_id", source, problems)
    problems.raise_if_errors()
    codes = users["occupation"].to_numpy()
    known = (codes >= 0) & (codes < len(OCCUPATIONS_1M))
    if not known.all():
        bad = np.flatnonzero(~known)
        report.add(
            make_finding(
                "warning",
                "unknown_code",
                f"occupation code {codes[bad[0]]} is not one of 0..{len(OCCUPATIONS_1M) - 1}; "
                "kept as its number",
                source=source,
                column="occupation",
                rows=bad,
            )
        )
    names = np.asarray(OCCUPATIONS_1M, dtype=object)
    users["occupation"] = pd.Series(
        np.where(known, names[np.where(known, codes, 0)], codes.astype(str)), dtype="str"
    )
    users = users[["user_id", "age", "gender", "occupation", "zip"]]
    _check_coverage(interactions, item_features, "item_id", str(root / "movies.dat"), report)
    _check_coverage(interactions, users, "user_id", source, report)
    return Dataset(
        interactions=interactions,
        schema=_schema("1m", with_users=True, item_numeric="release_year"),
        user_features=users,
        item_features=item_features,
        source=str(root),
        report=report,
    )


def _load_latest(root: Path, report: ValidationReport) -> Dataset:
    header = ("userId", "movieId", "rating", "timestamp")
    interactions = _read_ratings(
        root,
        _FileSpec(
            "ratings.csv",
            ",",
            tuple(_INTERACTION_COLUMNS),
            encoding="utf-8",
            header=header,
            quoted=True,
        ),
        "latest",
        _RATING_RANGE["latest"],
        report,
    )
    item_features = _read_movies(
        root,
        _FileSpec(
            "movies.csv",
            ",",
            ("item_id", "title", "genres"),
            encoding="utf-8",
            header=("movieId", "title", "genres"),
            text_columns=("title", "genres"),
            quoted=True,
        ),
        "latest",
        report,
    )
    _check_coverage(interactions, item_features, "item_id", str(root / "movies.csv"), report)
    return Dataset(
        interactions=interactions,
        schema=_schema("latest", with_users=False, item_numeric="release_year"),
        item_features=item_features,
        source=str(root),
        report=report,
    )


def _schema(layout: str, *, with_users: bool, item_numeric: str) -> Schema:
    users: tuple[Categorical | Numeric, ...] = ()
    if with_users:
        users = (
            # the MovieLens-1M age groups; 100k ages fall into the same buckets
            Numeric("age", bins=(18, 25, 35, 45, 50, 56)),
            Categorical("gender"),
            Categorical("occupation"),
            Categorical("zip"),
        )
    return Schema(
        user="user_id",
        item="item_id",
        label="rating",
        label_kind="rating",
        rating_range=_RATING_RANGE[layout],
        timestamp="timestamp",
        id_dtype="int",  # the format's ids are whole numbers, checked by _check_int
        user_features=users,
        item_features=(
            Text("title"),
            MultiCategorical("genres", sep="|"),
            Numeric(item_numeric, bins=15),  # equal-mass release-year buckets
        ),
    )


# ----------------------------------------------------------------------------- readers


def _read_ratings(
    root: Path,
    spec: _FileSpec,
    layout: str,
    rating_range: tuple[float, float],
    report: ValidationReport,
) -> pd.DataFrame:
    """Read and check one rating file; return the four interaction columns, 0..n-1 index."""
    df, lines = _read_file(root, spec, layout, report)
    source = str(root / spec.name)
    problems = ValidationReport()
    for col in ("user_id", "item_id", "timestamp"):
        _check_int(df, col, source, lines, problems)
    _check_float(df, "rating", source, lines, problems)
    problems.raise_if_errors()
    lo, hi = rating_range
    rating = df["rating"].to_numpy()
    outside = (rating < lo) | (rating > hi)
    if outside.any():
        pos = np.flatnonzero(outside)
        problems.add(
            make_finding(
                "error",
                "rating_out_of_range",
                f"rating {rating[pos[0]]:g} lies outside [{lo:g}, {hi:g}] (file "
                f"{_line_text(df.index[pos], lines)})",
                source=source,
                column="rating",
                rows=df.index[pos],
                count=len(pos),
                fix=f"MovieLens {layout} ratings lie in [{lo:g}, {hi:g}]; fix or delete these "
                "lines.",
            )
        )
    problems.raise_if_errors()
    return df[_INTERACTION_COLUMNS].reset_index(drop=True)


def _read_movies(
    root: Path, spec: _FileSpec, layout: str, report: ValidationReport
) -> pd.DataFrame:
    """movies.dat / movies.csv -> item_id, title, genres, release_year."""
    df, lines = _read_file(root, spec, layout, report)
    source = str(root / spec.name)
    problems = ValidationReport()
    _check_int(df, "item_id", source, lines, problems)
    problems.raise_if_errors()
    df = df.reset_index(drop=True)
    _check_unique(df, "item_id", source, problems)
    problems.raise_if_errors()
    genres = df["genres"].fillna("").str.strip()
    genres = genres.where(genres != "(no genres listed)", "")
    year = df["title"].str.extract(_YEAR_IN_TITLE, expand=False)
    return pd.DataFrame(
        {
            "item_id": df["item_id"].astype("int64"),
            "title": df["title"],
            "genres": genres.astype("str"),
            "release_year": pd.to_numeric(year, errors="coerce").astype("float64"),
        }
    )


def _read_file(
    root: Path, spec: _FileSpec, layout: str, report: ValidationReport
) -> tuple[pd.DataFrame, int]:
    """Parse one file with pandas; return (frame indexed by 0-based data row, header lines).

    Blank lines are skipped and counted in ``report`` (they are not data). The index keeps each
    row's position among the file's data lines, so that ``index + 1 + header_lines`` is the line
    number in the file.
    """
    path = root / spec.name
    if not path.is_file():
        raise data_error(
            "missing_file",
            f"file '{spec.name}' is missing; the MovieLens {layout} layout needs it",
            source=str(path),
            fix="Unzip the complete official archive into this directory.",
        )
    header_lines = 1 if spec.header else 0
    try:
        if len(spec.sep) > 1:
            # the C parser takes one-character separators only: "::" becomes a tab
            text = path.read_text(encoding=spec.encoding).replace(spec.sep, "\t")
            handle: io.StringIO | Path = io.StringIO(text)
            sep = "\t"
        else:
            handle, sep = path, spec.sep
        df = pd.read_csv(
            handle,
            sep=sep,
            header=0 if spec.header else None,
            names=None if spec.header else list(spec.columns),
            dtype={
                h: "str"
                for h, c in zip(spec.header or spec.columns, spec.columns, strict=True)
                if c in spec.text_columns
            },
            encoding=spec.encoding,
            quoting=csv.QUOTE_MINIMAL if spec.quoted else csv.QUOTE_NONE,
            skip_blank_lines=False,
            keep_default_na=False,
            na_values=[""],
            engine="c",
        )
    except pd.errors.ParserError as exc:
        match = _PARSER_LINE.search(str(exc))
        where = f"line {match.group(1)}" if match else "a line"
        said = "" if match else f"; parser said: {str(exc).strip()}"
        raise data_error(
            "malformed_line",
            f"malformed line: {where} has more fields than the {len(spec.columns)} expected "
            f"({_sep_name(spec.sep)}-separated: {', '.join(spec.header or spec.columns)})"
            f"{said}",
            source=str(path),
            fix="Fix or delete that line.",
        ) from None
    except UnicodeDecodeError as exc:
        raise data_error(
            "bad_encoding",
            f"file is not valid {spec.encoding} text (byte {exc.start})",
            source=str(path),
            fix=f"MovieLens {layout} files are {spec.encoding}; use the official archive.",
        ) from None
    except pd.errors.EmptyDataError:
        raise data_error(
            "empty_file",
            "file is empty",
            source=str(path),
            fix="Unzip the complete official archive into this directory.",
        ) from None
    if spec.header:
        found = tuple(str(c) for c in df.columns)
        if found != spec.header:
            raise data_error(
                "bad_header",
                f"header is {','.join(found)!r}, expected {','.join(spec.header)!r}",
                source=str(path),
                fix=f"The MovieLens {layout} layout's {spec.name} starts with that header line.",
            )
        df.columns = list(spec.columns)
    blank = df.isna().all(axis=1).to_numpy()
    if blank.any():
        report.drop("blank line", int(blank.sum()), source=str(path), rows=np.flatnonzero(blank))
        df = df.loc[~blank]
    return df, header_lines


def _read_genre_names(path: Path) -> tuple[str, ...]:
    """u.genre ("name|index" lines) -> names ordered by index; the standard 19 when absent."""
    if not path.is_file():
        return GENRES_100K
    pairs: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition("|")
        if not sep or not index.strip().isdigit() or not name:
            raise data_error(
                "malformed_line",
                f"malformed line: line {number} is {line!r}, expected 'genre name|index'",
                source=str(path),
                fix="Fix that line, or delete u.genre to use the standard 19.",
            )
        pairs.append((int(index), name))
    indices = sorted(i for i, _ in pairs)
    if indices != list(range(len(pairs))):
        raise data_error(
            "malformed_file",
            f"genre indices are {indices}, expected 0..{len(pairs) - 1} each once",
            source=str(path),
            fix="Fix the indices, or delete u.genre to use the standard 19.",
        )
    return tuple(name for _, name in sorted(pairs))


# ----------------------------------------------------------------------------- checks


def _check_int(
    df: pd.DataFrame, col: str, source: str, header_lines: int, report: ValidationReport
) -> None:
    """Convert ``df[col]`` to int64 in place, or add an error finding for the bad lines."""
    values = _numeric(df[col])
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isnan(arr) | (arr != np.floor(arr)) | np.isinf(arr)
    if bad.any():
        _report_bad(df, col, bad, "an integer", source, header_lines, report)
        return
    df[col] = values.astype("int64")


def _check_float(
    df: pd.DataFrame, col: str, source: str, header_lines: int, report: ValidationReport
) -> None:
    """Convert ``df[col]`` to float64 in place, or add an error finding for the bad lines."""
    values = _numeric(df[col])
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(arr)
    if bad.any():
        _report_bad(df, col, bad, "a number", source, header_lines, report)
        return
    df[col] = arr


def _numeric(series: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
        return series
    return pd.to_numeric(series, errors="coerce")


def _report_bad(
    df: pd.DataFrame,
    col: str,
    bad: np.ndarray,
    expected: str,
    source: str,
    header_lines: int,
    report: ValidationReport,
) -> None:
    pos = np.flatnonzero(bad)
    raw = df[col].iloc[pos[:_MAX_EXAMPLES]]
    shown = ", ".join("empty" if pd.isna(v) else repr(str(v)) for v in raw)
    rows = df.index[pos]
    report.add(
        make_finding(
            "error",
            "malformed_line",
            f"malformed line: field '{col}' should be {expected}, found {shown} (file "
            f"{_line_text(rows, header_lines)}; an empty field also means a line with too few "
            "fields)",
            source=source,
            column=col,
            rows=rows,
            count=len(pos),
            fix="Fix or delete these lines.",
        )
    )


def _check_flags(
    df: pd.DataFrame,
    cols: Sequence[str],
    source: str,
    header_lines: int,
    report: ValidationReport,
) -> np.ndarray:
    """Genre flag columns -> (n_rows, n_genres) int8 0/1 matrix; non-0/1 cells are errors."""
    out = np.zeros((len(df), len(cols)), dtype=np.int8)
    for j, col in enumerate(cols):
        arr = _numeric(df[col]).to_numpy(dtype="float64", na_value=np.nan)
        bad = ~np.isin(arr, (0.0, 1.0))
        if bad.any():
            _report_bad(df, col, bad, "a 0/1 genre flag", source, header_lines, report)
            continue
        out[:, j] = arr.astype(np.int8)
    return out


def _check_unique(df: pd.DataFrame, col: str, source: str, report: ValidationReport) -> None:
    dup = df[col].duplicated(keep="first").to_numpy()
    if dup.any():
        pos = np.flatnonzero(dup)
        report.add(
            make_finding(
                "error",
                "duplicate_id",
                f"{col} {df[col].iloc[pos[0]]} appears more than once",
                source=source,
                column=col,
                rows=pos,
                fix="Keep one line per id.",
            )
        )


def _check_coverage(
    interactions: pd.DataFrame,
    table: pd.DataFrame,
    col: str,
    source: str,
    report: ValidationReport,
) -> None:
    """Warn when interactions name ids absent from the feature table (used as out-of-vocabulary)."""
    missing = ~interactions[col].isin(table[col]).to_numpy()
    if missing.any():
        pos = np.flatnonzero(missing)
        ids = pd.unique(interactions[col].to_numpy()[pos])
        report.add(
            make_finding(
                "warning",
                "missing_feature_row",
                f"{len(ids)} {col} value(s) of the ratings (e.g. {ids[0]}) have no line here; "
                "their features are treated as unknown",
                source=source,
                column=col,
                count=len(pos),
            )
        )


def _line_text(rows: Sequence[int] | pd.Index, header_lines: int) -> str:
    lines = [int(r) + 1 + header_lines for r in list(rows)[:5]]
    more = f" and {len(rows) - len(lines)} more" if len(rows) > len(lines) else ""
    word = "line" if len(rows) == 1 else "lines"
    return f"{word} {', '.join(str(n) for n in lines)}{more}"


def _sep_name(sep: str) -> str:
    return {"\t": "tab", "|": "pipe", ",": "comma", "::": "'::'"}.get(sep, repr(sep))


def _resolve_root(path: str | Path) -> Path:
    p = require_path(path, "Check the path, or pass the directory the MovieLens archive unzips to.")
    if p.is_file():
        return p.parent
    return p
