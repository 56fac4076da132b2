"""The durable event store: impressions and feedback in SQLite (the default) or PostgreSQL.

:class:`EventStore` implements :class:`~wager.serving.events.EventLog` on SQLAlchemy 2 Core.
Every write is one transaction that has committed durably when the call returns: SQLite
runs in WAL mode with ``synchronous=FULL`` (set on every connection), PostgreSQL with its
default ``synchronous_commit=on``. Feedback is idempotent by event id (``INSERT ... ON
CONFLICT (event_id) DO NOTHING``), so retries and concurrent writers (threads, processes,
API replicas) store each event exactly once.

On SQLite, writers (threads and ``wager serve --workers N`` processes) queue on an OS lock
(``flock``) on the file ``<database>-wager-lock`` next to the database before they begin a
transaction, so a waiting writer wakes as soon as the previous one has committed instead of
polling in SQLite's busy timeout (sleeps of 1 to 100 ms).

The store creates its schema on open and records its version in the ``schema_version``
table, so a later wager can migrate it; a database written by a newer wager is refused.

Example:
    >>> import tempfile, pathlib
    >>> from wager.serving.events import FeedbackEvent, Impression
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "events.db"
    >>> with EventStore.sqlite(path) as store:
    ...     store.log_impressions([Impression("r1", "u1", "i1", 1, 0.9, 0.8, 0.1,
    ...                                       "ucb(beta=1.0)", 1.0, "", "v1", 1.0e9)])
    ...     store.add_feedback([FeedbackEvent("e1", "r1", "i1", 1, None, 1.0e9 + 5)])
    FeedbackResult(stored=1, duplicates=0, unknown=[])
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine

from wager.errors import WagerError
from wager.serving.events import FeedbackEvent, FeedbackResult, Impression

try:  # POSIX: SQLite writers queue on an OS file lock (EventStore._writing)
    import fcntl
except ImportError:  # pragma: no cover - Windows: SQLite's own busy timeout only
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 3
"""The event-store schema this code reads and writes (``schema_version.version``): 1 the
impressions and feedback, 2 adds ``service_state``, 3 the impressions' ``model_mean`` (an
older store is migrated on open by a writer; readers read any, ``model_mean`` NaN)."""

_ACCEPTED = (
    "sqlite:///PATH (a database file; its folder must exist), "
    "postgresql://USER:PASSWORD@HOST:PORT/DATABASE or postgresql+psycopg://..."
)
_CHUNK = 150  # rows per multi-row INSERT / ids per IN (...): 6 columns x 150 < SQLite's 999
_SQLITE_BEGIN = "wager_sqlite_begin"  # execution option: the BEGIN statement SQLite runs
_PG_SCHEMA_LOCK = 0x7761676572  # pg_advisory_xact_lock key serialising schema creation
_CONNECT_TIMEOUT_S = 10  # PostgreSQL: give up connecting after this many seconds

_metadata = sa.MetaData()

_schema_version = sa.Table(
    "schema_version",
    _metadata,
    sa.Column("version", sa.Integer, nullable=False),
)

_impressions = sa.Table(
    "impressions",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("request_id", sa.String, nullable=False),
    sa.Column("user_id", sa.String, nullable=False),
    sa.Column("item_id", sa.String, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("score", sa.Double, nullable=False),
    sa.Column("mean", sa.Double, nullable=False),
    sa.Column("std", sa.Double, nullable=True),
    sa.Column("policy", sa.String, nullable=False),
    sa.Column("propensity", sa.Double, nullable=False),
    sa.Column("arm", sa.String, nullable=False),
    sa.Column("model_version", sa.String, nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Column("model_mean", sa.Double, nullable=True),  # schema 3
    # its index (leading column request_id) also serves lookups by request id
    sa.UniqueConstraint("request_id", "item_id", name="uq_impressions_request_item"),
)

_feedback = sa.Table(
    "feedback",
    _metadata,
    sa.Column("event_id", sa.String, primary_key=True),
    sa.Column("request_id", sa.String, nullable=False),
    sa.Column("item_id", sa.String, nullable=False),
    sa.Column("click", sa.Integer, nullable=True),
    sa.Column("rating", sa.Double, nullable=True),
    sa.Column("ts", sa.Double, nullable=False),
    sa.Index("ix_feedback_request_item", "request_id", "item_id"),
)

_service_state = sa.Table(
    "service_state",
    _metadata,
    sa.Column("key", sa.String, primary_key=True),
    sa.Column("value", sa.String, nullable=False),
    sa.Column("ts", sa.Double, nullable=False),
)
"""Small shared settings of the service's processes (e.g. ``active_version``)."""

