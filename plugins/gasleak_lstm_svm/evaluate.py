"""`evaluate` mode: score the trained detector and its fallbacks side by side on held-out series.

For every detector in the bundle (LSTM+SVM, pure SVM) and the threshold rule:

* per window (every window, stride ``data.eval_stride``, labelled by its last sample):
  precision, recall, F1, accuracy, false-alarm rate (FP / negatives), confusion matrix;
* per event, under the alert rule (``detector.confirm_alarms``: ``alerts.consecutive`` windows in a
  row at probability >= ``alerts.probability``): detection rate and latency (seconds from the
  leak's start to the first confirmed alarm); false alarms: confirmed alarm episodes that begin
  outside every leak (or more than ``evaluate.grace_s`` after its end), per simulated week.

Writes ``evaluation.json`` (tables), ``confusion.png`` and ``day.png`` (one test day: readings,
ground truth, each detector's probability and confirmed alarms) into the run directory.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from framework import runs
from plugins.gasleak_lstm_svm.data import GasDataModule, Series, Windows, label_runs
from plugins.gasleak_lstm_svm.detector import FALLBACK_ORDER, STATUS, confirm_alarms, find_detector, load_detector

log = logging.getLogger(__name__)
WEEK_S = 7 * 24 * 3600


def events_of(series: Series) -> list[dict]:
    """Ground-truth events: the simulator's, else runs of label 1 (CSV), in sample indices."""
    if series.events is not None:
        return [{"start": int(e.start), "end": int(min(np.ceil(e.end), len(series))), "kind": e.kind} for e in series.events
                if e.start < len(series)]
    return [{"start": a, "end": b, "kind": "leak"} for a, b in label_runs(series.label)]


def score_series(series: Series, probs: np.ndarray, ends: np.ndarray, k: int, p: float, grace_s: float) -> dict:
    """Event-level results for one series. ``ends`` are the sample indices of each window's last sample."""
    confirmed = confirm_alarms(probs, k, p)
    t = series.time
    events = events_of(series)
    out_events = []
    for ev in events:
        hit = np.flatnonzero(confirmed & (ends >= ev["start"]) & (ends < ev["end"]))
        latency = float(t[ends[hit[0]]] - t[ev["start"]]) if len(hit) else None
        out_events.append({**ev, "detected": bool(len(hit)), "latency_s": latency})
    covered = np.zeros(len(series), dtype=bool)
    for ev in events:
        stop = np.searchsorted(t, t[ev["end"] - 1] + grace_s, side="right")
        covered[ev["start"] : stop] = True
    episodes = label_runs(confirmed.astype(np.int8))
    false_alarms = [float(t[ends[a]]) for a, _ in episodes if not covered[ends[a]]]
    return {"events": out_events, "false_alarms": false_alarms, "confirmed": confirmed,
            "seconds": float(t[-1] - t[0] + 1) if len(t) > 1 else 1.0}


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


def evaluate_detector(det, series: list[Series], window: int, stride: int, k: int, p: float, grace_s: float) -> dict:
    ys, preds, per_series, probs_all = [], [], [], []
    started = time.monotonic()
    n_windows = 0
    for s in series:
        ws = Windows([s], window, stride)
        probs = np.concatenate([det.predict_proba(ws.gather(np.arange(i, min(i + 8192, len(ws)))))[:, 1]
                                for i in range(0, len(ws), 8192)]) if len(ws) else np.zeros(0)
        n_windows += len(ws)
        ys.append(ws.y)
        preds.append((probs >= 0.5).astype(np.int64))
        per_series.append(score_series(s, probs, ws.ends, k, p, grace_s))
        probs_all.append(probs)
    seconds = time.monotonic() - started
    y, pred = np.concatenate(ys), np.concatenate(preds)
    result = window_metrics(y, pred)
    events = [e for r in per_series for e in r["events"]]
    lat = [e["latency_s"] for e in events if e["latency_s"] is not None]
    monitored = sum(r["seconds"] for r in per_series)
    n_false = sum(len(r["false_alarms"]) for r in per_series)
    result |= {
        "events": len(events),
        "events_detected": sum(e["detected"] for e in events),
        "detection_rate": sum(e["detected"] for e in events) / len(events) if events else None,
        "latency_median_s": float(np.median(lat)) if lat else None,
        "latency_p90_s": float(np.percentile(lat, 90)) if lat else None,
        "latency_max_s": float(np.max(lat)) if lat else None,
        "false_alarms": n_false,
        "false_alarms_per_week": n_false * WEEK_S / monitored,
        "monitored_hours": monitored / 3600,
        "windows": n_windows,
        "windows_per_second": n_windows / max(seconds, 1e-9),
    }
    kinds = sorted({e["kind"] for e in events})
    for kind in kinds:
        kl = [e["latency_s"] for e in events if e["kind"] == kind and e["latency_s"] is not None]
        kn = [e for e in events if e["kind"] == kind]
        result[f"latency_median_s/{kind}"] = float(np.median(kl)) if kl else None
        result[f"detection_rate/{kind}"] = sum(e["detected"] for e in kn) / len(kn)
    result["_per_series"] = per_series
    result["_probs"] = probs_all
    return result


