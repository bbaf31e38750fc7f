"""MQTT ingestion and alert publishing with paho-mqtt 2.x (VERSION2 callbacks).

Topics: readings arrive on ``<prefix>/sensor/<sensor_id>`` (a JSON object; ``sensor_id`` may be
left out, the topic names it), alerts go to ``<prefix>/alerts``. ``connect_async`` + ``loop_start``
let paho's network thread connect, and reconnect with backoff, on its own: the HTTP side never
waits for the broker. A lost or unreachable broker is logged once (and shown in /api/status)
until the connection is back.

Acknowledgement: the client runs with ``manual_ack``. ``on_message`` validates a payload and queues
it; a store thread hands everything queued to the pipeline in one call (one SQLite commit) and only
then sends the QoS 1 PUBACKs, in the order the messages came. So an acknowledged MQTT reading is on
disk like an acknowledged HTTP one, and a burst of messages shares one fsync instead of one each.
A payload that is refused is acknowledged too (redelivering it would not make it valid).

Surviving a crash: the service's client has a stable client id and a persistent MQTT 5 session
(``clean_start=False`` with a session expiry), so the broker keeps its subscription while it is
down, queues what sensors publish meanwhile, and redelivers what it had delivered but not yet had
acknowledged. A redelivered reading that was already committed is not stored twice (storage's
idempotent ingest). Publishers (the demo's nodes) keep a clean session.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from typing import Callable

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from plugins.gasleak_lstm_svm.service.pipeline import IngestError
from plugins.gasleak_lstm_svm.service.schemas import SENSOR_ID_PATTERN, Reading

log = logging.getLogger(__name__)


class MqttBridge:
    def __init__(self, host: str = "127.0.0.1", port: int = 1883, *, topic_prefix: str = "gas_detection",
                 on_readings: Callable[[list[Reading], str], object] | None = None, qos: int = 1,
                 keepalive: int = 30, reconnect_max_s: float = 30.0, client_id: str | None = None,
                 session_expiry_s: int = 0, username: str | None = None, password: str | None = None,
                 name: str = "service"):
        self.host, self.port, self.qos = host, int(port), int(qos)
        self.prefix = topic_prefix.rstrip("/")
        self.on_readings = on_readings
        self.name = name
        self.connected = False
        self.last_error: str | None = None
        self.received = self.rejected = 0
        self._down_reported = False
        self._last_reject_log = 0.0
        self._connected_event = threading.Event()
        if session_expiry_s and not client_id:
            raise ValueError("a persistent MQTT session needs a stable client id")
        self.session_expiry_s = int(session_expiry_s)
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=client_id or f"gasleak-{name}-{uuid.uuid4().hex[:8]}", manual_ack=True)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._store_thread: threading.Thread | None = None
        if username:
            self.client.username_pw_set(username, password)
        self.client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(reconnect_max_s)))
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.keepalive = int(keepalive)

    @property
    def sensor_topic(self) -> str:
        return f"{self.prefix}/sensor"

    @property
    def alerts_topic(self) -> str:
        return f"{self.prefix}/alerts"

    def start(self) -> "MqttBridge":
        if self.on_readings is not None:
            self._store_thread = threading.Thread(target=self._store_loop, name=f"mqtt-store-{self.name}", daemon=True)
            self._store_thread.start()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self.session_expiry_s
        # clean_start=False on every (re)connect: resume the session the broker kept for this client id
        self.client.connect_async(self.host, self.port, self.keepalive, clean_start=not self.session_expiry_s,
                                  properties=properties)
        self.client.loop_start()
        return self

    def wait_connected(self, timeout: float) -> bool:
        return self._connected_event.wait(timeout)

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            if self._store_thread is not None:
                self._inbox.put(None)
                self._store_thread.join(10)
                self._store_thread = None
        self.connected = False

    # ---- callbacks (paho's network thread) -------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._report_down(f"broker refused the connection: {reason_code}")
            return
        self.connected, self.last_error = True, None
        self._connected_event.set()
        if self._down_reported:
            log.info("MQTT (%s): connected again to %s:%d", self.name, self.host, self.port)
        else:
            log.info("MQTT (%s): connected to %s:%d", self.name, self.host, self.port)
        self._down_reported = False
        if self.on_readings is not None:
            client.subscribe(f"{self.sensor_topic}/+", qos=self.qos)

    def _on_connect_fail(self, client, userdata) -> None:
        self._report_down(f"cannot reach the broker at {self.host}:{self.port}")

    def _on_disconnect(self, client, userdata, disconnect_flags, reason_code, properties) -> None:
        self.connected = False
        self._connected_event.clear()
        if reason_code == 0:  # we asked for it
            return
        self._report_down(f"lost the broker at {self.host}:{self.port} ({reason_code})")

    def _report_down(self, why: str) -> None:
        self.connected = False
        self.last_error = why
        if not self._down_reported:  # once per outage, not once per retry
            self._down_reported = True
            log.warning("MQTT (%s): %s; HTTP keeps working, reconnecting in the background", self.name, why)

    def _on_message(self, client, userdata, msg) -> None:
        sensor_id = msg.topic.rsplit("/", 1)[-1]
        try:
            payload = json.loads(msg.payload)
            if not isinstance(payload, dict):
                raise ValueError("payload must be a JSON object")
            if payload.setdefault("sensor_id", sensor_id) != sensor_id:
                raise ValueError(f"payload sensor_id {payload['sensor_id']!r} does not match the topic")
            reading = Reading.model_validate(payload)
        except (ValueError, ValidationError) as exc:
            self._reject(msg.topic, exc)
            self._inbox.put((None, msg.mid, msg.qos))  # acknowledged in order, after what came before
            return
        self._inbox.put((reading, msg.mid, msg.qos))

    def _store_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            items = [item]
            while len(items) < 1000:
                try:
                    nxt = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._inbox.put(None)
                    break
                items.append(nxt)
            readings = [r for r, _, _ in items if r is not None]
            if readings:
                try:
                    self.on_readings(readings, "mqtt")  # returns after the commit
                    self.received += len(readings)
                except IngestError:  # refused before the commit (a future timestamp): store the others one by one
                    for reading in readings:
                        try:
                            self.on_readings([reading], "mqtt")
                            self.received += 1
                        except IngestError as exc:
                            self._reject(f"{self.sensor_topic}/{reading.sensor_id}", exc)
                except Exception:
                    log.exception("MQTT: failed to store %d readings; not acknowledging them", len(readings))
                    continue  # left unacknowledged: this client never confirms what it did not store
            for _, mid, qos in items:
                if qos > 0:
                    self.client.ack(mid, qos)

    def _reject(self, topic: str, exc: Exception) -> None:
        self.rejected += 1
        now = time.monotonic()
        if now - self._last_reject_log > 10:  # a flood of bad payloads must not flood the log
            self._last_reject_log = now
            first = str(exc).splitlines()
            log.warning("MQTT: rejected a payload on %s: %s (%d rejected so far)", topic, " ".join(first[:3]), self.rejected)

    # ---- publishing --------------------------------------------------------------------------------
    def publish_alert(self, message: dict) -> None:
        self.client.publish(self.alerts_topic, json.dumps(message), qos=self.qos)

    def publish_reading(self, reading: dict) -> paho.MQTTMessageInfo:
        import re

        if not re.match(SENSOR_ID_PATTERN, str(reading["sensor_id"])):
            raise ValueError(f"bad sensor_id {reading['sensor_id']!r}")
        return self.client.publish(f"{self.sensor_topic}/{reading['sensor_id']}", json.dumps(reading), qos=self.qos)

    def inbox_depth(self) -> int:
        """Messages received, not yet stored and acknowledged."""
        return self._inbox.qsize()

    def status(self) -> dict:
        return {"enabled": True, "connected": self.connected, "host": self.host, "port": self.port,
                "last_error": self.last_error, "received": self.received, "rejected": self.rejected}
