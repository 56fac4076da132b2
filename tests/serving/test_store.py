"""EventStore against real SQLite files and a real PostgreSQL server (see conftest.py): round
trips checked field by field, idempotent and concurrent feedback, the join that
``wager export-logs`` reads, schema versions and the error messages."""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import re
import socket
import sqlite3
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pytest
import sqlalchemy as sa

from wager.serving import store as store_module
from wager.serving.events import FeedbackEvent, FeedbackResult, Impression
from wager.serving.store import SCHEMA_VERSION, EventStore, EventStoreError


def _impression(request_id: str, item_id: str, position: int = 1, **changes: object) -> Impression:
    row = Impression(
        request_id=request_id,
        user_id="u1",
        item_id=item_id,
        position=position,
        score=0.5,
        mean=0.4,
        std=0.1,
        policy="ucb(beta=1.0)",
        propensity=1.0,
        arm="",
        model_version="v1",
        ts=1_700_000_000.0,
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]


def _click(
    event_id: str, request_id: str, item_id: str, click: int = 1, ts: float = 1.0
) -> FeedbackEvent:
    return FeedbackEvent(event_id, request_id, item_id, click, None, ts)


def _rating(
    event_id: str, request_id: str, item_id: str, rating: float, ts: float
) -> FeedbackEvent:
    return FeedbackEvent(event_id, request_id, item_id, None, rating, ts)


def _nan_to_none(value: object) -> object:
    return None if isinstance(value, float) and math.isnan(value) else value


def _read_impressions(store: EventStore) -> list[Impression]:
    frame = store.impressions_frame()
    assert list(frame.columns) == [f.name for f in dataclasses.fields(Impression)]
    return [Impression(**{k: _nan_to_none(v) for k, v in r.items()}) for r in _records(frame)]


def _read_feedback(store: EventStore) -> list[FeedbackEvent]:
    frame = store.feedback_frame()
    assert list(frame.columns) == [f.name for f in dataclasses.fields(FeedbackEvent)]
    rows = []
    for record in _records(frame):
        values = {k: _nan_to_none(v) for k, v in record.items()}
        if values["click"] is not None:
            values["click"] = int(values["click"])  # type: ignore[call-overload]
        rows.append(FeedbackEvent(**values))  # type: ignore[arg-type]
    return rows


def _records(frame: pd.DataFrame) -> list[dict[str, object]]:
    return [{str(k): v for k, v in row.items()} for row in frame.to_dict("records")]


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- round trips ---------------------------------------------------------------------------


def test_impressions_round_trip_field_by_field(store: EventStore) -> None:
    rows = [
        # 17 significant digits and a 1.7e9 timestamp with microseconds: float32 would lose both
        Impression("req-1", "user-ü", "item/1", 1, 1.2345678901234567, 0.7000000000000001,
                   0.05, "ucb(beta=1.0)", 0.25, "B", "v3", 1_700_000_000.123456),
        Impression("req-1", "user-ü", "item 2", 2, 0.9, 0.9, None, "greedy", 1.0, "", "v3",
                   1_700_000_000.123457),
        Impression("req-2", "7", "item/1", 1, -3.5, 2.0, 1e-300, "thompson", 1e-9, "A", "v4",
                   0.0),
    ]  # fmt: skip
    store.log_impressions(rows)
    assert _read_impressions(store) == rows  # exact equality of every field, order kept
    frame = store.impressions_frame()
    assert frame["position"].dtype == "int64"
    assert math.isnan(frame["std"][1])  # a point model's std reads back NaN, never 0


