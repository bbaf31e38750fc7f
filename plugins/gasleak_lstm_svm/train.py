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
from plugins.gasleak_lstm_svm.service.alerts import RULES, AlertRules, rules_from_config

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


def clean_air_ends(ws: Windows, stride: int, margin: int) -> np.ndarray:
    """Window ends (flat indices, one every ``stride`` samples of each series) whose window and the
    ``margin`` samples before it are all clean air (label 0): no release, and not its tail."""
    leak = np.concatenate([[0], np.cumsum(ws.label.astype(np.int64))])
    out = []
    for i in range(len(ws.series)):
        a, b = ws.offsets[i], ws.offsets[i + 1]
        ends = np.arange(a + ws.window - 1, b, stride, dtype=np.int64)
        first = np.maximum(ends - ws.window + 1 - margin, a)
        out.append(ends[leak[ends + 1] == leak[first]])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def mined_negatives(det, ws: Windows, count: int, stride: int, margin: int, floor: float = 0.5) -> tuple[np.ndarray, int]:
    """The ``count`` clean-air windows of ``ws``'s series (``clean_air_ends``) that ``det`` scores
    highest, those at or above ``floor``: (their ends, windows scored). A random sample of clean air
    holds few of the rare things that look like a leak (a cooking plume, a humidity step, a wandering
    background) and each such moment lasts a while, so its windows decide the false alerts; adding
    them to a second fit is hard-negative mining (bootstrapping)."""
    ends = clean_air_ends(ws, stride, margin)
    probs = np.concatenate([det.predict_proba(*ws.at(ends[i : i + 8192]).arrays()[:2])[:, 1]
                            for i in range(0, len(ends), 8192)]) if len(ends) else np.zeros(0)
    order = np.argsort(-probs, kind="stable")[:count]
    return np.sort(ends[order[probs[order] >= floor]]), len(ends)


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


def calibration_candidates(cfg: DictConfig, rules) -> tuple[list[int], list[float]]:
    """The window counts and evidence levels calibration tries: those of the rules in
    ``alerts.calibration.rules``, or of the one rule fixed by ``alerts.rule`` (or by
    ``alerts.consecutive`` alone); a fixed window count or evidence level is not calibrated."""
    ccfg = cfg.alerts.get("calibration") or {}
    tried = list(ccfg.get("rules") or ["consecutive"])
    fixed_rule = cfg.alerts.get("rule") or ("consecutive" if cfg.alerts.get("consecutive") is not None else None)
    tried = [fixed_rule] if fixed_rule else tried
    if not set(tried) <= set(RULES):
        raise UserError(f"alerts.calibration.rules must be a list of {', '.join(RULES)}, got {tried}")
    counts = [rules.consecutive] if cfg.alerts.get("consecutive") is not None else list(ccfg.get("consecutive") or [3])
    levels = [rules.evidence] if cfg.alerts.get("evidence") is not None else list(ccfg.get("evidence") or [rules.evidence])
    return (counts if "consecutive" in tried else []), (levels if "evidence" in tried else [])


