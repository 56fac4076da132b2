"""Open Bandit Dataset (ZOZOTOWN, Saito et al. 2020) loader: one behaviour-policy directory.

A policy directory (``.../random`` or ``.../bts``) holds:

- ``{campaign}.csv`` (campaign ``men``, ``women`` or ``all``): an unnamed index column, then
  ``timestamp``, ``item_id``, ``position`` (1, 2, 3 = left, centre, right slot),
  ``click`` (0/1), ``propensity_score`` (probability that the logging policy showed this item in
  this position; ``action_prob`` in the dataset's README), ``user_feature_0..3`` (hashed
  categorical strings) and ``user-item_affinity_0..N`` (past-click affinities, numeric).
- ``item_context.csv``: an unnamed index column, ``item_id``, ``item_feature_0`` (numeric) and
  ``item_feature_1..3`` (hashed categorical strings).

OBD has no user id. The loader synthesises ``user_id`` from the four user features: the
16-hex-digit BLAKE2b-64 digest of the feature values joined by ``"|"``, so that the same
feature combination always gets the same id, on every machine and in every run. Two people
with identical features share an id; the id stands for a user segment, not a person.

Example:
    >>> from wager.data.loaders.obd import load_obd
    >>> ds = load_obd("obd/random")  # doctest: +SKIP
    >>> ds.schema.propensity  # doctest: +SKIP
    'propensity_score'
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from wager.data.checks import column_name_report
from wager.data.dataset import Dataset
from wager.data.logged import LoggedFeedback
from wager.data.schema import Categorical, Feature, Numeric, Schema
from wager.errors import ValidationReport, data_error, make_finding, require_path, suggest

CAMPAIGNS = ("men", "women", "all")
"""Campaign file stems of the official dataset."""

LAYOUT_FINDING_CODE = "layout_detected"
"""Code of the info finding that records the layout (read by ``wager.data.info``)."""

_ITEM_FILE = "item_context.csv"
_REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")
_USER_PREFIX = "user_feature_"
_AFFINITY_PREFIX = "user-item_affinity_"
_ITEM_PREFIX = "item_feature_"
_HEADER_LINES = 1
_MAX_EXAMPLES = 3
# (column, bad-value mask of its numbers, problem, fix), checked once the column is numeric
_VALUE_RULES = (
    (
        "click",
        lambda v: ~np.isin(v, (0, 1)),
        "is not 0 or 1",
        "Clicks are 0 (no click) or 1 (click).",
    ),
    (
        "propensity_score",
        lambda v: ~((v > 0) & (v <= 1)),
        "lies outside (0, 1]",
        "A propensity is the probability that the logging policy chose this item here; it must "
        "be > 0 and <= 1.",
    ),
    ("position", lambda v: v < 1, "is below 1", "Positions are 1-based slot numbers."),
)


def load_obd(path: str | Path, campaign: str | None = None) -> Dataset:
    """Read an Open Bandit Dataset policy directory into a :class:`~wager.data.dataset.Dataset`.

    Args:
        path: a policy directory (e.g. ``.../open_bandit_dataset/random``), or its campaign CSV.
        campaign: which ``{campaign}.csv`` to read ("men", "women", "all"); may be left out
            when the directory holds exactly one campaign file (or ``path`` is that file).

    Returns:
        A Dataset whose ``interactions`` has one row per impression, in file order, with columns
        ``user_id`` (str, synthesised from the user features; see the module docstring),
        ``item_id`` (str, as written; checked to be a whole number), ``position`` (int64,
        1-based slot), ``click`` (int64, 0/1, the label), ``propensity_score`` (float64 in
        (0, 1]), ``timestamp`` (datetime64, UTC) and the ``user-item_affinity_*`` columns
        (float64). ``user_features`` has one row per synthesised ``user_id`` with the
        ``user_feature_*`` columns (str, as written). ``item_features`` is
        ``item_context.csv`` without its index column (``item_id`` and ``item_feature_1..``
        as written, ``item_feature_0`` a number). ``schema`` suggests label "click" of kind
        "click", ``propensity="propensity_score"``, position and affinities as context,
        categorical user features, and item features numeric or categorical by their dtype.

    Raises:
        DataError: a file or column is missing, the campaign is ambiguous or unknown, or values
            are malformed (item ids, positions, clicks not 0/1, propensities outside (0, 1],
            unparseable timestamps), naming file, column and line numbers.
    """
    root, campaign = _resolve(path, campaign)
    source = str(root / f"{campaign}.csv")
    report = ValidationReport()
    df, user_cols, affinity_cols = _read_campaign(root / f"{campaign}.csv", source)
    problems = ValidationReport()
    stamps = _convert_columns(df, affinity_cols, source, problems)
    problems.raise_if_errors()
    user_id, user_features = _synthesise_users(df, user_cols)
    interactions = pd.DataFrame(
        {
            "user_id": user_id,
            "item_id": df["item_id"],
            "position": df["position"],
            "click": df["click"],
            "propensity_score": df["propensity_score"].astype("float64"),
            "timestamp": stamps,
        }
    )
    interactions = pd.concat([interactions, df[affinity_cols].astype("float64")], axis=1)
    interactions = interactions.reset_index(drop=True)

    item_features = _read_items(root / _ITEM_FILE, problems)
    problems.raise_if_errors()
    _report_items_without_features(interactions, item_features, root / _ITEM_FILE, report)
    schema = _obd_schema(user_cols, affinity_cols, item_features)
    report.add(
        make_finding(
            "info",
            LAYOUT_FINDING_CODE,
            f"read as obd layout (campaign '{campaign}': {campaign}.csv, {_ITEM_FILE}); user_id "
            f"synthesised from {', '.join(user_cols)}",
            source=str(root),
        )
    )
    return Dataset(
        interactions=interactions,
        schema=schema,
        user_features=user_features,
        item_features=item_features,
        source=source,
        report=report,
    )


def load_obd_feedback(path: str | Path, campaign: str | None = None) -> LoggedFeedback:
    """Read an Open Bandit Dataset policy directory as logged feedback for off-policy
    evaluation (:mod:`wager.evaluation.ope`).

    The action space is every item of ``item_context.csv`` (plus any shown item it lacks),
    ordered by numeric item id, so ``action`` is the item's index there (OBD's item ids are
    already 0..n_items-1). Positions 1, 2, 3 become 0, 1, 2. OBD has no request id, so
    ``request`` is None and every impression is its own round (as in Open Bandit Pipeline).

    Args:
        path: a policy directory (``.../random`` or ``.../bts``), or its campaign CSV.
        campaign: as for :func:`load_obd`.

    Returns:
        LoggedFeedback with ``reward`` = click, ``propensity`` = propensity_score,
        ``user_ids`` synthesised as :func:`load_obd` does, ``context`` = the user features
        (str) and user-item affinities (float64) of each impression, ``item_features`` =
        item_context.csv indexed like ``item_ids``, ``n_positions`` = the largest position.

    Raises:
        DataError: as :func:`load_obd`.
    """
    ds = load_obd(path, campaign)
    rows = ds.interactions
    assert ds.item_features is not None and ds.user_features is not None
    known = ds.item_features["item_id"].astype(str)
    ids = pd.unique(pd.concat([known, rows["item_id"].astype(str)], ignore_index=True))
    item_ids = np.array(sorted(ids, key=int), dtype=object)
    index = {item: i for i, item in enumerate(item_ids)}
    action = rows["item_id"].astype(str).map(index).to_numpy(dtype=np.int64)
    items = ds.item_features.assign(item_id=known)
    item_features = items.set_index("item_id").reindex(item_ids).reset_index()
    users = ds.user_features.set_index("user_id")
    context = users.reindex(rows["user_id"].to_numpy()).reset_index(drop=True)
    affinity = [c for c in rows.columns if c.startswith(_AFFINITY_PREFIX)]
    context = pd.concat([context, rows[affinity].reset_index(drop=True)], axis=1)
    position = rows["position"].to_numpy(dtype=np.int64) - 1
    return LoggedFeedback(
        action=action,
        position=position,
        reward=rows["click"].to_numpy(dtype=np.float64),
        propensity=rows["propensity_score"].to_numpy(dtype=np.float64),
        item_ids=item_ids,
        n_positions=int(position.max()) + 1 if len(position) else 0,
        user_ids=rows["user_id"].to_numpy(dtype=object),
        context=context,
        item_features=item_features,
        source=ds.source,
    )


def _read_campaign(file: Path, source: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Read a campaign CSV and check its columns.

    Returns:
        (the table with ``action_prob`` renamed to ``propensity_score``, the user feature
        columns, the affinity columns), both column lists in numeric suffix order.

    Raises:
        DataError: required columns (or every user feature) are missing.
    """
    df = _read_csv(file)
    if "propensity_score" not in df.columns and "action_prob" in df.columns:
        df = df.rename(columns={"action_prob": "propensity_score"})
    missing = [c for c in _REQUIRED if c not in df.columns]
    user_cols = sorted((c for c in df.columns if c.startswith(_USER_PREFIX)), key=_suffix)
    if not user_cols:
        missing.append(f"{_USER_PREFIX}0..3")
    if missing:
        raise data_error(
            "missing_column",
            f"columns {', '.join(repr(c) for c in missing)} are missing; found "
            f"{', '.join(map(str, df.columns))}",
            source=source,
            fix="Pass an Open Bandit Dataset campaign file (timestamp, item_id, position, "
            "click, propensity_score, user_feature_*, user-item_affinity_*).",
        )
    affinity_cols = sorted((c for c in df.columns if c.startswith(_AFFINITY_PREFIX)), key=_suffix)
    return df, user_cols, affinity_cols


