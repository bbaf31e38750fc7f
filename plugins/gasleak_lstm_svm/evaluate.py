"""`evaluate` mode: the trained detector, its fallbacks and the baselines side by side on held-out series.

Each test series is scored at stride 1 and replayed through the service's alert engine with each
detector's calibrated operating point (``scoring.py``), so the figures are the alerts a user would
receive. For every detector in the bundle (LSTM+SVM, pure SVM, the logistic and rise baselines) and
the threshold rule:

* per window (labelled by its last sample; windows within ``evaluate.tolerance_s`` of a label edge
  left out): precision, recall, F1, accuracy, false-alarm rate (FP / negatives) of p >= the operating
  probability, and the confusion matrix;
* per release: detected, latency (median, p90) from the labelled start to the first alert;
  false alerts (opened in clean air) per day and per week; series alerted before their release.

Writes ``evaluation.json`` (tables, every release and false alert), ``confusion.png`` and
``day.png`` (one test series: readings, ground truth, each detector's probability and alerts).
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig

from framework import runs
from plugins.gasleak_lstm_svm.data import GasDataModule, Series, Windows
from plugins.gasleak_lstm_svm.bundle import find_detector, load_detector
from plugins.gasleak_lstm_svm.estimators import DETECTORS, STATUS, ThresholdDetector
from plugins.gasleak_lstm_svm.scoring import (events_of, replay_series, score_alerts, scored_windows, series_probabilities,
                                              summarise, window_metrics)
from plugins.gasleak_lstm_svm.service.alerts import AlertRules, rules_from_config

log = logging.getLogger(__name__)


def evaluate_detector(det, series: list[Series], rules: AlertRules, tolerance_s: float, grace_s: float,
                      window_probability: float | None = None) -> dict:
    """Per-window figures at ``window_probability`` (default: the alert rule's), alerts by ``rules``."""
    window_probability = rules.probability if window_probability is None else window_probability
    ys, preds, per_series, probs_all, alerts_all = [], [], [], [], []
    started = time.monotonic()
    n_windows = 0
    for s in series:
        probs = series_probabilities(det, s)
        n_windows += int((~np.isnan(probs)).sum())
        y, p = scored_windows(s, probs, tolerance_s)
        ys.append(y)
        preds.append((p >= window_probability).astype(np.int64))
        alerts = replay_series(rules, s, probs)
        per_series.append(score_alerts(s, alerts, tolerance_s, grace_s))
        probs_all.append(probs)
        alerts_all.append(alerts)
    seconds = time.monotonic() - started
    result = window_metrics(np.concatenate(ys), np.concatenate(preds))
    result |= summarise(per_series)
    result |= {"alert_probability": rules.probability, "alert_rule": rules.describe(),
               "window_probability": window_probability, "windows": n_windows,
               "windows_per_second": n_windows / max(seconds, 1e-9)}
    result["_per_series"] = per_series
    result["_probs"] = probs_all
    result["_alerts"] = alerts_all
    return result


def format_table(results: dict[str, dict]) -> str:
    rows = [("alert_probability", "{:g}"), ("alert_consecutive", "{}"), ("alert_evidence", "{:g}"),
            ("window_probability", "{:g}"), ("precision", "{:.4f}"), ("recall", "{:.4f}"), ("f1", "{:.4f}"),
            ("accuracy", "{:.4f}"), ("false_alarm_rate", "{:.5f}"), ("events_detected", "{}"), ("events", "{}"),
            ("detection_rate", "{:.3f}"), ("latency_median_s", "{:.1f}"), ("latency_p90_s", "{:.1f}"),
            ("false_alerts", "{}"), ("false_alerts_per_day", "{:.2f}"), ("false_alerts_per_week", "{:.2f}"),
            ("series_alerted_before_release", "{}"), ("windows_per_second", "{:.0f}")]
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
    colors = {"lstm_svm": "tab:green", "svm": "tab:blue", "threshold": "tab:grey", "logistic": "tab:orange",
              "rise": "tab:brown"}
    for j, (name, r) in enumerate(results.items()):
        probs = r["_probs"][index]
        a3.plot(t[ends], probs[ends], lw=0.5, color=colors[name], label=f"{STATUS[name]} p(leak)")
        for al in r["_alerts"][index]:
            stop = al["end_ts"] if al["end_ts"] is not None else series.time[-1]
            a3.plot([(al["start_ts"] - series.time[0]) / 3600 + t[0], (stop - series.time[0]) / 3600 + t[0]],
                    [1.04 + 0.035 * j] * 2, lw=3, color=colors[name])
    a3.set_ylim(-0.02, 1.25)
    a3.set_ylabel("probability; bars = alerts")
    a3.set_xlabel("hours")
    a1.legend(loc="upper right")
    a3.legend(loc="center right", fontsize=8)
    a1.set_title(f"{series.series_id}: shaded = ground-truth leaks, dotted = hard negatives")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: DictConfig) -> dict:
    bundle = find_detector(cfg)
    ecfg = cfg.evaluate
    tolerance_s, grace_s = float(ecfg.tolerance_s), float(ecfg.grace_s)
    levels = rules_from_config(cfg.alerts)  # the configured ppm levels, for the alert engine and the threshold rule alike
    levels = {"warning_ppm": levels.warning_ppm, "danger_ppm": levels.danger_ppm}
    primary = load_detector(bundle, **levels)
    dm: GasDataModule = instantiate(cfg.data, _convert_="all")
    dm.use_inputs(primary.spec)  # the bundle's inputs (data.window ...), whatever this config says
    dm.prepare_data()
    series = dm.series("test")
    out_dir = runs.run_dir()
    print(f"evaluating {bundle} on {len(series)} test series ({sum(map(len, series)) / 3600:.1f} h), alerts replayed "
          f"through the service's alert engine (each detector's operating point: windows in a row at a "
          f"probability), tolerance {tolerance_s:g} s", flush=True)

    results: dict[str, dict] = {}
    window_p = ecfg.get("window_probability")  # null: each detector's alert probability
    for kind in ecfg.detectors:
        if kind not in DETECTORS:
            continue
        det = load_detector(bundle, kind=kind, **levels)
        if det.kind != kind:
            log.info("%s not in the bundle (%s); skipped", STATUS[kind], det.fallback_reason)
            continue
        rules = AlertRules.from_config(cfg.alerts, det.operating_point)
        log.info("scoring %s (alert at %s; per-window threshold %g)", det.status, rules.describe(),
                 rules.probability if window_p is None else window_p)
        results[kind] = evaluate_detector(det, series, rules, tolerance_s, grace_s, window_p)
        results[kind]["alert_consecutive"] = rules.consecutive if rules.rule == "consecutive" else None
        results[kind]["alert_evidence"] = rules.evidence if rules.rule == "evidence" else None
        if isinstance(det, ThresholdDetector):
            results[kind] |= {"warning_ppm": det.warning_ppm, "danger_ppm": det.danger_ppm}
    print(format_table(results), flush=True)

    day = min(int(ecfg.plot_series), len(series) - 1)
    plot_confusions(results, out_dir / "confusion.png")
    plot_day(series[day], results, day, dm.window, dm.eval_stride, out_dir / "day.png")
    report = {name: {key: v for key, v in r.items() if not key.startswith("_")} for name, r in results.items()}
    for name, r in results.items():
        report[name]["event_list"] = [{**e, "series": s.series_id} for s, ps in zip(series, r["_per_series"])
                                      for e in ps["events"]]
        report[name]["false_alert_times"] = [{"series": s.series_id, "time": t} for s, ps in zip(series, r["_per_series"])
                                             for t in ps["false_alerts"]]
    (out_dir / "evaluation.json").write_text(json.dumps(
        {"bundle": str(bundle), "tolerance_s": tolerance_s, "grace_s": grace_s,
         "alert_rule": {"rule": cfg.alerts.get("rule"), "consecutive": cfg.alerts.consecutive,
                        "probability": cfg.alerts.probability, "evidence": cfg.alerts.get("evidence")},
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
