"""Gas-leak detectors with a scikit-learn face, their fallbacks, the baselines, and safe persistence.

Every detector scores raw windows (N, window, 3) (gas ppm, °C, %RH) together with each window's
clean-air baseline (N, 5) from ``features.InputSpec``; the learned ones see the window relative to
that baseline (``InputSpec.transform``), so a sensor's scale and drift do not matter:

* ``LSTMSVMDetector`` ("PyTorch LSTM+SVM"): the trained autoencoder's encoder gives 8 features per
  window; a standardised RBF SVM (probabilities by Platt scaling through
  ``CalibratedClassifierCV(SVC(...), ensemble=False)``, the form scikit-learn 1.9 supports) says leak or not.
* ``SVMDetector`` ("Pure SVM"): the same SVM on the flattened model inputs.
* ``ThresholdDetector`` ("Threshold"): warning at 500 ppm, danger at 1000 ppm on the window's maximum.
* baselines, trained alongside so every evaluation shows whether the model earns its complexity:
  ``LogisticDetector`` (logistic regression on 12 raw window statistics) and ``RiseDetector`` (the
  last 10 s over the clean-air baseline, in noise units).

``predict_proba`` returns (N, 2) like scikit-learn; ``predict`` is its argmax. Each trained detector
carries its ``operating_point``: the alert rule's probability threshold calibrated at training time
to a false-alert budget (``calibrate.py``); the alert engine (service/alerts.py) applies it.

A bundle directory holds ``manifest.json`` (kinds, inputs, thresholds, operating points, sha256 of
every file), the LSTM in its Lightning checkpoint (loaded with ``weights_only=True``), and the
scikit-learn pipelines as skops files loaded with an explicit list of trusted types. Neither format
can run code on load; a file whose hash does not match is refused with one line. ``load_detector``
falls back LSTM+SVM -> pure SVM -> threshold when the LSTM cannot be loaded, logs why, and records
it in ``fallback_reason``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from framework.errors import UserError
from plugins.gasleak_lstm_svm.features import N_BASE, InputSpec

log = logging.getLogger(__name__)

N_CHANNELS = 3
STATUS = {"lstm_svm": "PyTorch LSTM+SVM", "svm": "Pure SVM", "threshold": "Threshold",
          "logistic": "Logistic baseline", "rise": "Rise baseline"}
FALLBACK_ORDER = ("lstm_svm", "svm", "threshold")
BASELINES = ("logistic", "rise")   # simple detectors trained alongside, so every evaluation shows the bar
BUNDLE_FORMAT = "gasleak-detector"
BUNDLE_VERSION = 2  # 2: windows relative to a clean-air baseline (features.py), calibrated operating points
# skops trusts scikit-learn's plain estimators (Pipeline, StandardScaler, SVC, CalibratedClassifierCV,
# LogisticRegression) by default; these are the only other types a bundle may contain. Anything else is refused.
TRUSTED_TYPES = ["sklearn.calibration._CalibratedClassifier", "sklearn.calibration._SigmoidCalibration"]


# ------------------------------------------------------------------------------------------------
# The alert rule
# ------------------------------------------------------------------------------------------------


def confirm_alarms(probs, k: int = 3, p: float = 0.7) -> np.ndarray:
    """Confirmed alarm per window: the last ``k`` consecutive windows (this one included) all have
    leak probability >= ``p``. ``probs`` is a 1-D sequence in time order (one stream, stride 1).
    The alert engine (service/alerts.py) applies the same rule one reading at a time."""
    pos = np.asarray(probs, dtype=np.float64) >= p
    if k <= 1:
        return pos
    c = np.concatenate([[0], np.cumsum(pos)])
    run = c[k:] - c[:-k]  # positives among windows i-k+1..i
    out = np.zeros(len(pos), dtype=bool)
    out[k - 1 :] = run == k
    return out


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------


def check_windows(windows, name: str = "windows", window: int = 60) -> np.ndarray:
    """(N, window, 3) finite float32, or a ValueError naming the parameter and what is wrong."""
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 2 and x.shape == (window, N_CHANNELS):
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (window, N_CHANNELS):
        raise ValueError(f"{name} must have shape (N, {window}, {N_CHANNELS}) (gas ppm, °C, %RH), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def make_svm(C: float = 1.0, gamma="scale", kernel: str = "rbf", cv: int = 5):
    """StandardScaler + RBF SVC with sigmoid-calibrated probabilities (scikit-learn 1.9's supported form)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(kernel=kernel, C=C, gamma=gamma), ensemble=False, cv=cv))


def make_logistic(C: float = 1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))