def test_a_batch_larger_than_one_insert_is_stored_whole_in_order(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches go in multi-row INSERTs of at most ROWS_PER_INSERT rows: 7 rows through
    statements of 3 (3 + 3 + 1) come back every field, in order; a duplicate in the last
    statement stores none of them."""
    monkeypatch.setattr(store_module, "ROWS_PER_INSERT", 3)
    rows = [_impression(request_id=f"r{n // 2}", item_id=f"i{n}", position=n + 1, ts=float(n))
            for n in range(7)]  # fmt: skip
    store.log_impressions(rows)
    assert _read_impressions(store) == rows
    more = [_impression(request_id="r9", item_id=f"i{n}", ts=10.0) for n in range(6)]
    with pytest.raises(ValueError, match="already stored"):
        store.log_impressions([*more, rows[0]])
    assert _read_impressions(store) == rows


def test_feedback_round_trip_field_by_field_ordered_by_ts(store: EventStore) -> None:
    store.log_impressions([_impression("r1", "a"), _impression("r1", "b", 2)])
    events = [
        _rating("e-late", "r1", "b", 4.5, 1_700_000_100.25),
        _click("e-early", "r1", "a", 1, 1_700_000_050.5),
        _click("e-zero", "r1", "a", 0, 1_700_000_100.25),
    ]
    # stored_ids in input order (the inserts go in id order: e-early, e-late, e-zero)
    assert store.add_feedback(events) == FeedbackResult(
        stored=3, duplicates=0, unknown=[], stored_ids=["e-late", "e-early", "e-zero"]
    )
    # ordered by (ts, event_id): 50.5 first; at 100.25 "e-late" < "e-zero"
    assert _read_feedback(store) == [events[1], events[0], events[2]]


def test_feedback_names_the_arm_and_position_of_each_stored_events_impression(
    store: EventStore,
) -> None:
    """placement comes from the stored impressions (any server process can attribute the
    feedback): stored events only, never a duplicate or an unknown one."""
    store.log_impressions([_impression("r1", "a", 1, arm="exp/ucb"),
                           _impression("r1", "b", 2, arm="exp/ucb"),
                           _impression("r2", "a", 1, arm="exp/greedy")])  # fmt: skip
    result = store.add_feedback([_click("e1", "r1", "b", 1, 1.0), _click("e2", "r2", "a", 0, 2.0),
                                 _click("e3", "r9", "a", 1, 3.0)])  # fmt: skip
    assert result.placement == {"e1": ("exp/ucb", 2), "e2": ("exp/greedy", 1)}
    again = store.add_feedback([_click("e1", "r1", "b", 1, 1.0), _click("e4", "r1", "a", 1, 4.0)])
    assert again.stored_ids == ["e4"] and again.placement == {"e4": ("exp/ucb", 1)}


def test_empty_batches_are_no_ops(store: EventStore) -> None:
    store.log_impressions([])
    assert store.add_feedback([]) == FeedbackResult(stored=0, duplicates=0, unknown=[])
    assert len(store.impressions_frame()) == 0
    assert list(store.feedback_frame().columns) == [
        f.name for f in dataclasses.fields(FeedbackEvent)
    ]
    assert len(store.served_with_feedback()) == 0


def test_reopening_keeps_the_data(store_url: str) -> None:
    with EventStore(store_url) as first:
        first.log_impressions([_impression("r1", "a")])
        first.add_feedback([_click("e1", "r1", "a")])
    with EventStore(store_url) as second:
        assert _read_impressions(second) == [_impression("r1", "a")]
        assert _read_feedback(second) == [_click("e1", "r1", "a")]


# -- impressions: one per (request, item) -------------------------------------------------


def test_duplicate_impression_names_it_and_stores_nothing(store: EventStore) -> None:
    store.log_impressions([_impression("r1", "a")])
    with pytest.raises(ValueError, match=r"request_id='r1', item_id='a'\) is already stored"):
        store.log_impressions([_impression("r1", "b", 2), _impression("r1", "a", 3)])
    assert _read_impressions(store) == [_impression("r1", "a")]  # the batch is all or nothing


def test_duplicate_impression_within_a_batch_names_it(store: EventStore) -> None:
    with pytest.raises(ValueError, match=r"request_id='r9', item_id='x'\) appears twice"):
        store.log_impressions([_impression("r9", "x"), _impression("r9", "x", 2)])
    assert len(store.impressions_frame()) == 0


# -- feedback: idempotent, unknown items ---------------------------------------------------


def test_same_event_twice_is_stored_once(store: EventStore) -> None:
    store.log_impressions([_impression("r1", "a")])
    assert store.add_feedback([_click("e1", "r1", "a", 1)]) == FeedbackResult(1, 0, [], ["e1"])
    # a retry with the same id (even with other content) is a duplicate; the first is kept
    assert store.add_feedback([_click("e1", "r1", "a", 0, ts=9.0)]) == FeedbackResult(0, 1)
    assert _read_feedback(store) == [_click("e1", "r1", "a", 1)]


def test_same_event_twice_in_one_batch_first_wins(store: EventStore) -> None:
    store.log_impressions([_impression("r1", "a"), _impression("r1", "b", 2)])
    batch = [
        _click("e1", "r1", "a", 0, ts=5.0),
        _click("e2", "r1", "b", 1, ts=6.0),
        _click("e1", "r1", "a", 1, ts=7.0),
        _click("e1", "r1", "b", 1, ts=8.0),
    ]
    # e1 three times, e2 once: 2 stored, 2 duplicates
    assert store.add_feedback(batch) == FeedbackResult(2, 2, [], stored_ids=["e1", "e2"])
    assert _read_feedback(store) == [batch[0], batch[1]]


def test_batch_mixing_new_and_stored_ids_names_the_new_ones(store: EventStore) -> None:
    store.log_impressions([_impression("r1", "a"), _impression("r1", "b", 2)])
    store.add_feedback([_click("e1", "r1", "a")])
    batch = [
        _click("e3", "r1", "b", 0),  # new
        _click("e1", "r1", "a"),  # stored by the earlier call
        _click("e2", "r1", "a"),  # new
        _click("e3", "r1", "a"),  # e3 again in the batch
    ]
    # only e3 and e2 are this call's, in input order; e1 and the second e3 are duplicates
    assert store.add_feedback(batch) == FeedbackResult(2, 2, [], stored_ids=["e3", "e2"])
    # sent again: nothing new
    assert store.add_feedback(batch) == FeedbackResult(0, 4, [], stored_ids=[])


def test_feedback_result_refuses_a_count_that_is_not_its_ids() -> None:
    with pytest.raises(ValueError, match="stored = 2 but stored_ids holds 1 ids"):
        FeedbackResult(stored=2, duplicates=0, stored_ids=["e1"])


def test_unknown_request_or_item_is_returned_not_stored(store: EventStore) -> None:
    store.log_impressions([_impression("r1", "a")])
    batch = [
        _click("e1", "r-never", "a"),  # unknown request
        _click("e2", "r1", "a"),
        _click("e3", "r1", "z"),  # the request exists, but never showed item z
        _click("e2", "r1", "a"),  # a duplicate of e2 in the batch
    ]
    result = store.add_feedback(batch)
    assert result == FeedbackResult(1, 1, unknown=[batch[0], batch[2]], stored_ids=["e2"])
    assert _read_feedback(store) == [batch[1]]


def _concurrent_event(n: int) -> FeedbackEvent:
    return _click(f"e{n:04d}", f"r{n % 9}", f"i{n}", n % 2, ts=float(n))


def _concurrency_impressions(n_events: int) -> list[Impression]:
    return [_impression(f"r{n % 9}", f"i{n}", n // 9 + 1) for n in range(n_events)]


def _send(url_or_store: str | EventStore, numbers: range, batch: int) -> tuple[int, int, list[str]]:
    """Post the events ``numbers`` in batches; return the summed (stored, duplicates) and
    the stored ids of every batch, in order."""
    store = EventStore(url_or_store) if isinstance(url_or_store, str) else url_or_store
    stored = duplicates = 0
    ids: list[str] = []
    for start in range(numbers.start, numbers.stop, batch):
        events = [_concurrent_event(n) for n in range(start, min(start + batch, numbers.stop))]
        result = store.add_feedback(events)
        assert result.unknown == []
        # a batch's stored ids are some of its own ids, in its (input) order
        sent = [e.event_id for e in events]
        assert result.stored_ids == [i for i in sent if i in set(result.stored_ids)]
        stored, duplicates = stored + result.stored, duplicates + result.duplicates
        ids += result.stored_ids
    if isinstance(url_or_store, str):
        store.close()
    return stored, duplicates, ids


def _each_id_stored_by_one_writer(results: list[tuple[int, int, list[str]]], n: int) -> None:
    ids = [i for _, _, batch_ids in results for i in batch_ids]
    assert len(ids) == len(set(ids)) == n  # no id claimed by two writers
    assert set(ids) == {_concurrent_event(k).event_id for k in range(n)}


def test_concurrent_feedback_from_threads_stores_each_id_once(store: EventStore) -> None:
    # 8 threads x 200 events; thread t sends events 100t .. 100t+199, so its second half is
    # the next thread's first half (50% overlap): 1600 sent, 900 distinct ids
    n_threads, per_thread, overlap = 8, 200, 100
    n_distinct = (n_threads - 1) * (per_thread - overlap) + per_thread
    store.log_impressions(_concurrency_impressions(n_distinct))
    barrier = threading.Barrier(n_threads)
    results: list[tuple[int, int, list[str]]] = []
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            start = t * (per_thread - overlap)
            results.append(_send(store, range(start, start + per_thread), batch=25))
        except BaseException as exc:  # reported below: an assert in a thread would be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(s for s, _, _ in results) == n_distinct == 900
    assert sum(s + d for s, d, _ in results) == n_threads * per_thread == 1600
    _each_id_stored_by_one_writer(results, n_distinct)
    assert _read_feedback(store) == [_concurrent_event(n) for n in range(n_distinct)]


def test_concurrent_feedback_from_processes_stores_each_id_once(store_url: str) -> None:
    # 3 processes x 150 events, 50% overlap: 450 sent, 300 distinct ids
    with EventStore(store_url) as store:
        store.log_impressions(_concurrency_impressions(300))
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=3, mp_context=spawn) as pool:
        futures = [pool.submit(_send, store_url, range(75 * p, 75 * p + 150), 30) for p in range(3)]
        results = [f.result(timeout=120) for f in futures]
    assert sum(s for s, _, _ in results) == 300
    assert sum(s + d for s, d, _ in results) == 450
    _each_id_stored_by_one_writer(results, 300)
    with EventStore(store_url) as store:
        assert _read_feedback(store) == [_concurrent_event(n) for n in range(300)]


# -- the joined log ------------------------------------------------------------------------


def test_served_with_feedback_joins_and_aggregates(store: EventStore) -> None:
    shown = [
        _impression("r1", "a", 1),
        _impression("r1", "b", 2, std=None),
        _impression("r1", "c", 3),
        _impression("r2", "a", 1, user_id="u2"),
    ]
    store.log_impressions(shown)
    store.add_feedback(
        [
            _click("e1", "r1", "a", 0, ts=10.0),
            _click("e2", "r1", "a", 1, ts=11.0),
            _click("e3", "r1", "a", 0, ts=12.0),
            _rating("e5", "r1", "b", 2.5, ts=25.0),  # sent first, but the latest rating
            _rating("e4", "r1", "b", 4.0, ts=20.0),
            _click("e6", "r1", "b", 1, ts=30.0),  # later, but carries no rating
            _rating("e8", "r2", "a", 3.0, ts=40.0),  # same ts: (ts, event_id) puts e8 last
            _rating("e7", "r2", "a", 5.0, ts=40.0),
        ]
    )
    joined = store.served_with_feedback()
    impression_columns = [f.name for f in dataclasses.fields(Impression)]
    assert list(joined.columns) == [*impression_columns, "click", "rating", "event_count"]
    pd.testing.assert_frame_equal(joined[impression_columns], store.impressions_frame())
    # by hand: (r1, a) clicks 0, 1, 0 -> max 1, no rating, 3 events; (r1, b) ratings 4.0 at
    # 20 s and 2.5 at 25 s -> 2.5, click 1 (e6), 3 events; (r1, c) nothing -> NaN, NaN, 0;
    # (r2, a) two ratings at 40 s -> e8's 3.0 (e7 < e8), no click, 2 events
    nan = float("nan")
    expected = pd.DataFrame(
        {
            "click": [1.0, 1.0, nan, nan],
            "rating": [nan, 2.5, nan, 3.0],
            "event_count": pd.Series([3, 3, 0, 2], dtype="int64"),
        }
    )
    pd.testing.assert_frame_equal(joined[["click", "rating", "event_count"]], expected)


# -- schema versions -----------------------------------------------------------------------


def test_schema_version_is_recorded(store_url: str) -> None:
    EventStore(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version")).all() == [(3,)]
    engine.dispose()
    assert SCHEMA_VERSION == 3


def _as_version(store_url: str, version: int) -> None:
    """Turn a fresh store into what wager's schema 1 (no service_state table) or 2 (no
    impressions.model_mean) wrote."""
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE impressions DROP COLUMN model_mean"))
        if version == 1:
            conn.execute(sa.text("DROP TABLE service_state"))
        conn.execute(sa.text(f"UPDATE schema_version SET version = {version}"))
    engine.dispose()


def test_a_version_1_store_is_migrated_by_a_writer_and_read_as_is_by_a_reader(
    store_url: str,
) -> None:
    with EventStore(store_url) as store:
        store.log_impressions([_impression("r1", "a")])
    _as_version(store_url, 1)
    with EventStore(store_url, create=False) as reader:  # readers never write
        assert reader.get_state("active_version") is None
        assert len(reader.impressions_frame()) == 1
        assert reader.impressions_frame()["model_mean"].isna().all()
        assert reader.served_outcomes("v1", "", None, float("inf"))[0].size == 0
    engine = sa.create_engine(store_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version")).all() == [(1,)]
    with EventStore(store_url) as writer:
        writer.set_state("active_version", "v2")
        assert writer.get_state("active_version") == "v2"
        assert len(writer.impressions_frame()) == 1  # the rows survive the migration
        writer.log_impressions([_impression("r2", "a", model_mean=0.25)])
        assert writer.impressions_frame()["model_mean"].tolist()[1] == 0.25
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version FROM schema_version")).all() == [(3,)]
    engine.dispose()


def test_a_version_2_store_gains_model_mean(store_url: str) -> None:
    with EventStore(store_url) as store:
        store.set_state("active_version", "v1")
        store.log_impressions([_impression("r1", "a")])
    _as_version(store_url, 2)
    with EventStore(store_url) as writer:
        assert writer.get_state("active_version") == "v1"
        writer.log_impressions([_impression("r2", "a", model_mean=0.3)])
        frame = writer.impressions_frame()
    assert np.isnan(frame["model_mean"][0]) and frame["model_mean"][1] == 0.3


def test_served_outcomes_are_the_known_model_means_with_their_clicks(store_url: str) -> None:
    rows = [
        _impression("r1", "a", position=1, model_mean=0.1, ts=10.0),
        _impression("r1", "b", position=2, model_mean=0.2, ts=10.0),
        _impression("r2", "a", position=1, model_mean=0.3, ts=11.0),
        _impression("r3", "a", position=1, model_mean=None, ts=11.0),  # unknown: left out
        _impression("r4", "a", position=1, model_mean=0.4, ts=30.0),  # too recent
        _impression("r5", "a", position=1, model_mean=0.5, ts=11.0, model_version="v2"),
        _impression("r6", "a", position=1, model_mean=0.6, ts=11.0, arm="exp/b"),
    ]
    with EventStore(store_url) as store:
        store.log_impressions(rows)
        store.add_feedback([
            FeedbackEvent("e1", "r1", "a", 0, None, 12.0),
            FeedbackEvent("e2", "r1", "a", 1, None, 13.0),  # any click makes it a click
            FeedbackEvent("e3", "r1", "b", 1, None, 12.0),
            FeedbackEvent("e4", "r3", "a", 1, None, 12.0),
        ])  # fmt: skip
        means, clicks = store.served_outcomes("v1", "", 1, served_before=20.0)
        assert means.tolist() == [0.1, 0.3] and clicks.tolist() == [1.0, 0.0]
        means, clicks = store.served_outcomes("v1", "", None, served_before=20.0)
        assert means.tolist() == [0.1, 0.2, 0.3] and clicks.tolist() == [1.0, 1.0, 0.0]
        assert store.served_outcomes("v9", "", 1, 20.0)[0].size == 0
        assert store.served_outcomes("v1", "exp/b", 1, 20.0)[0].tolist() == [0.6]


def test_state_is_shared_by_every_store_on_the_database_and_replaced_in_place(
    store_url: str,
) -> None:
    with EventStore(store_url) as a, EventStore(store_url) as b:
        assert a.get_state("active_version") is None
        a.set_state("active_version", "v1")
        assert b.get_state("active_version") == "v1"
        b.set_state("active_version", "v10")
        b.set_state("other", "x")
        assert (a.get_state("active_version"), a.get_state("other")) == ("v10", "x")


def test_newer_schema_version_is_refused_naming_both_versions(store_url: str) -> None:
    EventStore(store_url).close()
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE schema_version SET version = 7"))
    engine.dispose()
    message = (
        f"event-store database {re.escape(store_url)} has schema version 7, newer than this "
        "wager's 3; upgrade wager"
    )
    with pytest.raises(EventStoreError, match=message):
        EventStore(store_url)


def test_tables_not_written_by_wager_are_refused(store_url: str) -> None:
    engine = sa.create_engine(store_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE impressions (x INTEGER)"))
    engine.dispose()
    with pytest.raises(EventStoreError, match="already has the tables impressions but no wager"):
        EventStore(store_url)


# -- URLs and files ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://u@localhost/db", "'mysql://u@localhost/db' uses the unsupported driver 'mysql'"),
        ("postgresql+psycopg2://u@h/db", "unsupported driver 'postgresql\\+psycopg2'"),
        ("events.db", "'events.db' is not a database URL"),
        ("sqlite://", "'sqlite://' names no database file"),
        ("sqlite:///:memory:", "names no database file \\(an in-memory database is not durable"),
    ],
)
def test_bad_urls_name_the_url_and_the_accepted_forms(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        EventStore(url)
    assert "use sqlite:///PATH" in str(caught.value)
    assert "postgresql://USER:PASSWORD@HOST:PORT/DATABASE" in str(caught.value)


def test_bad_url_message_hides_the_password() -> None:
    with pytest.raises(ValueError, match="'mysql://u:\\*\\*\\*@h/db' uses") as caught:
        EventStore("mysql://u:hunter2@h/db")
    assert "hunter2" not in str(caught.value)


def test_missing_parent_folder_is_named_and_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match=f"the folder '{re.escape(str(missing))}' does"):
        EventStore.sqlite(missing / "events.db")
    assert not missing.exists()


def test_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with EventStore.sqlite(path) as store:
        store.log_impressions([_impression("r1", "a")])
        assert store.url == f"sqlite:///{path}"
        # the journal mode is stored in the file: another connection sees it
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute("SELECT count(*) FROM impressions").fetchone() == (1,)


def test_postgresql_url_uses_psycopg(fresh_postgres_url: str) -> None:
    plain = fresh_postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with EventStore(plain) as store:
        assert store.url == fresh_postgres_url
        assert store.ping()


# -- readiness and lifetime ----------------------------------------------------------------


def test_ping_true_on_a_live_database(store: EventStore) -> None:
    assert store.ping() is True


def test_ping_false_once_the_database_is_gone(fresh_postgres_url: str) -> None:
    store = EventStore(fresh_postgres_url)
    assert store.ping() is True
    name = fresh_postgres_url.rsplit("/", 1)[1]
    admin = fresh_postgres_url.rsplit("/", 1)[0].replace("+psycopg", "") + "/wager_test"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")  # ends the store's connections too
    assert store.ping() is False
    store.close()


def test_unreachable_server_is_named() -> None:
    url = f"postgresql+psycopg://wager@127.0.0.1:{_closed_port()}/wager_test"
    with pytest.raises(EventStoreError, match=f"database {re.escape(url)}: connection failed"):
        EventStore(url)


def test_closed_store_refuses_writes_and_is_not_ready(tmp_path: Path) -> None:
    with EventStore.sqlite(tmp_path / "events.db") as store:
        pass
    assert store.ping() is False
    with pytest.raises(EventStoreError, match=r"the event store sqlite:///.* is closed"):
        store.log_impressions([_impression("r1", "a")])
    with pytest.raises(EventStoreError, match="is closed"):
        store.add_feedback([_click("e1", "r1", "a")])


def test_sqlite_store_fixture(sqlite_store: EventStore) -> None:
    assert sqlite_store.url.startswith("sqlite:///")
    assert sqlite_store.ping()


# -- SQLite writers: the OS lock they queue on, the driver connection of log_impressions -----


def _hold_lock(path: str, held: multiprocessing.synchronize.Event, release_after_s: float) -> None:
    """Child process: hold the store's writer lock for ``release_after_s`` seconds."""
    import fcntl
    import os
    import time

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    held.set()
    time.sleep(release_after_s)
    os.close(fd)