def format_table(results: dict[str, dict]) -> str:
    rows = [("precision", "{:.4f}"), ("recall", "{:.4f}"), ("f1", "{:.4f}"), ("accuracy", "{:.4f}"),
            ("false_alarm_rate", "{:.5f}"), ("detection_rate", "{:.3f}"), ("latency_median_s", "{:.1f}"),
            ("latency_p90_s", "{:.1f}"), ("false_alarms", "{}"), ("false_alarms_per_week", "{:.2f}"),
            ("windows_per_second", "{:.0f}")]
    extra = sorted({k for r in results.values() for k in r if k.startswith("latency_median_s/")})
    rows += [(k, "{:.1f}") for k in extra]
    names = list(results)
    width = max(len(r) for r, _ in rows) + 2
    lines = ["".ljust(width) + "".join(STATUS[n].rjust(18) for n in names)]
    for key, fmt in rows:
        cells = []
        for n in names:
            v = results[n].get(key)
            cells.append(("-" if v is None else fmt.format(v)).rjust(18))
        lines.append(key.ljust(width) + "".join(cells))
    return "\n".join(lines)


def plot_confusions(results: dict[str, dict], path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.6))
    for ax, (name, r) in zip(np.atleast_1d(axes), results.items()):
        cm = np.array(r["confusion"])
        ax.imshow(cm, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, f"{v}", ha="center", va="center", color="black")
        ax.set_xticks([0, 1], ["no leak", "leak"])
        ax.set_yticks([0, 1], ["no leak", "leak"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(STATUS[name])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_day(series: Series, results: dict[str, dict], index: int, window: int, stride: int, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = series.time / 3600
    ends = Windows([series], window, stride).ends
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(14, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.3, 2]})
    a1.plot(t, series.signal[:, 0], lw=0.6, color="tab:red", label="gas (ppm)")
    a1.set_yscale("symlog", linthresh=100)
    a1.set_ylabel("gas ppm")
    for ev in events_of(series):
        for ax in (a1, a3):
            ax.axvspan(t[ev["start"]], t[ev["end"] - 1], color="orange", alpha=0.25, lw=0)
        a1.text(t[ev["start"]], series.signal[:, 0].max(), ev["kind"], fontsize=7, va="top")
    for h in series.meta.get("hard_negatives", []):
        a1.axvline(t[min(int(h.start), len(t) - 1)], color="grey", lw=0.5, ls=":")
    a2.plot(t, series.signal[:, 1], lw=0.6, color="tab:purple", label="temperature (°C)")
    a2b = a2.twinx()
    a2b.plot(t, series.signal[:, 2], lw=0.6, color="tab:blue", label="humidity (%RH)")
    a2.set_ylabel("°C")
    a2b.set_ylabel("%RH")
    colors = {"lstm_svm": "tab:green", "svm": "tab:blue", "threshold": "tab:grey"}
    for j, (name, r) in enumerate(results.items()):
        probs = r["_probs"][index]
        conf = r["_per_series"][index]["confirmed"]
        a3.plot(t[ends], probs, lw=0.5, color=colors[name], label=f"{STATUS[name]} p(leak)")
        a3.plot(t[ends][conf], np.full(conf.sum(), 1.04 + 0.04 * j), "|", ms=6, color=colors[name])
    a3.set_ylim(-0.02, 1.2)
    a3.set_ylabel("probability; | = confirmed alarm")
    a3.set_xlabel("hours")
    a1.legend(loc="upper right")
    a3.legend(loc="center right", fontsize=8)
    a1.set_title(f"{series.series_id}: shaded = ground-truth leaks, dotted = hard negatives")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: DictConfig) -> dict:
    from plugins.gasleak_lstm_svm.train import set_threads

    set_threads(cfg.detector)
    bundle = find_detector(cfg)
    ecfg = cfg.evaluate
    k, p = int(cfg.alerts.consecutive), float(cfg.alerts.probability)
    dm: GasDataModule = instantiate(cfg.data, _convert_="all")
    dm.prepare_data()
    series = dm.series("test")
    out_dir = runs.run_dir()
    print(f"evaluating {bundle} on {len(series)} test series ({sum(map(len, series)) / 3600:.1f} h), "
          f"alert rule: {k} windows in a row at p >= {p:g}", flush=True)

    results: dict[str, dict] = {}
    for kind in ecfg.detectors:
        if kind not in FALLBACK_ORDER:
            continue
        det = load_detector(bundle, kind=kind)
        if det.kind != kind:
            log.info("%s not in the bundle (%s); skipped", STATUS[kind], det.fallback_reason)
            continue
        log.info("scoring %s", det.status)
        results[kind] = evaluate_detector(det, series, dm.window, dm.eval_stride, k, p, float(ecfg.grace_s))
    print(format_table(results), flush=True)

    day = min(int(ecfg.plot_series), len(series) - 1)
    plot_confusions(results, out_dir / "confusion.png")
    plot_day(series[day], results, day, dm.window, dm.eval_stride, out_dir / "day.png")
    report = {name: {key: v for key, v in r.items() if not key.startswith("_")} for name, r in results.items()}
    for name, r in results.items():
        report[name]["event_list"] = [e for s in r["_per_series"] for e in s["events"]]
        report[name]["false_alarm_times"] = [t for s in r["_per_series"] for t in s["false_alarms"]]
    (out_dir / "evaluation.json").write_text(json.dumps({"bundle": str(bundle), "alert_rule": {"consecutive": k, "probability": p},
                                                         "detectors": report}, indent=2))
    print(f"wrote {out_dir / 'evaluation.json'}, {out_dir / 'confusion.png'}, {out_dir / 'day.png'}", flush=True)

    metrics: dict = {"bundle": str(bundle), "test_hours": sum(map(len, series)) / 3600}
    for name, r in report.items():
        for key, v in r.items():
            if key == "confusion":
                (tn, fp), (fn, tp) = v
                metrics |= {f"{name}/tn": tn, f"{name}/fp": fp, f"{name}/fn": fn, f"{name}/tp": tp}
            elif not isinstance(v, list):
                metrics[f"{name}/{key}"] = v
    return metrics