class Detector:
    """Base: scikit-learn-like ``fit(windows, y, base)`` / ``predict_proba(windows, base)``.

    ``windows`` are raw (N, window, 3) readings (gas ppm, °C, %RH); ``base`` their clean-air
    baselines (N, 5) from ``features.InputSpec`` (computed over the samples before each window;
    when omitted, over the window itself, as for a series' first window). ``operating_point`` is
    the alert rule calibrated for this detector at training time ({"probability", "consecutive",
    ...}), None when it was not calibrated."""

    kind = "base"

    def __init__(self, spec: InputSpec | None = None):
        self.spec = spec or InputSpec()
        self.is_trained = False
        self.device = "cpu"
        self.fallback_reason: str | None = None
        self.operating_point: dict | None = None

    @property
    def window(self) -> int:
        return self.spec.window

    @property
    def status(self) -> str:
        return STATUS[self.kind]

    def _check(self, windows, base):
        x = check_windows(windows, window=self.spec.window)
        if base is None:
            base = self.spec.baseline_of_window(x)
        base = np.asarray(base, dtype=np.float64)
        if base.shape != (len(x), N_BASE):
            raise ValueError(f"base must have shape ({len(x)}, {N_BASE}), got {base.shape}")
        return x, base

    def inputs(self, windows, base=None) -> np.ndarray:
        return self.spec.transform(*self._check(windows, base))

    def predict_proba(self, windows, base=None) -> np.ndarray:
        raise NotImplementedError

    def predict(self, windows, base=None) -> np.ndarray:
        return (self.predict_proba(windows, base)[:, 1] >= 0.5).astype(np.int64)

    def leak_probability(self, windows, base=None) -> np.ndarray:
        return self.predict_proba(windows, base)[:, 1]

    def describe(self) -> dict:
        return {"is_trained": self.is_trained, "model_type": self.status, "device": self.device,
                "fallback_reason": self.fallback_reason, "operating_point": self.operating_point}

    def save(self, bundle_dir, **meta) -> Path:
        return save_bundle(bundle_dir, self, **meta)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, is_trained={self.is_trained})"


class ThresholdDetector(Detector):
    """The last fallback: the window's maximum gas reading against warning/danger thresholds.

    Probability: ``0.5 * max/warning`` below warning (so ``predict`` is 0), 0.7 at warning rising to
    1.0 at danger, so the alert rule (p >= 0.7) fires exactly from the warning threshold."""

    kind = "threshold"

    def __init__(self, warning_ppm: float = 500.0, danger_ppm: float = 1000.0, spec: InputSpec | None = None):
        super().__init__(spec)
        if not 0 < warning_ppm < danger_ppm:
            raise ValueError(f"need 0 < warning_ppm < danger_ppm, got {warning_ppm}, {danger_ppm}")
        self.warning_ppm, self.danger_ppm = float(warning_ppm), float(danger_ppm)
        self.operating_point = {"probability": 0.7, "consecutive": None, "calibrated": False}

    def fit(self, windows=None, y=None, base=None):
        return self

    def predict_proba(self, windows, base=None) -> np.ndarray:
        peak = check_windows(windows, window=self.spec.window)[:, :, 0].max(axis=1).astype(np.float64)
        w, d = self.warning_ppm, self.danger_ppm
        p = np.where(peak < w, 0.5 * np.clip(peak, 0, None) / w, 0.7 + 0.3 * np.clip((peak - w) / (d - w), 0, 1))
        return np.column_stack([1 - p, p])

    def levels(self, windows) -> np.ndarray:
        """0 none, 1 warning, 2 danger per window."""
        peak = check_windows(windows, window=self.spec.window)[:, :, 0].max(axis=1)
        return (peak >= self.warning_ppm).astype(np.int64) + (peak >= self.danger_ppm)


