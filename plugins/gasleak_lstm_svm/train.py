"""`train` mode: stage 1 (the LSTM autoencoder, through the shared runner), then stage 2 (the SVMs).

The bundle (``<run_dir>/detector/``) is what every other mode loads: the best stage-1 checkpoint,
the SVM on the LSTM's 8 features, the pure SVM on the flattened window (trained alongside so the
fallback exists), and the threshold rule's settings. ``model=svm`` skips stage 1;
``model=threshold`` trains nothing and writes a bundle holding only the rule.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from framework import checkpoints, runner, runs
from framework.errors import UserError
from plugins.gasleak_lstm_svm.data import GasDataModule, Windows, hard_ends
from plugins.gasleak_lstm_svm.bundle import find_detector, save_bundle
from plugins.gasleak_lstm_svm.estimators import (LogisticDetector, LSTMSVMDetector, RiseDetector, SVMDetector,
                                                 ThresholdDetector)
from plugins.gasleak_lstm_svm.scoring import calibrate, calibration_series, clean_hours, series_probabilities
from plugins.gasleak_lstm_svm.service.alerts import rules_from_config

log = logging.getLogger(__name__)


def svm_training_set(ws: Windows, max_samples: int, hard_fraction: float, seed: int,
                     positive_fraction: float | None = None, hard_before: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows for the SVM, at most ``max_samples``, drawn without replacement so that about
    ``hard_fraction`` of them are "hard" (``data.hard_ends``: just after a leak starts or ends, or the
    gas reading jumps) and, when given, about ``positive_fraction`` are leak windows (leaks are rare
    in the data; a balanced sample moves the SVM's boundary towards recall and earlier alarms)."""
    rng = np.random.default_rng(seed)
    hard = hard_ends(ws, before=hard_before)
    ends = np.union1d(ws.ends, hard)
    is_hard = np.isin(ends, hard)
    pos = ws.label[ends] == 1
    w = np.zeros(len(ends))
    for group, mass in ((is_hard, hard_fraction), (~is_hard, 1 - hard_fraction)):
        share = {True: pos[group].mean(), False: 1 - pos[group].mean()} if positive_fraction is None else \
            {True: positive_fraction, False: 1 - positive_fraction}
        for cls in (True, False):
            members = group & (pos == cls)
            if members.any():
                w[members] = mass * share[cls] / members.sum()
    pick = np.sort(rng.choice(len(ends), min(max_samples, len(ends)), replace=False, p=w / w.sum()))
    return ws.at(ends[pick]).arrays()


def _scores(det, x: np.ndarray, base: np.ndarray, y: np.ndarray) -> dict:
    pred = det.predict(x, base)
    tp, fp, fn = int(((pred == 1) & (y == 1)).sum()), int(((pred == 1) & (y == 0)).sum()), int(((pred == 0) & (y == 1)).sum())
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {"accuracy": float((pred == y).mean()), "f1": f1}


def _sample_metrics(name: str, y: np.ndarray) -> dict:
    return {f"{name}/train_windows": int(len(y)), f"{name}/train_leak_share": round(float(y.mean()), 4)}


def resolve_init_from(cfg: DictConfig) -> DictConfig:
    """``init_from=<detector bundle or train run>``: fine-tune from the bundle's stage-1 checkpoint."""
    init = cfg.get("init_from")
    if not init or not Path(str(init)).is_dir():
        return cfg
    bundle = find_detector(OmegaConf.merge(cfg, {"ckpt_path": str(init)}))
    manifest = json.loads((bundle / "manifest.json").read_text())
    encoder = (manifest.get("detectors", {}).get("lstm_svm") or {}).get("encoder")
    if not encoder:
        raise UserError(f"init_from={init}: the bundle has no LSTM to fine-tune (it holds {manifest.get('primary')})")
    log.info("fine-tuning from the detector bundle %s", bundle)
    cfg = cfg.copy()
    cfg.init_from = str(bundle / encoder)
    return cfg