def _convert_columns(
    df: pd.DataFrame, affinity_cols: list[str], source: str, problems: ValidationReport
) -> pd.Series:
    """Convert the campaign columns in place and check their values, collecting problems.

    ``position``/``click`` become int64, ``item_id`` is checked to be a whole number (kept as
    text), ``propensity_score`` and the affinities become float64; then the value rules
    (:data:`_VALUE_RULES`) and the timestamps are checked.

    Returns:
        The timestamps parsed as UTC datetimes (NaT where unreadable).
    """
    converted = {col: _to_int(df, col, source, problems) for col in ("position", "click")}
    _to_int(df, "item_id", source, problems, keep_text=True)
    converted["propensity_score"] = _to_float(df, "propensity_score", source, problems)
    for col in affinity_cols:
        _to_float(df, col, source, problems, allow_missing=True)
    for col, bad, problem, fix in _VALUE_RULES:
        if converted[col]:
            _check_values(df, col, bad(df[col].to_numpy()), problem, source, problems, fix=fix)
    stamps = pd.to_datetime(df["timestamp"], utc=True, format="ISO8601", errors="coerce")
    _check_values(
        df,
        "timestamp",
        stamps.isna().to_numpy(),
        "is empty or not a date-time like 2019-11-24 00:03:13+00:00",
        source,
        problems,
        fix="Fix or delete these lines.",
    )
    return stamps