@pytest.mark.skipif(store_module.fcntl is None, reason="POSIX flock only")
def test_a_sqlite_writer_waits_for_another_process_holding_the_lock_then_commits(
    tmp_path: Path,
) -> None:
    """While another process holds ``<db>-wager-lock`` no write begins; the write goes
    through as soon as the lock is released (woken by the kernel, not a busy-timeout poll)."""
    import time

    path = tmp_path / "events.db"
    with EventStore.sqlite(path) as store:
        lock = Path(f"{path}{store_module.WRITE_LOCK_SUFFIX}")
        assert lock.exists()  # created with the schema, next to the database
        ctx = multiprocessing.get_context("spawn")
        held = ctx.Event()
        holder = ctx.Process(target=_hold_lock, args=(str(lock), held, 0.6))
        holder.start()
        try:
            assert held.wait(60)
            start = time.perf_counter()
            store.log_impressions([_impression("r1", "a")])
            waited = time.perf_counter() - start
        finally:
            holder.join(60)
        assert holder.exitcode == 0
        assert 0.3 < waited < 5.0  # it waited for the holder (0.6 s from before the wait)
        assert _read_impressions(store) == [_impression("r1", "a")]


@pytest.mark.skipif(store_module.fcntl is None, reason="POSIX flock only")
def test_sqlite_writers_in_threads_take_turns(tmp_path: Path) -> None:
    """Threads of one process exclude each other on the lock as processes do: a feedback
    write waits while a thread holds the lock, then both writes are stored."""
    with EventStore.sqlite(tmp_path / "events.db") as store:
        store.log_impressions([_impression("r1", "a")])
        lock = Path(f"{tmp_path / 'events.db'}{store_module.WRITE_LOCK_SUFFIX}")
        order: list[str] = []
        with store_module._file_lock(lock):
            writer = threading.Thread(
                target=lambda: order.append(str(store.add_feedback([_click("e1", "r1", "a")])))
            )
            writer.start()
            writer.join(0.3)
            assert writer.is_alive()  # blocked on the lock held here
            order.append("released")
        writer.join(60)
        assert order[0] == "released"
        assert order[1].startswith("FeedbackResult(stored=1")


