"""The served-and-feedback log of ``wager serve`` as one Parquet file (``wager export-logs``).

One row per impression (an item shown in one ``/v1/recommend`` response), left-joined with the
feedback on it. Columns, in this order (:data:`EVENT_LOG_COLUMNS`):

- ``request_id``, ``user_id``, ``item_id`` (str): the response, its user and the item shown;
- ``position`` (int64): the 1-based rank in the slate;
- ``score``, ``mean`` (float64), ``std`` (float64, null for a point model): what the policy
  ranked by, the predicted mean and std;
- ``policy`` (str), ``propensity`` (float64 in (0, 1]): the serving policy and its
  probability of this choice at this position;
- ``arm``, ``model_version`` (str): the experiment arm ("" outside one) and the model version;
- ``ts`` (float64): when it was served, Unix seconds (UTC);
- ``model_mean`` (float64): the model's own mean before the service's online recalibration
  (``wager serve --recalibrate``; equal to ``mean`` without it), null where unknown (and in
  files exported before the column existed, which still load);
- ``click`` (float64): 1 if any event on the item was a click, 0 if its click events were all
  0, null without a click event; ``rating`` (float64): the latest rating, null without one;
  ``event_count`` (int64): feedback events on the item (0 for none);
- ``label`` (float64): what ``wager train`` learns from (see :func:`event_log_frame`).

So the loop closes: ``wager ope --logs FILE --format wager`` reads it through
:func:`load_event_log`, and ``wager train`` reads it as a table (``format = "table"``,
schema ``user = "user_id"``, ``item = "item_id"``, ``label = "label"``,
``label_kind = "click"``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from wager.data.logged import LoggedFeedback
from wager.errors import data_error, require_path

EVENT_LOG_COLUMNS = (
    "request_id",
    "user_id",
    "item_id",
    "position",
    "score",
    "mean",
    "std",
    "policy",
    "propensity",
    "arm",
    "model_version",
    "ts",
    "model_mean",
    "click",
    "rating",
    "event_count",
    "label",
)
"""The columns of an exported event log, in file order."""

_STRINGS = ("request_id", "user_id", "item_id", "policy", "arm", "model_version")
_FLOATS = ("score", "mean", "std", "propensity", "ts", "model_mean", "click", "rating", "label")
#: columns a file may lack (written before they existed, or derived): filled on reading
_OPTIONAL = ("label", "model_mean")
_INTS = ("position", "event_count")
_FIX = "Export the log again with `wager export-logs --db URL --out FILE.parquet`."


def label_kind_of(frame: pd.DataFrame) -> str:
    """ "rating" when the log's feedback holds ratings and no click, else "click" (clicks,
    or no feedback at all)."""
    has_click = bool(frame["click"].notna().any())
    has_rating = bool(frame["rating"].notna().any())
    return "rating" if has_rating and not has_click else "click"


def event_log_frame(served: pd.DataFrame) -> pd.DataFrame:
    """The export table of an event store's impressions joined with their feedback.

    Args:
        served: what ``EventStore.served_with_feedback()`` returns: the impression fields
            plus ``click``, ``rating`` (float64, NaN without) and ``event_count``.

    Returns:
        the columns of :data:`EVENT_LOG_COLUMNS` with their dtypes (module docstring), in
        the order of ``served``. ``label`` is ``click`` with 0 for impressions without a
        click event (a shown item nobody clicked is a 0) when the log holds any click or no
        feedback at all; when it holds ratings only, ``label`` is ``rating`` (null for
        impressions without a rating: a missing rating is not a low one).

    Raises:
        ValueError: a column of :data:`EVENT_LOG_COLUMNS` (other than ``label``) is missing.
    """
    missing = [c for c in EVENT_LOG_COLUMNS if c not in _OPTIONAL and c not in served.columns]
    if missing:
        raise ValueError(f"the served log lacks the columns {', '.join(missing)}")
    if "model_mean" not in served.columns:
        served = served.assign(model_mean=np.nan)
    out = served[[c for c in EVENT_LOG_COLUMNS if c != "label"]].copy()
    for col in _STRINGS:
        out[col] = out[col].astype(str)
    for col in _INTS:
        out[col] = out[col].astype("int64")
    for col in _FLOATS[:-1]:
        out[col] = out[col].astype("float64")
    if label_kind_of(out) == "rating":
        out["label"] = out["rating"]
    else:
        out["label"] = out["click"].fillna(0.0)
    return out.reset_index(drop=True)


def write_event_log(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` (see :func:`event_log_frame`) to the Parquet file ``path`` atomically:
    into a temporary file in the same folder, then renamed over ``path``, so an interrupted
    export leaves no partial file (the temporary file is removed on any failure).

    Returns:
        ``path`` as a Path.
    """
    target = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(handle)
    try:
        frame.to_parquet(temp, index=False)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def _read(path: Path) -> pd.DataFrame:
    source = str(path)
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise data_error(
            "unreadable_file",
            f"not a readable Parquet file ({type(exc).__name__}: {exc})",
            source=source,
            fix=_FIX,
        ) from None
    missing = [c for c in EVENT_LOG_COLUMNS if c not in _OPTIONAL and c not in frame.columns]
    if "model_mean" not in frame.columns:
        frame = frame.assign(model_mean=np.nan)
    if missing:
        raise data_error(
            "missing_column",
            f"columns {', '.join(repr(c) for c in missing)} are missing; found "
            f"{', '.join(map(str, frame.columns))}",
            source=source,
            fix=_FIX,
        )
    if frame.empty:
        raise data_error("empty_file", "the event log holds no impression", source=source)
    return frame


