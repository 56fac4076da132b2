"""``wager export-logs``: the event store's impressions and feedback as one Parquet file.

The file (layout: :mod:`wager.data.loaders.event_log`) closes the loop: ``wager ope --logs
FILE --format wager`` estimates policies from it and ``wager train`` learns from it as a
table (schema ``user = "user_id"``, ``item = "item_id"``, ``label = "label"``).

Everything is checked before the database is read: ``--out`` must end in ``.parquet``, its
folder must exist and the file must not exist unless ``--overwrite``. The database is only
read (opening a store creates its schema in a database that has none, so an empty
database then reads as "nothing served yet"). The file is written to a temporary file in
the same folder and renamed, so an interrupted export leaves no partial file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from wager.cli.common import (
    CliError,
    JsonFlag,
    _flag_error,
    app,
    check_event_db,
    console,
    print_json,
)


def check_export(db: str, out: Path, overwrite: bool) -> None:
    """The checks of ``wager export-logs`` made before the database is opened (raises
    :class:`CliError` naming the flag)."""
    check_event_db(db)
    if out.suffix != ".parquet":
        raise _flag_error(
            "--out", f"--out {out}: the file name must end in .parquet, e.g. logs.parquet"
        )
    if not out.parent.is_dir():
        raise _flag_error(
            "--out",
            f"--out {out}: the folder '{out.parent}' does not exist; create it first or "
            "choose another place",
        )
    if out.is_dir():
        raise _flag_error("--out", f"--out {out} is a folder; give a file name ending in .parquet")
    if out.exists() and not overwrite:
        raise _flag_error(
            "--out",
            f"--out {out} already exists: pass --overwrite to replace it, or choose another name",
        )


def _summary(frame: Any, out: Path, db: str) -> dict[str, Any]:
    from wager.data.loaders.event_log import label_kind_of

    return {
        "out": str(out),
        "db": db,
        "impressions": len(frame),
        "requests": int(frame["request_id"].nunique()),
        "users": int(frame["user_id"].nunique()),
        "items": int(frame["item_id"].nunique()),
        "with_feedback": int((frame["event_count"] > 0).sum()),
        "feedback_events": int(frame["event_count"].sum()),
        "clicks": int((frame["click"] == 1).sum()),
        "ratings": int(frame["rating"].notna().sum()),
        "label": label_kind_of(frame),
    }


@app.command("export-logs")
def export_logs(
    db: Annotated[
        str,
        typer.Option(
            "--db",
            help="Event database URL of `wager serve`: sqlite:///PATH or "
            "postgresql://USER:PASS@HOST/DB.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Parquet file to write (*.parquet).")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace --out if it exists.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Export served impressions with their feedback as one Parquet file (one row per
    impression), readable by `wager ope --format wager` and `wager train`."""
    from wager._optional import require

    require("sqlalchemy", "serve", "wager export-logs")
    check_export(db, out, overwrite)
    from wager.data.loaders.event_log import event_log_frame, write_event_log
    from wager.serving.store import EventStore

    with EventStore(db, create=False) as store:
        shown = store.url
        served = store.served_with_feedback()
    if served.empty:
        raise CliError(
            f"event store {shown}: nothing has been served yet (no impressions); serve "
            "recommendations with `wager serve` first, or check --db",
            flag="--db",
            exit_code=1,
        )
    frame = event_log_frame(served)
    write_event_log(frame, out)
    summary = _summary(frame, out, shown)
    if as_json:
        print_json(summary)
        return
    console.print(
        Text(
            f"wrote {summary['impressions']} impressions of {summary['requests']} requests "
            f"({summary['with_feedback']} with feedback: {summary['feedback_events']} events) "
            f"to {out}; label = {summary['label']}"
        ),
        soft_wrap=True,
    )