def test_a_reader_leaves_no_lock_file(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with EventStore.sqlite(path) as store:
        store.log_impressions([_impression("r1", "a")])
    lock = Path(f"{path}{store_module.WRITE_LOCK_SUFFIX}")
    lock.unlink()
    with EventStore(f"sqlite:///{path}", create=False) as reader:
        assert len(reader.impressions_frame()) == 1
    assert not lock.exists()


def test_the_driver_connection_survives_a_refused_batch_and_rolls_it_back(
    sqlite_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """log_impressions on SQLite runs on one kept driver connection: a batch refused in its
    second INSERT leaves nothing of its first (rolled back), the connection is not left in a
    transaction, and the next batch commits on it."""
    monkeypatch.setattr(store_module, "ROWS_PER_INSERT", 2)
    sqlite_store.log_impressions([_impression("r1", "a")])
    raw = sqlite_store._raw
    with pytest.raises(ValueError, match=r"request_id='r1', item_id='a'\) is already stored"):
        sqlite_store.log_impressions(
            [_impression("r2", "a"), _impression("r2", "b"), _impression("r1", "a")]
        )
    assert sqlite_store._raw is raw
    assert not raw.driver_connection.in_transaction
    sqlite_store.log_impressions([_impression("r3", "a")])
    stored = [(r.request_id, r.item_id) for r in _read_impressions(sqlite_store)]
    assert stored == [("r1", "a"), ("r3", "a")]


def test_closing_releases_the_driver_connection(tmp_path: Path) -> None:
    store = EventStore.sqlite(tmp_path / "events.db")
    store.log_impressions([_impression("r1", "a")])
    conn = store._raw.driver_connection
    store.close()
    assert store._raw is None
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        conn.execute("SELECT 1")