def _synthesise_users(df: pd.DataFrame, user_cols: list[str]) -> tuple[pd.Series, pd.DataFrame]:
    """Synthesise ``user_id`` from the user features (see the module docstring).

    Returns:
        (the user id of each impression, aligned with ``df``; the user feature table, one row
        per distinct id in order of first appearance, features as written).
    """
    user_values = df[user_cols].astype("str").fillna("")
    joined = user_values.iloc[:, 0].str.cat(user_values[user_cols[1:]], sep="|")
    codes, uniques = pd.factorize(joined)
    digests = np.array(
        [hashlib.blake2b(u.encode("utf-8"), digest_size=8).hexdigest() for u in uniques],
        dtype=object,
    )
    user_id = pd.Series(digests[codes], index=df.index, dtype="str")
    first = pd.Series(codes).drop_duplicates().index.to_numpy()
    user_features = pd.DataFrame({"user_id": user_id.to_numpy()[first]})
    for col in user_cols:
        user_features[col] = df[col].astype("str").to_numpy()[first]
    return user_id, user_features


def _report_items_without_features(
    interactions: pd.DataFrame, item_features: pd.DataFrame, file: Path, report: ValidationReport
) -> None:
    """Warn (once, with a count of impressions) about shown items with no item_context line."""
    absent = ~interactions["item_id"].isin(item_features["item_id"]).to_numpy()
    if absent.any():
        ids = pd.unique(interactions["item_id"].to_numpy()[absent])
        report.add(
            make_finding(
                "warning",
                "missing_feature_row",
                f"{len(ids)} item_id value(s) of the impressions (e.g. {ids[0]}) have no line "
                "here; their features are treated as unknown",
                source=str(file),
                column="item_id",
                count=int(absent.sum()),
            )
        )