class _PipelineDetector(Detector):
    """A detector whose decision is a scikit-learn pipeline on ``_features(windows, base)``."""

    def __init__(self, spec: InputSpec | None = None):
        super().__init__(spec)
        self.pipeline_ = None

    def _make(self):
        raise NotImplementedError

    def _features(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def fit(self, windows, y, base=None):
        x, base = self._check(windows, base)
        y = _check_labels(y, len(x))
        self.pipeline_ = self._make().fit(self._features(x, base), y)
        self.is_trained = True
        return self

    def predict_proba(self, windows, base=None) -> np.ndarray:
        if self.pipeline_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(windows, y) first")
        x, base = self._check(windows, base)
        return _proba(self.pipeline_, self._features(x, base))


class SVMDetector(_PipelineDetector):
    """Pure SVM on the flattened model inputs (each window relative to its baseline)."""

    kind = "svm"

    def __init__(self, C: float = 1.0, gamma="scale", kernel: str = "rbf", cv: int = 5, spec: InputSpec | None = None):
        super().__init__(spec)
        self.C, self.gamma, self.kernel, self.cv = C, gamma, kernel, cv

    def _make(self):
        return make_svm(self.C, self.gamma, self.kernel, self.cv)

    def _features(self, x, base):
        z = self.spec.transform(x, base)
        return z.reshape(len(z), -1)


def window_statistics(x: np.ndarray) -> np.ndarray:
    """12 statistics of raw windows: mean, std, least-squares slope and last-minus-first per channel."""
    x = np.asarray(x, dtype=np.float64)
    t = np.arange(x.shape[1], dtype=np.float64)
    t -= t.mean()
    slope = np.einsum("t,ntc->nc", t, x) / (t @ t)
    return np.concatenate([x.mean(axis=1), x.std(axis=1), slope, x[:, -1] - x[:, 0]], axis=1)


class LogisticDetector(_PipelineDetector):
    """Baseline: logistic regression on 12 raw window statistics (``window_statistics``)."""

    kind = "logistic"

    def __init__(self, C: float = 1.0, spec: InputSpec | None = None):
        super().__init__(spec)
        self.C = C

    def _make(self):
        return make_logistic(self.C)

    def _features(self, x, base):
        return window_statistics(x)


class RiseDetector(_PipelineDetector):
    """Baseline: the gas of the last ``recent_s`` seconds over the clean-air baseline of the minutes
    before the window, in noise units; a one-feature logistic regression turns it into a probability
    (monotone, so the calibrated alert threshold is a threshold on the rise itself)."""

    kind = "rise"

    def __init__(self, recent_s: int = 10, spec: InputSpec | None = None):
        super().__init__(spec)
        self.recent_s = recent_s

    def _make(self):
        return make_logistic(1.0)

    def _features(self, x, base):
        recent = x[:, -self.recent_s :, 0].astype(np.float64).mean(axis=1)
        return np.arcsinh((recent - base[:, 0]) / base[:, 1])[:, None]


class LSTMSVMDetector(_PipelineDetector):
    """The trained autoencoder's encoder (8 features per window) + a standardised RBF SVM.

    ``encoder`` is the stage-1 ``LSTMAutoencoder`` (trained by ``train.py`` through the runner);
    ``fit`` trains the SVM on its features. ``fallback`` is an optional ``SVMDetector`` saved alongside.
    """

    kind = "lstm_svm"

    def __init__(self, encoder=None, C: float = 1.0, gamma="scale", kernel: str = "rbf", cv: int = 5,
                 device: str | None = None, batch_size: int = 4096, fallback: SVMDetector | None = None,
                 spec: InputSpec | None = None):
        if spec is None and encoder is not None:
            spec = InputSpec.from_dict(encoder.hparams.get("inputs"))
        super().__init__(spec)
        self.encoder = encoder
        self.C, self.gamma, self.kernel, self.cv = C, gamma, kernel, cv
        self.batch_size = batch_size
        self.fallback = fallback
        self.encoder_checkpoint: str | None = None
        if encoder is not None:
            self._place(device)

    def _make(self):
        return make_svm(self.C, self.gamma, self.kernel, self.cv)

    def _place(self, device: str | None):
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = str(device)
        self.encoder = self.encoder.to(self.device).eval()

    def features(self, windows, base=None) -> np.ndarray:
        """(N, 8) LSTM features of raw windows, computed in batches without gradients."""
        return self._features(*self._check(windows, base))

    def _features(self, x, base) -> np.ndarray:
        import torch

        if self.encoder is None:
            raise RuntimeError("LSTMSVMDetector has no encoder")
        z = self.spec.transform(x, base)
        out = []
        with torch.inference_mode():
            for i in range(0, len(z), self.batch_size):
                batch = torch.from_numpy(z[i : i + self.batch_size]).to(self.device)
                out.append(self.encoder(batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder.n_features), np.float32)


DETECTORS = {cls.kind: cls for cls in (LSTMSVMDetector, SVMDetector, ThresholdDetector, LogisticDetector, RiseDetector)}


def _check_labels(y, n: int) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).ravel()
    if len(y) != n:
        raise ValueError(f"y has {len(y)} labels for {n} windows")
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"y must contain both classes 0 and 1, got {sorted(set(np.unique(y).tolist()))}")
    return y