def fit_stage2(cfg: DictConfig, dm: GasDataModule, kind: str, encoder=None, best: str | None = None) -> tuple:
    """The SVMs on windows from the training series, the baselines, and each one's operating point
    calibrated on the validation series. Returns (primary detector, baselines, metrics)."""
    dcfg = cfg.detector
    started = time.monotonic()
    s = dcfg.svm
    # the pure SVM takes detector.svm with detector.pure_svm's keys on top (its own training sample)
    pure = OmegaConf.merge(s, dcfg.get("pure_svm") or {})
    train_ws = dm.windows("train", stride=s.stride)

    def draw(c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x, base, y = svm_training_set(train_ws, c.max_samples, c.hard_fraction, cfg.seed, c.get("positive_fraction"),
                                      dm.hard_before)
        if len(np.unique(y)) < 2:
            raise UserError(f"the training data has only {'leak' if y[0] else 'no-leak'} windows; the SVM needs both")
        log.info("stage 2: an SVM sample of %d windows (%.1f%% leak)", len(y), 100 * y.mean())
        return x, base, y

    def svm_kwargs(c) -> dict:
        return dict(C=c.C, gamma=c.gamma, kernel=c.kernel, cv=c.calibration_cv)

    xv, bv, yv = dm.windows("val", stride=s.val_stride).arrays()
    metrics: dict = {}

    def report(name: str, det, y):
        val = _scores(det, xv, bv, yv)
        print(f"{det.status}: validation accuracy {val['accuracy']:.4f}, F1 {val['f1']:.4f} on {len(yv)} windows", flush=True)
        metrics.update({f"{name}/val_accuracy": val["accuracy"], f"{name}/val_f1": val["f1"], **_sample_metrics(name, y)})

    want_baselines = dcfg.get("baselines", True)  # the simple detectors every evaluation compares against
    # one sample serves the pure SVM and the baselines
    pure_sample = draw(pure) if kind == "svm" or dcfg.fallback_svm or want_baselines else None
    svm = None
    if kind == "svm" or dcfg.fallback_svm:
        x, base, y = pure_sample
        svm = SVMDetector(**svm_kwargs(pure), spec=dm.spec).fit(x, y, base)
        report("svm", svm, y)
    detector = svm
    if kind == "lstm_svm":
        x, base, y = draw(s)
        # its inputs are the encoder's: dm.spec, or the checkpoint's when fine-tuning (adopt_checkpoint)
        detector = LSTMSVMDetector(encoder, fallback=svm, encoder_checkpoint=best, **svm_kwargs(s)).fit(x, y, base)
        report("lstm_svm", detector, y)
    baselines = []
    if want_baselines:
        x, base, y = pure_sample
        baselines = [LogisticDetector(spec=dm.spec).fit(x, y, base), RiseDetector(spec=dm.spec).fit(x, y, base)]
    metrics["svm_fit_seconds"] = round(time.monotonic() - started, 2)

    # operating points: each detector's alert threshold, chosen on the validation series
    started = time.monotonic()
    rules = rules_from_config(cfg.alerts)
    budget = float(cfg.alerts.false_alarms_per_day)
    ccfg = cfg.alerts.get("calibration") or {}
    # a fixed alerts.consecutive is not calibrated
    counts = [rules.consecutive] if cfg.alerts.get("consecutive") is not None else ccfg.get("consecutive")
    series = calibration_series(dm.series("val"), dm.series("train"), float(ccfg.get("min_clean_hours", 0)), cfg.seed)
    clean_h = clean_hours(series)
    log.info("calibrating on %d series (%d validation), %.1f h of clean air", len(series), len(dm.series("val")), clean_h)
    members = ([svm] if svm is not None else []) + ([detector] if detector is not svm else []) + baselines
    for det in members:
        probs = [series_probabilities(det, v) for v in series]
        det.operating_point = calibrate(series, probs, rules, budget, float(cfg.evaluate.tolerance_s),
                                        float(cfg.evaluate.grace_s), consecutive=counts)
        op = det.operating_point
        print(f"{det.status}: alert after {op['consecutive']} windows at p >= {op['probability']:g} "
              f"({op['validation']['false_alerts_per_day']:.2f} false alerts a day in {clean_h:.1f} h of clean air, "
              f"budget {budget:g}{'' if op['met_budget'] else ', NOT met'})", flush=True)
        metrics[f"{det.kind}/alert_probability"] = op["probability"]
        metrics[f"{det.kind}/alert_consecutive"] = op["consecutive"]
    metrics["calibration_seconds"] = round(time.monotonic() - started, 2)
    return detector, baselines, metrics


def run(cfg: DictConfig) -> dict:
    dcfg = cfg.detector
    kind = str(dcfg.kind)
    if kind not in ("lstm_svm", "svm", "threshold"):
        raise UserError(f"detector.kind must be lstm_svm, svm or threshold, got {kind!r}")
    bundle_dir = runs.run_dir() / "detector"
    metrics: dict = {}
    rules = rules_from_config(cfg.alerts)  # the ppm levels of alerts.*, also the threshold detector's
    best = encoder = None

    if kind == "threshold":
        runs.record_started(cfg)
        dm = instantiate(cfg.data, _convert_="all")  # only its input settings (data.window ...): nothing is loaded
        threshold = ThresholdDetector(rules.warning_ppm, rules.danger_ppm, spec=dm.spec).fit()
        save_bundle(bundle_dir, threshold)
        runs.record_train(cfg, checkpoint=None, detector=str(bundle_dir))
        print(f"threshold rule saved to {bundle_dir} (nothing to train)", flush=True)
        return {"detector": "threshold", "warning_ppm": threshold.warning_ppm, "danger_ppm": threshold.danger_ppm}

    if kind == "lstm_svm":  # stage 1: the autoencoder through the shared runner
        fitted = runner.fit(resolve_init_from(cfg))
        dm: GasDataModule = fitted.datamodule
        best = fitted.best_checkpoint
        encoder = fitted.module
        if best:
            encoder.load_state_dict(checkpoints.load(best)["state_dict"])
        metrics |= {f"autoencoder/{k.replace('/', '_')}": v for k, v in fitted.metrics.items()}
        metrics |= {f"autoencoder/{k.replace('/', '_')}": v for k, v in runner.test(fitted, cfg).items()}
        if not fitted.trainer.is_global_zero:
            return {}  # DDP: stage 2 (one process's job) and the bundle are rank 0's
    else:
        pl.seed_everything(cfg.seed, verbose=False)
        runs.record_started(cfg)
        dm = instantiate(cfg.data, _convert_="all")
        dm.prepare_data()

    detector, baselines, stage2 = fit_stage2(cfg, dm, kind, encoder, best)
    metrics |= stage2
    threshold = ThresholdDetector(rules.warning_ppm, rules.danger_ppm, spec=dm.spec).fit()
    save_bundle(bundle_dir, detector, threshold, baselines=tuple(baselines), train_metrics=metrics,
                config={"data": str(cfg.data._target_)})
    runs.record_train(cfg, checkpoint=best, detector=str(bundle_dir))
    log.info("detector bundle: %s", bundle_dir)
    print(f"detector ({detector.status}) saved to {bundle_dir}", flush=True)
    return {"detector": kind, **metrics}
