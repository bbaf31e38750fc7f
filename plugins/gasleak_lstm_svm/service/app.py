"""The FastAPI app: routers for status, sensor data, alerts, silences, Prometheus metrics (/metrics)
and the dashboard (OpenAPI at /docs).

``create_app`` takes a running ``Pipeline``; everything else (the token, limits, the MQTT bridge
for status) comes in as ``ServiceSettings``. Write endpoints (ingest, acknowledge, silence) depend on
``require_token``: with a token configured they want ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from http import HTTPStatus
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import TypeAdapter, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from framework import serving
from plugins.gasleak_lstm_svm.service.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from plugins.gasleak_lstm_svm.service.pipeline import IngestError, Pipeline
from plugins.gasleak_lstm_svm.service.schemas import (
    EPOCH_MAX, SENSOR_ID_PATTERN, AlertOut, AlertsPage, ErrorOut, IngestResult, Level, Reading, ReadingOut,
    ReadingsPage, SilenceIn, SilenceOut, SilencesPage, Status, iso, to_epoch)

STATIC = Path(__file__).with_name("static")
_READINGS = TypeAdapter(list[Reading])


@dataclass
class ServiceSettings:
    token: str | None = None
    max_batch: int = 1000
    max_body_bytes: int = 1_048_576
    max_silence_s: float = 7 * 86400.0  # alerts.max_silence_hours
    bridge: Any = None  # MqttBridge or None


# ---- dependencies --------------------------------------------------------------------------------
# async: FastAPI runs a plain def dependency in its thread pool, a hop per request for nothing
async def get_pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


require_token = serving.require_bearer("serve.token / GASLEAK_API_TOKEN")  # the token is app.state.token


PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
SensorIdQuery = Annotated[str | None, Query(pattern=SENSOR_ID_PATTERN, description="only this sensor")]
# since after until is not an error: the range is empty, and so is the answer.
Since = Annotated[float | None, Query(ge=0, le=EPOCH_MAX, allow_inf_nan=False, description="Unix seconds, inclusive")]
Until = Annotated[float | None, Query(ge=0, le=EPOCH_MAX, allow_inf_nan=False, description="Unix seconds, inclusive")]
# Every response a client can get, in one shape (a generated client is never surprised).
ERRORS = {code: {"model": ErrorOut, "description": text} for code, text in (
    (404, "no such resource"), (405, "method not allowed here"), (422, "a parameter or the body is invalid"))}
WRITE_ERRORS = {code: {"model": ErrorOut, "description": text} for code, text in (
    (401, "missing or wrong bearer token"), (413, "request body over serve.max_body_bytes"))}


def _alert_out(alert: dict) -> AlertOut:
    return AlertOut(id=alert["id"], sensor_id=alert["sensor_id"], kind=alert["kind"], level=alert["level"],
                    causes=alert["causes"], start=alert["start_ts"], end=alert["end_ts"],
                    start_time=iso(alert["start_ts"]), end_time=iso(alert["end_ts"]), open=alert["end_ts"] is None,
                    peak_ppm=alert["peak_ppm"], peak_probability=alert["peak_probability"],
                    acknowledged=alert["acknowledged"], acknowledged_at=alert["acknowledged_at"],
                    message=alert["message"], silenced=alert.get("silenced", False), repeats=alert.get("repeats", 0))


# ---- routers -----------------------------------------------------------------------------------------
health = APIRouter(tags=["health"])


@health.get("/health", summary="Liveness: the process answers and its storage is readable")
def get_health(pipeline: PipelineDep) -> dict:
    pipeline.storage.count_readings()
    return {"status": "ok"}


@health.get("/metrics", summary="Prometheus metrics (text exposition format)",
            responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "the exposition"}})
def get_metrics(pipeline: PipelineDep) -> Response:
    return Response(pipeline.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)


status = APIRouter(prefix="/api", tags=["status"])


@status.get("/status", response_model=Status, summary="The system, the model, each sensor, the open alerts")
def get_status(pipeline: PipelineDep, settings: Annotated[ServiceSettings, Depends(get_settings)]) -> Status:
    now = time.time()
    counts = pipeline.storage.alert_counts()
    bridge = settings.bridge
    stats = dict(pipeline.stats, pending=pipeline.pending())
    return Status(
        system_running=True, timestamp=now, time=iso(now), uptime_s=round(now - pipeline.started, 3),
        model_status=pipeline.model_status(), sensors=pipeline.sensor_views(), alerts=counts,
        mqtt=bridge.status() if bridge is not None else {"enabled": False, "connected": False},
        storage={"path": str(pipeline.storage.path), "synchronous": pipeline.storage.synchronous,
                 "retention_hours": None if pipeline.storage.retention_s is None else pipeline.storage.retention_s / 3600},
        detection={**stats, "lag_s": pipeline.detector_lag(), "window": pipeline.window,
                   "rules": dataclasses.asdict(pipeline.engine.rules), "repeat_every_s": pipeline.repeat_every_s,
                   "silenced_sensors": len(pipeline.active_silences())},
        ingest={"rate_per_s": round(pipeline.metrics.ingest_rate(), 2),
                "rate_window_s": pipeline.metrics.rate_window_s,
                "by_source": {s.labels["source"]: int(s.value) for m in pipeline.metrics.readings.collect()
                              for s in m.samples if s.name.endswith("_total")}},
    )


sensors = APIRouter(prefix="/api/sensor", tags=["sensors"])

_READING_SCHEMA = Reading.model_json_schema()
INGEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [
            _READING_SCHEMA,
            {"type": "array", "items": _READING_SCHEMA, "minItems": 1},
            {"type": "object", "properties": {"readings": {"type": "array", "items": _READING_SCHEMA, "minItems": 1}},
             "required": ["readings"], "additionalProperties": False},
        ]}}},
    }
}


@sensors.post("/readings", status_code=201, response_model=IngestResult, dependencies=[Depends(require_token)],
              summary="Store one reading or a batch (an object, a list, or {\"readings\": [...]})",
              description="All or nothing: one refused reading refuses the request, and nothing is stored. A reading "
                          "stamped more than serve.max_future_s ahead of the server's clock, or older than "
                          "storage.retention_hours, is refused with 422 (it would be pruned unseen).",
              openapi_extra=INGEST_BODY,
              responses={**WRITE_ERRORS,
                         400: {"model": ErrorOut, "description": "the body is not JSON"},
                         422: {"model": ErrorOut, "description": "a reading is invalid; nothing was stored"}})
async def post_readings(payload: Annotated[Any, Body(include_in_schema=False)], pipeline: PipelineDep,
                        settings: Annotated[ServiceSettings, Depends(get_settings)]) -> IngestResult:
    # async: on the event loop, awaiting the group commit, rather than a pool thread blocked on it.
    # A well-formed request seldom gets here: FastIngest (below) answers it; this route answers the rest.
    items, prefix, single = _batch_of(payload, settings.max_batch)
    try:
        readings = _READINGS.validate_python(items)
    except ValidationError as exc:  # one bad reading refuses the whole batch: nothing is stored
        raise RequestValidationError(_prefixed(exc, prefix, drop_index=single))
    try:
        inserted = await pipeline.ingest_async(readings, "http")
    except IngestError as exc:
        raise _refused(exc, prefix)
    return _ingest_result(inserted)


def _refused(exc: IngestError, prefix: tuple) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": prefix, "msg": str(exc)}])


def _ingest_result(inserted) -> IngestResult:
    return IngestResult(accepted=len(inserted.ids), ids=inserted.ids, duplicates=inserted.new.count(False))


def _batch_of(payload: Any, max_batch: int) -> tuple[list, tuple, bool]:
    """The readings of an ingest body (an object, a list, or {"readings": [...]}), where an error
    about them points, and whether it was a single reading; RequestValidationError if it is none."""
    if isinstance(payload, dict) and "readings" in payload:
        extra = sorted(set(payload) - {"readings"})
        if extra:
            raise RequestValidationError([{"type": "extra_forbidden", "loc": ("body", extra[0]),
                                           "msg": "Extra inputs are not permitted"}])
        items, prefix, single = payload["readings"], ("body", "readings"), False
        if not isinstance(items, list):
            raise RequestValidationError([{"type": "list_type", "loc": prefix, "msg": "readings must be a list"}])
    elif isinstance(payload, dict):
        items, prefix, single = [payload], ("body",), True
    elif isinstance(payload, list):
        items, prefix, single = payload, ("body",), False
    else:
        raise RequestValidationError([{"type": "model_type", "loc": ("body",),
                                       "msg": "send a reading object, a list of them, or {\"readings\": [...]}"}])
    if not items:
        raise RequestValidationError([{"type": "too_short", "loc": prefix, "msg": "the batch is empty"}])
    if len(items) > max_batch:
        # the limit is in the OpenAPI document (maxItems), so this is a validation error like any other
        raise RequestValidationError([{"type": "too_long", "loc": prefix, "msg": f"batch of {len(items)} readings is "
                                       f"over the limit of {max_batch} (serve.max_batch)"}])
    return items, prefix, single


def _prefixed(exc: ValidationError, prefix: tuple, drop_index: bool = False) -> list[dict]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if drop_index and loc and isinstance(loc[0], int):
            loc = loc[1:]
        errors.append({**err, "loc": prefix + loc})
    return errors


@sensors.get("/data", response_model=ReadingsPage, summary="Recent readings (oldest first) with the detector's probability")
def get_sensor_data(pipeline: PipelineDep, sensor_id: SensorIdQuery = None, since: Since = None, until: Until = None,
                    limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> ReadingsPage:
    rows = pipeline.storage.readings(sensor_id=sensor_id, since=since, until=until, limit=limit)
    out = [ReadingOut(id=r["id"], sensor_id=r["sensor_id"], timestamp=r["ts"], time=iso(r["ts"]),
                      gas_concentration=r["gas"], temperature=r["temperature"], humidity=r["humidity"],
                      probability=r["probability"], source=r["source"]) for r in rows]
    return ReadingsPage(count=len(out), readings=out)


alerts = APIRouter(prefix="/api/alerts", tags=["alerts"])


@alerts.get("/history", response_model=AlertsPage, summary="Alerts, newest first, filtered and paginated")
def get_alert_history(pipeline: PipelineDep, sensor_id: SensorIdQuery = None, level: Level | None = None,
                      kind: Literal["leak", "offline"] | None = None,
                      state: Annotated[Literal["open", "closed"] | None, Query(description="open or closed")] = None,
                      acknowledged: bool | None = None, since: Since = None, until: Until = None,
                      limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                      offset: Annotated[int, Query(ge=0, le=2**62)] = 0) -> AlertsPage:
    total, rows = pipeline.storage.alerts(sensor_id=sensor_id, level=level, kind=kind,
                                          open_only=None if state is None else state == "open",
                                          acknowledged=acknowledged, since=since, until=until, limit=limit, offset=offset)
    return AlertsPage(total=total, limit=limit, offset=offset, alerts=[_alert_out(a) for a in rows])


@alerts.post("/{alert_id}/ack", response_model=AlertOut, dependencies=[Depends(require_token)],
             summary="Acknowledge an alert (idempotent)",
             responses={**WRITE_ERRORS, 404: {"model": ErrorOut, "description": "no such alert"}})
def ack_alert(alert_id: Annotated[int, PathParam(ge=1, le=2**62)], pipeline: PipelineDep) -> AlertOut:
    alert = pipeline.storage.acknowledge(alert_id)
    if alert is None:
        raise HTTPException(404, f"no alert with id {alert_id}")
    return _alert_out(alert)


silences = APIRouter(prefix="/api", tags=["silences"])
SensorIdPath = Annotated[str, PathParam(pattern=SENSOR_ID_PATTERN, description="the sensor")]


def _silence_out(entry: dict) -> SilenceOut:
    return SilenceOut(sensor_id=entry["sensor_id"], until=entry["until_ts"], until_time=iso(entry["until_ts"]),
                      reason=entry["reason"], created_at=entry["created_at"])


@silences.post("/sensors/{sensor_id}/silence", status_code=201, response_model=SilenceOut,
               dependencies=[Depends(require_token)],
               summary="Silence a sensor's notifications until a time (its alerts are still recorded, marked silenced)",
               description="Replaces the sensor's silence if it has one. The end must be in the future and at most "
                           "alerts.max_silence_hours away. A sensor not seen yet may be silenced (before it is installed).",
               responses={**WRITE_ERRORS, 400: {"model": ErrorOut, "description": "the body is not JSON"},
                          422: {"model": ErrorOut, "description": "no end, an end in the past, or too far"}})
def post_silence(sensor_id: SensorIdPath, body: SilenceIn, pipeline: PipelineDep,
                 settings: Annotated[ServiceSettings, Depends(get_settings)]) -> SilenceOut:
    now = pipeline.clock()
    until = to_epoch(body.until) if body.until is not None else now + body.duration_s
    field = "until" if body.until is not None else "duration_s"
    bad = (f"the silence would end {now - until:.0f} s in the past" if until <= now else
           f"a silence ends at most {settings.max_silence_s / 3600:g} h from now (alerts.max_silence_hours)"
           if until - now > settings.max_silence_s else None)
    if bad:
        raise RequestValidationError([{"type": "value_error", "loc": ("body", field), "msg": bad}])
    return _silence_out(pipeline.silence(sensor_id, until, body.reason))


@silences.delete("/sensors/{sensor_id}/silence", status_code=204, dependencies=[Depends(require_token)],
                 summary="End a sensor's silence now",
                 responses={**WRITE_ERRORS, 404: {"model": ErrorOut, "description": "the sensor is not silenced"}})
def delete_silence(sensor_id: SensorIdPath, pipeline: PipelineDep) -> Response:
    if not pipeline.unsilence(sensor_id):
        raise HTTPException(404, f"sensor {sensor_id} is not silenced")
    return Response(status_code=204)


@silences.get("/silences", response_model=SilencesPage, summary="The silences in force now")
def get_silences(pipeline: PipelineDep) -> SilencesPage:
    return SilencesPage(silences=[_silence_out(s) for s in pipeline.active_silences()])


dashboard = APIRouter(include_in_schema=False)


@dashboard.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-cache"})


# ---- the app ---------------------------------------------------------------------------------------------
INGEST_PATH = "/api/sensor/readings"


class FastIngest:
    """POST /api/sensor/readings, the one path sensors hit every second, without the per-request
    machinery of FastAPI's routing, dependencies and response model (about half the service's CPU
    per reading under load, py-spy). A request with a JSON body, the token if one is set, and
    readings that pass the same schema is ingested by the same call and answered with the same
    body; anything else (malformed JSON, a bad reading, no token, a batch over the limit) goes on to
    the FastAPI route, untouched, and gets its answer there. A reading the pipeline refuses gets the
    route's error, built by the same handler."""

    def __init__(self, app, pipeline: Pipeline, settings: ServiceSettings):
        self.app, self.pipeline, self.settings = app, pipeline, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != INGEST_PATH:
            return await self.app(scope, receive, send)
        messages, body = [], b""
        while True:  # BodyLimit, outside this, has bounded the size
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        readings, prefix = self._plain(scope, body)
        if readings is None:
            async def replay():
                return messages.pop(0) if messages else await receive()

            return await self.app(scope, replay, send)
        try:
            inserted = await self.pipeline.ingest_async(readings, "http")
        except IngestError as exc:
            response = await _validation_error(None, _refused(exc, prefix))
            return await response(scope, receive, send)
        out = _ingest_result(inserted).model_dump_json().encode()
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    def _plain(self, scope, body: bytes) -> tuple[list[Reading] | None, tuple]:
        """The validated readings and their error prefix, or (None, ()) where the route must answer."""
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").split(b";")[0].strip().lower() != b"application/json":
            return None, ()
        if not serving.bearer_ok(headers.get(b"authorization", b"").decode("latin-1"), self.settings.token):
            return None, ()
        try:
            if body.lstrip()[:1] == b"[":  # a batch: parsed and validated in one pass by pydantic-core
                readings = _READINGS.validate_json(body)
                return (readings, ("body",)) if 0 < len(readings) <= self.settings.max_batch else (None, ())
            items, prefix, _ = _batch_of(json.loads(body), self.settings.max_batch)
            return _READINGS.validate_python(items), prefix
        except (ValueError, RequestValidationError, ValidationError):  # JSONDecodeError is a ValueError
            return None, ()