def _obd_schema(
    user_cols: list[str], affinity_cols: list[str], item_features: pd.DataFrame
) -> Schema:
    """The suggested schema: click label, propensities, position and affinities as context."""
    item_cols = [c for c in item_features.columns if c != "item_id"]
    item_specs: list[Feature] = [
        Numeric(c) if pd.api.types.is_numeric_dtype(item_features[c]) else Categorical(c)
        for c in item_cols
    ]
    return Schema(
        user="user_id",
        item="item_id",
        label="click",
        label_kind="click",
        timestamp="timestamp",
        propensity="propensity_score",
        context=(Categorical("position"), *(Numeric(c) for c in affinity_cols)),
        user_features=tuple(Categorical(c) for c in user_cols),
        item_features=tuple(item_specs),
    )


def _resolve(path: str | Path, campaign: str | None) -> tuple[Path, str]:
    """-> (policy directory, campaign stem), checking that both files exist."""
    p = require_path(path, "Pass an Open Bandit Dataset policy directory, e.g. .../random.")
    if p.is_file():
        if campaign is not None and campaign != p.stem:
            raise data_error(
                "campaign_mismatch",
                f"file is campaign '{p.stem}' but campaign='{campaign}'",
                source=str(p),
                fix="Pass the directory, or leave campaign out.",
            )
        p, campaign = p.parent, p.stem
    if not (p / _ITEM_FILE).is_file():
        raise data_error(
            "missing_file",
            f"file '{_ITEM_FILE}' is missing; the Open Bandit Dataset layout needs it next to "
            "the campaign CSV",
            source=str(p / _ITEM_FILE),
            fix="Unzip the complete dataset; each policy directory holds item_context.csv.",
        )
    found = sorted(f.stem for f in p.glob("*.csv") if f.name != _ITEM_FILE)
    if campaign is None:
        if len(found) == 1:
            return p, found[0]
        if not found:
            raise data_error(
                "missing_file",
                f"no campaign file; the Open Bandit Dataset layout expects one of "
                f"{', '.join(c + '.csv' for c in CAMPAIGNS)} next to {_ITEM_FILE}",
                source=str(p),
                fix="Unzip the complete dataset into this directory.",
            )
        raise data_error(
            "ambiguous_campaign",
            f"directory holds several campaigns: {', '.join(found)}",
            source=str(p),
            fix=f"Choose one: load_obd(path, campaign='{found[0]}').",
        )
    if campaign not in found:
        raise data_error(
            "missing_file",
            f"campaign file '{campaign}.csv' is missing; found "
            f"{', '.join(found) if found else 'no campaign file'}.{suggest(campaign, found)}",
            source=str(p / f"{campaign}.csv"),
            fix="Pass one of the campaigns found.",
        )
    return p, campaign


def _is_text_column(name: str) -> bool:
    """Ids and hashed categorical features: read as written ("007" stays "007")."""
    if name == "item_id" or name.startswith(_USER_PREFIX):
        return True
    # item_feature_0 is numeric (a price); item_feature_1.. are hashed categories
    return name.startswith(_ITEM_PREFIX) and name != f"{_ITEM_PREFIX}0"