_IMPRESSION_FIELDS = [f.name for f in dataclasses.fields(Impression)]
_impression_row = operator.attrgetter(*_IMPRESSION_FIELDS)  # row -> its INSERT values
#: most impressions per INSERT statement (x 13 parameters: within SQLite's 32,766 and
#: PostgreSQL's 65,535 parameters per statement)
ROWS_PER_INSERT = 1000
_FEEDBACK_FIELDS = [f.name for f in dataclasses.fields(FeedbackEvent)]
_STRINGS = ("request_id", "user_id", "item_id", "policy", "arm", "model_version", "event_id")
_DTYPES: dict[str, Any] = {"position": "int64", **dict.fromkeys(_STRINGS, str)}
"""Column dtypes of the frames read back (float64 for the columns not named)."""


def _migrate(conn: Connection, version: int) -> None:
    """Bring a store of schema ``version`` (1 or 2) to :data:`SCHEMA_VERSION` (in the
    caller's transaction)."""
    if version < 2:  # 2: the service processes' shared state
        _service_state.create(conn, checkfirst=True)
    if version < 3:  # 3: the model's own mean of each impression (online recalibration)
        kind = _impressions.c.model_mean.type.compile(dialect=conn.dialect)
        conn.execute(sa.text(f"ALTER TABLE {_impressions.name} ADD COLUMN model_mean {kind}"))


class EventStoreError(WagerError, RuntimeError):
    """The event-store database cannot be used as asked: unreachable, written by a newer
    wager, holding tables wager did not create, or the store is closed. The message names
    the database URL (password hidden) and what to do."""


