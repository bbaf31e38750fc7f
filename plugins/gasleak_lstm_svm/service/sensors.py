"""Simulated sensor nodes for the demo: the simulator's series played back live.

Each node is one ``simulate_series`` (helper module ``simulator.py``) read out one sample per tick
at ``rate_hz`` times ``speed``; one node carries a scripted leak ``leak_at_s`` seconds in. Readings
are stamped with the wall-clock time they are sent and handed to ``sink`` (the pipeline directly, or
an MQTT publisher when the demo goes through a broker).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import numpy as np

from plugins.gasleak_lstm_svm.simulator import LeakEvent, simulate_series

log = logging.getLogger(__name__)


class SimulatedNodes:
    def __init__(self, sink: Callable[[list[dict]], None], *, sensors: int = 3, prefix: str = "node",
                 seed: int = 0, seconds: int = 3600, leak_sensor: int | None = 1, leak_at_s: float = 70.0,
                 leak_kind: str = "burst", leak_peak_ppm: float = 1500.0, hard_negatives: bool = True,
                 start_hour: float = 8.0, rate_hz: float = 1.0, speed: float = 1.0):
        if sensors < 1:
            raise ValueError(f"demo.sensors must be >= 1, got {sensors}")
        if rate_hz <= 0 or speed <= 0:
            raise ValueError("demo.rate_hz and demo.speed must be > 0")
        self.sink = sink
        self.ids = [f"{prefix}-{i + 1}" for i in range(sensors)]
        self.period = 1.0 / (rate_hz * speed)
        self.series = []
        self.events: dict[str, list[LeakEvent]] = {}
        for i, sid in enumerate(self.ids):
            leaks = [LeakEvent(float(leak_at_s), float(leak_at_s) + 1.0, leak_kind, float(leak_peak_ppm))] \
                if leak_sensor is not None and i == leak_sensor % sensors else []
            s = simulate_series(int(seconds), seed=int(seed) + i, leaks=leaks, hard_negatives=hard_negatives,
                                start_hour=start_hour)
            self.series.append(np.stack([s["gas_concentration"], s["temperature"], s["humidity"]], axis=1).astype(float))
            self.events[sid] = s["events"]
        self.sent = 0
        self.errors = 0
        self.index = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        parts = []
        for sid, events in self.events.items():
            for ev in events:
                parts.append(f"{sid}: {ev.kind} leak of {ev.peak_ppm:.0f} ppm from sample {ev.start:.0f} to {ev.end:.0f}")
        return "; ".join(parts) or "no leak scripted"

    def tick(self) -> None:
        """Send the next sample of every node."""
        now = time.time()
        batch = []
        for sid, series in zip(self.ids, self.series):
            gas, temp, hum = series[self.index % len(series)]
            batch.append({"sensor_id": sid, "timestamp": now, "gas_concentration": round(float(gas), 3),
                          "temperature": round(float(temp), 3), "humidity": round(float(hum), 3)})
        self.index += 1
        try:
            self.sink(batch)
            self.sent += len(batch)
        except Exception as exc:  # a refused or failed sample must not stop the nodes
            self.errors += 1
            if self.errors == 1 or self.errors % 100 == 0:
                log.warning("simulated nodes: sending failed (%d so far): %s", self.errors, exc)

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self._stop.is_set():
            self.tick()
            next_t += self.period
            delay = next_t - time.monotonic()
            if delay < -5 * self.period:  # far behind (a suspended machine): do not burst to catch up
                next_t = time.monotonic()
            elif delay > 0:
                self._stop.wait(delay)

    def start(self) -> "SimulatedNodes":
        self._thread = threading.Thread(target=self._run, name="simulated-nodes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
