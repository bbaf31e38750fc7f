"""Gas-leak train and evaluate end to end through `python -m framework`, on tiny settings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import last_json_line

TINY = [
    "data.seconds_per_day=7200", "data.train_days=1", "data.val_days=1", "data.calibration_days=null", "data.test_days=1",
    "data.leaks_per_hour=1.0", "data.train_stride=20", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
    "detector.svm.max_samples=800", "detector.svm.calibration_cv=3",
]
KINDS = ("lstm_svm", "svm", "threshold", "logistic", "rise")


def record(outputs: Path) -> dict:
    return json.loads((outputs / "gasleak" / "runs.json").read_text())["latest_train"]


def latest_run(outputs: Path, mode: str) -> Path:
    return sorted((outputs / "gasleak" / mode).iterdir())[-1]


@pytest.mark.slow
def test_train_then_evaluate_lstm_svm(run_cli, outputs):
    # two epochs: one (22 steps) leaves stage 1 near its initialisation (validation accuracy 0.48 here; 0.90 after two)
    tiny = [o for o in TINY if not o.startswith(("trainer.max_epochs=", "data.calibration_days="))]
    tiny += ["trainer.max_epochs=2", "data.calibration_days=2"]  # the validation day and one more
    proc = run_cli("task=gasleak", "train", *tiny, "detector.pure_svm.positive_fraction=0.1", "+detector.pure_svm.hard_fraction=0",
                   "detector.svm.mined_negatives=50")
    assert "autoencoder epoch 0: train loss" in proc.stdout
    mined = re.search(r"stage 2: (\d+) of (\d+) clean-air windows score >= 0.5", proc.stdout + proc.stderr)
    assert mined and int(mined.group(1)) <= 50 and int(mined.group(2)) > 0  # hard-negative mining ran ...
    assert "LSTM+SVM: validation accuracy" in proc.stdout and "Pure SVM: validation accuracy" in proc.stdout
    metrics = last_json_line(proc.stdout)
    assert metrics["detector"] == "lstm_svm" and 0.5 <= metrics["lstm_svm/val_accuracy"] <= 1
    assert metrics["autoencoder/val_aux"] > 0  # the default stage 1 has the auxiliary leak loss (model.aux_weight)
    # each SVM is fitted on its own sample: detector.svm's 40% leak windows, the pure SVM's overrides
    assert metrics["lstm_svm/train_leak_share"] == pytest.approx(0.4, abs=0.06)
    assert metrics["lstm_svm/train_windows"] == 800 + int(mined.group(1))  # ... and its windows joined the sample
    assert metrics["svm/train_leak_share"] == pytest.approx(0.1, abs=0.04)
    rec = record(outputs)
    bundle = Path(rec["detector"])
    assert bundle.parent == Path(rec["run_dir"])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(manifest["detectors"]) == {"lstm_svm", "svm", "logistic", "rise"} and manifest["primary"] == "lstm_svm"
    assert set(manifest["files"]) == {"lstm.ckpt", "lstm_svm.skops", "svm.skops", "logistic.skops", "rise.skops"}
    # every learned detector carries the alert threshold calibrated on the two calibration days (and,
    # 24 h of clean air being more than their 2 x 2 h, the training day)
    assert "calibrating on 3 series (2 validation)" in proc.stdout + proc.stderr
    for kind, entry in manifest["detectors"].items():
        op = entry["operating_point"]
        assert op["calibrated"] and 0 < op["probability"] < 1 and op["budget_false_alerts_per_day"] == 1.0, kind
        assert op["validation_series"] == 3, kind
        assert metrics[f"{kind}/alert_probability"] == op["probability"]

    proc = run_cli("task=gasleak", "evaluate", *TINY)
    metrics = last_json_line(proc.stdout)
    run = latest_run(outputs, "evaluate")
    for kind in KINDS:
        for key in ("precision", "recall", "f1", "false_alarm_rate", "detection_rate", "latency_median_s",
                    "false_alerts_per_day", "false_alerts_per_week", "series_alerted_before_release"):
            assert f"{kind}/{key}" in metrics, f"{kind}/{key}"
        assert metrics[f"{kind}/tp"] + metrics[f"{kind}/fn"] > 0  # the test day has leaks
        assert metrics[f"{kind}/windows"] == 7200 - 59  # every window, stride 1
    for name in ("evaluation.json", "confusion.png", "day.png", "metrics.json"):
        assert (run / name).stat().st_size > 0, name
    for name in ("PyTorch LSTM+SVM", "Threshold", "Logistic baseline", "Rise baseline"):  # the side-by-side table
        assert name in proc.stdout
    report = json.loads((run / "evaluation.json").read_text())
    # null: each detector's operating point
    assert report["alert_rule"] == {"rule": None, "consecutive": None, "probability": None, "evidence": None}
    for kind in ("lstm_svm", "svm", "logistic", "rise"):
        op = manifest["detectors"][kind]["operating_point"]
        assert metrics[f"{kind}/alert_probability"] == op["probability"]
        # one of the two rules, with one of the calibration's window counts or evidence levels
        if op["rule"] == "consecutive":
            assert metrics[f"{kind}/alert_consecutive"] == op["consecutive"] in (3, 10, 30)
            assert metrics[f"{kind}/alert_evidence"] is None
        else:
            assert op["rule"] == "evidence" and op["probability"] >= 0.5
            assert metrics[f"{kind}/alert_evidence"] == op["evidence"] in (5, 10, 20, 40, 80)
            assert metrics[f"{kind}/alert_consecutive"] is None
        # the per-window figures count p >= evaluate.window_probability (0.5)
        assert report["detectors"][kind]["window_probability"] == 0.5
    assert metrics["threshold/alert_probability"] == 0.7 and metrics["threshold/alert_consecutive"] == 3
    events = report["detectors"]["threshold"]["event_list"]
    assert events and all(e["latency_s"] is None or e["latency_s"] >= 0 for e in events)

    # the LSTM file goes missing: evaluate still runs, on the fallback, and says so
    (bundle / "lstm.ckpt").unlink()
    proc = run_cli("task=gasleak", "evaluate", *TINY)
    metrics = last_json_line(proc.stdout)
    assert "lstm_svm/f1" not in metrics and "svm/f1" in metrics
    assert "LSTM not loaded" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_optuna_study_searches_stage_one(run_cli, outputs):
    run_cli("task=gasleak", "train", "hparams_search=gasleak_optuna", "hydra.sweeper.n_trials=2",
            "hydra.sweeper.sampler.n_startup_trials=2", *TINY)
    (sweep,) = (outputs / "gasleak" / "multirun" / "train").iterdir()
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert set(result["best_params"]) == {"model.lr", "model.hidden_size", "model.dropout"}
    trials = [j for j in sweep.iterdir() if j.name.isdigit()]
    scores = [json.loads((j / "metrics.json").read_text())["autoencoder/best_model_score"] for j in trials]
    assert len(scores) == 2 and result["best_value"] == pytest.approx(min(scores))
    assert all((j / "detector" / "manifest.json").exists() for j in trials)  # each trial is a whole detector


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["svm", "threshold"])
def test_other_detectors_train_and_evaluate(run_cli, outputs, kind):
    proc = run_cli("task=gasleak", "train", f"model={kind}", *TINY)
    assert last_json_line(proc.stdout)["detector"] == kind
    assert "autoencoder epoch" not in proc.stdout  # no neural stage
    manifest = json.loads((Path(record(outputs)["detector"]) / "manifest.json").read_text())
    assert manifest["primary"] == kind
    metrics = last_json_line(run_cli("task=gasleak", "evaluate", *TINY).stdout)
    assert "lstm_svm/f1" not in metrics and "threshold/f1" in metrics
    assert ("svm/f1" in metrics) == (kind == "svm")


@pytest.mark.slow
def test_csv_train_and_evaluate_with_bad_rows(run_cli, outputs, tmp_path):
    from test_gas_data import write_sim_csv

    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    write_sim_csv(train, days=4, seconds=3600, seed=100)
    write_sim_csv(test, days=1, seconds=3600, seed=200)
    lines = train.read_text().splitlines()
    lines[10] = lines[10].replace(lines[10].split(",")[1], "oops", 1)  # line 11: non-numeric gas
    lines[20] = ",".join(lines[20].split(",")[:3])  # line 21: missing fields
    train.write_text("\n".join(lines) + "\n")
    csv = ["data=csv", f"data.path={train}", "data.train_stride=20", "trainer.max_epochs=1",
           "trainer.enable_progress_bar=false", "detector.svm.max_samples=800", "detector.svm.calibration_cv=3"]
    proc = run_cli("task=gasleak", "train", *csv, "data.on_bad_rows=interpolate")
    assert "2 bad row(s)" in proc.stdout + proc.stderr and "lines 11, 21" in proc.stdout + proc.stderr
    assert last_json_line(proc.stdout)["detector"] == "lstm_svm"
    metrics = last_json_line(run_cli("task=gasleak", "evaluate", *csv, f"data.test_path={test}").stdout)
    assert metrics["test_hours"] == pytest.approx(1.0)
    assert metrics["lstm_svm/windows"] == 3600 - 59 and np.isfinite(metrics["lstm_svm/f1"])


def test_evaluate_without_a_detector_is_one_line(run_cli):
    proc = run_cli("task=gasleak", "evaluate", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: no trained detector; run `python -m framework task=gasleak train` first"


@pytest.mark.slow
def test_window_length_and_alert_levels_come_from_the_config(run_cli, outputs):
    """data.window trains, saves and evaluates one window length (evaluate takes the bundle's, whatever
    its own data.window says); alerts.warning_ppm/danger_ppm are the threshold rule's levels."""
    run_cli("task=gasleak", "train", "model=threshold", *TINY, "data.window=30", "alerts.warning_ppm=300")
    manifest = json.loads((Path(record(outputs)["detector"]) / "manifest.json").read_text())
    assert manifest["window"] == manifest["inputs"]["window"] == 30 and manifest["threshold"]["warning_ppm"] == 300

    run_cli("task=gasleak", "train", *TINY, "data.window=30")
    manifest = json.loads((Path(record(outputs)["detector"]) / "manifest.json").read_text())
    assert manifest["window"] == manifest["inputs"]["window"] == 30
    metrics = last_json_line(run_cli("task=gasleak", "evaluate", *TINY, "alerts.warning_ppm=250",
                                     "alerts.danger_ppm=700").stdout)
    for kind in KINDS:
        assert metrics[f"{kind}/windows"] == 7200 - 29, kind  # every 30-sample window, stride 1
    assert (metrics["threshold/warning_ppm"], metrics["threshold/danger_ppm"]) == (250, 700)
