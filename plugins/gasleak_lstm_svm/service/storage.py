"""Readings, detector scores and alerts in one SQLite file.

Durability: a write returns only after its transaction has committed. The file is in WAL mode;
with ``synchronous=FULL`` (the default) every commit is fsynced, so an acknowledged reading
survives a SIGKILL of the service and a power cut; ``NORMAL`` still survives a killed process
(the WAL is in the OS cache) but not a power cut.

One writer thread owns the write connection and commits whatever is queued in one transaction
(group commit): concurrent HTTP requests share an fsync instead of queueing for one each, and each
caller still waits for its own commit. Readers use their own per-thread connections, which WAL lets
run beside the writer.

Idempotent ingest: a reading identical to one already stored (same sensor, timestamp and values: a
client retrying after a lost answer, an MQTT redelivery after a crash) is not stored again; the
caller gets the stored row's id. A unique index makes this hold whatever the path it came by.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id          INTEGER PRIMARY KEY,
    sensor_id   TEXT NOT NULL,
    ts          REAL NOT NULL,   -- the sensor's timestamp, Unix seconds
    gas         REAL NOT NULL,   -- ppm
    temperature REAL NOT NULL,   -- °C
    humidity    REAL NOT NULL,   -- %RH
    received    REAL NOT NULL,   -- server time it was committed
    source      TEXT NOT NULL    -- http | mqtt | demo
);
CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
CREATE TABLE IF NOT EXISTS scores (
    reading_id  INTEGER PRIMARY KEY,  -- the reading that ends the scored window
    probability REAL NOT NULL,
    detector    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alerts (
    id               INTEGER PRIMARY KEY,
    sensor_id        TEXT NOT NULL,
    kind             TEXT NOT NULL,   -- leak | offline
    level            TEXT NOT NULL,   -- info | warning | danger
    causes           TEXT NOT NULL,   -- JSON list
    start_ts         REAL NOT NULL,
    end_ts           REAL,
    peak_ppm         REAL,
    peak_probability REAL,
    acknowledged     INTEGER NOT NULL DEFAULT 0,
    acknowledged_at  REAL,
    message          TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alerts_start ON alerts (start_ts);
CREATE TABLE IF NOT EXISTS silences (
    sensor_id  TEXT PRIMARY KEY,
    until_ts   REAL NOT NULL,    -- notifications for this sensor are suppressed until then
    reason     TEXT,
    created_at REAL NOT NULL
);
"""
READING_KEY = ("sensor_id", "ts", "gas", "temperature", "humidity")
# Databases written before the unique index may hold duplicates (a retried MQTT group stored twice):
# keep the first of each, then enforce it.
DEDUPLICATE = f"""
DELETE FROM scores WHERE reading_id IN (
    SELECT id FROM readings WHERE id NOT IN (SELECT MIN(id) FROM readings GROUP BY {', '.join(READING_KEY)}));
DELETE FROM readings WHERE id NOT IN (SELECT MIN(id) FROM readings GROUP BY {', '.join(READING_KEY)});
CREATE UNIQUE INDEX IF NOT EXISTS readings_unique ON readings ({', '.join(READING_KEY)});
"""

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
# The notification lifecycle (added after the first schema; older files get the columns on open):
# when it was last notified, how many repeat notifications went out, whether a silence held one back.
LIFECYCLE_COLUMNS = {"notified_at": "REAL", "repeats": "INTEGER NOT NULL DEFAULT 0",
                     "silenced": "INTEGER NOT NULL DEFAULT 0"}
ALERT_COLUMNS = ("id", "sensor_id", "kind", "level", "causes", "start_ts", "end_ts", "peak_ppm",
                 "peak_probability", "acknowledged", "acknowledged_at", "message", *LIFECYCLE_COLUMNS)


INSERT_CHUNK = 128  # rows per INSERT statement: 7 values each stays under SQLite's old limit of 999


@functools.lru_cache(maxsize=None)
def _insert_many(n: int) -> str:
    return (f"INSERT INTO readings ({', '.join(READING_KEY)}, received, source) VALUES "
            + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * n) + f" ON CONFLICT ({', '.join(READING_KEY)}) DO NOTHING")


_FIND = f"SELECT id FROM readings WHERE {' AND '.join(column + ' = ?' for column in READING_KEY)}"


class Inserted(NamedTuple):
    ids: list[int]   # one per row given, in order
    new: list[bool]  # False: identical to a reading already stored, which ``ids`` names


class _Job:
    __slots__ = ("fn", "done", "result", "error", "on_done")

    def __init__(self, fn, on_done=None):
        self.fn, self.done, self.result, self.error = fn, threading.Event(), None, None
        self.on_done = on_done  # called on the writer thread once committed (or failed)