class BodyLimit:
    """Refuse a request body over ``max_bytes`` with 413 before anything parses it (chunked bodies too)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, int(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        body = json.dumps(error_body(413, f"request body over the limit of {self.max_bytes} bytes (serve.max_body_bytes)")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def error_body(status: int, message: str, errors: list[dict] | None = None) -> dict:
    """The one error shape (``ErrorOut``): the list of what is wrong, and one readable line."""
    return {"detail": errors or [{"type": HTTPStatus(status).name.lower(), "loc": [], "msg": message}], "message": message}


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"type": err["type"], "loc": list(err["loc"]), "msg": err["msg"]} for err in exc.errors()]
    if any(err["type"] == "json_invalid" for err in errors):
        ctx = next((e.get("ctx", {}) for e in exc.errors() if e.get("type") == "json_invalid"), {})
        message = f"malformed JSON: {ctx.get('error', 'cannot parse the body')}"
        return JSONResponse(error_body(400, message, [{"type": "json_invalid", "loc": ["body"], "msg": message}]),
                            status_code=400)
    summary = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in errors[:5])
    if len(errors) > 5:
        summary += f"; and {len(errors) - 5} more"
    return JSONResponse(error_body(422, summary, errors), status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = exc.headers
    if exc.status_code == 405:  # Starlette names only the first route's methods; a path may have several routes
        allowed = set()
        for route in request.app.router.routes:
            if route.matches(request.scope)[0] == Match.PARTIAL:
                allowed |= getattr(route, "methods", None) or set()
        headers = {**(headers or {}), "Allow": ", ".join(sorted(allowed))}
    return JSONResponse(error_body(exc.status_code, str(exc.detail)), status_code=exc.status_code, headers=headers)


def _openapi(app: FastAPI) -> dict:
    """FastAPI's document, with this service's batch limit in the ingest body's schema."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = schema["paths"][INGEST_PATH]["post"]["requestBody"]["content"]["application/json"]["schema"]
        for shape in (body["oneOf"][1], body["oneOf"][2]["properties"]["readings"]):
            shape["maxItems"] = app.state.settings.max_batch
        app.openapi_schema = schema
    return app.openapi_schema


# FastAPI's native OpenTelemetry (newer versions) looks up the global providers in os.environ on every
# request, a tenth of the ingest path under load (py-spy); this service reports through /metrics.
NO_TELEMETRY = ({"telemetry": {"tracing": False, "metrics": False, "logs": False}}
                if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def create_app(pipeline: Pipeline, settings: ServiceSettings | None = None) -> FastAPI:
    app = serving.new_app(  # offline /docs
        responses=ERRORS, **NO_TELEMETRY,
        title="Gas-leak detection service",
        description="Live readings in, leak alerts out: an LSTM+SVM detector with pure-SVM and threshold fallbacks.",
        version="1.0",
    )
    app.state.pipeline = pipeline
    app.state.settings = settings or ServiceSettings()
    app.state.token = app.state.settings.token
    pipeline.metrics.bridge = app.state.settings.bridge
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.openapi = lambda: _openapi(app)
    for router in (health, status, sensors, alerts, silences, dashboard):
        app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(FastIngest, pipeline=pipeline, settings=app.state.settings)
    app.add_middleware(BodyLimit, max_bytes=app.state.settings.max_body_bytes)  # outermost: before FastIngest reads
    return app