def _normalise_url(url: str) -> URL:
    """Parse ``url`` into a SQLAlchemy URL on a supported driver, or raise ValueError."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ValueError(f"event-store URL {url!r} is not a database URL; use {_ACCEPTED}") from exc
    driver = parsed.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            raise ValueError(
                f"event-store URL {url!r} names no database file (an in-memory database is not "
                f"durable); use {_ACCEPTED}"
            )
        return parsed
    if driver in ("postgresql", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(
        f"event-store URL {parsed.render_as_string(hide_password=True)!r} uses the "
        f"unsupported driver {driver!r}; use {_ACCEPTED}"
    )


def _sqlite_engine(url: URL, shown: str) -> Engine:
    """An engine on a SQLite file whose every connection runs WAL + synchronous=FULL and
    whose transactions start with ``BEGIN IMMEDIATE`` (writers queue on the busy timeout
    instead of failing on a stale read snapshot)."""
    path = Path(url.database or "")
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"event-store database {shown}: the folder '{path.parent}' does not exist; create "
            "it first (wager never creates folders it was not told to) or point the URL elsewhere"
        )
    engine = sa.create_engine(url, connect_args={"timeout": 30.0})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the driver's own BEGIN handling off
        cursor = dbapi_connection.cursor()
        try:
            mode = cursor.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise EventStoreError(
                    f"event-store database {shown}: SQLite cannot use WAL journaling there "
                    f"(journal mode stays {mode!r}); put the file on a local file system"
                )
            cursor.execute("PRAGMA synchronous=FULL")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql(conn.get_execution_options().get(_SQLITE_BEGIN, "BEGIN IMMEDIATE"))

    return engine


WRITE_LOCK_SUFFIX = "-wager-lock"
"""The file next to a SQLite event store on which its writers queue (POSIX ``flock``)."""


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the block.

    Each call opens its own descriptor, so threads of one process exclude each other as
    processes do; a waiter sleeps in the kernel and wakes when the holder releases."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # released by close, also if the holder dies
        yield
    finally:
        os.close(fd)


def _postgres_engine(url: URL) -> Engine:
    """An engine on PostgreSQL (psycopg 3) that checks pooled connections before use."""
    connect_args: dict[str, Any] = {}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = _CONNECT_TIMEOUT_S
    return sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


class EventStore:
    """A durable log of impressions and feedback on SQLite or PostgreSQL (an ``EventLog``).

    Args:
        url: ``sqlite:///PATH`` (a file whose folder exists; created if missing) or
            ``postgresql://...`` / ``postgresql+psycopg://...`` (the database must exist;
            the store creates its tables).

    Raises:
        ValueError: the URL is not one of the accepted forms.
        FileNotFoundError: the SQLite file's folder does not exist.
        EventStoreError: the database is unreachable, was written by a newer wager, or
            holds ``impressions`` / ``feedback`` tables that wager did not create.

    Example:
        >>> import tempfile, pathlib
        >>> store = EventStore(f"sqlite:///{pathlib.Path(tempfile.mkdtemp()) / 'events.db'}")
        >>> store.ping()
        True
        >>> store.close()
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open the store at ``url``; ``create=False`` refuses a database without a wager
        schema instead of creating one (readers such as ``wager export-logs`` never write)."""
        parsed = _normalise_url(url)
        self.url: str = parsed.render_as_string(hide_password=True)
        """The database URL with the password hidden (for messages and logs)."""
        self._sqlite = parsed.drivername.startswith("sqlite")
        self._engine = (
            _sqlite_engine(parsed, self.url) if self._sqlite else _postgres_engine(parsed)
        )
        self._closed = False
        self._create = create
        marker = "?" if self._sqlite else "%s"  # sqlite3's / psycopg's parameter style
        self._impression_values = f"({', '.join([marker] * len(_IMPRESSION_FIELDS))})"
        self._insert_impressions: dict[int, str] = {}  # rows -> statement
        self._lock_path: Path | None = (
            Path(f"{parsed.database}{WRITE_LOCK_SUFFIX}")
            if self._sqlite and fcntl is not None
            else None
        )
        self._raw: Any = None  # SQLite: the driver connection of log_impressions
        self._raw_lock = threading.Lock()
        try:
            self._open_schema()
        except BaseException:
            self._engine.dispose()
            raise

    def _insert_statement(self, n: int) -> str:
        """The driver-level INSERT of ``n`` impression rows in one statement.

        One multi-row statement, not an ``executemany``: the driver releases the GIL around
        each statement it runs, and a serving process's group-commit thread taking it back
        once per row stalled the event loop once per row (measured on ML-100k with wrk at 8
        clients: rounds 2.6x slower, throughput 0.6x). Statements are kept per row count."""
        statement = self._insert_impressions.get(n)
        if statement is None:
            statement = (
                f"INSERT INTO {_impressions.name} ({', '.join(_IMPRESSION_FIELDS)}) "
                f"VALUES {', '.join([self._impression_values] * n)}"
            )
            if n <= 128:  # the usual group sizes; larger ones are rare and long
                self._insert_impressions[n] = statement
        return statement

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """A write transaction (committed when the block ends, rolled back on an error).

        On SQLite, writers (threads and server processes) first queue on an OS lock on a file
        next to the database, then run ``BEGIN IMMEDIATE``: a waiting writer wakes as soon as
        the previous one commits. Left to SQLite's busy timeout instead, a writer that finds
        the database locked sleeps in steps of 1 to 100 ms, which set the p99 of
        ``wager serve --workers 2``."""
        with self._write_lock(), self._engine.begin() as conn:
            yield conn

    def _write_lock(self) -> contextlib.AbstractContextManager[None]:
        """The OS lock SQLite writers queue on (see :meth:`_writing`); nothing elsewhere."""
        if self._lock_path is None:
            return contextlib.nullcontext()
        return _file_lock(self._lock_path)

    @classmethod
    def sqlite(cls, path: str | Path) -> EventStore:
        """The store in the SQLite file ``path`` (its folder must exist)."""
        return cls(URL.create("sqlite", database=str(path)).render_as_string())

    # -- schema ---------------------------------------------------------------------------

    def _open_schema(self) -> None:
        """Create the schema in a fresh database or check the version of an existing one,
        in one transaction (serialised between concurrent openers)."""
        # a reader (create=False) leaves no lock file; its BEGIN IMMEDIATE waits as before
        opening = self._writing() if self._create else self._engine.begin()
        try:
            with opening as conn:
                if not self._sqlite:
                    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_PG_SCHEMA_LOCK)))
                existing = set(sa.inspect(conn).get_table_names())
                version: int | None = None
                if _schema_version.name in existing:
                    query = sa.select(sa.func.max(_schema_version.c.version))
                    version = conn.execute(query).scalar()
                if version is None:
                    foreign = sorted(existing & {_impressions.name, _feedback.name})
                    if foreign:
                        raise EventStoreError(
                            f"event-store database {self.url} already has the tables "
                            f"{', '.join(foreign)} but no wager schema version: it was not "
                            "written by wager; point the URL at a new or a wager database"
                        )
                    if not self._create:
                        raise EventStoreError(
                            f"{self.url} holds no wager event store (no schema_version table): "
                            "point --db at the database `wager serve` logged to"
                        )
                    _metadata.create_all(conn)
                    conn.execute(sa.insert(_schema_version).values(version=SCHEMA_VERSION))
                    version = SCHEMA_VERSION
                elif version > SCHEMA_VERSION:
                    raise EventStoreError(
                        f"event-store database {self.url} has schema version {version}, newer "
                        f"than this wager's {SCHEMA_VERSION}; upgrade wager "
                        '(pip install -U "wager[serve]") or use another database'
                    )
                elif version < 1:
                    raise EventStoreError(
                        f"event-store database {self.url} has schema version {version}, which "
                        f"no wager wrote (versions start at 1; this wager's is {SCHEMA_VERSION}); "
                        "point the URL at a new or a wager database"
                    )
                elif version < SCHEMA_VERSION and self._create:
                    _migrate(conn, version)
                    conn.execute(sa.update(_schema_version).values(version=SCHEMA_VERSION))
                    version = SCHEMA_VERSION
                self._version: int = version
        except sa.exc.OperationalError as exc:
            raise EventStoreError(
                f"cannot open the event-store database {self.url}: {exc.orig}; check that the "
                "server runs, the database exists and the URL's user may write to it"
            ) from exc

    # -- writing --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EventStoreError(f"the event store {self.url} is closed; open a new EventStore")

    def log_impressions(self, rows: Sequence[Impression]) -> None:
        """Commit ``rows`` in one transaction; return once it is durable.

        On SQLite the transaction runs on a connection the store keeps for this call alone,
        through the driver (the serving hot path: SQLAlchemy's connection checkout, events
        and reset took as much CPU as the insert and the commit together, about 0.2 ms a
        transaction on this 2-core machine).

        Args:
            rows: the items shown, one per (request_id, item_id); an empty list does nothing.

        Raises:
            ValueError: a (request_id, item_id) pair appears twice in ``rows`` or is
                already stored (request ids are unique per request); nothing is stored.
        """
        self._check_open()
        if not rows:
            return
        try:
            if self._sqlite:
                self._insert_sqlite(rows)
                return
            with self._writing() as conn:
                for statement, values in self._impression_inserts(rows):
                    conn.exec_driver_sql(statement, values)
        except (sa.exc.IntegrityError, sqlite3.IntegrityError) as exc:
            raise self._impression_conflict(rows, exc) from exc

    def _impression_inserts(self, rows: Sequence[Impression]) -> Iterator[tuple[str, tuple]]:
        """The (statement, parameters) of the multi-row INSERTs of ``rows``."""
        for start in range(0, len(rows), ROWS_PER_INSERT):
            chunk = rows[start : start + ROWS_PER_INSERT]
            values = tuple(itertools.chain.from_iterable(map(_impression_row, chunk)))
            yield self._insert_statement(len(chunk)), values

    def _insert_sqlite(self, rows: Sequence[Impression]) -> None:
        """:meth:`log_impressions` on SQLite: one ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the
        store's own driver connection (WAL, ``synchronous=FULL`` as every connection)."""
        with self._raw_lock, self._write_lock():
            if self._raw is None:
                self._raw = self._engine.raw_connection()
            conn = self._raw.driver_connection
            try:
                conn.execute("BEGIN IMMEDIATE")
                for statement, values in self._impression_inserts(rows):
                    conn.execute(statement, values)
                conn.execute("COMMIT")
            except BaseException:
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except Exception:  # the connection is unusable: open a new one next time
                    self._raw.invalidate()
                    self._raw = None
                raise

    def _impression_conflict(self, rows: Sequence[Impression], exc: Exception) -> ValueError:
        """The error of an INSERT of ``rows`` that broke the (request_id, item_id) key."""
        seen: set[tuple[str, str]] = set()
        for row in rows:
            key = (row.request_id, row.item_id)
            if key in seen:
                return ValueError(
                    f"impression (request_id={key[0]!r}, item_id={key[1]!r}) appears twice in "
                    "one batch; each request shows an item once. Nothing was stored"
                )
            seen.add(key)
        stored = self._stored_pairs({r.request_id for r in rows}) & seen
        if not stored:
            return ValueError(
                f"event store {self.url} refused the impressions: {getattr(exc, 'orig', exc)}. "
                "Nothing was stored"
            )
        first = min(stored)
        return ValueError(
            f"impression (request_id={first[0]!r}, item_id={first[1]!r}) is already stored"
            f"{f' (and {len(stored) - 1} more)' if len(stored) > 1 else ''} in {self.url}; "
            "request ids must be unique per request. Nothing was stored"
        )

    def add_feedback(self, events: Sequence[FeedbackEvent]) -> FeedbackResult:
        """Commit the events not yet stored (by event id) whose (request_id, item_id) was
        served, in one transaction; return once it is durable.

        Safe under concurrency: writers calling this at once with overlapping event ids
        store each id exactly once, and each event is counted once as stored or duplicate
        (inserts go in event-id order, so concurrent PostgreSQL transactions cannot deadlock).

        Args:
            events: the feedback; within the batch the first event of an id wins and
                later ones count as duplicates.

        Returns:
            how many were stored and how many were duplicates (id already stored, or earlier
            in the batch), the events of never-served (request_id, item_id), in input
            order, which are not stored, and the ids stored by this call, in input order.
        """
        self._check_open()
        if not events:
            return FeedbackResult(stored=0, duplicates=0)
        insert = sqlite.insert if self._sqlite else postgresql.insert
        with self._writing() as conn:
            served = self._served(conn, {e.request_id for e in events})
            unknown = [e for e in events if (e.request_id, e.item_id) not in served]
            first: dict[str, FeedbackEvent] = {}
            for event in events:
                if (event.request_id, event.item_id) in served:
                    first.setdefault(event.event_id, event)
            known = len(events) - len(unknown)
            rows = [dataclasses.asdict(first[k]) for k in sorted(first)]
            inserted: set[str] = set()
            for chunk in _chunks(rows):
                statement = insert(_feedback).values(list(chunk))
                statement = statement.on_conflict_do_nothing(index_elements=["event_id"])
                # RETURNING lists the rows inserted, not those skipped (rowcount is not
                # reliable for INSERT on every driver)
                inserted.update(conn.execute(statement.returning(_feedback.c.event_id)).scalars())
        stored_ids = [k for k in first if k in inserted]  # input order of first occurrence
        return FeedbackResult(
            stored=len(stored_ids),
            duplicates=known - len(stored_ids),
            unknown=unknown,
            stored_ids=stored_ids,
            placement={k: served[(first[k].request_id, first[k].item_id)] for k in stored_ids},
        )

    @staticmethod
    def _served(conn: Connection, request_ids: set[str]) -> dict[tuple[str, str], tuple[str, int]]:
        """(request_id, item_id) -> (arm, position) of the stored impressions of
        ``request_ids``."""
        served: dict[tuple[str, str], tuple[str, int]] = {}
        c = _impressions.c
        for chunk in _chunks(sorted(request_ids)):
            query = sa.select(c.request_id, c.item_id, c.arm, c.position).where(
                c.request_id.in_(chunk)
            )
            served.update(((r, i), (a, int(p))) for r, i, a, p in conn.execute(query))
        return served

    def _stored_pairs(self, request_ids: set[str]) -> set[tuple[str, str]]:
        with self._read() as conn:
            return set(self._served(conn, request_ids))

    def set_state(self, key: str, value: str) -> None:
        """Store ``value`` under ``key`` in ``service_state`` (insert or replace; durable on
        return): what the processes of one service share, e.g. the active model version."""
        self._check_open()
        insert = sqlite.insert if self._sqlite else postgresql.insert
        row = {"key": key, "value": value, "ts": time.time()}
        statement = insert(_service_state).values(row)
        statement = statement.on_conflict_do_update(
            index_elements=["key"], set_={"value": value, "ts": row["ts"]}
        )
        with self._writing() as conn:
            conn.execute(statement)

    def delete_state(self, key: str) -> None:
        """Remove ``key`` from ``service_state`` (nothing when absent; durable on return)."""
        self._check_open()
        with self._writing() as conn:
            conn.execute(sa.delete(_service_state).where(_service_state.c.key == key))

    def states(self, prefix: str) -> dict[str, str]:
        """Every ``service_state`` key starting with ``prefix`` and its value (e.g. the
        server processes' heartbeats); {} when none."""
        self._check_open()
        c = _service_state.c
        # a LIKE pattern would read '_' and '%' in the prefix as wildcards: compare the head
        query = sa.select(c.key, c.value).where(sa.func.substr(c.key, 1, len(prefix)) == prefix)
        with self._read() as conn:
            return {str(k): str(v) for k, v in conn.execute(query)}

    def get_state(self, key: str) -> str | None:
        """The value stored under ``key`` by :meth:`set_state`, or None (also for a
        version-1 store opened read-only, which has no ``service_state`` table)."""
        self._check_open()
        query = sa.select(_service_state.c.value).where(_service_state.c.key == key)
        try:
            with self._read() as conn:
                value: str | None = conn.execute(query).scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError):  # no such table
            if self._create:
                raise
            return None  # a reader of a version-1 store
        return value

    # -- reading --------------------------------------------------------------------------

    def _read(self) -> Connection:
        """A connection for reading (on SQLite a deferred transaction: no write lock)."""
        return self._engine.connect().execution_options(**{_SQLITE_BEGIN: "BEGIN"})

    def ping(self) -> bool:
        """True when the database answers ``SELECT 1`` (what ``/readyz`` checks); never
        raises (False when closed or unreachable)."""
        if self._closed:
            return False
        try:
            with self._read() as conn:
                return conn.execute(sa.select(1)).scalar() == 1
        except Exception:  # any failure means "not ready"
            return False

    def _frame(self, table: sa.Table, fields: list[str], order: list[str]) -> pd.DataFrame:
        query = sa.select(*(table.c[f] for f in fields)).order_by(*(table.c[o] for o in order))
        with self._read() as conn:
            records = conn.execute(query).all()
        columns = list(zip(*records, strict=True)) if records else [() for _ in fields]
        return pd.DataFrame(
            {
                name: pd.Series(list(values), dtype=_DTYPES.get(name, "float64"))
                for name, values in zip(fields, columns, strict=True)
            }
        )

    def impressions_frame(self) -> pd.DataFrame:
        """Every impression in the order stored, one row each.

        Returns:
            columns the fields of :class:`~wager.serving.events.Impression` (strings as
            ``str``, ``position`` int64, the rest float64; ``std`` NaN for a point model).
        """
        self._check_open()
        if self._version >= 3:
            return self._frame(_impressions, _IMPRESSION_FIELDS, ["id"])
        older = self._frame(_impressions, _IMPRESSION_FIELDS[:-1], ["id"])  # a reader's
        return older.assign(model_mean=np.nan)

    def served_outcomes(
        self, model_version: str, arm: str, position: int | None, served_before: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The model's own means and clicks of the impressions a recalibration is fitted on.

        Args:
            model_version: the version that served them.
            arm: the experiment arm label they were served in ("" outside an experiment).
            position: only impressions at this 1-based rank (None: every rank).
            served_before: only impressions served before this time (Unix seconds), so that
                their clicks had time to arrive.

        Returns:
            (n,) float64 ``model_mean`` and (n,) float64 clicks (1 when any event on the
            impression was a click, else 0: an impression without feedback counts as not
            clicked, as in the service's observed CTR) of the impressions with a known
            ``model_mean``, in storage order.
        """
        self._check_open()
        if self._version < 3:
            return np.empty(0), np.empty(0)
        i, f = _impressions.c, _feedback.c
        clicked = (
            sa.select(f.request_id, f.item_id)
            .where(f.click == 1)
            .group_by(f.request_id, f.item_id)
            .subquery()
        )
        query = (
            sa.select(i.model_mean, clicked.c.request_id.is_not(None))
            .select_from(
                _impressions.outerjoin(
                    clicked,
                    (clicked.c.request_id == i.request_id) & (clicked.c.item_id == i.item_id),
                )
            )
            .where(i.model_version == model_version, i.arm == arm)
            .where(i.model_mean.is_not(None), i.ts < served_before)
            .order_by(i.id)
        )
        if position is not None:
            query = query.where(i.position == position)
        with self._read() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return np.empty(0), np.empty(0)
        means, clicks = zip(*rows, strict=True)
        return np.asarray(means, dtype=np.float64), np.asarray(clicks, dtype=np.float64)

    def feedback_frame(self) -> pd.DataFrame:
        """Every stored feedback event, ordered by (ts, event_id).

        Returns:
            columns the fields of :class:`~wager.serving.events.FeedbackEvent`; ``click``
            and ``rating`` float64, NaN where the event has none.
        """
        self._check_open()
        return self._frame(_feedback, _FEEDBACK_FIELDS, ["ts", "event_id"])

    def served_with_feedback(self) -> pd.DataFrame:
        """Every impression with the feedback on it (the log that ``wager export-logs``
        writes), in the order stored.

        Returns:
            the columns of :meth:`impressions_frame` plus ``click`` (the largest click of
            the item's events: 1 if any was a click; NaN without a click event), ``rating``
            (the rating of its latest rated event by (ts, event_id); NaN without one) and
            ``event_count`` (int64: how many feedback events it has, 0 for none).
        """
        served = self.impressions_frame()
        feedback = self.feedback_frame()
        keys = ["request_id", "item_id"]
        per_item = feedback.groupby(keys, sort=False).agg(
            click=("click", "max"), event_count=("event_id", "size")
        )
        # feedback_frame is ordered by (ts, event_id): the last rated row is the latest
        rated = feedback[feedback["rating"].notna()].groupby(keys, sort=False)["rating"].last()
        joined = served.merge(per_item.reset_index(), on=keys, how="left")
        joined = joined.merge(rated.reset_index(), on=keys, how="left")
        joined["click"] = joined["click"].astype("float64")
        joined["rating"] = joined["rating"].astype("float64")
        joined["event_count"] = joined["event_count"].fillna(0).astype("int64")
        return joined[[*_IMPRESSION_FIELDS, "click", "rating", "event_count"]]

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close every pooled connection; the store cannot be used afterwards."""
        self._closed = True
        with self._raw_lock:
            if self._raw is not None:
                self._raw.close()
                self._raw = None
        self._engine.dispose()

    def __enter__(self) -> EventStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EventStore({self.url!r})"
