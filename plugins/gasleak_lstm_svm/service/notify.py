"""Alert notifications: the log, the MQTT alerts topic, and an optional webhook.

Everything is sent from one background thread fed by a bounded queue, so a slow or dead webhook
never holds up detection: the detection thread only enqueues. The webhook is POSTed JSON and
retried with exponential backoff; a full queue drops the oldest notification (and says so).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Callable

import httpx

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, webhook_url: str | None = None, *, timeout_s: float = 5.0, retries: int = 5,
                 backoff_s: float = 1.0, backoff_max_s: float = 30.0, queue_size: int = 1000,
                 publish: Callable[[dict], None] | None = None):
        self.webhook_url = webhook_url or None
        self.timeout_s, self.retries = float(timeout_s), int(retries)
        self.backoff_s, self.backoff_max_s = float(backoff_s), float(backoff_max_s)
        self.publish = publish  # the MQTT bridge's alert publisher, when there is one
        self.sent = self.failed = self.dropped = 0
        self._queue: queue.Queue[dict | None] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="notifier", daemon=True)
        self._thread.start()

    def notify(self, event: str, alert: dict) -> None:
        """Called by the detection thread: log now, queue the rest, never block."""
        message = {"event": f"alert_{event}", "alert": alert, "time": time.time()}
        (log.info if event == "closed" else log.warning)("alert %s #%s: %s", event, alert.get("id"), alert.get("message"))
        if self.publish is None and self.webhook_url is None:
            return
        while True:
            try:
                self._queue.put_nowait(message)
                return
            except queue.Full:
                try:
                    self._queue.get_nowait()
                    self.dropped += 1
                    log.warning("notifier: queue full, dropped the oldest notification")
                except queue.Empty:
                    pass

    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                message = self._queue.get()
                if message is None:
                    return
                if self.publish is not None:
                    try:
                        self.publish(message)
                    except Exception as exc:  # the broker being down is reported by the bridge itself
                        log.debug("notifier: MQTT publish failed: %s", exc)
                if self.webhook_url is not None:
                    self._post(client, message)

    def _post(self, client: httpx.Client, message: dict) -> None:
        body = json.dumps(message)
        delay = self.backoff_s
        for attempt in range(1, self.retries + 2):
            try:
                response = client.post(self.webhook_url, content=body, headers={"content-type": "application/json"})
                if response.status_code < 300:
                    self.sent += 1
                    return
                # 4xx other than 408/429 will not get better by retrying
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    error = f"HTTP {response.status_code}"
                    break
                error = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            if attempt > self.retries or self._stop.wait(delay):
                break
            delay = min(delay * 2, self.backoff_max_s)
        self.failed += 1
        log.warning("notifier: webhook gave up on alert #%s after %d attempt(s): %s",
                    message["alert"].get("id"), attempt, error)

    def close(self, timeout: float = 5.0) -> None:
        """Send what is queued (for up to ``timeout`` s), then stop."""
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._stop.set()  # cut the backoff waits short
            self._thread.join(1.0)