def fit_stage2(cfg: DictConfig, dm: GasDataModule, kind: str, encoder=None, best: str | None = None) -> tuple:
    """The SVMs on windows from the training series, the baselines, and each one's operating point
    calibrated on the validation series. Returns (primary detector, baselines, metrics)."""
    dcfg = cfg.detector
    started = time.monotonic()
    s = dcfg.svm
    # the pure SVM takes detector.svm with detector.pure_svm's keys on top (its own training sample)
    pure = OmegaConf.merge(s, dcfg.get("pure_svm") or {})
    xv, bv, yv = dm.windows("val", stride=s.val_stride).arrays()
    metrics: dict = {}
    want_baselines = dcfg.get("baselines", True)  # the simple detectors every evaluation compares against

    def fit_members(train_series: list, quiet: bool = False) -> list:
        """Every stage-2 detector fitted on windows of ``train_series``: the pure SVM (when asked for
        or kept as the fallback), the LSTM+SVM, the baselines. One sample serves the pure SVM and the
        baselines; the LSTM+SVM draws its own (detector.svm)."""
        ws = Windows(train_series, dm.window, s.stride, spec=dm.spec)

        def draw(c) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x, base, y = svm_training_set(ws, c.max_samples, c.hard_fraction, cfg.seed, c.get("positive_fraction"),
                                          dm.hard_before)
            if len(np.unique(y)) < 2:
                raise UserError(f"the training data has only {'leak' if y[0] else 'no-leak'} windows; the SVM needs both")
            if not quiet:
                log.info("stage 2: an SVM sample of %d windows (%.1f%% leak)", len(y), 100 * y.mean())
            return x, base, y

        def report(name: str, det, y):
            if quiet:
                return
            val = _scores(det, xv, bv, yv)
            print(f"{det.status}: validation accuracy {val['accuracy']:.4f}, F1 {val['f1']:.4f} on {len(yv)} windows",
                  flush=True)
            metrics.update({f"{name}/val_accuracy": val["accuracy"], f"{name}/val_f1": val["f1"],
                            **_sample_metrics(name, y)})

        svm_kwargs = lambda c: dict(C=c.C, gamma=c.gamma, kernel=c.kernel, cv=c.calibration_cv)  # noqa: E731
        pure_sample = draw(pure) if kind == "svm" or dcfg.fallback_svm or want_baselines else None
        svm = None
        if kind == "svm" or dcfg.fallback_svm:
            x, base, y = pure_sample
            svm = SVMDetector(**svm_kwargs(pure), spec=dm.spec).fit(x, y, base)
            report("svm", svm, y)
        members = [svm] if svm is not None else []
        if kind == "lstm_svm":
            x, base, y = draw(s)
            # its inputs are the encoder's: dm.spec, or the checkpoint's when fine-tuning (adopt_checkpoint)
            make = lambda: LSTMSVMDetector(encoder, fallback=svm, encoder_checkpoint=best, **svm_kwargs(s))  # noqa: E731
            detector = make().fit(x, y, base)
            if s.get("mined_negatives"):
                mined, scanned = mined_negatives(detector, ws, int(s.mined_negatives), int(s.mine_stride),
                                                 int(s.mine_margin))
                if not quiet:
                    log.info("stage 2: %d of %d clean-air windows score >= 0.5: added, refitting", len(mined), scanned)
                if len(mined):
                    xm, bm, ym = ws.at(mined).arrays()
                    x, base, y = np.concatenate([x, xm]), np.concatenate([base, bm]), np.concatenate([y, ym])
                    detector = make().fit(x, y, base)
            report("lstm_svm", detector, y)
            members.append(detector)
        if want_baselines:
            x, base, y = pure_sample
            members += [LogisticDetector(spec=dm.spec).fit(x, y, base), RiseDetector(spec=dm.spec).fit(x, y, base)]
        return members

    members = fit_members(dm.series("train"))
    detector = next(d for d in members if d.kind == kind)
    baselines = [d for d in members if d.kind in ("logistic", "rise")]
    metrics["svm_fit_seconds"] = round(time.monotonic() - started, 2)

    # operating points: each detector's alert threshold, chosen on the validation series
    started = time.monotonic()
    rules = rules_from_config(cfg.alerts)
    budget = float(cfg.alerts.false_alarms_per_day)
    ccfg = cfg.alerts.get("calibration") or {}
    counts, levels = calibration_candidates(cfg, rules)
    val = dm.series_for_calibration()
    series = calibration_series(val, dm.series("train"), float(ccfg.get("min_clean_hours", 0)), cfg.seed)
    clean_h = clean_hours(series)
    log.info("calibrating on %d series (%d validation), %.1f h of clean air", len(series), len(val), clean_h)
    # A training series scored by detectors fitted on it shows fewer false alerts than new air would:
    # each pooled one is scored by copies fitted without it (alerts.calibration.cross_fit folds).
    scorers = cross_fitted(dm.series("train"), series[len(val):], int(ccfg.get("cross_fit", 0)),
                           lambda train: fit_members(train, quiet=True))
    metrics["calibration_cross_fit_folds"] = len({id(m) for m in scorers.values()})
    for j, det in enumerate(members):
        probs = [series_probabilities(scorers[id(v)][j] if id(v) in scorers else det, v) for v in series]
        det.operating_point = calibrate(series, probs, rules, budget, float(cfg.evaluate.tolerance_s),
                                        float(cfg.evaluate.grace_s), consecutive=counts, evidence=levels)
        op = det.operating_point
        chosen = AlertRules.from_config({}, op)
        print(f"{det.status}: alert at {chosen.describe()} "
              f"({op['validation']['false_alerts_per_day']:.2f} false alerts a day in {clean_h:.1f} h of clean air, "
              f"budget {budget:g}{'' if op['met_budget'] else ', NOT met'})", flush=True)
        metrics[f"{det.kind}/alert_probability"] = op["probability"]
        metrics[f"{det.kind}/alert_consecutive"] = op["consecutive"]
        metrics[f"{det.kind}/alert_evidence"] = op.get("evidence")
    metrics["calibration_seconds"] = round(time.monotonic() - started, 2)
    return detector, baselines, metrics


def cross_fitted(train: list, pooled: list, folds: int, fit) -> dict[int, list]:
    """Out-of-fold scorers for the training series pooled into calibration: ``pooled`` is dealt into
    ``folds`` folds (in its given order), ``fit(series)`` is called once per fold with every training
    series outside that fold, and each pooled series maps (by ``id``) to what the fit of its fold
    returned. Empty when there are fewer than two pooled series or folds, and for a fold whose
    remaining series cannot be fitted (one class only): those series keep the full detectors."""
    folds = min(folds, len(pooled))
    if folds < 2:
        return {}
    out: dict[int, list] = {}
    for f in range(folds):
        held = {id(v) for v in pooled[f::folds]}
        try:
            fitted = fit([t for t in train if id(t) not in held])
        except UserError as e:
            log.warning("calibration fold %d of %d not cross-fitted (%s): its series are scored in-sample", f + 1, folds, e)
            continue
        out |= {i: fitted for i in held}
    return out


def run(cfg: DictConfig) -> dict:
    dcfg = cfg.detector
    kind = str(dcfg.kind)
    if kind not in ("lstm_svm", "svm", "threshold"):
        raise UserError(f"detector.kind must be lstm_svm, svm or threshold, got {kind!r}")
    bundle_dir = runs.run_dir() / "detector"
    metrics: dict = {}
    rules = rules_from_config(cfg.alerts)  # the ppm levels of alerts.*, also the threshold detector's
    calibration_candidates(cfg, rules)  # a bad alerts.calibration.rules: one line now, not after stage 1
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
