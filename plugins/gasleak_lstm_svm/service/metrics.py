"""Prometheus metrics of the service (``GET /metrics``), with prometheus-client.

Each service has its own ``CollectorRegistry`` (not the library's global one), so several services
in one process -- the tests -- do not share or clash over metrics. Events are counted where they
happen (ingest, commit, detection round); states (open alerts, sensors online, MQTT, queue depths)
are read from the service when Prometheus scrapes, so they cannot drift from /api/status.

Also a short sliding count of ingested readings for the ingest rate /api/status shows.
"""

from __future__ import annotations

import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
GROUP_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServiceMetrics:
    def __init__(self, pipeline, rate_window_s: float = 10.0):
        self.registry = CollectorRegistry(auto_describe=True)
        self.pipeline = pipeline
        self.bridge = None  # the MQTT bridge, set by the app when there is one
        r = self.registry
        self.readings = Counter("gasleak_readings_ingested", "Readings stored (new, not duplicates), by source",
                                ["source"], registry=r)
        self.duplicates = Counter("gasleak_readings_duplicate", "Readings identical to stored ones, acknowledged "
                                  "without storing again, by source", ["source"], registry=r)
        self.refused = Counter("gasleak_ingest_refused", "Ingest calls refused before anything was stored, by source",
                               ["source"], registry=r)
        self.ingest_latency = Histogram("gasleak_ingest_latency_seconds", "From a validated ingest call to its "
                                        "commit (the acknowledgement), by source", ["source"],
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.commit_group = Histogram("gasleak_storage_commit_group_size", "Writes sharing one SQLite commit",
                                      buckets=GROUP_BUCKETS, registry=r)
        self.commit_seconds = Histogram("gasleak_storage_commit_seconds", "One group commit, fsync included",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.score_seconds = Histogram("gasleak_detector_round_seconds", "One detection round (scoring and alert "
                                       "rules)", buckets=LATENCY_BUCKETS, registry=r)
        self.windows_scored = Counter("gasleak_detector_windows_scored", "Windows the detector scored", registry=r)
        self.windows_skipped = Counter("gasleak_detector_windows_skipped", "Windows left unscored because the "
                                       "detector was behind (serve.max_windows_per_round)", registry=r)
        self.out_of_order = Counter("gasleak_readings_out_of_order", "Readings stored but not in any window: "
                                    "stamped at or before their sensor's latest", registry=r)
        self.notifications = Counter("gasleak_alert_notifications", "Alert notifications sent, by event",
                                     ["event"], registry=r)
        self.suppressed = Counter("gasleak_alert_notifications_silenced", "Alert notifications not sent because "
                                  "the sensor was silenced, by event", ["event"], registry=r)
        self.registry.register(_StateCollector(self))
        self._rate_lock = threading.Lock()
        self._recent: deque[tuple[float, int]] = deque()  # (monotonic second, readings in it)
        self.rate_window_s = float(rate_window_s)

    def ingested(self, source: str, new: int, duplicates: int, seconds: float) -> None:
        if new:
            self.readings.labels(source).inc(new)
        if duplicates:
            self.duplicates.labels(source).inc(duplicates)
        self.ingest_latency.labels(source).observe(seconds)
        now = int(time.monotonic())
        with self._rate_lock:
            if self._recent and self._recent[-1][0] == now:
                self._recent[-1] = (now, self._recent[-1][1] + new)
            else:
                self._recent.append((now, new))
            self._trim(now)

    def ingest_rate(self) -> float:
        """Readings stored per second over the last ``rate_window_s`` (whole seconds)."""
        now = int(time.monotonic())
        with self._rate_lock:
            self._trim(now)
            return sum(n for t, n in self._recent if t < now) / self.rate_window_s

    def _trim(self, now: int) -> None:
        while self._recent and self._recent[0][0] < now - self.rate_window_s:
            self._recent.popleft()

    def committed(self, jobs: int, seconds: float) -> None:
        self.commit_group.observe(jobs)
        self.commit_seconds.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector:
    """Gauges read at scrape time from the pipeline, the storage, the notifier and the MQTT bridge."""

    def __init__(self, metrics: ServiceMetrics):
        self.metrics = metrics

    def describe(self):
        return []  # the families are only known at collect time; nothing to check for duplicates

    def collect(self):
        p = self.metrics.pipeline
        alerts = GaugeMetricFamily("gasleak_alerts_open", "Open alerts, by level", labels=["level"])
        for level, n in p.storage.alert_counts()["by_level"].items():
            alerts.add_metric([level], n)
        yield alerts
        sensors = GaugeMetricFamily("gasleak_sensors", "Sensors seen since start, by online/offline", labels=["state"])
        views = p.sensor_views()
        offline = sum(v["state"] == "offline" for v in views)
        sensors.add_metric(["online"], len(views) - offline)
        sensors.add_metric(["offline"], offline)
        yield sensors
        yield GaugeMetricFamily("gasleak_sensors_silenced", "Sensors whose notifications are silenced now",
                                value=len(p.active_silences()))
        queues = GaugeMetricFamily("gasleak_queue_depth", "Work waiting, by queue", labels=["queue"])
        for name, depth in p.queue_depths().items():
            queues.add_metric([name], depth)
        bridge = self.metrics.bridge
        if bridge is not None:
            queues.add_metric(["mqtt_inbox"], bridge.inbox_depth())
        yield queues
        yield GaugeMetricFamily("gasleak_detector_lag_seconds", "Age of the oldest acknowledged reading not yet "
                                "through detection (0 when caught up)", value=p.detector_lag())
        yield GaugeMetricFamily("gasleak_mqtt_connected", "1 when connected to the MQTT broker (0 also when MQTT is "
                                "off: see gasleak_mqtt_enabled)", value=int(bool(bridge is not None and bridge.connected)))
        yield GaugeMetricFamily("gasleak_mqtt_enabled", "1 when the MQTT bridge is configured", value=int(bridge is not None))