def _proba(pipeline, feats: np.ndarray) -> np.ndarray:
    if len(feats) == 0:
        return np.zeros((0, 2))
    proba = pipeline.predict_proba(feats)
    classes = list(pipeline.classes_)
    return proba[:, [classes.index(0), classes.index(1)]]


# ------------------------------------------------------------------------------------------------
# Persistence
# ------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_bundle(bundle_dir, detector: Detector, threshold: ThresholdDetector | None = None,
                baselines: tuple[Detector, ...] = (), **meta) -> Path:
    """Write ``detector`` (and an LSTM+SVM's pure-SVM fallback, and the ``baselines``) to ``bundle_dir``,
    each with its calibrated operating point."""
    import skops.io as sio

    bundle = Path(bundle_dir)
    bundle.mkdir(parents=True, exist_ok=True)
    threshold = threshold or (detector if isinstance(detector, ThresholdDetector) else ThresholdDetector())
    manifest: dict = {
        "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "window": detector.spec.window,
        "inputs": detector.spec.to_dict(),
        "channels": ["gas_concentration", "temperature", "humidity"],
        "primary": detector.kind, "detectors": {},
        "threshold": {"warning_ppm": threshold.warning_ppm, "danger_ppm": threshold.danger_ppm},
        "files": {}, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "meta": meta,
    }
    svm = detector.fallback if isinstance(detector, LSTMSVMDetector) else detector if isinstance(detector, SVMDetector) else None
    members = [d for d in (svm, *baselines) if d is not None and d.pipeline_ is not None]
    if isinstance(detector, LSTMSVMDetector):
        if detector.pipeline_ is None:
            raise RuntimeError("cannot save an unfitted LSTMSVMDetector")
        _save_encoder(detector, bundle / "lstm.ckpt")
        members.append(detector)
    for det in members:
        sio.dump(det.pipeline_, bundle / f"{det.kind}.skops")
        entry = {"pipeline": f"{det.kind}.skops", "operating_point": det.operating_point}
        if isinstance(det, LSTMSVMDetector):
            entry["encoder"] = "lstm.ckpt"
        if isinstance(det, RiseDetector):
            entry["params"] = {"recent_s": det.recent_s}
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
    enc = detector.encoder
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


