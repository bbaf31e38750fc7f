"""The HTTP API's contract, every bad input it must refuse (changing nothing), auth, and notifications."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from fastapi.testclient import TestClient

from plugins.gasleak_lstm_svm.estimators import ThresholdDetector
from plugins.gasleak_lstm_svm.service.alerts import AlertRules
from plugins.gasleak_lstm_svm.service.app import ServiceSettings, create_app
from plugins.gasleak_lstm_svm.service.notify import Notifier
from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
from plugins.gasleak_lstm_svm.service.storage import Storage

TOKEN = "s3cret-token-for-tests-0123456789"


def reading(sensor="node-1", ts=None, gas=60.0, temp=21.0, hum=45.0, **extra):
    return {"sensor_id": sensor, "timestamp": time.time() if ts is None else ts, "gas_concentration": gas,
            "temperature": temp, "humidity": hum, **extra}


def series(sensor, n, leak_from=None, t0=None, gas=60.0, leak_gas=1200.0):
    t0 = time.time() - n if t0 is None else t0
    return [reading(sensor, t0 + i, leak_gas if leak_from is not None and i >= leak_from else gas) for i in range(n)]


class Service:
    def __init__(self, path, token=None, max_batch=200, max_body_bytes=200_000, notifier=None):
        self.storage = Storage(path)
        self.pipeline = Pipeline(ThresholdDetector(), self.storage, AlertRules(), notifier)  # no thread: drain() scores
        self.client = TestClient(create_app(self.pipeline, ServiceSettings(token=token, max_batch=max_batch,
                                                                           max_body_bytes=max_body_bytes)))

    def count(self):
        return self.storage.count_readings()

    def close(self):
        self.storage.close()


@pytest.fixture
def svc(tmp_path):
    s = Service(tmp_path / "gas.sqlite")
    yield s
    s.close()


def test_ingest_shapes_and_reads_back(svc):
    c = svc.client
    r = c.post("/api/sensor/readings", json=reading("a", gas=42.0))
    assert r.status_code == 201 and r.json()["accepted"] == 1 and len(r.json()["ids"]) == 1
    r = c.post("/api/sensor/readings", json=[reading("a"), reading("b")])
    assert r.status_code == 201 and r.json()["accepted"] == 2
    r = c.post("/api/sensor/readings", json={"readings": [reading("b"), reading("c")]})
    assert r.status_code == 201 and r.json()["accepted"] == 2
    r = c.post("/api/sensor/readings", json=reading("d", ts="2026-01-01T12:00:00Z"))
    assert r.status_code == 201
    assert svc.count() == 6
    page = c.get("/api/sensor/data", params={"sensor_id": "a"}).json()
    assert page["count"] == 2 and {x["sensor_id"] for x in page["readings"]} == {"a"}
    assert page["readings"][0]["gas_concentration"] == 42.0  # oldest first
    iso = c.get("/api/sensor/data", params={"sensor_id": "d"}).json()["readings"][0]
    assert iso["timestamp"] == pytest.approx(1767268800.0) and iso["time"].startswith("2026-01-01T12:00:00")


def test_fast_ingest_answers_as_the_route_does(tmp_path, monkeypatch):
    """The same requests to a service with the fast ingest path and to one without it (the FastAPI
    route alone): the same status codes and bodies, and the same readings stored. The fast path is
    taken for the well-formed ones and leaves the rest to the route."""
    from plugins.gasleak_lstm_svm.service import app as app_module

    taken = []
    plain = app_module.FastIngest._plain
    monkeypatch.setattr(app_module.FastIngest, "_plain",
                        lambda self, scope, body: taken.append(plain(self, scope, body)[0] is not None) or plain(self, scope, body))
    services = [Service(tmp_path / f"gas{i}.sqlite", token=TOKEN, max_batch=3) for i in range(2)]
    route_only = services[1].client.app
    route_only.user_middleware = [m for m in route_only.user_middleware if m.cls is not app_module.FastIngest]
    auth = {"authorization": f"Bearer {TOKEN}"}
    t0 = time.time() - 100
    requests = [  # (json or raw body, headers)
        (reading("a", t0), auth), (reading("a", t0), auth),  # the second is a duplicate
        ([reading("a", t0 + 1), reading("b", t0 + 1)], auth), ({"readings": [reading("c", t0 + 2)]}, auth),
        (reading("d", "2026-01-01T12:00:00Z"), {**auth, "content-type": "application/json; charset=utf-8"}),
        (reading("a", time.time() + 7200), auth),  # refused by the pipeline: in the future
        (reading("a", t0 + 3), {}), (reading("a", t0 + 3, gas=-1), auth), ([reading("e", t0)] * 4, auth),
        ({"readings": [], "x": 1}, auth), ([], auth), (b"{", {**auth, "content-type": "application/json"}),
        (b"[1]", {**auth, "content-type": "text/plain"}),
        # batches, which the fast path parses with pydantic-core's JSON reader instead of json.loads
        ([reading("f", t0 + 5), reading("f", "2026-01-01T12:00:01Z"), {**reading("f", t0 + 6), "humidity": 45}], auth),
        (("[" + json.dumps(reading("g", t0)).replace('"gas_concentration": 60.0', '"gas_concentration": NaN') + "]").encode(),
         {**auth, "content-type": "application/json"}),
        (b' [{"sensor_id": "h"}]', {**auth, "content-type": "application/json"}),
    ]
    answers = [[], []]
    for svc, out in zip(services, answers):
        for body, headers in requests:
            kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
            r = svc.client.post("/api/sensor/readings", headers=headers, **kwargs)
            out.append((r.status_code, r.json()))
    for fast, route in zip(*answers):
        assert fast == route
    assert [code for code, _ in answers[0]] == [201, 201, 201, 201, 201, 422, 401, 422, 422, 422, 422, 400, 422,
                                                201, 422, 422]
    # the route answered every refused request
    assert taken[:5] == [True] * 5 and not any(taken[6:-3]) and taken[-3:] == [True, False, False]
    assert services[0].count() == services[1].count() == 8
    for svc in services:
        svc.close()


def test_sensor_data_filters(svc):
    c = svc.client
    t0 = 1_700_000_000.0
    assert c.post("/api/sensor/readings", json=series("a", 50, t0=t0) + series("b", 50, t0=t0)).status_code == 201
    rows = c.get("/api/sensor/data", params={"sensor_id": "a", "since": t0 + 10, "until": t0 + 19}).json()["readings"]
    assert [r["timestamp"] for r in rows] == [t0 + i for i in range(10, 20)]
    rows = c.get("/api/sensor/data", params={"limit": 5}).json()["readings"]
    assert len(rows) == 5 and all(r["timestamp"] >= t0 + 47 for r in rows)  # the most recent five
    assert c.get("/api/sensor/data", params={"limit": 0}).status_code == 422
    assert c.get("/api/sensor/data", params={"since": 10, "until": 5}).json()["count"] == 0  # an empty range
    assert c.get("/api/sensor/data", params={"sensor_id": "a/b#"}).status_code == 422


def test_status_detection_alerts_and_ack(svc):
    c = svc.client
    assert c.post("/api/sensor/readings", json=series("n1", 100, leak_from=80) + series("n2", 30)).status_code == 201
    svc.pipeline.drain()
    st = c.get("/api/status").json()
    assert st["system_running"] is True and st["timestamp"] == pytest.approx(time.time(), abs=5)
    assert st["model_status"] == {"is_trained": False, "model_type": "Threshold", "device": "cpu",
                                  "fallback_reason": None, "alert_probability": 0.7,
                                  "alert_rule": "3 windows in a row at p >= 0.7", "source": None}
    sensors = {s["sensor_id"]: s for s in st["sensors"]}
    assert sensors["n1"]["state"] == "danger" and sensors["n1"]["latest"]["gas_concentration"] == 1200.0
    assert sensors["n1"]["probability"] == pytest.approx(1.0)
    assert sensors["n2"]["state"] == "warming_up" and sensors["n2"]["probability"] is None
    assert st["alerts"] == {"open": 1, "unacknowledged": 1, "by_level": {"info": 0, "warning": 0, "danger": 1}}
    # probabilities are stored with the readings that end each window
    rows = c.get("/api/sensor/data", params={"sensor_id": "n1", "limit": 100}).json()["readings"]
    assert [r["probability"] is None for r in rows] == [True] * 59 + [False] * 41

    hist = c.get("/api/alerts/history").json()
    assert hist["total"] == 1
    alert = hist["alerts"][0]
    assert alert["sensor_id"] == "n1" and alert["level"] == "danger" and alert["open"] is True
    assert alert["peak_ppm"] == 1200.0 and alert["acknowledged"] is False and alert["end"] is None
    r = c.post(f"/api/alerts/{alert['id']}/ack")
    assert r.status_code == 200 and r.json()["acknowledged"] is True
    first_ack = r.json()["acknowledged_at"]
    assert c.post(f"/api/alerts/{alert['id']}/ack").json()["acknowledged_at"] == first_ack  # idempotent
    assert c.post("/api/alerts/999/ack").status_code == 404
    assert c.post("/api/alerts/abc/ack").status_code == 422
    assert c.get("/api/status").json()["alerts"]["unacknowledged"] == 0


def test_alert_history_filters_and_pagination(svc):
    c = svc.client
    t0 = time.time() - 1000
    batch = []
    for k in range(5):  # five sensors, each with one leak incident
        batch += series(f"s{k}", 90, leak_from=70, t0=t0, leak_gas=700.0 if k % 2 else 1500.0)
    assert c.post("/api/sensor/readings", json=batch).status_code == 422  # 450 > max_batch=200
    for k in range(0, len(batch), 90):
        assert c.post("/api/sensor/readings", json=batch[k:k + 90]).status_code == 201
    svc.pipeline.drain()
    all_ = c.get("/api/alerts/history").json()
    assert all_["total"] == 5
    assert sorted(a["level"] for a in all_["alerts"]) == ["danger"] * 3 + ["warning"] * 2
    assert c.get("/api/alerts/history", params={"level": "warning"}).json()["total"] == 2
    assert c.get("/api/alerts/history", params={"sensor_id": "s3"}).json()["alerts"][0]["sensor_id"] == "s3"
    pages = [c.get("/api/alerts/history", params={"limit": 2, "offset": o}).json() for o in (0, 2, 4)]
    ids = [a["id"] for p in pages for a in p["alerts"]]
    assert sorted(ids) == sorted(a["id"] for a in all_["alerts"]) and len(set(ids)) == 5
    c.post(f"/api/alerts/{ids[0]}/ack")
    assert c.get("/api/alerts/history", params={"acknowledged": "true"}).json()["total"] == 1
    assert c.get("/api/alerts/history", params={"state": "open"}).json()["total"] == 5
    assert c.get("/api/alerts/history", params={"state": "closed"}).json()["total"] == 0
    assert c.get("/api/alerts/history", params={"level": "critical"}).status_code == 422
    assert c.get("/api/alerts/history", params={"limit": 5000}).status_code == 422


def test_health_docs_and_dashboard(svc):
    c = svc.client
    assert c.get("/health").json() == {"status": "ok"}
    spec = c.get("/openapi.json").json()
    for path in ("/api/status", "/api/sensor/data", "/api/sensor/readings", "/api/alerts/history",
                 "/api/alerts/{alert_id}/ack", "/health"):
        assert path in spec["paths"], path
    assert "requestBody" in spec["paths"]["/api/sensor/readings"]["post"]
    assert c.get("/docs").status_code == 200
    page = c.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text and "cdn" not in page.text.lower()
    assert c.get("/static/app.js").status_code == 200 and c.get("/static/style.css").status_code == 200


NOW = time.time()
BAD = {
    "missing field": reading(gas=None) | {"gas_concentration": ...},
    "extra field": reading(battery=3.7),
    "NaN": '{"sensor_id": "a", "timestamp": %f, "gas_concentration": NaN, "temperature": 20, "humidity": 40}' % NOW,
    "Infinity": '{"sensor_id": "a", "timestamp": %f, "gas_concentration": 1, "temperature": Infinity, "humidity": 40}' % NOW,
    "-Infinity timestamp": '{"sensor_id": "a", "timestamp": -Infinity, "gas_concentration": 1, "temperature": 2, "humidity": 40}',
    "number as string": reading(gas="120"),
    "boolean": reading(hum=True),
    "negative ppm": reading(gas=-1.0),
    "ppm too high": reading(gas=2e6),
    "humidity over 100": reading(hum=100.5),
    "temperature too low": reading(temp=-80.0),
    "temperature too high": reading(temp=150.0),
    "bad sensor id": reading(sensor="a/b+#"),
    "empty sensor id": reading(sensor=""),
    "timestamp far in the future": reading(ts=NOW + 86400),
    "timestamp garbage": reading(ts="yesterday"),
    "timestamp negative": reading(ts=-5),
    "empty batch": [],
    "empty wrapped batch": {"readings": []},
    "wrapped batch with extra key": {"readings": [reading()], "x": 1},
    "readings not a list": {"readings": reading()},
    "not an object": "hello",
    "a number": 42,
    "one bad in a batch": [reading(), reading(), reading(hum=-3)],
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_input_is_refused_and_changes_nothing(svc, name):
    body = BAD[name]
    if isinstance(body, dict) and body.get("gas_concentration") is ...:
        body = {k: v for k, v in body.items() if k != "gas_concentration"}
    before = svc.count()
    if isinstance(body, str) and body.startswith("{"):
        r = svc.client.post("/api/sensor/readings", content=body, headers={"content-type": "application/json"})
    else:
        r = svc.client.post("/api/sensor/readings", json=body)
    assert r.status_code == 422, (name, r.status_code, r.text)
    payload = r.json()
    assert payload["detail"]
    # every refusal names what is wrong in one readable line
    assert isinstance(payload.get("message", payload["detail"]), str)
    assert svc.count() == before


def test_malformed_json_and_size_limits(svc):
    c = svc.client
    for raw in ("{", '{"sensor_id": "a",}', "[1, 2", "\x00\x01"):
        r = c.post("/api/sensor/readings", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["message"].startswith("malformed JSON"), raw
    r = c.post("/api/sensor/readings", json=[reading() for _ in range(201)])
    assert r.status_code == 422 and "limit of 200" in r.json()["message"]
    big = json.dumps([reading(sensor="x" * 64) for _ in range(100)]) + " " * 200_000
    r = c.post("/api/sensor/readings", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes" in r.json()["message"]

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(30):
            yield b" " * 10_000

    r = c.post("/api/sensor/readings", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert svc.count() == 0
    assert c.post("/api/sensor/readings", json=[reading() for _ in range(100)]).status_code == 201


def test_write_endpoints_need_the_token_when_one_is_set(tmp_path):
    s = Service(tmp_path / "auth.sqlite", token=TOKEN)
    try:
        c = s.client
        assert c.post("/api/sensor/readings", json=series("a", 70, leak_from=60)).status_code == 401
        r = c.post("/api/sensor/readings", json=reading(), headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert TOKEN not in r.text
        ok = {"Authorization": f"Bearer {TOKEN}"}
        assert c.post("/api/sensor/readings", json=series("a", 70, leak_from=60), headers=ok).status_code == 201
        s.pipeline.drain()
        alert_id = c.get("/api/alerts/history").json()["alerts"][0]["id"]  # reads stay open
        assert c.post(f"/api/alerts/{alert_id}/ack").status_code == 401
        assert c.post(f"/api/alerts/{alert_id}/ack", headers=ok).status_code == 200
        assert c.get("/api/status").status_code == 200 and c.get("/api/sensor/data").status_code == 200
        assert s.count() == 70
    finally:
        s.close()


class _Hook(BaseHTTPRequestHandler):
    fail_first = 2
    calls: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).calls.append(json.loads(body))
        status = 503 if len(type(self).calls) <= type(self).fail_first else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_webhook_is_retried_with_backoff_and_never_blocks_detection(tmp_path):
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Hook.calls = []
    notifier = Notifier(f"http://127.0.0.1:{server.server_port}/hook", retries=4, backoff_s=0.05)
    s = Service(tmp_path / "hook.sqlite", notifier=notifier)
    try:
        s.client.post("/api/sensor/readings", json=series("a", 70, leak_from=60))
        s.pipeline.drain()
        deadline = time.time() + 10
        while notifier.sent < 1 and time.time() < deadline:
            time.sleep(0.02)
        assert notifier.sent == 1 and len(_Hook.calls) == 3  # two 503s, then delivered
        assert _Hook.calls[-1]["event"] == "alert_opened" and _Hook.calls[-1]["alert"]["sensor_id"] == "a"
    finally:
        notifier.close()
        s.close()
        server.shutdown()

    # a webhook that never answers does not slow detection down
    dead = Notifier("http://127.0.0.1:9/nothing-listens-here", retries=3, backoff_s=0.5)
    t0 = time.perf_counter()
    for i in range(50):
        dead.notify("opened", {"id": i, "message": "x"})
    assert time.perf_counter() - t0 < 0.5
    dead.close(timeout=0.5)


def test_offline_sensor_is_alerted_and_recovers(tmp_path):
    clock = [time.time()]
    storage = Storage(tmp_path / "offline.sqlite")
    pipeline = Pipeline(ThresholdDetector(), storage, AlertRules(offline_after_s=15), clock=lambda: clock[0])
    client = TestClient(create_app(pipeline, ServiceSettings()))
    try:
        client.post("/api/sensor/readings", json=series("quiet", 5, t0=clock[0] - 5) + series("chatty", 5, t0=clock[0] - 5))
        pipeline.drain()
        clock[0] += 20
        client.post("/api/sensor/readings", json=reading("chatty", ts=clock[0]))
        pipeline.drain()
        pipeline.check_offline()  # the detection thread does this every round
        states = {s["sensor_id"]: s["state"] for s in client.get("/api/status").json()["sensors"]}
        assert states == {"quiet": "offline", "chatty": "warming_up"}
        alert = client.get("/api/alerts/history", params={"kind": "offline"}).json()["alerts"][0]
        assert alert["sensor_id"] == "quiet" and alert["level"] == "info" and alert["open"]
        client.post("/api/sensor/readings", json=reading("quiet", ts=clock[0] + 1))
        pipeline.drain()
        alert = client.get("/api/alerts/history", params={"kind": "offline"}).json()["alerts"][0]
        assert not alert["open"] and alert["end"] == pytest.approx(clock[0] + 1)
    finally:
        storage.close()


class _Broken(ThresholdDetector):
    def predict_proba(self, windows, base=None):
        raise RuntimeError("LSTM weights went missing")

    @property
    def status(self):
        return "PyTorch LSTM+SVM"


def test_a_detector_failing_at_run_time_falls_back_to_the_threshold_rule(tmp_path):
    s = Service(tmp_path / "broken.sqlite")
    try:
        s.pipeline.detector = _Broken()
        assert s.client.post("/api/sensor/readings", json=series("a", 70, leak_from=60)).status_code == 201
        s.pipeline.drain()
        model = s.client.get("/api/status").json()["model_status"]
        assert model["model_type"] == "Threshold" and "LSTM weights went missing" in model["fallback_reason"]
        assert s.client.get("/api/alerts/history").json()["total"] == 1  # detection went on
    finally:
        s.close()


class _Recorder:
    def __init__(self):
        self.events = []

    def notify(self, event, alert):
        self.events.append((event, alert["id"], alert["level"]))


def test_notifications_carry_the_alert_as_it_was_at_each_event(tmp_path):
    recorder = _Recorder()
    s = Service(tmp_path / "events.sqlite", notifier=recorder)
    try:
        gas = [60.0] * 70 + [700.0] * 3 + [1500.0] * 3  # warning, then danger, scored in one round
        body = [reading("a", time.time() - 100 + i, g) for i, g in enumerate(gas)]
        assert s.client.post("/api/sensor/readings", json=body).status_code == 201
        s.pipeline.drain()
        alert_id = s.client.get("/api/alerts/history").json()["alerts"][0]["id"]
        assert recorder.events == [("opened", alert_id, "warning"), ("escalated", alert_id, "danger")]
    finally:
        s.close()


# ---- issue 15: a request is wholly stored and acknowledged, or wholly refused with a 4xx -------------
YEAR_ZERO = "0001-01-01T00:00:00+14:00"  # valid ISO 8601, but year 0 in UTC: no datetime can show it


@pytest.mark.parametrize("body", [reading("y0", ts=YEAR_ZERO), [reading("y1"), reading("y0", ts=YEAR_ZERO), reading("y2")],
                                  reading("y0", ts="1969-12-31T23:59:59Z"), reading("y0", ts="2286-11-21T00:00:00Z")],
                         ids=["single", "in a batch of three", "before 1970", "after 2285"])
def test_a_timestamp_the_service_cannot_show_is_refused_before_anything_is_stored(svc, body):
    r = svc.client.post("/api/sensor/readings", json=body)
    assert r.status_code == 422 and "timestamp" in r.json()["message"], r.text
    assert svc.count() == 0
    for params in ({"sensor_id": "y0"}, {"until": 0}, {"limit": 10000}):  # reads keep working
        assert svc.client.get("/api/sensor/data", params=params).status_code == 200
    assert svc.client.post("/api/sensor/readings", json=reading("y0")).status_code == 201  # the next one is detected
    svc.pipeline.drain()
    assert {s["sensor_id"]: s["readings"] for s in svc.client.get("/api/status").json()["sensors"]} == {"y0": 1}


@pytest.mark.parametrize("params", [{"offset": 2**63}, {"offset": -1}, {"limit": 2**70}, {"since": 1e300},
                                    {"until": "nan"}, {"since": "inf"}])
def test_every_query_parameter_is_bounded(svc, params):
    r = svc.client.get("/api/alerts/history", params=params)
    assert r.status_code == 422 and isinstance(r.json()["detail"], list), r.text


def test_readings_older_than_the_retention_are_refused_not_silently_pruned(tmp_path):
    storage = Storage(tmp_path / "retention.sqlite", retention_hours=1)
    client = TestClient(create_app(Pipeline(ThresholdDetector(), storage, AlertRules()), ServiceSettings()))
    try:
        r = client.post("/api/sensor/readings", json=[reading("a"), reading("a", ts=time.time() - 2 * 3600)])
        assert r.status_code == 422 and "retention" in r.json()["message"] and "readings[1]" in r.json()["message"]
        assert storage.count_readings() == 0
        assert client.post("/api/sensor/readings", json=reading("a", ts=time.time() - 1800)).status_code == 201
        assert storage.prune() == 0 and storage.count_readings() == 1  # what was acknowledged stays
    finally:
        storage.close()


def test_a_retried_request_is_not_stored_twice(svc):
    body = series("r", 70, leak_from=60)
    first = svc.client.post("/api/sensor/readings", json=body).json()
    again = svc.client.post("/api/sensor/readings", json=body[-20:] + [reading("r", ts=body[-1]["timestamp"] + 1)]).json()
    assert first["duplicates"] == 0 and again["duplicates"] == 20 and again["ids"][:20] == first["ids"][-20:]
    assert svc.count() == 71
    svc.pipeline.drain()
    assert svc.client.get("/api/alerts/history").json()["total"] == 1  # the retry did not alert again


def test_every_error_has_the_documented_shape(tmp_path):
    s = Service(tmp_path / "shapes.sqlite", token=TOKEN)
    try:
        c = s.client
        for r in (c.post("/api/sensor/readings", json=reading()), c.get("/nowhere"), c.put("/api/status"),
                  c.post("/api/sensor/readings", content="{", headers={"content-type": "application/json",
                                                                          "authorization": f"Bearer {TOKEN}"}),
                  c.get("/api/sensor/data", params={"limit": 0})):
            body = r.json()
            assert r.status_code in (400, 401, 404, 405, 422) and set(body) == {"detail", "message"}, r.text
            assert body["detail"] and all(set(item) == {"type", "loc", "msg"} for item in body["detail"])
        spec = c.get("/openapi.json").json()
        post = spec["paths"]["/api/sensor/readings"]["post"]
        assert {"201", "400", "401", "413", "422"} <= set(post["responses"])
        assert post["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
        batch = post["requestBody"]["content"]["application/json"]["schema"]["oneOf"][1]
        assert batch["minItems"] == 1 and batch["maxItems"] == 200  # this service's serve.max_batch
    finally:
        s.close()
