"""The HTTP API's contract: request and response bodies as pydantic models.

Validation lives here, in one place: HTTP ingest, MQTT payloads and the simulated nodes all go
through ``Reading``, so a value the API refuses is refused the same way from the broker.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

# Physical ranges of the sensors the original system used (MQ-type gas sensor, DHT-type
# temperature/humidity); anything outside is a broken sensor or a bad client, never a reading.
GAS_PPM_MAX = 100_000.0
TEMP_MIN_C, TEMP_MAX_C = -40.0, 85.0
SENSOR_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"  # also safe as an MQTT topic level (no '/', '+', '#')

Finite = dict(strict=True, allow_inf_nan=False)  # numbers only: no strings, no booleans, no NaN/inf

SensorId = Annotated[str, Field(pattern=SENSOR_ID_PATTERN, description="letters, digits, '_', '.', ':', '-'; at most 64")]
Level = Literal["info", "warning", "danger"]

# Timestamps the service can store and show: Unix seconds in [0, 1e10) (1970 to 2286), or an ISO 8601
# date-time whose year is 1970 to 2285 as written. The schema says the same, so a client generated
# from it cannot send one the service refuses for its form.
EPOCH_MAX = 1e10
YEAR_MIN, YEAR_MAX = 1970, 2285
ISO_YEAR_PATTERN = r"^(19[7-9][0-9]|2[01][0-9][0-9]|22[0-7][0-9]|228[0-5])-"
Timestamp = Annotated[datetime, WithJsonSchema({
    "anyOf": [{"type": "number", "minimum": 0, "exclusiveMaximum": EPOCH_MAX},
              {"type": "string", "format": "date-time", "pattern": ISO_YEAR_PATTERN}],
    "description": "Unix seconds, or ISO 8601 (UTC if no zone); 1970 to 2285"})]


class Reading(BaseModel):
    """One sample from one sensor node. ``timestamp``: Unix seconds or ISO 8601 (UTC if no zone)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "example": {"sensor_id": "kitchen-1", "timestamp": 1767261600.0, "gas_concentration": 412.5,
                    "temperature": 22.4, "humidity": 48.0}})

    sensor_id: SensorId
    timestamp: Timestamp
    gas_concentration: Annotated[float, Field(ge=0.0, le=GAS_PPM_MAX, description="ppm", **Finite)]
    temperature: Annotated[float, Field(ge=TEMP_MIN_C, le=TEMP_MAX_C, description="°C", **Finite)]
    humidity: Annotated[float, Field(ge=0.0, le=100.0, description="%RH", **Finite)]

    @field_validator("timestamp", mode="before")
    @classmethod
    def _finite_timestamp(cls, value):
        return check_timestamp(value)

    @property
    def epoch(self) -> float:
        return to_epoch(self.timestamp)


def check_timestamp(value):
    """The forms of ``Timestamp`` the service can store and show (before pydantic parses it)."""
    if isinstance(value, bool):
        raise ValueError("timestamp must be Unix seconds or an ISO 8601 string")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("timestamp must be a finite number")
    if isinstance(value, (int, float)) and not 0 <= value < EPOCH_MAX:
        raise ValueError("timestamp must be Unix seconds between 1970 and 2286")
    if isinstance(value, str) and not re.match(ISO_YEAR_PATTERN, value):
        raise ValueError(f"timestamp must be an ISO 8601 date-time from {YEAR_MIN} to {YEAR_MAX}")
    return value


def to_epoch(ts: datetime) -> float:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


class SilenceIn(BaseModel):
    """Silence a sensor's notifications until a time, or for a duration (one of the two)."""

    # exactly one of the two ends, in the schema as in the validation
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "example": {"duration_s": 3600, "reason": "maintenance"},
        "oneOf": [{"required": ["until"]}, {"required": ["duration_s"]}]})

    until: Timestamp = Field(None, description="end of the silence: Unix seconds or ISO 8601")
    duration_s: Annotated[float, Field(gt=0, lt=EPOCH_MAX, description="or: seconds from now", **Finite)] = None
    reason: Annotated[str | None, Field(max_length=500)] = None

    @field_validator("until", mode="before")
    @classmethod
    def _finite_until(cls, value):
        return check_timestamp(value)

    @model_validator(mode="after")
    def _one_end(self):
        if (self.until is None) == (self.duration_s is None):
            raise ValueError("give the silence's end: either until or duration_s")
        return self