class Storage:
    def __init__(self, path: str | Path, synchronous: str = "FULL", retention_hours: float | None = None,
                 on_commit: Callable[[int, float], None] | None = None):
        synchronous = str(synchronous).upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"storage.synchronous must be one of {', '.join(SYNCHRONOUS)}, not {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.synchronous = synchronous
        self.retention_s = None if retention_hours is None else float(retention_hours) * 3600.0
        self._conn = self._connect()
        self._conn.executescript(SCHEMA)
        present = {row[1] for row in self._conn.execute("PRAGMA table_info(alerts)")}
        for column, kind in LIFECYCLE_COLUMNS.items():
            if column not in present:
                self._conn.execute(f"ALTER TABLE alerts ADD COLUMN {column} {kind}")
        if self._conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings_unique'").fetchone() is None:
            before = self._conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            self._conn.executescript(f"BEGIN IMMEDIATE; {DEDUPLICATE} COMMIT;")
            removed = before - self._conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            if removed:
                log.warning("storage: removed %d duplicated readings (stored twice by an earlier version)", removed)
        # (sensor_id, ts) is the unique index's prefix: the index of that name that earlier versions made
        # only cost every insert a second B-tree
        self._conn.execute("DROP INDEX IF EXISTS readings_sensor_ts")
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.commits = 0
        self.on_commit = on_commit  # (writes in the group, seconds): the metrics' commit histogram
        self._closed = False
        self._thread = threading.Thread(target=self._writer, name="sqlite-writer", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA busy_timeout=30000")
        # the writer's page cache: the indexes' pages that inserts touch stay in memory past SQLite's
        # default 2 MB (a million readings' indexes are ~100 MB); memory is taken only as pages are read
        conn.execute("PRAGMA cache_size=-65536")
        return conn

    # ---- writing: group commit on one thread ------------------------------------------------
    def _writer(self) -> None:
        conn = self._conn
        while True:
            job = self._queue.get()
            if job is None:
                break
            jobs = [job]
            while len(jobs) < 1024:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this group, then stop
                    break
                jobs.append(nxt)
            t0 = time.perf_counter()
            try:
                conn.execute("BEGIN IMMEDIATE")
                for j in jobs:
                    conn.execute("SAVEPOINT job")
                    try:
                        j.result = j.fn(conn)
                        conn.execute("RELEASE job")
                    except Exception as exc:  # one bad job must not sink the others in its group
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                        j.error = exc
                conn.execute("COMMIT")
                self.commits += 1
                if self.on_commit is not None:
                    self.on_commit(len(jobs), time.perf_counter() - t0)
            except Exception as exc:
                log.error("storage: commit failed: %s", exc)
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                for j in jobs:
                    j.error = j.error or exc
            for j in jobs:
                j.done.set()
                if j.on_done is not None:
                    j.on_done(j)

    def write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(conn)`` inside a transaction on the writer thread; return once it is committed."""
        if self._closed:
            raise RuntimeError("storage is closed")
        job = _Job(fn)
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    async def write_async(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """``write`` for an event loop: awaits the commit instead of blocking a thread on it."""
        if self._closed:
            raise RuntimeError("storage is closed")
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def done(job):
            loop.call_soon_threadsafe(_settle, future, job)

        self._queue.put(_Job(fn, done))
        return await future

    def insert_readings(self, rows: list[tuple[str, float, float, float, float]], source: str) -> Inserted:
        """rows: (sensor_id, ts, gas, temperature, humidity). Returns their ids once committed."""
        return self.write(self._insert_fn(rows, source))

    async def insert_readings_async(self, rows: list[tuple[str, float, float, float, float]], source: str) -> Inserted:
        return await self.write_async(self._insert_fn(rows, source))

    @staticmethod
    def _insert_fn(rows, source):
        def fn(conn):
            now = time.time()
            ids, new = [], []
            for lo in range(0, len(rows), INSERT_CHUNK):  # one statement a chunk, not one a row
                chunk = rows[lo : lo + INSERT_CHUNK]
                cur = conn.execute(_insert_many(len(chunk)), [v for row in chunk for v in (*row, now, source)])
                if cur.rowcount == len(chunk):
                    # no duplicates: SQLite gives each new row the largest id so far plus one, in order
                    ids += range(cur.lastrowid - len(chunk) + 1, cur.lastrowid + 1)
                    new += [True] * len(chunk)
                    continue
                # some were stored before (or twice in this chunk): look each one up
                first = cur.lastrowid - cur.rowcount + 1 if cur.rowcount else None
                claimed = set()
                for row in chunk:
                    rid = conn.execute(_FIND, row).fetchone()[0]
                    new.append(first is not None and rid >= first and rid not in claimed)
                    claimed.add(rid)
                    ids.append(rid)
            return Inserted(ids, new)

        return fn

    def save_round(self, scores: Iterable[tuple[int, float, str]], alerts: Iterable[dict],
                   notified: Iterable[tuple[dict, bool]] = (), now: float | None = None) -> None:
        """One detection round: the window scores, every alert it opened or changed, and which of
        them were notified (``(alert, silenced)``: silenced means the notification was held back)."""
        scores, alerts, notified = list(scores), list(alerts), list(notified)
        if not scores and not alerts and not notified:
            return

        def fn(conn):
            conn.executemany("INSERT OR REPLACE INTO scores (reading_id, probability, detector) VALUES (?, ?, ?)", scores)
            for alert in alerts:
                _upsert_alert(conn, alert)
            for alert, silenced in notified:  # after the upserts: a new alert has its id now
                conn.execute("UPDATE alerts SET notified_at = ?, silenced = MAX(silenced, ?) WHERE id = ?",
                             (now if now is not None else time.time(), int(silenced), alert["id"]))

        self.write(fn)

    def repeated(self, alert_ids: list[int], silenced: list[bool], now: float) -> None:
        """Repeat notifications of these alerts went out (or were held back by a silence) at ``now``."""
        def fn(conn):
            conn.executemany("UPDATE alerts SET notified_at = ?, repeats = repeats + 1, silenced = MAX(silenced, ?) "
                             "WHERE id = ?", [(now, int(s), i) for i, s in zip(alert_ids, silenced)])

        self.write(fn)

    def due_repeats(self, now: float, every_s: float) -> list[dict]:
        """Open, unacknowledged danger alerts last notified ``every_s`` or more before ``now``."""
        rows = self._reader().execute(
            f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE end_ts IS NULL AND acknowledged = 0 "
            "AND level = 'danger' AND COALESCE(notified_at, start_ts) <= ? ORDER BY id", (now - every_s,)).fetchall()
        return [_alert_dict(row) for row in rows]

    # ---- silences ------------------------------------------------------------------------------------
    def set_silence(self, sensor_id: str, until_ts: float, reason: str | None, now: float) -> dict:
        def fn(conn):
            conn.execute("INSERT INTO silences (sensor_id, until_ts, reason, created_at) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT (sensor_id) DO UPDATE SET until_ts = excluded.until_ts, reason = excluded.reason, "
                         "created_at = excluded.created_at", (sensor_id, until_ts, reason, now))

        self.write(fn)
        return {"sensor_id": sensor_id, "until_ts": until_ts, "reason": reason, "created_at": now}

    def clear_silence(self, sensor_id: str) -> bool:
        return self.write(lambda conn: conn.execute("DELETE FROM silences WHERE sensor_id = ?", (sensor_id,)).rowcount) > 0

    def silences(self) -> list[dict]:
        rows = self._reader().execute("SELECT sensor_id, until_ts, reason, created_at FROM silences ORDER BY sensor_id")
        return [dict(row) for row in rows.fetchall()]

    def acknowledge(self, alert_id: int) -> dict | None:
        def fn(conn):
            conn.execute("UPDATE alerts SET acknowledged = 1, acknowledged_at = COALESCE(acknowledged_at, ?) WHERE id = ?",
                         (time.time(), alert_id))
            return _alert_row(conn, alert_id)

        return self.write(fn)

    def prune(self, now: float | None = None) -> int:
        """Drop readings (and their scores) older than the retention; alerts are kept."""
        if self.retention_s is None:
            return 0
        cutoff = (now or time.time()) - self.retention_s

        def fn(conn):
            conn.execute("DELETE FROM scores WHERE reading_id IN (SELECT id FROM readings WHERE ts < ?)", (cutoff,))
            return conn.execute("DELETE FROM readings WHERE ts < ?", (cutoff,)).rowcount

        removed = self.write(fn)
        if removed:
            log.info("storage: pruned %d readings older than %.1f h", removed, self.retention_s / 3600)
        return removed

    # ---- reading: per-thread connections ------------------------------------------------------
    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA query_only=1")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def readings(self, sensor_id: str | None = None, since: float | None = None, until: float | None = None,
                 limit: int = 500) -> list[dict]:
        """The most recent ``limit`` readings matching the filters, oldest first."""
        where, args = [], []
        if sensor_id is not None:
            where.append("r.sensor_id = ?")
            args.append(sensor_id)
        if since is not None:
            where.append("r.ts >= ?")
            args.append(since)
        if until is not None:
            where.append("r.ts <= ?")
            args.append(until)
        sql = ("SELECT r.id, r.sensor_id, r.ts, r.gas, r.temperature, r.humidity, r.source, s.probability "
               "FROM readings r LEFT JOIN scores s ON s.reading_id = r.id"
               + (" WHERE " + " AND ".join(where) if where else "")
               + " ORDER BY r.ts DESC, r.id DESC LIMIT ?")
        rows = self._reader().execute(sql, (*args, limit)).fetchall()
        return [dict(row) for row in reversed(rows)]

    def queue_depth(self) -> int:
        """Writes waiting for the writer thread."""
        return self._queue.qsize()

    def count_readings(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM readings").fetchone()[0]

    def alerts(self, sensor_id: str | None = None, level: str | None = None, kind: str | None = None,
               open_only: bool | None = None, acknowledged: bool | None = None, since: float | None = None,
               until: float | None = None, limit: int = 100, offset: int = 0) -> tuple[int, list[dict]]:
        """(total matching, one page newest first)."""
        where, args = [], []
        for column, value in (("sensor_id", sensor_id), ("level", level), ("kind", kind)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if open_only is not None:
            where.append("end_ts IS NULL" if open_only else "end_ts IS NOT NULL")
        if acknowledged is not None:
            where.append("acknowledged = ?")
            args.append(int(acknowledged))
        if since is not None:
            where.append("COALESCE(end_ts, 1e18) >= ?")  # overlapping the range
            args.append(since)
        if until is not None:
            where.append("start_ts <= ?")
            args.append(until)
        clause = " WHERE " + " AND ".join(where) if where else ""
        conn = self._reader()
        total = conn.execute(f"SELECT COUNT(*) FROM alerts{clause}", args).fetchone()[0]
        rows = conn.execute(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts{clause} ORDER BY start_ts DESC, id DESC "
                            "LIMIT ? OFFSET ?", (*args, limit, offset)).fetchall()
        return total, [_alert_dict(row) for row in rows]

    def alert_counts(self) -> dict:
        conn = self._reader()
        by_level = dict(conn.execute("SELECT level, COUNT(*) FROM alerts WHERE end_ts IS NULL GROUP BY level").fetchall())
        unacked = conn.execute("SELECT COUNT(*) FROM alerts WHERE acknowledged = 0").fetchone()[0]
        return {"open": sum(by_level.values()), "unacknowledged": unacked,
                "by_level": {level: by_level.get(level, 0) for level in ("info", "warning", "danger")}}

    def alert(self, alert_id: int) -> dict | None:
        return _alert_row(self._reader(), alert_id)

    def open_alerts(self) -> list[dict]:
        return self.alerts(open_only=True, limit=1_000_000)[1]

    # ---- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join()
        try:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.warning("storage: final checkpoint failed: %s", exc)
        self._conn.close()
        with self._readers_lock:
            for conn in self._readers:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._readers.clear()


def _settle(future, job: _Job) -> None:
    if future.cancelled():  # the client went away; the write stands
        return
    if job.error is not None:
        future.set_exception(job.error)
    else:
        future.set_result(job.result)


def _alert_dict(row) -> dict:
    alert = dict(zip(ALERT_COLUMNS, tuple(row)))
    alert["causes"] = json.loads(alert["causes"])
    alert["acknowledged"] = bool(alert["acknowledged"])
    alert["silenced"] = bool(alert["silenced"])
    return alert


def _alert_row(conn, alert_id: int) -> dict | None:
    row = conn.execute(f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return None if row is None else _alert_dict(row)


def _upsert_alert(conn, alert: dict) -> None:
    """Insert a new alert (its id is written back into the dict) or update the evolving fields of one.

    ``acknowledged`` is never written here, so a detection round cannot undo an acknowledgement."""
    values = (alert["sensor_id"], alert["kind"], alert["level"], json.dumps(alert["causes"]), alert["start_ts"],
              alert["end_ts"], alert["peak_ppm"], alert["peak_probability"], alert["message"])
    if alert.get("id") is None:
        cur = conn.execute("INSERT INTO alerts (sensor_id, kind, level, causes, start_ts, end_ts, peak_ppm, "
                           "peak_probability, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
        alert["id"] = cur.lastrowid
    else:
        conn.execute("UPDATE alerts SET sensor_id = ?, kind = ?, level = ?, causes = ?, start_ts = ?, end_ts = ?, "
                     "peak_ppm = ?, peak_probability = ?, message = ? WHERE id = ?", (*values, alert["id"]))
