"""The live detection pipeline: ingest -> SQLite -> windows -> detector -> alert engine -> notifications.

``ingest`` is what HTTP, MQTT and the simulated nodes call. It validates, commits the readings
to SQLite and only then returns (that return is the sender's acknowledgement), and queues them
for detection. A detection thread scores the queued readings in rounds: per sensor it keeps the
last ``baseline_s + window`` samples in an array (the detector's ``features.InputSpec``: each
window is seen relative to the clean-air baseline of the minutes before it, computed here exactly
as training and evaluate compute it), cuts a round's new windows of a sensor and their baselines in
one go, scores every new full window (stride 1, batched across sensors in one ``predict_proba``
call), and feeds reading + probability to the alert engine in time order. The baselines and the
model can run in scoring processes of their own (``scoring_process``: how many; the service's
default is one per CPU but one, at most 4), so that they do not hold the GIL ingest needs. So a
slow detector delays alerts but never an acknowledgement; if it falls more than
``max_windows_per_round`` windows behind on a sensor, the older windows of that round go unscored
(and are counted, and logged once).

Alert notifications go to the notifier (log, MQTT, webhook) unless the sensor is silenced
(``silence``: until a time, persisted in SQLite); a silenced alert is still stored, marked
``silenced``. An open, unacknowledged danger alert is notified again every ``repeat_every_s``
(``alerts.repeat_every_s``) until it is acknowledged or closed; the time of its last notification
is stored, so the repeats carry on after a restart.

If the detector raises at run time, the pipeline falls back to the threshold rule (the last
fallback of the original design) and says so in the log and in /api/status.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from plugins.gasleak_lstm_svm.service.alerts import NOTIFY, AlertEngine, AlertRules
from plugins.gasleak_lstm_svm.service.metrics import ServiceMetrics
from plugins.gasleak_lstm_svm.service.schemas import Reading
from plugins.gasleak_lstm_svm.service.scoring_process import ScoringPool, ScoringProcessDied, score_segments
from plugins.gasleak_lstm_svm.service.storage import Inserted, Storage

log = logging.getLogger(__name__)

class IngestError(ValueError):
    """A reading the service refuses (beyond what the schema checks); nothing was stored."""


@dataclass
class _Sensor:
    history: np.ndarray         # (<= InputSpec.history, 3): its newest samples since the last gap
    since_reset: int = 0        # samples since the last gap (the baseline's early rule needs it)
    fresh: list = field(default_factory=list)  # this round's samples, not yet in history
    fresh_windows: int = 0      # how many of them end a full window
    last_ts: float | None = None
    last_seen: float | None = None     # server clock, for the offline rule
    latest: tuple | None = None        # (id, row, source) of its newest reading
    probability: float | None = None
    baseline_ppm: float | None = None  # clean-air baseline of its newest window
    received: int = 0
    out_of_order: int = 0


class Cut:
    """A round's windows to score, sensor by sensor: each sensor's history and how many of its
    newest windows (``scoring_process.score_segments`` cuts them and their baselines all at once)."""

    def __init__(self):
        self.segments: list[tuple[np.ndarray, int, int]] = []
        self.newest: list[tuple[_Sensor, int]] = []  # each sensor's newest window, for its baseline_ppm
        self.size = 0

    def add(self, sensor: _Sensor, history: np.ndarray, count: int) -> int:
        """The newest ``count`` windows of ``history``; returns the index of the first."""
        self.segments.append((history, count, sensor.since_reset))
        first, self.size = self.size, self.size + count
        self.newest.append((sensor, self.size - 1))
        return first


class Pipeline:
    def __init__(self, detector, storage: Storage, rules: AlertRules, notifier=None, *,
                 max_future_s: float = 300.0, max_gap_s: float = 10.0, max_windows_per_round: int = 256,
                 interval_s: float = 0.2, prune_every_s: float = 600.0, repeat_every_s: float | None = None,
                 scoring_process: bool | int = False, torch_threads: int | None = 1, clock=time.time):
        self.detector = detector
        # the round's baselines and model in processes of their own (see scoring_process.py): how many
        # (True: one, False: none, scored here); started by start()
        self.scoring_process = int(scoring_process)
        self.torch_threads = torch_threads
        self._scorer: ScoringPool | None = None
        self.storage = storage
        self.notifier = notifier
        self.spec = detector.spec
        self.window = self.spec.window
        self.max_future_s = float(max_future_s)
        self.max_gap_s = float(max_gap_s)
        self.max_windows_per_round = int(max_windows_per_round)
        self.interval_s = float(interval_s)
        self.prune_every_s = float(prune_every_s)
        self.clock = clock
        self.repeat_every_s = float(repeat_every_s) if repeat_every_s else None  # None / 0: no repeats
        self.metrics = ServiceMetrics(self)
        storage.on_commit = self.metrics.committed
        self._silences = {s["sensor_id"]: s for s in storage.silences()}
        self.engine = AlertEngine(rules, storage.open_alerts())
        self.sensors: dict[str, _Sensor] = {}
        self.started = clock()
        self.model_fallback_reason: str | None = None
        self.stats = {"readings": 0, "windows_scored": 0, "windows_skipped": 0, "readings_out_of_order": 0, "rounds": 0,
                      "alerts_opened": 0, "detect_seconds": 0.0, "notifications": 0, "notifications_silenced": 0,
                      "repeats": 0, "last_round_lag_s": None}
        self._pending: list[tuple[int, str, float, float, float, float]] = []
        self._pending_since: float | None = None  # monotonic time the oldest pending reading was acknowledged
        self._in_round, self._in_round_since = 0, None  # the readings of the round being scored, and theirs
        self._lock = threading.Lock()        # sensors' arrival state + pending queue
        self._wake = threading.Condition(self._lock)
        self._idle = threading.Event()
        self._idle.set()
        self._stop = threading.Event()
        self._behind_logged = False
        self._thread: threading.Thread | None = None

    # ---- ingest (any thread) -------------------------------------------------------------------
    def ingest(self, readings: list[Reading], source: str) -> Inserted:
        """Validate beyond the schema, commit, queue for detection; returns the storage ids.

        Every check happens before the commit: a request is wholly stored or wholly refused."""
        t0 = time.perf_counter()
        rows = self._checked(readings, source)
        if not rows:
            return Inserted([], [])
        inserted = self.storage.insert_readings(rows, source)  # committed: this is the acknowledgement
        return self._queue_for_detection(inserted, rows, source, t0)

    async def ingest_async(self, readings: list[Reading], source: str) -> Inserted:
        """``ingest`` for the HTTP event loop: the same checks and commit, awaited instead of blocking."""
        t0 = time.perf_counter()
        rows = self._checked(readings, source)
        if not rows:
            return Inserted([], [])
        inserted = await self.storage.insert_readings_async(rows, source)  # committed: the acknowledgement
        return self._queue_for_detection(inserted, rows, source, t0)

    def _checked(self, readings: list[Reading], source: str) -> list[tuple]:
        now = self.clock()
        retention_s = self.storage.retention_s
        rows = []
        for i, reading in enumerate(readings):
            ts = reading.epoch
            where = f"readings[{i}]" if len(readings) > 1 else "reading"
            if ts > now + self.max_future_s:
                self.metrics.refused.labels(source).inc()
                raise IngestError(f"{where}.timestamp is {ts - now:.0f} s in the future "
                                  f"(more than serve.max_future_s={self.max_future_s:g})")
            if retention_s is not None and ts < now - retention_s:  # the next prune would delete it unseen
                self.metrics.refused.labels(source).inc()
                raise IngestError(f"{where}.timestamp is {(now - ts) / 3600:.1f} h old, older than the retention "
                                  f"(storage.retention_hours={retention_s / 3600:g})")
            rows.append((reading.sensor_id, ts, reading.gas_concentration, reading.temperature, reading.humidity))
        return rows

    def _queue_for_detection(self, inserted: Inserted, rows: list[tuple], source: str, t0: float) -> Inserted:
        new = sum(inserted.new)
        self.metrics.ingested(source, new, len(rows) - new, time.perf_counter() - t0)
        with self._lock:
            arrived = self.clock()
            if new and not self._pending:
                self._pending_since = time.monotonic()
            for rid, is_new, row in zip(inserted.ids, inserted.new, rows):
                if not is_new:  # stored before, and queued for detection then
                    continue
                self._pending.append((rid, *row))
                sensor = self._sensor(row[0])
                sensor.last_seen = arrived
                sensor.received += 1
                sensor.latest = (rid, row, source)  # shown as a dict by sensor_views
            self.stats["readings"] += sum(inserted.new)
            self._idle.clear()
            self._wake.notify()
        return inserted

    def _sensor(self, sensor_id: str) -> _Sensor:
        if sensor_id not in self.sensors:
            self.sensors[sensor_id] = _Sensor(np.empty((0, 3)))
        return self.sensors[sensor_id]

    def pending(self) -> int:
        """Readings acknowledged but not yet through detection (queued, or in the round being scored)."""
        with self._lock:
            return len(self._pending) + self._in_round

    def detector_lag(self) -> float:
        """Seconds the oldest acknowledged reading not yet through detection has waited (0: caught up);
        a round being scored counts (a detector behind spends seconds on one)."""
        with self._lock:
            since = self._in_round_since if self._in_round else self._pending_since if self._pending else None
        return 0.0 if since is None else round(time.monotonic() - since, 4)

    def queue_depths(self) -> dict[str, int]:
        depths = {"detection": self.pending(), "storage": self.storage.queue_depth()}
        if self.notifier is not None and hasattr(self.notifier, "queue_depth"):
            depths["notifier"] = self.notifier.queue_depth()
        return depths

    # ---- detection (one thread) ------------------------------------------------------------------
    def start(self) -> "Pipeline":
        if self.scoring_process:
            self.start_scoring_process()
        self._thread = threading.Thread(target=self._run, name="detector", daemon=True)
        self._thread.start()
        return self

    def start_scoring_process(self, n: int | None = None) -> None:
        """Score rounds in ``n`` processes of their own from now on (default: ``scoring_process``, at
        least one; ``stop`` ends them)."""
        if self._scorer is None:
            try:
                self._scorer = ScoringPool(self.detector, n or self.scoring_process or 1, self.torch_threads)
            except Exception as exc:  # the service still runs, scoring in its own process
                log.error("scoring process: %s; scoring in the service's process", exc)

    def _run(self) -> None:
        last_prune = self.clock()
        while not self._stop.is_set():
            with self._lock:
                if not self._pending:
                    self._idle.set()
                    self._wake.wait(self.interval_s)
            try:
                self.process_pending()
                self.check_offline()
                self.check_repeats()
                if self.clock() - last_prune > self.prune_every_s:
                    last_prune = self.clock()
                    self.storage.prune()
            except Exception:  # keep detecting; a bug here must not stop the service
                log.exception("detection round failed")
            if not self._stop.is_set():
                self._stop.wait(self.interval_s)  # let readings collect into a batch

    def process_pending(self) -> int:
        """One detection round over everything queued so far; returns the number of readings."""
        with self._lock:
            batch, self._pending = self._pending, []
            since, self._pending_since = self._pending_since, None
            self._in_round, self._in_round_since = len(batch), since
        if not batch:
            self._idle.set()
            return 0
        try:
            return self._process(batch, since)
        finally:
            with self._lock:
                self._in_round, self._in_round_since = 0, None
                if not self._pending:
                    self._idle.set()

    def _process(self, batch: list, since: float | None) -> int:
        t0 = time.perf_counter()
        batch.sort(key=lambda r: (r[1], r[2], r[0]))  # per sensor, in time order
        cut = Cut()
        plan = []  # (batch index, index of the window it ends or None, in order), in time order
        ends_of: dict[str, list[int]] = {}  # per sensor, the plan entries that end a window
        for i, (rid, sid, ts, gas, temp, hum) in enumerate(batch):
            sensor = self._sensor(sid)
            if sensor.last_ts is not None and ts <= sensor.last_ts:
                sensor.out_of_order += 1  # stored, but it cannot join a window
                self.stats["readings_out_of_order"] += 1
                self.metrics.out_of_order.inc()
                plan.append((i, None, False))
                continue
            if sensor.last_ts is not None and ts - sensor.last_ts > self.max_gap_s:
                self._windows_of_fresh(sensor, plan, ends_of.get(sid, []), cut)
                sensor.history, sensor.since_reset = sensor.history[:0], 0  # a window must not span a gap
                self.engine.reset_window(sid)
            sensor.last_ts = ts
            sensor.fresh.append((gas, temp, hum))
            sensor.since_reset += 1
            if sensor.since_reset >= self.window:
                sensor.fresh_windows += 1
                ends_of.setdefault(sid, []).append(len(plan))
            plan.append((i, None, True))
        for sid in {row[1] for row in batch}:
            self._windows_of_fresh(self.sensors[sid], plan, ends_of.get(sid, []), cut)
        probs = self._score(cut)
        scores, changed, notify = [], {}, []
        status = self.detector.status
        probs = probs.tolist()  # Python floats: the loop below is per reading
        for i, w, in_order in plan:
            rid, sid, ts, gas, _, _ = batch[i]
            p = None if w is None or probs[w] != probs[w] else probs[w]  # NaN: unscored
            if not in_order:
                continue
            if p is not None:
                scores.append((rid, p, status))
                self.sensors[sid].probability = p
            for event, alert in self.engine.observe(sid, ts, gas, p):
                changed[id(alert)] = alert
                if event in NOTIFY:  # as it is now: it may escalate later in this round
                    notify.append((event, alert, dict(alert)))
        self.stats["windows_scored"] += len(scores)
        self.metrics.windows_scored.inc(len(scores))
        self._finish_round(scores, changed, notify)
        self.stats["rounds"] += 1
        self.stats["detect_seconds"] += time.perf_counter() - t0
        self.metrics.score_seconds.observe(time.perf_counter() - t0)
        if since is not None:  # from the oldest reading's acknowledgement to its alert decision
            self.stats["last_round_lag_s"] = round(time.monotonic() - since, 4)
        return len(batch)

    def _windows_of_fresh(self, sensor: _Sensor, plan: list, ends: list[int], cut: "Cut") -> None:
        """Move the sensor's fresh samples into its history and cut the windows they end into
        ``cut``, numbering them in ``plan``. ``ends`` lists the plan entries of this sensor that end
        a window, the newest last (those of an earlier stretch already numbered)."""
        if not sensor.fresh:
            return
        history = np.concatenate([sensor.history, np.asarray(sensor.fresh, dtype=np.float64)])
        count, sensor.fresh, sensor.fresh_windows = sensor.fresh_windows, [], 0
        # falling behind: only the newest windows get scored (the older ones are not even cut)
        scored = min(count, self.max_windows_per_round)
        if count > scored:
            self._skipped(count - scored)
        if scored:
            first = cut.add(sensor, history, scored)
            for j, p in enumerate(ends[len(ends) - scored:]):
                plan[p] = (plan[p][0], first + j, True)
        sensor.history = history[-self.spec.history:]

    def _skipped(self, n: int) -> None:
        self.stats["windows_skipped"] += n
        self.metrics.windows_skipped.inc(n)
        if not self._behind_logged:
            self._behind_logged = True
            log.warning("detector is falling behind the readings: scoring only the newest %d windows per sensor "
                        "per round (skipped counts are in /api/status)", self.max_windows_per_round)

    def _score(self, cut: Cut) -> np.ndarray:
        """The probabilities of the windows in ``cut`` (and each sensor's baseline_ppm)."""
        try:
            if self._scorer is not None:
                try:
                    bases, probs = self._scorer.score(cut.segments)
                except ScoringProcessDied as exc:
                    log.error("%s; scoring in the service's process from now on", exc)
                    self._close_scorer()
                    bases, probs = score_segments(self.detector, cut.segments)
            else:
                bases, probs = score_segments(self.detector, cut.segments)
        except Exception as exc:
            from plugins.gasleak_lstm_svm.estimators import ThresholdDetector

            self.model_fallback_reason = f"{self.detector.status} failed at run time ({type(exc).__name__}: {exc}); using the threshold rule"
            log.error("detector: %s", self.model_fallback_reason)
            self.detector = ThresholdDetector(self.engine.rules.warning_ppm, self.engine.rules.danger_ppm, spec=self.spec)
            self._close_scorer()  # the threshold rule is cheap: it runs here
            bases, probs = score_segments(self.detector, cut.segments)
        for sensor, row in cut.newest:
            sensor.baseline_ppm = float(bases[row, 0])
        return probs

    def _close_scorer(self) -> None:
        scorer, self._scorer = self._scorer, None
        if scorer is not None:
            scorer.close()

    def check_offline(self) -> None:
        with self._lock:
            seen = {sid: s.last_seen for sid, s in self.sensors.items() if s.last_seen is not None}
        changes = self.engine.check_offline(seen, self.clock())
        if changes:
            self._finish_round([], {id(a): a for _, a in changes}, [(e, a, dict(a)) for e, a in changes])

    def _finish_round(self, scores, changed: dict, notify: list) -> None:
        now = self.clock()
        silenced = [self.is_silenced(alert["sensor_id"], now) for _, alert, _ in notify]
        self.storage.save_round(scores, changed.values(), [(alert, s) for (_, alert, _), s in zip(notify, silenced)],
                                now=now)  # assigns ids to new alerts
        for (event, alert, snapshot), held in zip(notify, silenced):
            snapshot["id"] = alert["id"]
            if event == "opened":
                self.stats["alerts_opened"] += 1
            self._notify(event, snapshot, held)

    def _notify(self, event: str, alert: dict, silenced: bool) -> None:
        alert["silenced"] = silenced or bool(alert.get("silenced"))
        if silenced:  # stored and shown, not sent
            self.stats["notifications_silenced"] += 1
            self.metrics.suppressed.labels(event).inc()
            log.info("alert %s #%s not notified: sensor %s is silenced", event, alert.get("id"), alert["sensor_id"])
            return
        self.stats["notifications"] += 1
        self.metrics.notifications.labels(event).inc()
        if self.notifier is not None:
            self.notifier.notify(event, alert)

    def check_repeats(self) -> int:
        """Notify again each open, unacknowledged danger alert not notified for ``repeat_every_s``."""
        if self.repeat_every_s is None:
            return 0
        now = self.clock()
        due = self.storage.due_repeats(now, self.repeat_every_s)
        if not due:
            return 0
        silenced = [self.is_silenced(alert["sensor_id"], now) for alert in due]
        self.storage.repeated([alert["id"] for alert in due], silenced, now)
        for alert, held in zip(due, silenced):
            alert["repeats"] += 1
            self.stats["repeats"] += 1
            self._notify("repeated", alert, held)
        return len(due)

    # ---- silences (any thread) ---------------------------------------------------------------------
    def silence(self, sensor_id: str, until_ts: float, reason: str | None = None) -> dict:
        """Hold back this sensor's notifications until ``until_ts`` (stored: it outlives a restart)."""
        entry = self.storage.set_silence(sensor_id, float(until_ts), reason, self.clock())
        with self._lock:
            self._silences[sensor_id] = entry
        return entry

    def unsilence(self, sensor_id: str) -> bool:
        """End a sensor's silence now; False if it had none (expired ones count as none)."""
        active = any(s["sensor_id"] == sensor_id for s in self.active_silences())
        self.storage.clear_silence(sensor_id)
        with self._lock:
            self._silences.pop(sensor_id, None)
        return active

    def active_silences(self) -> list[dict]:
        now = self.clock()
        with self._lock:
            return [dict(s) for _, s in sorted(self._silences.items()) if s["until_ts"] > now]

    def is_silenced(self, sensor_id: str, now: float) -> bool:
        entry = self._silences.get(sensor_id)
        return entry is not None and entry["until_ts"] > now

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until every reading ingested so far has been through detection (tests, shutdown)."""
        if self._thread is None:
            self.process_pending()
            return True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                self._wake.notify()
            if self._idle.wait(0.05):
                with self._lock:
                    if not self._pending:
                        return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Finish detection of what was acknowledged, then stop the thread (storage stays open)."""
        if self._thread is not None:
            self.drain(timeout)
            self._stop.set()
            with self._lock:
                self._wake.notify()
            self._thread.join(timeout)
            self._thread = None
        self._close_scorer()

    # ---- views for the API ---------------------------------------------------------------------
    def model_status(self) -> dict:
        d = self.detector
        return {"is_trained": bool(getattr(d, "is_trained", False)), "model_type": d.status,
                "device": str(getattr(d, "device", "cpu")),
                "fallback_reason": self.model_fallback_reason or getattr(d, "fallback_reason", None),
                "alert_probability": self.engine.rules.probability,
                "alert_rule": self.engine.rules.describe(),
                "source": getattr(self, "detector_source", None)}

    def sensor_views(self) -> list[dict]:
        with self._lock:
            items = sorted(self.sensors.items())
            views = []
            now = self.clock()
            for sid, s in items:
                state = self.engine.state(sid) or "normal"
                silence = self._silences.get(sid)
                if state == "normal" and s.since_reset < self.window:
                    state = "warming_up"
                views.append({"sensor_id": sid, "state": state, "latest": _reading_dict(*s.latest) if s.latest else None,
                              "probability": s.probability, "last_seen": s.last_seen, "readings": s.received,
                              "out_of_order": s.out_of_order,
                              "baseline_ppm": s.baseline_ppm, "threshold_rule": self.engine.rules.threshold_status(s.baseline_ppm),
                              "silenced_until": silence["until_ts"] if silence and silence["until_ts"] > now else None})
        for view in views:
            if view["latest"] is not None:
                view["latest"]["probability"] = view["probability"]
        return views


def _reading_dict(rid: int | None, row: tuple, source: str) -> dict:
    from plugins.gasleak_lstm_svm.service.schemas import iso

    sid, ts, gas, temp, hum = row
    return {"id": rid, "sensor_id": sid, "timestamp": ts, "time": iso(ts), "gas_concentration": gas,
            "temperature": temp, "humidity": hum, "probability": None, "source": source}