def _check(frame: pd.DataFrame, source: str) -> None:
    """Positions whole numbers >= 1, one row per (request_id, item_id)."""
    position = pd.to_numeric(frame["position"], errors="coerce").to_numpy(dtype="float64")
    bad = ~np.isfinite(position) | (position < 1) | (position != np.round(position))
    if bad.any():
        raise data_error(
            "bad_value",
            f"value {frame['position'].iloc[int(np.flatnonzero(bad)[0])]!r} is not a 1-based "
            "rank (a whole number >= 1)",
            source=source,
            column="position",
            rows=np.flatnonzero(bad),
            fix=_FIX,
        )
    dup = frame.duplicated(["request_id", "item_id"]).to_numpy()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        raise data_error(
            "duplicate_row",
            f"(request_id, item_id) = ({frame['request_id'].iloc[row]!r}, "
            f"{frame['item_id'].iloc[row]!r}) repeats an earlier row; a request shows an item "
            "once",
            source=source,
            column="item_id",
            rows=np.flatnonzero(dup),
            fix=_FIX,
        )


def _select(
    frame: pd.DataFrame, source: str, arm: str | None, positions: int | None
) -> pd.DataFrame:
    """The rows of one experiment arm and / or the first ``positions`` ranks."""
    if arm is not None:
        logged = frame["arm"].astype(str)
        keep = (logged == arm) | (logged.str.rsplit("/", n=1).str[-1] == arm)
        if not keep.any():
            known = ", ".join(repr(a) for a in sorted(logged.unique()))
            raise data_error(
                "no_rows",
                f"no impression of arm {arm!r}; the log's arms: {known}",
                source=source,
                column="arm",
                fix="Pass one of the log's arms (the arm name, or 'experiment/arm').",
            )
        frame = frame[keep.to_numpy()]
    if positions is not None:
        if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
            raise ValueError(f"positions must be an integer >= 1, got {positions!r}")
        frame = frame[frame["position"].to_numpy() <= positions]
    return frame.reset_index(drop=True)


def load_event_log(
    path: str | Path, *, arm: str | None = None, positions: int | None = None
) -> LoggedFeedback:
    """Read an exported event log (``wager export-logs``) as logged feedback for off-policy
    evaluation (:mod:`wager.evaluation.ope`, ``wager ope --format wager``).

    Rows stay in file order. The action space is every item shown, sorted by item id as
    text, so ``action`` is the item's index there; ``position`` is the rank less 1
    (0-based); ``request`` numbers the request ids in order of first appearance (the
    impressions of one response share it); ``propensity`` is the serving policy's.

    The reward is the click: 1 for a clicked impression, 0 for one whose events were no
    click **and for an impression without any feedback** (shown, not clicked). A log whose
    feedback holds ratings only (no click event) has ``reward`` = the rating instead; every
    impression then needs one.

    **Propensities and positions.** The service logs, at each position, the probability of
    the item *given the items at the earlier positions* (the slate's conditional
    propensity); the off-policy estimators of :mod:`wager.evaluation.ope` divide by the
    *marginal* probability of the item at its position. The two are equal at position 1
    (and at every position for the deterministic policies, greedy and plain UCB, whose
    propensities are 1), but differ below it for a stochastic policy (epsilon-greedy, UCB
    with an epsilon floor, Thompson sampling). ``positions=1`` keeps only the rows whose
    logged propensity is the marginal the estimators assume.

    Args:
        path: the Parquet file ``wager export-logs`` wrote.
        arm: keep only the impressions of this experiment arm (its name, or the logged
            "experiment/arm"), e.g. the arm of the logging policy to estimate from.
        positions: keep only the impressions at ranks 1..positions (None: all).

    Returns:
        LoggedFeedback with ``user_ids`` the user ids (str), ``n_positions`` the largest
        rank, no context or item features and ``source`` the path.

    Raises:
        DataError: the file is missing, not Parquet, lacks columns, is empty, holds a rank
            that is not a whole number >= 1, repeats a (request_id, item_id), or is a
            ratings log with unrated impressions (naming the rows); propensities outside
            (0, 1] raise ValueError from :class:`LoggedFeedback`, naming the row.
    """
    file = require_path(path, _FIX)
    source = str(file)
    frame = _read(file)
    _check(frame, source)
    frame = _select(frame, source, arm, positions)
    items = frame["item_id"].astype(str)
    item_ids = np.array(sorted(items.unique()), dtype=object)
    action = pd.Categorical(items, categories=item_ids).codes.astype(np.int64)
    position = frame["position"].to_numpy(dtype=np.int64) - 1
    click = frame["click"].astype("float64")
    rating = frame["rating"].astype("float64")
    if label_kind_of(pd.DataFrame({"click": click, "rating": rating})) == "rating":
        unrated = rating.isna().to_numpy()
        if unrated.any():
            raise data_error(
                "missing_label",
                f"the log holds ratings only, but {int(unrated.sum())} impression(s) have no "
                "rating: their reward is unknown",
                source=source,
                column="rating",
                rows=np.flatnonzero(unrated),
                fix="Rate every shown item, or send clicks (0/1) as feedback instead.",
            )
        reward = rating.to_numpy(dtype=np.float64)
    else:
        reward = click.fillna(0.0).to_numpy(dtype=np.float64)
    request = pd.factorize(frame["request_id"].astype(str))[0].astype(np.int64)
    return LoggedFeedback(
        action=action,
        position=position,
        reward=reward,
        propensity=frame["propensity"].to_numpy(dtype=np.float64),
        item_ids=item_ids,
        n_positions=int(position.max()) + 1,
        user_ids=frame["user_id"].astype(str).to_numpy(dtype=object),
        request=request,
        source=source,
    )
