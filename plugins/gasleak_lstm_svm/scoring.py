"""What a user receives, measured: detectors scored through the service's own alert engine.

Every test (or validation) series is scored at stride 1, as a live stream is, and its readings and
window probabilities are replayed through ``service.alerts.AlertEngine`` (the same class the
service runs: consecutive windows, threshold levels, closing after normal readings). From the
alerts it opens:

* per release (a run of label 1): detected when an alert is open at any time from ``tolerance_s``
  before its labelled start to ``tolerance_s`` after its end; latency from the labelled start to the
  opening of that alert (0 when it was already open);
* false alerts: alerts opened outside every release, its ``tolerance_s`` before and
  ``max(grace_s, tolerance_s)`` after; counted per day of clean-air time (label 0);
* per window: precision/recall/F1/false-alarm rate of ``p >= operating probability``, leaving out
  windows that end within ``tolerance_s`` of a label edge (uncertain labels).

``calibrate`` picks a detector's operating probability on validation series to meet a false-alert
budget; the same replay decides it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from plugins.gasleak_lstm_svm.data import Series, Windows, label_runs
from plugins.gasleak_lstm_svm.service.alerts import AlertRules, replay

DAY_S = 86400.0
BATCH = 8192
# candidate operating probabilities for calibration
GRID = tuple(np.round(np.concatenate([np.arange(0.1, 0.95, 0.05), [0.95, 0.97, 0.98, 0.99, 0.995, 0.999]]), 3))


def events_of(series: Series) -> list[dict]:
    """Ground-truth events: the simulator's, else runs of label 1 (CSV), in sample indices."""
    if series.events is not None:
        return [{"start": int(e.start), "end": int(min(np.ceil(e.end), len(series))), "kind": e.kind} for e in series.events
                if e.start < len(series)]
    return [{"start": a, "end": b, "kind": "leak"} for a, b in label_runs(series.label)]


def series_probabilities(det, series: Series) -> np.ndarray:
    """Leak probability per sample of ``series`` (NaN until the first full window), stride 1."""
    ws = Windows([series], det.spec.window, 1, spec=det.spec)
    probs = np.full(len(series), np.nan)
    for i in range(0, len(ws), BATCH):
        idx = np.arange(i, min(i + BATCH, len(ws)))
        x, base, _ = ws.arrays(idx)
        probs[ws.ends[idx]] = det.predict_proba(x, base)[:, 1]
    return probs


def replay_series(rules: AlertRules, series: Series, probs: np.ndarray) -> list[dict]:
    return replay(rules, series.time, series.signal[:, 0], probs)


def score_alerts(series: Series, alerts: list[dict], tolerance_s: float = 0.0, grace_s: float = 60.0) -> dict:
    """Per-release detection and latency, false alerts and clean-air time for one series."""
    t = series.time
    events = events_of(series)
    after = max(grace_s, tolerance_s)
    spans = [(t[e["start"]], t[e["end"] - 1]) for e in events]
    out_events = []
    for ev, (a, b) in zip(events, spans):
        hit = [al for al in alerts if al["start_ts"] <= b + tolerance_s
               and (al["end_ts"] is None or al["end_ts"] >= a - tolerance_s)]
        first = min(hit, key=lambda al: al["start_ts"]) if hit else None
        out_events.append({**ev, "detected": first is not None,
                           "latency_s": None if first is None else max(0.0, float(first["start_ts"] - a))})
    false = [al for al in alerts if not any(a - tolerance_s <= al["start_ts"] <= b + after for a, b in spans)]
    first_start = spans[0][0] - tolerance_s if spans else np.inf
    clean = ~np.asarray(series.label, dtype=bool)
    dt = np.diff(t, append=t[-1] + 1) if len(t) else np.zeros(0)
    return {"events": out_events, "false_alerts": [float(al["start_ts"]) for al in false],
            "alert_before_release": any(al["start_ts"] < first_start for al in false),
            "clean_seconds": float(dt[clean].sum()), "seconds": float(dt.sum())}


