"""SQLite storage: history across a restart, retention, concurrent acknowledged writes."""

from __future__ import annotations

import sqlite3
import threading
import time

from plugins.gasleak_lstm_svm.estimators import ThresholdDetector
from plugins.gasleak_lstm_svm.service.alerts import AlertRules
from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
from plugins.gasleak_lstm_svm.service.schemas import Reading
from plugins.gasleak_lstm_svm.service.storage import SCHEMA, Storage


def readings(sensor, n, t0, gas=lambda i: 60.0):
    return [Reading(sensor_id=sensor, timestamp=t0 + i, gas_concentration=gas(i), temperature=20.0, humidity=40.0)
            for i in range(n)]


def test_alert_history_and_readings_survive_a_restart(tmp_path):
    path = tmp_path / "keep.sqlite"
    t0 = time.time() - 500
    storage = Storage(path)
    pipeline = Pipeline(ThresholdDetector(), storage, AlertRules(clear_samples=5))
    # sensor a: a leak that comes and goes (one closed alert); sensor b: a leak still going on
    pipeline.ingest(readings("a", 200, t0, gas=lambda i: 900.0 if 80 <= i < 100 else 60.0), "http")
    pipeline.ingest(readings("b", 100, t0, gas=lambda i: 1500.0 if i >= 90 else 60.0), "http")
    pipeline.drain()
    total, before = storage.alerts()
    assert total == 2 and sorted(a["sensor_id"] for a in before) == ["a", "b"]
    closed = next(a for a in before if a["sensor_id"] == "a")
    assert closed["end_ts"] is not None and closed["peak_ppm"] == 900.0
    storage.acknowledge(closed["id"])
    _, before = storage.alerts()
    n_readings = storage.count_readings()
    scored = [r["probability"] for r in storage.readings(sensor_id="b", limit=100)]
    storage.close()

    storage = Storage(path)  # a new process would see exactly this
    try:
        assert storage.alerts()[1] == before
        assert storage.count_readings() == n_readings == 300
        assert [r["probability"] for r in storage.readings(sensor_id="b", limit=100)] == scored
        # the open alert carries on: more of b's leak escalates nothing and opens nothing new
        pipeline = Pipeline(ThresholdDetector(), storage, AlertRules(clear_samples=5))
        assert pipeline.engine.state("b") == "danger"
        pipeline.ingest(readings("b", 20, t0 + 100, gas=lambda i: 1500.0), "http")
        pipeline.drain()
        total, after = storage.alerts()
        assert total == 2 and [a["id"] for a in after] == [a["id"] for a in before]
    finally:
        storage.close()


def test_retention_prunes_old_readings_and_their_scores(tmp_path):
    storage = Storage(tmp_path / "prune.sqlite", retention_hours=1)
    try:
        now = time.time()
        clock = [now - 3 * 3600]  # the old readings were fresh when they arrived
        pipeline = Pipeline(ThresholdDetector(), storage, AlertRules(), clock=lambda: clock[0])
        pipeline.ingest(readings("old", 100, now - 3 * 3600 - 100), "http")
        clock[0] = now
        pipeline.ingest(readings("new", 100, now - 100), "http")
        pipeline.drain()
        assert storage.count_readings() == 200
        assert storage.prune(now) == 100
        assert storage.count_readings() == 100
        assert {r["sensor_id"] for r in storage.readings(limit=1000)} == {"new"}
        with sqlite3.connect(storage.path) as conn:
            orphans = conn.execute("SELECT COUNT(*) FROM scores WHERE reading_id NOT IN (SELECT id FROM readings)").fetchone()[0]
        assert orphans == 0
    finally:
        storage.close()


def test_concurrent_writers_share_commits_and_lose_nothing(tmp_path):
    storage = Storage(tmp_path / "group.sqlite", synchronous="FULL")
    try:
        ids: list[int] = []
        lock = threading.Lock()

        def writer(k):
            for i in range(100):
                got = storage.insert_readings([(f"s{k}", float(i), 1.0, 2.0, 3.0)], "http").ids
                with lock:
                    ids.extend(got)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(ids) == len(set(ids)) == 800
        assert storage.count_readings() == 800
        assert storage.commits <= 800
        with sqlite3.connect(storage.path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        storage.close()


def test_a_database_with_duplicated_readings_is_cleaned_once(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as conn:  # as an earlier version left it: no unique index, a group stored twice
        conn.executescript(SCHEMA)  # the tables without the unique index
        conn.execute("CREATE INDEX readings_sensor_ts ON readings (sensor_id, ts)")  # which they also had
        rows = [("a", 100.0 + i, 50.0, 20.0, 40.0, 0.0, "mqtt") for i in range(5)]
        conn.executemany("INSERT INTO readings (sensor_id, ts, gas, temperature, humidity, received, source) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?)", rows + rows[:3])
    storage = Storage(path)
    try:
        assert storage.count_readings() == 5
        assert storage.insert_readings([rows[0][:5]], "mqtt").new == [False]
        with sqlite3.connect(path) as conn:  # the unique index, whose prefix is (sensor_id, ts), replaces it
            indexes = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "readings_unique" in indexes and "readings_sensor_ts" not in indexes
    finally:
        storage.close()


def test_a_batch_gets_each_readings_own_id_and_knows_which_were_stored_before(tmp_path):
    """Batches go in as one INSERT per chunk of rows: every returned id names its own row, in the
    order given, across chunks, after a prune, and with rows stored before or repeated in the batch."""
    from plugins.gasleak_lstm_svm.service.storage import INSERT_CHUNK

    storage = Storage(tmp_path / "ids.sqlite")
    try:
        def check(rows, got):
            assert len(got.ids) == len(rows)
            with sqlite3.connect(storage.path) as conn:
                for rid, row in zip(got.ids, rows):
                    assert conn.execute("SELECT sensor_id, ts, gas, temperature, humidity FROM readings WHERE id = ?",
                                        (rid,)).fetchone() == row

        n = 2 * INSERT_CHUNK + 7  # three chunks
        first = [(f"s{i % 5}", float(i), 50.0 + i, 20.0, 40.0) for i in range(n)]
        got = storage.insert_readings(first, "http")
        check(first, got)
        assert got.new == [True] * n and len(set(got.ids)) == n
        # half stored before, one repeated inside the batch, the rest new
        again = first[::2] + [("x", 1.0, 2.0, 3.0, 4.0), ("x", 1.0, 2.0, 3.0, 4.0), ("y", 1.0, 2.0, 3.0, 4.0)]
        got = storage.insert_readings(again, "http")
        check(again, got)
        assert got.new == [False] * len(first[::2]) + [True, False, True]
        assert got.ids[-3] == got.ids[-2] and storage.count_readings() == n + 2
        # every one stored before: nothing new, the old ids
        got = storage.insert_readings(first[:3], "mqtt")
        assert got.new == [False] * 3 and got.ids == storage.insert_readings(first[:3], "http").ids
        # after the oldest rows are deleted, new ids still follow the largest one
        with sqlite3.connect(storage.path) as conn:
            conn.execute("DELETE FROM readings WHERE id < 100")
        later = [(f"z{i}", 1e9 + i, 1.0, 2.0, 3.0) for i in range(INSERT_CHUNK + 1)]
        got = storage.insert_readings(later, "http")
        check(later, got)
        assert got.new == [True] * len(later)
    finally:
        storage.close()
