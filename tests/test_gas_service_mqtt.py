"""MQTT through a real mosquitto: readings in, alerts out, and an outage the service survives."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient

from plugins.gasleak_lstm_svm.estimators import ThresholdDetector
from plugins.gasleak_lstm_svm.service.alerts import AlertRules
from plugins.gasleak_lstm_svm.service.app import ServiceSettings, create_app
from plugins.gasleak_lstm_svm.service.mqtt import MqttBridge
from plugins.gasleak_lstm_svm.service.notify import Notifier
from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
from plugins.gasleak_lstm_svm.service.storage import Storage

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
pytestmark = pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (.ci/run installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=15.0, step=0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Broker:
    """mosquitto on a loopback port, from a config file (the form Debian's 2.0 accepts)."""

    def __init__(self, tmp: Path, port: int, extra: str = ""):
        self.port, self.conf = port, tmp / "mosquitto.conf"
        self.conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{extra}")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return True
            except OSError:
                return False

        assert wait_until(listening, 10), f"mosquitto did not start: {self.proc.stderr.read() if self.proc.poll() is not None else ''}"
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path, free_port()).start()
    yield b
    b.stop()


def subscriber(port, topic):
    got = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="test-sub")
    ready = threading.Event()
    client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), None)[1]
    client.on_subscribe = lambda c, u, mid, rcs, p: ready.set()
    client.on_message = lambda c, u, msg: got.append(json.loads(msg.payload))
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert ready.wait(10)
    return client, got


def make_service(tmp_path, port, **bridge_kw):
    storage = Storage(tmp_path / "mqtt.sqlite")
    bridge = MqttBridge("127.0.0.1", port, reconnect_max_s=1, **bridge_kw)
    notifier = Notifier(publish=bridge.publish_alert)
    pipeline = Pipeline(ThresholdDetector(), storage, AlertRules(), notifier, interval_s=0.05)
    bridge.on_readings = pipeline.ingest
    pipeline.start()
    bridge.start()
    return storage, bridge, notifier, pipeline


def test_mqtt_round_trip_through_mosquitto(tmp_path, broker):
    storage, bridge, notifier, pipeline = make_service(tmp_path, broker.port)
    alerts_client, alerts = subscriber(broker.port, "gas_detection/alerts")
    sensor = MqttBridge("127.0.0.1", broker.port, name="nodes").start()
    try:
        assert bridge.wait_connected(10) and sensor.wait_connected(10)
        assert wait_until(lambda: bridge.connected)
        time.sleep(0.3)  # the service's subscription is in place
        t0 = time.time() - 80
        infos = []
        for i in range(80):
            payload = {"timestamp": t0 + i, "gas_concentration": 1300.0 if i >= 65 else 55.0,
                       "temperature": 21.0, "humidity": 40.0}
            if i % 2:
                payload["sensor_id"] = "kitchen"  # optional in the payload: the topic names the sensor
            infos.append(sensor.client.publish("gas_detection/sensor/kitchen", json.dumps(payload), qos=1))
        for info in infos:
            info.wait_for_publish(10)  # QoS 1: the broker has it
        # bad payloads are refused and counted, never stored
        for bad in (b"not json", b"[1,2]", json.dumps({"sensor_id": "other", "timestamp": t0, "gas_concentration": 1,
                                                      "temperature": 1, "humidity": 1}).encode(),
                    json.dumps({"timestamp": t0, "gas_concentration": float("nan"), "temperature": 1, "humidity": 1}).encode()):
            sensor.client.publish("gas_detection/sensor/kitchen", bad, qos=1).wait_for_publish(10)
        assert wait_until(lambda: bridge.received + bridge.rejected == 84), (bridge.received, bridge.rejected)
        assert bridge.received == 80 and bridge.rejected == 4
        assert storage.count_readings() == 80
        assert pipeline.drain(10)
        assert wait_until(lambda: any(a["event"] == "alert_opened" for a in alerts), 10), alerts
        opened = next(a for a in alerts if a["event"] == "alert_opened")
        assert opened["alert"]["sensor_id"] == "kitchen" and opened["alert"]["level"] == "danger"
        assert opened["alert"]["id"] == storage.alerts()[1][0]["id"]
        rows = storage.readings(sensor_id="kitchen", limit=100)
        assert {r["source"] for r in rows} == {"mqtt"}
    finally:
        sensor.stop()
        alerts_client.loop_stop()
        alerts_client.disconnect()
        pipeline.stop()
        notifier.close()
        bridge.stop()
        storage.close()