class SilenceOut(BaseModel):
    sensor_id: str
    until: float
    until_time: str
    reason: str | None
    created_at: float


class SilencesPage(BaseModel):
    silences: list[SilenceOut]


class IngestResult(BaseModel):
    accepted: int
    ids: list[int] = Field(description="storage ids, in the order the readings were sent")
    duplicates: int = Field(0, description="readings identical to ones already stored (a client's retry, an "
                                           "MQTT redelivery): acknowledged with the stored id, not stored twice")


class ErrorItem(BaseModel):
    type: str = Field(description="what kind of error: a pydantic error type, or e.g. unauthorized, not_found")
    loc: list[str | int] = Field(description="where: (\"body\", 0, \"timestamp\"), (\"query\", \"limit\"); empty if nowhere")
    msg: str


class ErrorOut(BaseModel):
    """Every error response has this shape, whatever its status."""

    detail: list[ErrorItem]
    message: str = Field(description="the same, in one readable line")


class ReadingOut(BaseModel):
    id: int
    sensor_id: str
    timestamp: float
    time: str = Field(description="ISO 8601, UTC")
    gas_concentration: float
    temperature: float
    humidity: float
    probability: float | None = Field(None, description="the detector's leak probability for the window ending here")
    source: str


class ReadingsPage(BaseModel):
    count: int
    readings: list[ReadingOut]


class AlertOut(BaseModel):
    id: int
    sensor_id: str
    kind: Literal["leak", "offline"]
    level: Level
    causes: list[str] = Field(description="what fired it: model, threshold, offline")
    start: float
    end: float | None
    start_time: str
    end_time: str | None
    open: bool
    peak_ppm: float | None
    peak_probability: float | None
    acknowledged: bool
    acknowledged_at: float | None
    message: str
    silenced: bool = Field(False, description="a notification of it was held back: its sensor was silenced")
    repeats: int = Field(0, description="repeat notifications sent (alerts.repeat_every_s) while open and unacknowledged")


class AlertsPage(BaseModel):
    total: int
    limit: int
    offset: int
    alerts: list[AlertOut]


class ModelStatus(BaseModel):
    is_trained: bool
    model_type: Literal["PyTorch LSTM+SVM", "Pure SVM", "Threshold"]
    device: str
    fallback_reason: str | None = None
    alert_probability: float | None = Field(None, description="the alert rule's probability threshold: the "
                                            "detector's calibrated operating point unless alerts.probability is set")
    alert_rule: str | None = Field(None, description="the model alert rule in words, e.g. '10 windows in a row "
                                   "at p >= 0.99' or 'evidence 10 (log-odds over p >= 0.99)'")
    source: str | None = Field(None, description="the detector bundle in use")


class SensorStatus(BaseModel):
    sensor_id: str
    state: Literal["warming_up", "normal", "suspect", "warning", "danger", "offline"]
    latest: ReadingOut | None
    probability: float | None
    last_seen: float | None = Field(None, description="server time the last reading arrived")
    readings: int = Field(description="readings received since the service started")
    out_of_order: int = Field(0, description="of them, stamped at or before an earlier one of this sensor: stored, "
                              "but in no window (a gateway that reorders, a clock that jumps back)")
    baseline_ppm: float | None = Field(None, description="clean-air baseline of the sensor's newest window")
    threshold_rule: str | None = Field(None, description="whether the ppm threshold rule can fire for this sensor: "
                                       "'active', or 'inactive: ...' when its clean-air baseline is far below warning_ppm")
    silenced_until: float | None = Field(None, description="its notifications are silenced until then (Unix seconds)")


class AlertCounts(BaseModel):
    open: int
    unacknowledged: int
    by_level: dict[str, int]


class BrokerStatus(BaseModel):
    enabled: bool
    connected: bool
    host: str | None = None
    port: int | None = None
    last_error: str | None = None
    received: int = 0
    rejected: int = 0


class Status(BaseModel):
    system_running: bool
    timestamp: float
    time: str
    uptime_s: float
    model_status: ModelStatus
    sensors: list[SensorStatus]
    alerts: AlertCounts
    mqtt: BrokerStatus
    storage: dict
    detection: dict
    ingest: dict = Field(default_factory=dict, description="readings stored per second (last 10 s) and in all, by source")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds")