def _load_encoder(bundle: Path, manifest: dict, name: str, device: str | None):
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
    return module


def load_detector(bundle_dir, kind: str | None = None, device: str | None = None) -> Detector:
    """Load the bundle's primary detector (or ``kind``), falling back LSTM+SVM -> pure SVM -> threshold.

    Tampering with the manifest or a scikit-learn file is refused (``UserError``); an LSTM that
    cannot be loaded is a fallback, logged as a warning and kept in ``.fallback_reason``. A baseline
    (``logistic``, ``rise``) missing from the bundle falls back to the threshold rule, with the reason.
    """
    bundle = Path(bundle_dir)
    manifest = _read_manifest(bundle)
    wanted = kind or manifest.get("primary", "threshold")
    if wanted not in DETECTORS:
        raise UserError(f"unknown detector kind {wanted!r}; kinds: {', '.join(DETECTORS)}")
    spec = InputSpec.from_dict(manifest.get("inputs"))
    t = manifest.get("threshold", {})
    threshold = ThresholdDetector(t.get("warning_ppm", 500.0), t.get("danger_ppm", 1000.0), spec=spec)
    reasons = []
    chain = FALLBACK_ORDER[FALLBACK_ORDER.index(wanted):] if wanted in FALLBACK_ORDER else (wanted, "threshold")
    for candidate in chain:
        spec_entry = manifest["detectors"].get(candidate)
        if candidate == "threshold":
            det = threshold
        elif spec_entry is None:
            reasons.append(f"no {STATUS[candidate]} in the bundle")
            continue
        elif candidate == "lstm_svm":
            pipeline = _load_pipeline(bundle, manifest, spec_entry["pipeline"])
            try:
                encoder = _load_encoder(bundle, manifest, spec_entry["encoder"], device)
            except Exception as e:  # noqa: BLE001 - any failure here means "use the fallback"
                reasons.append(f"LSTM not loaded ({str(e).splitlines()[0] if str(e) else type(e).__name__})")
                continue
            det = LSTMSVMDetector(encoder, device=device, spec=spec)
            det.pipeline_ = pipeline
        else:
            det = DETECTORS[candidate](**(spec_entry.get("params") or {}), spec=spec)
            det.pipeline_ = _load_pipeline(bundle, manifest, spec_entry["pipeline"])
        if spec_entry is not None:
            det.operating_point = spec_entry.get("operating_point")
            det.is_trained = True
        if reasons:
            det.fallback_reason = "; ".join(reasons) + f" -> using {det.status}"
            log.warning("detector %s: %s", bundle, det.fallback_reason)
        det.bundle_dir = str(bundle)
        det.manifest = manifest
        return det
    raise AssertionError("unreachable: the threshold rule always loads")


def find_detector(cfg) -> Path:
    """The bundle to use: ``cfg.ckpt_path`` (a bundle dir, a train run dir, or a checkpoint inside
    one) or else the latest gas-leak train run's detector."""
    hint = "no trained detector; run `python -m framework task=gasleak train` first"
    ckpt = cfg.get("ckpt_path")
    if ckpt:
        p = Path(str(ckpt))
        for candidate in (p, p / "detector", p.parent / "detector", p.parent.parent / "detector"):
            if (candidate / "manifest.json").is_file():
                return candidate
        raise UserError(f"ckpt_path={ckpt}: no detector bundle there (a bundle dir holds manifest.json)")
    from framework import runs

    outputs = cfg.paths.outputs if "paths" in cfg else None
    latest = runs.latest_train(cfg.task.name if "task" in cfg else "gasleak", outputs)
    if not latest or not latest.get("detector"):
        raise UserError(hint)
    bundle = Path(latest["detector"])
    if not (bundle / "manifest.json").is_file():
        raise UserError(f"the latest train run's detector {bundle} is gone; {hint.split('; ')[1]}")
    return bundle