def test_broker_outage_is_reported_once_http_keeps_working_and_it_reconnects(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="plugins.gasleak_lstm_svm.service.mqtt")
    port = free_port()
    broker = Broker(tmp_path, port)  # not started yet: the service comes up without a broker
    storage, bridge, notifier, pipeline = make_service(tmp_path, port)
    client = TestClient(create_app(pipeline, ServiceSettings(bridge=bridge)))
    try:
        assert wait_until(lambda: bridge.last_error is not None, 10)
        time.sleep(2.5)  # several reconnect attempts
        status = client.get("/api/status").json()["mqtt"]
        assert status["enabled"] and not status["connected"] and "cannot reach" in status["last_error"]
        downs = [r for r in caplog.records if "reconnecting in the background" in r.getMessage()]
        assert len(downs) == 1  # said once, not once per retry
        r = client.post("/api/sensor/readings", json={"sensor_id": "a", "timestamp": time.time(),
                                                      "gas_concentration": 50, "temperature": 20, "humidity": 40})
        assert r.status_code == 201  # HTTP does not depend on the broker

        broker.start()
        assert wait_until(lambda: bridge.connected, 15), bridge.last_error
        assert client.get("/api/status").json()["mqtt"]["connected"] is True

        broker.stop()  # the broker goes away while connected
        assert wait_until(lambda: not bridge.connected, 15)
        assert "lost the broker" in client.get("/api/status").json()["mqtt"]["last_error"]
        broker.start()
        assert wait_until(lambda: bridge.connected, 15)
        pub = MqttBridge("127.0.0.1", port, name="nodes").start()
        assert pub.wait_connected(10)
        time.sleep(0.3)
        pub.publish_reading({"sensor_id": "b", "timestamp": time.time(), "gas_concentration": 50.0,
                             "temperature": 20.0, "humidity": 40.0}).wait_for_publish(10)
        assert wait_until(lambda: bridge.received == 1, 10)  # it re-subscribed after reconnecting
        pub.stop()
        messages = [r.getMessage() for r in caplog.records]
        assert sum("reconnecting in the background" in m for m in messages) == 2  # two outages
        assert sum("connected again" in m for m in messages) == 2
        assert storage.count_readings() == 2
    finally:
        pipeline.stop()
        notifier.close()
        bridge.stop()
        storage.close()
        broker.stop()


def test_a_burst_with_one_refused_reading_stores_each_good_one_once(tmp_path, broker):
    storage, bridge, notifier, pipeline = make_service(tmp_path, broker.port)
    sensor = MqttBridge("127.0.0.1", broker.port, name="nodes").start()
    try:
        assert bridge.wait_connected(10) and sensor.wait_connected(10)
        time.sleep(0.3)
        now = time.time()
        burst = [{"sensor_id": "b", "timestamp": now - 60 + i, "gas_concentration": 50.0, "temperature": 20.0,
                  "humidity": 40.0} for i in range(50)]
        burst.insert(25, dict(burst[0], timestamp=now + 86400))  # passes the schema, refused by the pipeline
        for info in [sensor.publish_reading(r) for r in burst]:
            info.wait_for_publish(10)
        assert wait_until(lambda: bridge.received + bridge.rejected == 51), (bridge.received, bridge.rejected)
        assert (bridge.received, bridge.rejected) == (50, 1)
        assert storage.count_readings() == 50
    finally:
        sensor.stop()
        pipeline.stop()
        notifier.close()
        bridge.stop()
        storage.close()
