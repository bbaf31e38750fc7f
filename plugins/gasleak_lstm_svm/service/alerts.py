"""The alert engine: the rules that turn a stream of readings and window probabilities into alerts.

Pure logic (no I/O, no clock of its own), so the rules are tested by feeding it samples.

Rules (the numbers are ``alerts.*`` in conf/task/gasleak.yaml):
- model, one of two rules (``rule``), the detector's operating point, calibrated at training time
  to a false-alert budget (or fixed through ``alerts.*``):
  ``consecutive``: a leak is confirmed after ``consecutive`` windows in a row with probability >=
  ``probability`` (the original system's rule: 3 windows at 0.7);
  ``evidence``: each window adds its log-odds over ``probability``'s, ``logit(p) - logit(probability)``,
  to a running sum kept between 0 and ``evidence`` (a CUSUM), and a leak is confirmed while the
  sum is at ``evidence``. A window at p = 0.9999 counts for several at 0.99, and a dip below the probability
  takes evidence away instead of starting over: a strong leak is confirmed in a window or two, a
  weak one once it has lasted, while a short clean-air bump spends what it gathered.
  The evaluate mode replays recorded series through this same engine (``replay``). Level ``warning``.
- thresholds: ``threshold_samples`` readings in a row at or above ``warning_ppm`` (500) open a
  ``warning``, at or above ``danger_ppm`` (1000) a ``danger``, whatever the model says. The same
  two levels (``alerts.warning_ppm``, ``alerts.danger_ppm``: the one place they are configured)
  are the threshold detector's (``estimators.ThresholdDetector``).
- one sensor has at most one open leak alert; it escalates (warning -> danger) rather than
  opening another, and records its peak ppm and peak probability.
- it closes when readings are back to normal: ``clear_samples`` readings in a row below
  ``warning_ppm`` whose latest window probability is below ``probability``.
- offline: no reading for ``offline_after_s`` seconds opens an ``offline`` alert (level
  ``offline_level``, ``info`` by default); the next reading closes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

LEVELS = ("info", "warning", "danger")
RANK = {level: i for i, level in enumerate(LEVELS)}
# Events worth telling people about; "updated" (a new peak) is only stored.
NOTIFY = ("opened", "escalated", "closed")
RULES = ("consecutive", "evidence")
# a window's log-odds are capped here (p ~ 0.99995): a probability of exactly 1 adds no more than that
LOGIT_CAP = 10.0


def log_odds(p: float) -> float:
    """logit(p), capped at +-LOGIT_CAP (plain floats: the engine calls it once a reading)."""
    p = min(max(p, 1e-12), 1.0 - 1e-12)
    return min(max(math.log(p / (1.0 - p)), -LOGIT_CAP), LOGIT_CAP)


# The code defaults of the ppm levels (the original's, for natural gas); configured in alerts.*.
WARNING_PPM = 500.0
DANGER_PPM = 1000.0


@dataclass(frozen=True)
class AlertRules:
    consecutive: int = 3
    probability: float = 0.7
    rule: str = "consecutive"  # or "evidence" (see the module's docstring)
    evidence: float = 10.0     # log-odds the evidence rule needs
    warning_ppm: float = WARNING_PPM
    danger_ppm: float = DANGER_PPM
    threshold_samples: int = 2
    clear_samples: int = 10
    offline_after_s: float = 15.0
    offline_level: str = "info"
    threshold_inactive_below: float = 0.01  # a clean-air baseline under this share of warning_ppm

    def __post_init__(self):
        if self.consecutive < 1 or self.threshold_samples < 1 or self.clear_samples < 1:
            raise ValueError("alerts.consecutive, threshold_samples and clear_samples must be >= 1")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"alerts.probability must be in (0, 1], not {self.probability}")
        if not 0 < self.warning_ppm < self.danger_ppm:
            raise ValueError(f"alerts: need 0 < warning_ppm < danger_ppm, got {self.warning_ppm}, {self.danger_ppm}")
        if self.rule not in RULES:
            raise ValueError(f"alerts.rule must be one of {RULES}, not {self.rule!r}")
        if not self.evidence > 0:
            raise ValueError(f"alerts.evidence must be > 0, not {self.evidence}")
        if self.offline_level not in LEVELS:
            raise ValueError(f"alerts.offline_level must be one of {LEVELS}, not {self.offline_level!r}")

    def threshold_status(self, baseline_ppm: float | None) -> str:
        """Whether the ppm rule can protect a sensor with this clean-air baseline. An open-path laser
        reads ~2 ppm and a release adds a few ppm: 500 ppm would never be reached, and saying so
        beats silently never firing; the model's alerts are then that sensor's protection."""
        if baseline_ppm is None:
            return "unknown (warming up)"
        if baseline_ppm < self.threshold_inactive_below * self.warning_ppm:
            return (f"inactive: clean-air baseline {baseline_ppm:.3g} ppm is under "
                    f"{100 * self.threshold_inactive_below:g} % of the {self.warning_ppm:g} ppm warning level")
        return "active"

    @property
    def positive_offset(self) -> float:
        """The log-odds of ``probability``: what a window must beat to add evidence."""
        return log_odds(self.probability)

    def describe(self) -> str:
        if self.rule == "evidence":
            return f"evidence {self.evidence:g} (log-odds over p >= {self.probability:g})"
        return f"{self.consecutive} windows in a row at p >= {self.probability:g}"

    @classmethod
    def from_config(cls, cfg, operating_point: dict | None = None) -> "AlertRules":
        """The rules of ``alerts.*``; ``alerts.rule``, ``probability``, ``consecutive`` and ``evidence``
        left null take the detector's calibrated operating point, else the original rule (3 windows
        in a row at 0.7). Unless ``alerts.rule`` says which, setting ``alerts.evidence`` means the
        evidence rule, and ``alerts.probability`` or ``alerts.consecutive`` the consecutive one."""
        names = cls.__dataclass_fields__
        kwargs = {k: v for k, v in dict(cfg).items() if k in names and v is not None}
        op = operating_point or {}
        if cfg.get("rule") is None:
            if cfg.get("evidence") is not None:
                kwargs["rule"] = "evidence"
            elif cfg.get("probability") is None and cfg.get("consecutive") is None and op.get("rule") is not None:
                kwargs["rule"] = str(op["rule"])
        for key, kind in (("probability", float), ("consecutive", int), ("evidence", float)):
            if cfg.get(key) is None and op.get(key) is not None:
                kwargs[key] = kind(op[key])
        return cls(**kwargs)


def rules_from_config(cfg, operating_point: dict | None = None) -> AlertRules:
    """``AlertRules.from_config`` for the modes: a bad ``alerts.*`` value is one line (``UserError``)."""
    from framework.errors import UserError

    try:
        return AlertRules.from_config(cfg, operating_point)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dataclass
class _Track:
    positives: int = 0       # consecutive windows at or above the probability
    evidence: float = 0.0    # the evidence rule's running sum of log-odds over the probability
    warn_run: int = 0        # consecutive readings >= warning_ppm
    danger_run: int = 0      # consecutive readings >= danger_ppm
    normal_run: int = 0      # consecutive normal readings while a leak alert is open
    probability: float | None = None
    leak: dict | None = None
    offline: dict | None = None


class AlertEngine:
    def __init__(self, rules: AlertRules, open_alerts: Iterable[dict] = ()):
        self.rules = rules
        self.tracks: dict[str, _Track] = {}
        for alert in open_alerts:  # after a restart, carry on with the alerts that were open
            track = self._track(alert["sensor_id"])
            setattr(track, "leak" if alert["kind"] == "leak" else "offline", dict(alert))

    def _track(self, sensor_id: str) -> _Track:
        if sensor_id not in self.tracks:
            self.tracks[sensor_id] = _Track()
        return self.tracks[sensor_id]

    def observe(self, sensor_id: str, ts: float, ppm: float, probability: float | None = None) -> list[tuple[str, dict]]:
        """One reading, with the probability of the window it ends (None while warming up or unscored).

        Returns the alert changes as (event, alert) with event in opened/escalated/updated/closed."""
        r, t, changes = self.rules, self._track(sensor_id), []
        if t.offline is not None:
            t.offline.update(end_ts=ts, message=f"sensor {sensor_id} offline, back at this reading")
            changes.append(("closed", t.offline))
            t.offline = None

        if probability is not None:
            t.probability = float(probability)
            t.positives = t.positives + 1 if probability >= r.probability else 0
            if r.rule == "evidence":
                # capped at the level: after a long leak the sum is back under it in a window or two
                t.evidence = min(r.evidence, max(0.0, t.evidence + log_odds(probability) - r.positive_offset))
        t.warn_run = t.warn_run + 1 if ppm >= r.warning_ppm else 0
        t.danger_run = t.danger_run + 1 if ppm >= r.danger_ppm else 0

        level, causes = None, []
        if t.danger_run >= r.threshold_samples:
            level, causes = "danger", ["threshold"]
        elif t.warn_run >= r.threshold_samples:
            level, causes = "warning", ["threshold"]
        confirmed = t.evidence >= r.evidence if r.rule == "evidence" else t.positives >= r.consecutive
        if confirmed:
            level, causes = level or "warning", causes + ["model"]

        if level is not None:
            t.normal_run = 0
            if t.leak is None:
                t.leak = {"id": None, "sensor_id": sensor_id, "kind": "leak", "level": level, "causes": causes,
                          "start_ts": ts, "end_ts": None, "peak_ppm": ppm, "peak_probability": t.probability,
                          "message": self._message(sensor_id, level, causes, ppm, t.probability)}
                return changes + [("opened", t.leak)]
            leak = t.leak
            escalated = RANK[level] > RANK[leak["level"]]
            leak["causes"] = leak["causes"] + [c for c in causes if c not in leak["causes"]]
            if escalated:
                leak["level"] = level
                leak["message"] = self._message(sensor_id, level, causes, ppm, t.probability)
            self._peaks(leak, ppm, t.probability)
            return changes + [("escalated" if escalated else "updated", leak)]

        if t.leak is not None:
            normal = ppm < r.warning_ppm and (t.probability is None or t.probability < r.probability)
            t.normal_run = t.normal_run + 1 if normal else 0
            changed = self._peaks(t.leak, ppm, t.probability)
            if t.normal_run >= r.clear_samples:
                t.leak.update(end_ts=ts)
                t.leak["message"] += f"; back to normal ({ppm:.0f} ppm)"
                changes.append(("closed", t.leak))
                t.leak, t.normal_run, t.evidence = None, 0, 0.0
            elif changed:
                changes.append(("updated", t.leak))
        return changes

    def check_offline(self, last_seen: dict[str, float], now: float) -> list[tuple[str, dict]]:
        """Open an offline alert for each sensor silent for longer than ``offline_after_s``."""
        changes = []
        for sensor_id, seen in last_seen.items():
            t = self._track(sensor_id)
            if t.offline is None and now - seen > self.rules.offline_after_s:
                t.offline = {"id": None, "sensor_id": sensor_id, "kind": "offline", "level": self.rules.offline_level,
                             "causes": ["offline"], "start_ts": now, "end_ts": None, "peak_ppm": None,
                             "peak_probability": None,
                             "message": f"sensor {sensor_id} offline: no reading for {now - seen:.0f} s"}
                # a window must not span the gap: the detector starts over when it is back
                t.positives = t.warn_run = t.danger_run = 0
                t.evidence = 0.0
                changes.append(("opened", t.offline))
        return changes

    def state(self, sensor_id: str) -> str | None:
        """normal / suspect / warning / danger / offline (None for a sensor it has not seen)."""
        t = self.tracks.get(sensor_id)
        if t is None:
            return None
        if t.offline is not None:
            return "offline"
        if t.leak is not None:
            return t.leak["level"]
        if t.positives > 0 or t.evidence > 0 or t.warn_run > 0:
            return "suspect"
        return "normal"

    def reset_window(self, sensor_id: str) -> None:
        """The sensor's window history was cut (a gap): consecutive-window counting starts over."""
        track = self._track(sensor_id)
        track.positives, track.evidence = 0, 0.0

    @staticmethod
    def _peaks(alert: dict, ppm: float, probability: float | None) -> bool:
        changed = False
        if alert["peak_ppm"] is None or ppm > alert["peak_ppm"]:
            alert["peak_ppm"], changed = ppm, True
        if probability is not None and (alert["peak_probability"] is None or probability > alert["peak_probability"]):
            alert["peak_probability"], changed = probability, True
        return changed

    def _message(self, sensor_id, level, causes, ppm, probability) -> str:
        r, why = self.rules, []
        if "threshold" in causes:
            limit = r.danger_ppm if level == "danger" else r.warning_ppm
            why.append(f"gas {ppm:.0f} ppm >= {limit:.0f} ppm for {r.threshold_samples} readings")
        if "model" in causes:
            why.append(f"the detector confirmed a leak ({r.describe()}"
                       + (f", p={probability:.2f})" if probability is not None else ")"))
        return f"{level.upper()} sensor {sensor_id}: " + "; ".join(why)