def uncertain_windows(series: Series, ends: np.ndarray, tolerance_s: float) -> np.ndarray:
    """True for windows whose last sample lies within ``tolerance_s`` of a label edge."""
    if tolerance_s <= 0:
        return np.zeros(len(ends), dtype=bool)
    t = series.time
    edges = t[np.flatnonzero(np.diff(series.label.astype(np.int8))) + 1]
    if len(edges) == 0:
        return np.zeros(len(ends), dtype=bool)
    te = t[ends]
    pos = np.searchsorted(edges, te)
    near = np.full(len(te), np.inf)
    for k in (pos - 1, pos):
        ok = (k >= 0) & (k < len(edges))
        near[ok] = np.minimum(near[ok], np.abs(te[ok] - edges[k[ok]]))
    return near <= tolerance_s


def scored_windows(series: Series, probs: np.ndarray, tolerance_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of the windows that count: scored, and not near a label edge."""
    ends = np.flatnonzero(~np.isnan(probs))
    ends = ends[~uncertain_windows(series, ends, tolerance_s)]
    return series.label[ends].astype(np.int64), probs[ends]


def window_metrics(y: np.ndarray, pred: np.ndarray) -> dict:
    tp = int(((pred == 1) & (y == 1)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "accuracy": (tp + tn) / max(tp + tn + fp + fn, 1),
        "false_alarm_rate": fp / (fp + tn) if fp + tn else 0.0,
        "confusion": [[tn, fp], [fn, tp]],
    }


def summarise(per_series: list[dict]) -> dict:
    """Release and false-alert figures over many series' ``score_alerts`` results."""
    events = [e for r in per_series for e in r["events"]]
    lat = [e["latency_s"] for e in events if e["latency_s"] is not None]
    clean_days = sum(r["clean_seconds"] for r in per_series) / DAY_S
    n_false = sum(len(r["false_alerts"]) for r in per_series)
    out = {
        "events": len(events),
        "events_detected": sum(e["detected"] for e in events),
        "detection_rate": sum(e["detected"] for e in events) / len(events) if events else None,
        "latency_median_s": float(np.median(lat)) if lat else None,
        "latency_p90_s": float(np.percentile(lat, 90)) if lat else None,
        "latency_max_s": float(np.max(lat)) if lat else None,
        "false_alerts": n_false,
        "false_alerts_per_day": n_false / clean_days if clean_days else None,
        "false_alerts_per_week": 7 * n_false / clean_days if clean_days else None,
        "series_alerted_before_release": sum(r["alert_before_release"] for r in per_series),
        "clean_hours": clean_days * 24,
        "monitored_hours": sum(r["seconds"] for r in per_series) / 3600,
    }
    for kind in sorted({e["kind"] for e in events}):
        kl = [e["latency_s"] for e in events if e["kind"] == kind and e["latency_s"] is not None]
        kn = [e for e in events if e["kind"] == kind]
        out[f"latency_median_s/{kind}"] = float(np.median(kl)) if kl else None
        out[f"detection_rate/{kind}"] = sum(e["detected"] for e in kn) / len(kn)
    return out


def calibrate(series: list[Series], probs: list[np.ndarray], rules: AlertRules, false_alerts_per_day: float,
              tolerance_s: float = 0.0, grace_s: float = 60.0, grid=GRID, consecutive=None, evidence=()) -> dict:
    """The operating point of the alert rule.

    Candidates, each replayed on ``series`` through the alert engine: the consecutive-window rule at
    every pair of ``grid`` (probabilities) and ``consecutive`` (window counts; default: the rules'
    own; an empty list: that rule is not tried), and the evidence rule at every pair of the probabilities of ``grid`` from 0.5 up and the
    log-odds levels ``evidence`` (none: that rule is not tried). Among those whose false alerts stay
    within ``false_alerts_per_day``, the one that detects the most releases, then raises the fewest
    false alerts (the budget is a ceiling, not a target: a threshold at its edge on a few days
    exceeds it on the next ones), then confirms releases soonest (the median latency, whole
    seconds), then needs the fewest windows in a row, then has the best per-window F1, then the
    higher probability. When none meets the budget, the quietest. Each rule's probabilities are
    tried from the highest down, and not below one with more than twice the budget's false alerts.
    More evidence or windows in a row is what a sensor needs whose clean air has bumps as high as a
    weak release's (a plume's edge, a background that wanders): a release lasts, a bump does not.
    The ppm threshold rule is left out here: its alerts do not depend on the probability, and on a
    sensor that reaches those levels they would hide what the model alone detects."""
    counts = sorted({int(k) for k in ([rules.consecutive] if consecutive is None else consecutive)})
    windows = [scored_windows(s, pr, tolerance_s) for s, pr in zip(series, probs)]
    y = np.concatenate([w[0] for w in windows]) if windows else np.zeros(0, np.int64)
    pw = np.concatenate([w[1] for w in windows]) if windows else np.zeros(0)
    f1s = {float(p): window_metrics(y, (pw >= p).astype(np.int64))["f1"] for p in grid}
    model_only = replace(rules, warning_ppm=np.finfo(float).max / 2, danger_ppm=np.inf)
    candidates = [dict(rule="consecutive", probability=float(p), consecutive=k) for p in grid for k in counts]
    candidates += [dict(rule="evidence", probability=float(p), evidence=float(e), consecutive=None)
                   for p in grid if p >= 0.5 for e in sorted({float(e) for e in evidence})]
    rows, given_up = [], set()
    # each rule's probabilities from the highest down; below one that lets through twice the budget,
    # the lower ones (slow to replay: most readings are over them) let through more of the same air
    for c in sorted(candidates, key=lambda c: -c["probability"]):
        family = (c["rule"], c["consecutive"], c.get("evidence"))
        if family in given_up:
            continue
        r = replace(model_only, **{k: v for k, v in c.items() if v is not None})
        sm = summarise([score_alerts(s, replay_series(r, s, pr), tolerance_s, grace_s) for s, pr in zip(series, probs)])
        rate = sm["false_alerts_per_day"] if sm["false_alerts_per_day"] is not None else 0.0
        rows.append({**c, "false_alerts_per_day": rate, "false_alerts": sm["false_alerts"],
                     "detected": sm["events_detected"], "latency_median_s": sm["latency_median_s"],
                     "window_f1": f1s[c["probability"]]})
        if rate > 2 * false_alerts_per_day:
            given_up.add(family)
    within = [r for r in rows if r["false_alerts_per_day"] <= false_alerts_per_day]
    if within:
        best = min(within, key=lambda r: (-r["detected"], r["false_alerts"],
                                          round(r["latency_median_s"]) if r["latency_median_s"] is not None else np.inf,
                                          r["consecutive"] or 0, -round(r["window_f1"], 3), -r["probability"]))
    else:
        best = min(rows, key=lambda r: (r["false_alerts_per_day"], -r["detected"], r["consecutive"] or 0, -r["probability"]))
    keys = ("rule", "probability", "consecutive", "evidence")
    return {**{k: best.get(k) for k in keys}, "calibrated": True,
            "budget_false_alerts_per_day": float(false_alerts_per_day), "met_budget": bool(within),
            "validation": {k: v for k, v in best.items() if k not in keys},
            "validation_series": len(series),
            "validation_clean_hours": clean_hours(series)}


def clean_hours(series: list[Series]) -> float:
    """Hours of clean air (label 0) in ``series``, which are on the 1 Hz grid."""
    return sum(float((s.label == 0).sum()) for s in series) / 3600


def calibration_series(val: list[Series], train: list[Series], min_clean_hours: float, seed: int = 0) -> list[Series]:
    """The series to calibrate on: the validation series, and training series (in a seeded random
    order) until they hold ``min_clean_hours`` of clean air. A budget of one false alert a day cannot
    be checked on the hour or two of clean air a validation split of real recordings may hold (the
    shared field data's: 1.5 h, where no threshold showed a false alert and the test day had dozens).
    The training series are in-sample for the models, so their false alerts are if anything too few:
    they add evidence, not a guarantee."""
    chosen = list(val)
    hours = clean_hours(chosen)
    for i in np.random.default_rng(seed).permutation(len(train)):
        if hours >= min_clean_hours:
            break
        chosen.append(train[i])
        hours += clean_hours([train[i]])
    return chosen
