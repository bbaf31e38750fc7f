"""Operations (issue 14): Prometheus metrics, repeat notifications of danger alerts, sensor silences."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from plugins.gasleak_lstm_svm.estimators import ThresholdDetector
from plugins.gasleak_lstm_svm.service.alerts import AlertRules
from plugins.gasleak_lstm_svm.service.app import ServiceSettings, create_app
from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
from plugins.gasleak_lstm_svm.service.storage import Storage

TOKEN = "s3cret-token-for-tests-0123456789"
REPEAT_S = 300.0


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


class Recorder:
    def __init__(self):
        self.events = []

    def notify(self, event, alert):
        self.events.append((event, alert["id"], alert["level"]))


class Service:
    """The service without threads (drain() scores) on a fake clock, with a notifier that records."""

    def __init__(self, path, clock, token=None):
        self.clock, self.recorder = clock, Recorder()
        self.storage = Storage(path)
        self.pipeline = Pipeline(ThresholdDetector(), self.storage, AlertRules(), self.recorder,
                                 repeat_every_s=REPEAT_S, clock=clock)
        self.client = TestClient(create_app(self.pipeline, ServiceSettings(token=token, max_silence_s=86400)))

    def post(self, body):
        r = self.client.post("/api/sensor/readings", json=body)
        assert r.status_code == 201, r.text
        self.pipeline.drain()
        return r

    def close(self):
        self.storage.close()


def readings(sensor, n, gas, t0):
    return [{"sensor_id": sensor, "timestamp": t0 + i, "gas_concentration": gas, "temperature": 21.0,
             "humidity": 45.0} for i in range(n)]


def danger(sensor, clock, n=5):
    """Clean air to fill a window, then a danger-level leak: one danger alert (ends at the clock's now)."""
    t0 = clock.now - 80
    return readings(sensor, 70, 60.0, t0) + readings(sensor, n, 1500.0, t0 + 70)


def scrape(client) -> dict[tuple[str, tuple], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


@pytest.fixture
def svc(tmp_path):
    s = Service(tmp_path / "gas.sqlite", Clock())
    yield s
    s.close()


def test_metrics_parse_and_move_when_readings_arrive(tmp_path, svc):
    other = Service(tmp_path / "other.sqlite", Clock())  # its own registry: no clash, no shared counts
    try:
        before = scrape(svc.client)
        assert before.get(("gasleak_readings_ingested_total", (("source", "http"),)), 0) == 0
        assert before[("gasleak_alerts_open", (("level", "danger"),))] == 0
        assert before[("gasleak_mqtt_enabled", ())] == 0 and before[("gasleak_mqtt_connected", ())] == 0
        assert before[("gasleak_queue_depth", (("queue", "detection"),))] == 0

        svc.post(danger("m1", svc.clock))
        svc.post(readings("m2", 3, 60.0, svc.clock.now - 3))
        after = scrape(svc.client)
        assert after[("gasleak_readings_ingested_total", (("source", "http"),))] == 78
        assert after[("gasleak_ingest_latency_seconds_count", (("source", "http"),))] == 2
        assert after[("gasleak_storage_commit_group_size_count", ())] >= 2
        assert after[("gasleak_detector_windows_scored_total", ())] == 75 - 60 + 1
        assert after[("gasleak_detector_windows_skipped_total", ())] == 0
        assert after[("gasleak_detector_round_seconds_count", ())] >= 1
        assert after[("gasleak_alerts_open", (("level", "danger"),))] == 1
        assert after[("gasleak_alert_notifications_total", (("event", "opened"),))] == 1
        assert after[("gasleak_sensors", (("state", "online"),))] == 2
        assert after[("gasleak_sensors", (("state", "offline"),))] == 0
        assert after[("gasleak_detector_lag_seconds", ())] == 0

        untouched = scrape(other.client)
        assert untouched.get(("gasleak_readings_ingested_total", (("source", "http"),)), 0) == 0
        assert untouched[("gasleak_alerts_open", (("level", "danger"),))] == 0

        status = svc.client.get("/api/status").json()
        assert status["ingest"]["by_source"] == {"http": 78}
        assert status["detection"]["lag_s"] == 0 and status["detection"]["last_round_lag_s"] is not None
        assert status["ingest"]["rate_per_s"] >= 0
        assert status["detection"]["readings_out_of_order"] == 0

        svc.post(readings("m2", 2, 60.0, svc.clock.now - 10))  # stamped before m2's latest: stored, in no window
        moved = scrape(svc.client)
        assert moved[("gasleak_readings_out_of_order_total", ())] == 2
        assert moved[("gasleak_readings_ingested_total", (("source", "http"),))] == 80
        status = svc.client.get("/api/status").json()
        assert status["detection"]["readings_out_of_order"] == 2
        assert {v["sensor_id"]: v["out_of_order"] for v in status["sensors"]} == {"m1": 0, "m2": 2}
    finally:
        other.close()


def test_unacknowledged_danger_alerts_are_notified_again_until_acknowledged(svc):
    svc.post(danger("r1", svc.clock))
    (alert,) = svc.client.get("/api/alerts/history").json()["alerts"]
    assert alert["level"] == "danger" and svc.recorder.events == [("opened", alert["id"], "danger")]

    svc.clock.now += REPEAT_S - 1
    assert svc.pipeline.check_repeats() == 0
    svc.clock.now += 2
    assert svc.pipeline.check_repeats() == 1
    assert svc.pipeline.check_repeats() == 0  # not again at once: the interval starts over
    svc.clock.now += REPEAT_S
    assert svc.pipeline.check_repeats() == 1
    assert svc.recorder.events[1:] == [("repeated", alert["id"], "danger")] * 2
    assert svc.client.get("/api/alerts/history").json()["alerts"][0]["repeats"] == 2

    assert svc.client.post(f"/api/alerts/{alert['id']}/ack").status_code == 200
    svc.clock.now += 10 * REPEAT_S
    assert svc.pipeline.check_repeats() == 0
    assert len(svc.recorder.events) == 3


def test_warning_and_closed_alerts_are_not_repeated(svc):
    svc.post(readings("w1", 70, 60.0, svc.clock.now - 100) + readings("w1", 5, 700.0, svc.clock.now - 30))
    t0 = svc.clock.now - 160  # closes once a whole window of clean air and clear_samples more have passed
    svc.post(readings("c1", 70, 60.0, t0) + readings("c1", 5, 1500.0, t0 + 70) + readings("c1", 80, 60.0, t0 + 75))
    levels = {(a["sensor_id"], a["level"], a["open"]) for a in svc.client.get("/api/alerts/history").json()["alerts"]}
    assert levels == {("w1", "warning", True), ("c1", "danger", False)}
    svc.clock.now += 3 * REPEAT_S
    assert svc.pipeline.check_repeats() == 0


def test_repeats_carry_on_after_a_restart(tmp_path):
    clock = Clock()
    first = Service(tmp_path / "gas.sqlite", clock)
    first.post(danger("r2", clock))
    first.close()
    clock.now += REPEAT_S / 2
    second = Service(tmp_path / "gas.sqlite", clock)
    try:
        assert second.pipeline.check_repeats() == 0  # the stored notification time counts, not the restart
        clock.now += REPEAT_S / 2 + 1
        assert second.pipeline.check_repeats() == 1
        assert [e for e, _, _ in second.recorder.events] == ["repeated"]
    finally:
        second.close()


def test_a_silenced_sensor_records_alerts_without_notifying(svc):
    r = svc.client.post("/api/sensors/s1/silence", json={"duration_s": 600, "reason": "calibration"})
    assert r.status_code == 201, r.text
    assert r.json()["until"] == pytest.approx(svc.clock.now + 600) and r.json()["reason"] == "calibration"
    assert [s["sensor_id"] for s in svc.client.get("/api/silences").json()["silences"]] == ["s1"]

    svc.post(danger("s1", svc.clock))
    svc.post(danger("s2", svc.clock))  # another sensor is not affected
    alerts = {a["sensor_id"]: a for a in svc.client.get("/api/alerts/history").json()["alerts"]}
    assert alerts["s1"]["silenced"] is True and alerts["s1"]["open"] and alerts["s1"]["level"] == "danger"
    assert alerts["s2"]["silenced"] is False
    assert svc.recorder.events == [("opened", alerts["s2"]["id"], "danger")]
    sensors = {s["sensor_id"]: s for s in svc.client.get("/api/status").json()["sensors"]}
    assert sensors["s1"]["silenced_until"] == pytest.approx(svc.clock.now + 600)
    assert sensors["s2"]["silenced_until"] is None
    assert scrape(svc.client)[("gasleak_alert_notifications_silenced_total", (("event", "opened"),))] == 1

    svc.clock.now += REPEAT_S + 1  # a repeat while silenced: held back too
    assert svc.pipeline.check_repeats() == 2
    assert [(e, i) for e, i, _ in svc.recorder.events] == [("opened", alerts["s2"]["id"]), ("repeated", alerts["s2"]["id"])]
    svc.clock.now += 600  # the silence is over: s1's danger alert is notified again
    assert svc.client.get("/api/silences").json()["silences"] == []
    svc.pipeline.check_repeats()
    assert ("repeated", alerts["s1"]["id"], "danger") in svc.recorder.events


def test_silences_survive_a_restart_and_can_be_lifted(tmp_path):
    clock = Clock()
    first = Service(tmp_path / "gas.sqlite", clock)
    until = clock.now + 3600
    assert first.client.post("/api/sensors/x1/silence", json={"until": until}).status_code == 201
    first.close()
    second = Service(tmp_path / "gas.sqlite", clock)
    try:
        (silence,) = second.client.get("/api/silences").json()["silences"]
        assert silence["sensor_id"] == "x1" and silence["until"] == pytest.approx(until)
        second.post(danger("x1", clock))
        assert second.recorder.events == []
        assert second.client.delete("/api/sensors/x1/silence").status_code == 204
        assert second.client.delete("/api/sensors/x1/silence").status_code == 404
        assert second.client.get("/api/silences").json()["silences"] == []
        clock.now += REPEAT_S + 1
        assert second.pipeline.check_repeats() == 1 and second.recorder.events[0][0] == "repeated"
    finally:
        second.close()
    third = Service(tmp_path / "gas.sqlite", clock)  # lifted for good
    try:
        assert third.client.get("/api/silences").json()["silences"] == []
    finally:
        third.close()


@pytest.mark.parametrize("body, field", [
    ({}, "body"), ({"reason": "x"}, "body"), ({"until": 2e9, "duration_s": 5}, "body"),
    ({"duration_s": -5}, "duration_s"), ({"duration_s": 0}, "duration_s"), ({"duration_s": "soon"}, "duration_s"),
    ({"until": 1000.0}, "until"),            # in the past
    ({"duration_s": 2 * 86400}, "duration_s"),  # beyond max_silence_s (a day here)
    ({"until": "not a time"}, "until"), ({"duration_s": 60, "level": "all"}, "level"),
    ({"duration_s": 60, "reason": "r" * 501}, "reason"),
])
def test_bad_silence_requests_are_refused_and_change_nothing(svc, body, field):
    r = svc.client.post("/api/sensors/s1/silence", json=body)
    assert r.status_code == 422, r.text
    assert field in {str(p) for item in r.json()["detail"] for p in item["loc"]}
    assert svc.client.get("/api/silences").json()["silences"] == []


def test_silence_paths_bodies_and_the_token(tmp_path):
    s = Service(tmp_path / "gas.sqlite", Clock(), token=TOKEN)
    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert s.client.post("/api/sensors/s1/silence", json={"duration_s": 60}).status_code == 401
        assert s.client.delete("/api/sensors/s1/silence").status_code == 401
        assert s.client.post("/api/sensors/bad$id/silence", json={"duration_s": 60}, headers=auth).status_code == 422
        assert s.client.post("/api/sensors/s1/silence", content=b"{not json",
                             headers={**auth, "content-type": "application/json"}).status_code == 400
        assert s.client.delete("/api/sensors/nobody/silence", headers=auth).status_code == 404
        assert s.client.get("/api/silences").json()["silences"] == []
        assert s.client.post("/api/sensors/s1/silence", json={"duration_s": 60}, headers=auth).status_code == 201
    finally:
        s.close()
