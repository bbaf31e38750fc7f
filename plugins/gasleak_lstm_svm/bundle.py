"""The detector bundle: a directory holding a trained detector, safely saved and loaded.

A bundle directory holds ``manifest.json`` (kinds, inputs, thresholds, operating points, each
detector's parameters, sha256 of every file), the LSTM in its Lightning checkpoint (loaded with
``weights_only=True``), and the scikit-learn pipelines as skops files loaded with an explicit list
of trusted types (plain scikit-learn ``Pipeline`` objects, never this plugin's classes). Neither
format can run code on load; a file whose hash does not match is refused with one line.
``load_detector`` falls back LSTM+SVM -> pure SVM -> threshold when the LSTM cannot be loaded, logs
why, and records it in ``fallback_reason``. ``find_detector`` says which bundle a mode uses.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

from framework.errors import UserError
from plugins.gasleak_lstm_svm.estimators import (DETECTORS, STATUS, Detector, LSTMSVMDetector, SVMDetector,
                                                 ThresholdDetector, resolve_device)
from plugins.gasleak_lstm_svm.features import InputSpec
from plugins.gasleak_lstm_svm.service.alerts import DANGER_PPM, WARNING_PPM

log = logging.getLogger(__name__)

FALLBACK_ORDER = ("lstm_svm", "svm", "threshold")
BASELINES = ("logistic", "rise")   # simple detectors trained alongside, so every evaluation shows the bar
BUNDLE_FORMAT = "gasleak-detector"
BUNDLE_VERSION = 2  # 2: windows relative to a clean-air baseline (features.py), calibrated operating points
# skops trusts scikit-learn's plain estimators (Pipeline, StandardScaler, SVC, CalibratedClassifierCV,
# LogisticRegression) by default; these are the only other types a bundle may contain. Anything else is refused.
TRUSTED_TYPES = ["sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"]
# constructor parameters that are not plain values (or not the fitted detector's business) stay out of the manifest
_NOT_SAVED = ("spec", "encoder", "fallback", "device", "encoder_checkpoint")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def trained_with() -> dict:
    """The versions and CPU that made a bundle: an LSTM retrained with the same code and seed in
    another environment can come out different (README, "Measured"), so a figure names its own.
    ``cpu_capability`` is the instruction set torch picked its kernels for (their sums round apart)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    out = {"python": platform.python_version(), "machine": platform.machine(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name in ("lightning-hydra-tasks", "torch", "lightning", "numpy", "scikit-learn", "skops"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _params(det: Detector) -> dict:
    return {k: v for k, v in det.get_params(deep=False).items() if k not in _NOT_SAVED}


def save_bundle(bundle_dir, detector: Detector, threshold: ThresholdDetector | None = None,
                baselines: tuple[Detector, ...] = (), **meta) -> Path:
    """Write ``detector`` (and an LSTM+SVM's pure-SVM fallback, and the ``baselines``) to ``bundle_dir``,
    each with its calibrated operating point."""
    import skops.io as sio

    bundle = Path(bundle_dir)
    bundle.mkdir(parents=True, exist_ok=True)
    threshold = threshold or (detector if isinstance(detector, ThresholdDetector) else ThresholdDetector(spec=detector.spec))
    manifest: dict = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "window": detector.spec.window,
        "inputs": detector.spec.to_dict(),
        "channels": ["gas_concentration", "temperature", "humidity"],
        "primary": detector.kind, "detectors": {},
        "threshold": {"warning_ppm": float(threshold.warning_ppm), "danger_ppm": float(threshold.danger_ppm)},
        "files": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "trained_with": trained_with(), "meta": meta,
    }
    svm = detector.fallback if isinstance(detector, LSTMSVMDetector) else detector if isinstance(detector, SVMDetector) else None
    members = [d for d in (svm, *baselines) if d is not None and d.is_trained]
    if isinstance(detector, LSTMSVMDetector):
        if not detector.is_trained:
            raise RuntimeError("cannot save an unfitted LSTMSVMDetector")
        _save_encoder(detector, bundle / "lstm.ckpt")
        members.append(detector)
    for det in members:
        sio.dump(det.pipeline_, bundle / f"{det.kind}.skops")
        entry = {"pipeline": f"{det.kind}.skops", "operating_point": det.operating_point, "params": _params(det)}
        if isinstance(det, LSTMSVMDetector):
            entry["encoder"] = "lstm.ckpt"
        manifest["detectors"][det.kind] = entry
    manifest["threshold"]["operating_point"] = threshold.operating_point
    files = {f for d in manifest["detectors"].values() for key, f in d.items() if key in ("pipeline", "encoder")}
    for name in sorted(files):
        manifest["files"][name] = sha256(bundle / name)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return bundle


def _save_encoder(detector: LSTMSVMDetector, path: Path):
    """The Lightning checkpoint of stage 1 when there is one; else a checkpoint-shaped dict."""
    import torch

    if detector.encoder_checkpoint and Path(detector.encoder_checkpoint).is_file():
        if Path(detector.encoder_checkpoint).resolve() != path.resolve():
            shutil.copyfile(detector.encoder_checkpoint, path)
        return
    enc = detector.encoder_
    torch.save({"state_dict": {k: v.detach().cpu() for k, v in enc.state_dict().items()},
                "hyper_parameters": dict(enc.hparams)}, path)


def _read_manifest(bundle: Path) -> dict:
    path = bundle / "manifest.json"
    if not bundle.is_dir():
        raise UserError(f"detector bundle not found: {bundle}")
    if not path.is_file():
        raise UserError(f"{bundle} is not a detector bundle (no manifest.json)")
    try:
        manifest = json.loads(path.read_text())
        ok = (isinstance(manifest, dict) and manifest.get("format") == BUNDLE_FORMAT
              and isinstance(manifest.get("files"), dict) and isinstance(manifest.get("detectors"), dict))
    except (ValueError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise UserError(f"detector bundle {bundle}: manifest.json is damaged or not a {BUNDLE_FORMAT} manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise UserError(f"detector bundle {bundle}: format version {manifest.get('version')!r}, this code reads "
                        f"{BUNDLE_VERSION} (windows relative to a clean-air baseline since version 2); retrain it")
    for name in manifest["files"]:
        if Path(name).name != name:
            raise UserError(f"detector bundle {bundle}: manifest names a file outside the bundle ({name!r})")
    return manifest


def _verified(bundle: Path, manifest: dict, name: str) -> Path:
    """The path of a bundle file whose sha256 matches the manifest, else a one-line UserError."""
    path = bundle / name
    if name not in manifest["files"]:
        raise UserError(f"detector bundle {bundle}: {name} is not listed in manifest.json (tampered bundle)")
    if not path.is_file():
        raise UserError(f"detector bundle {bundle}: {name} is missing")
    if sha256(path) != manifest["files"][name]:
        raise UserError(f"detector bundle {bundle}: {name} does not match its sha256 in manifest.json (tampered or truncated); retrain")
    return path


def _load_pipeline(bundle: Path, manifest: dict, name: str):
    import skops.io as sio

    path = _verified(bundle, manifest, name)
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except Exception as e:  # skops raises assorted errors on a damaged zip
        raise UserError(f"detector bundle {bundle}: {name} is not a readable skops file ({type(e).__name__})") from None
    if untrusted - set(TRUSTED_TYPES):
        raise UserError(f"detector bundle {bundle}: {name} contains untrusted types {sorted(untrusted - set(TRUSTED_TYPES))}; refusing to load")
    return sio.load(path, trusted=TRUSTED_TYPES)


def _load_encoder(bundle: Path, manifest: dict, name: str, spec: InputSpec):
    """The stage-1 autoencoder; raises (anything) when it cannot be loaded so the caller falls back."""
    from framework import checkpoints
    from plugins.gasleak_lstm_svm.model import LSTMAutoencoder

    path = bundle / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is missing")
    if sha256(path) != manifest["files"].get(name):
        raise ValueError(f"{name} does not match its sha256 in manifest.json (corrupt or replaced)")
    ckpt = checkpoints.load(path)  # weights only; a refusal says why without torch's advice to turn that off
    module = LSTMAutoencoder(**ckpt["hyper_parameters"])
    module.load_state_dict(ckpt["state_dict"])
    if InputSpec.from_dict(module.hparams.get("inputs")) != spec:
        raise ValueError(f"{name} was trained on other inputs than the bundle's")
    return module


def load_detector(bundle_dir, kind: str | None = None, device: str | None = None, *,
                  warning_ppm: float | None = None, danger_ppm: float | None = None) -> Detector:
    """Load the bundle's primary detector (or ``kind``), falling back LSTM+SVM -> pure SVM -> threshold.

    Tampering with the manifest or a scikit-learn file is refused (``UserError``); an LSTM that
    cannot be loaded is a fallback, logged as a warning and kept in ``.fallback_reason``. A baseline
    (``logistic``, ``rise``) missing from the bundle falls back to the threshold rule, with the reason.
    The threshold rule's ppm levels: ``warning_ppm``/``danger_ppm`` (the configured ``alerts.*``,
    which modes pass), else the bundle's. ``device`` (None: cuda when available) runs the LSTM.
    """
    bundle = Path(bundle_dir)
    manifest = _read_manifest(bundle)
    wanted = kind or manifest.get("primary", "threshold")
    if wanted not in DETECTORS:
        raise UserError(f"unknown detector kind {wanted!r}; kinds: {', '.join(DETECTORS)}")
    spec = InputSpec.from_dict(manifest.get("inputs"))
    saved = manifest.get("threshold", {})
    levels = {"warning_ppm": float(warning_ppm if warning_ppm is not None else saved.get("warning_ppm", WARNING_PPM)),
              "danger_ppm": float(danger_ppm if danger_ppm is not None else saved.get("danger_ppm", DANGER_PPM))}
    if not 0 < levels["warning_ppm"] < levels["danger_ppm"]:
        raise UserError(f"alerts: need 0 < warning_ppm < danger_ppm, got {levels['warning_ppm']:g}, {levels['danger_ppm']:g}")
    reasons: list[str] = []
    chain = FALLBACK_ORDER[FALLBACK_ORDER.index(wanted):] if wanted in FALLBACK_ORDER else (wanted, "threshold")
    for candidate in chain:
        entry = manifest["detectors"].get(candidate)
        if candidate != "threshold" and entry is None:
            reasons.append(f"no {STATUS[candidate]} in the bundle")
            continue
        reason = "; ".join(reasons) + f" -> using {STATUS[candidate]}" if reasons else None
        if candidate == "threshold":
            det = ThresholdDetector.from_fitted(**levels, spec=spec, fallback_reason=reason)
        else:
            pipeline = _load_pipeline(bundle, manifest, entry["pipeline"])
            params = entry.get("params") or {}
            fitted = {"operating_point": entry.get("operating_point"), "fallback_reason": reason}
            if candidate == "lstm_svm":
                try:
                    encoder = _load_encoder(bundle, manifest, entry["encoder"], spec)
                except Exception as e:  # noqa: BLE001 - any failure here means "use the fallback"
                    reasons.append(f"LSTM not loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
                    continue
                det = LSTMSVMDetector.from_fitted(pipeline, encoder=encoder, device=resolve_device(device),
                                                  **params, **fitted)
            else:
                det = DETECTORS[candidate].from_fitted(pipeline, spec=spec, **params, **fitted)
        if reason:
            log.warning("detector %s: %s", bundle, reason)
        return det
    raise AssertionError("unreachable: the threshold rule always loads")


def find_detector(cfg) -> Path:
    """The bundle to use: ``cfg.ckpt_path`` (a bundle dir, a train run dir, or a checkpoint inside
    one) or else the latest gas-leak train run's detector."""
    hint = "no trained detector; run `python -m framework task=gasleak train` first"
    from framework import runs

    ckpt = cfg.get("ckpt_path")
    if ckpt:
        p = Path(str(ckpt))
        if (p / "manifest.json").is_file():  # a bundle, wherever it was copied
            return p
        run = runs.run_dir_of(p, holding="detector")  # a train run, or a file inside one
        if run is not None and (run / "detector" / "manifest.json").is_file():
            return run / "detector"
        raise UserError(f"ckpt_path={ckpt}: no detector bundle there (a bundle dir holds manifest.json)")

    outputs = cfg.paths.outputs if "paths" in cfg else None
    latest = runs.latest_train(cfg.task.name if "task" in cfg else "gasleak", outputs)
    if not latest or not latest.get("detector"):
        raise UserError(hint)
    bundle = Path(latest["detector"])
    if not (bundle / "manifest.json").is_file():
        raise UserError(f"the latest train run's detector {bundle} is gone; {hint.split('; ')[1]}")
    return bundle