def _read_csv(path: Path) -> pd.DataFrame:
    """Read a CSV with header; drop the unnamed index column; index = 0-based data row.

    The id and categorical columns (:func:`_is_text_column`) are read as text, exactly as
    written; a header that names a column twice is an error naming the file and column.
    """
    try:
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False)
        names = [str(c) for c in header.iloc[0].tolist()] if len(header) else []
        column_name_report(names, str(path)).raise_if_errors()
        df = pd.read_csv(
            path,
            keep_default_na=False,
            na_values=[""],
            engine="c",
            dtype={n: str for n in names if _is_text_column(n)},
        )
    except pd.errors.ParserError as exc:
        raise data_error(
            "malformed_line",
            f"malformed line: {str(exc).strip()}",
            source=str(path),
            fix="Fix or delete that line.",
        ) from None
    except pd.errors.EmptyDataError:
        raise data_error("empty_file", "file is empty", source=str(path)) from None
    first = str(df.columns[0]) if len(df.columns) else ""
    if first == "" or first.startswith("Unnamed: 0"):
        df = df.drop(columns=df.columns[0])
    return df


def _read_items(path: Path, problems: ValidationReport) -> pd.DataFrame:
    source = str(path)
    items = _read_csv(path)
    if "item_id" not in items.columns:
        raise data_error(
            "missing_column",
            f"column 'item_id' is missing; found {', '.join(items.columns)}",
            source=source,
            fix="Pass the dataset's item_context.csv.",
        )
    _to_int(items, "item_id", source, problems, keep_text=True)
    if problems.errors:
        return items
    dup = items["item_id"].duplicated().to_numpy()
    _check_values(
        items,
        "item_id",
        dup,
        "repeats an earlier item_id",
        source,
        problems,
        fix="Keep one line per item.",
    )
    cols = [
        "item_id",
        *sorted((c for c in items.columns if c.startswith(_ITEM_PREFIX)), key=_suffix),
    ]
    cols += [c for c in items.columns if c not in cols]
    return items[cols].reset_index(drop=True)


def _to_int(
    df: pd.DataFrame,
    col: str,
    source: str,
    problems: ValidationReport,
    *,
    keep_text: bool = False,
) -> bool:
    """Convert ``df[col]`` to int64 in place and return True, or report the bad lines.

    With ``keep_text`` (ids) the values are only checked, and stay as written.
    """
    values = pd.to_numeric(df[col], errors="coerce")
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    if bad.any():
        _report_bad(df, col, bad, "should be an integer", source, problems)
        return False
    if not keep_text:
        df[col] = arr.astype("int64")
    return True


def _to_float(
    df: pd.DataFrame,
    col: str,
    source: str,
    problems: ValidationReport,
    allow_missing: bool = False,
) -> bool:
    """Convert ``df[col]`` to float64 in place and return True, or report the bad lines."""
    values = pd.to_numeric(df[col], errors="coerce")
    arr = values.to_numpy(dtype="float64", na_value=np.nan)
    bad = np.isinf(arr) | (np.isnan(arr) & (df[col].notna().to_numpy() | (not allow_missing)))
    if bad.any():
        _report_bad(df, col, bad, "should be a number", source, problems)
        return False
    df[col] = arr
    return True


def _report_bad(
    df: pd.DataFrame,
    col: str,
    bad: np.ndarray,
    problem: str,
    source: str,
    problems: ValidationReport,
    fix: str = "Fix or delete these lines.",
    code: str = "malformed_line",
) -> None:
    pos = np.flatnonzero(bad)
    shown = ", ".join(
        "empty" if pd.isna(v) else repr(str(v)) for v in df[col].iloc[pos[:_MAX_EXAMPLES]]
    )
    lines = ", ".join(str(int(r) + 1 + _HEADER_LINES) for r in pos[:5])
    more = f" and {len(pos) - 5} more" if len(pos) > 5 else ""
    problems.add(
        make_finding(
            "error",
            code,
            f"value {shown} {problem} (file line{'s' if len(pos) > 1 else ''} {lines}{more})",
            source=source,
            column=col,
            rows=pos,
            count=len(pos),
            fix=fix,
        )
    )


def _check_values(
    df: pd.DataFrame,
    col: str,
    bad: np.ndarray,
    problem: str,
    source: str,
    problems: ValidationReport,
    fix: str,
) -> None:
    if bad.any():
        _report_bad(df, col, bad, problem, source, problems, fix=fix, code="bad_value")


def _suffix(name: str) -> tuple[int, str]:
    tail = name.rsplit("_", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)