def replay(rules: AlertRules, times, gas, probs, sensor_id: str = "replay") -> list[dict]:
    """Feed one recorded series through a fresh engine, as the service would, and return every leak
    alert it opened (``start_ts``, ``end_ts`` — None if still open at the end —, level, causes).

    ``probs`` holds each reading's window probability (NaN while warming up). Readings that cannot
    change anything (no open alert, no run in progress, below every threshold) are jumped over: the
    result is the same as observing them one by one, and a week of readings replays in a second."""
    engine = AlertEngine(rules)
    track = engine._track(sensor_id)
    times = np.asarray(times, dtype=np.float64)
    gas = np.asarray(gas, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    scored = ~np.isnan(probs)
    active = np.flatnonzero((scored & (probs >= rules.probability)) | (gas >= rules.warning_ppm))
    # the latest window probability at each reading, for the readings jumped over
    last = np.where(scored, np.arange(len(probs)), -1)
    np.maximum.accumulate(last, out=last)
    alerts: list[dict] = []
    i, k, n = 0, 0, len(times)
    while True:
        busy = track.leak is not None or track.positives > 0 or track.evidence > 0 or track.warn_run > 0
        if not busy:
            while k < len(active) and active[k] < i:
                k += 1
            if k == len(active):
                break
            i = int(active[k])
            if i > 0 and last[i - 1] >= 0:
                track.probability = float(probs[last[i - 1]])
        if i >= n:
            break
        for event, alert in engine.observe(sensor_id, float(times[i]), float(gas[i]),
                                           float(probs[i]) if scored[i] else None):
            if event == "opened" and alert["kind"] == "leak":
                alerts.append(alert)
        i += 1
    return alerts
