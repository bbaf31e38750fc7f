"""Gas-leak detectors as scikit-learn estimators: the LSTM+SVM, its fallbacks and the baselines.

Every detector scores raw windows (N, window, 3) (gas ppm, °C, %RH) together with each window's
clean-air baseline (N, 5) from ``features.InputSpec``; the learned ones see the window relative to
that baseline (``InputSpec.transform``), so a sensor's scale and drift do not matter:

* ``LSTMSVMDetector`` ("PyTorch LSTM+SVM"): the trained autoencoder's encoder gives 8 features per
  window; a standardised RBF SVM (probabilities by Platt scaling through
  ``CalibratedClassifierCV(SVC(...), ensemble=False)``, the form scikit-learn 1.9 supports) says leak or not.
* ``SVMDetector`` ("Pure SVM"): the same SVM on the flattened model inputs.
* ``ThresholdDetector`` ("Threshold"): the alert engine's warning/danger ppm levels on the window's maximum.
* baselines, trained alongside so every evaluation shows whether the model earns its complexity:
  ``LogisticDetector`` (logistic regression on 12 raw window statistics) and ``RiseDetector`` (the
  last 10 s over the clean-air baseline, in noise units).

They follow scikit-learn's estimator conventions (``BaseEstimator``, ``ClassifierMixin``):
``__init__`` only stores its parameters, so ``get_params``/``set_params``/``sklearn.base.clone``
work; what ``fit`` learns ends in an underscore (``pipeline_``, ``encoder_``, ``classes_``); a
saved detector comes back through ``from_fitted`` (``bundle.load_detector``). ``fit`` takes a third
argument, the baselines, and ``predict_proba`` returns (N, 2) like scikit-learn; ``predict`` is
p >= 0.5. Each trained detector carries its ``operating_point``: the alert rule's probability
threshold calibrated at training time to a false-alert budget (``scoring.calibrate``); the alert
engine (``service/alerts.py``) applies it. Persistence: ``bundle.py``.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

from plugins.gasleak_lstm_svm.features import N_BASE, InputSpec
from plugins.gasleak_lstm_svm.service.alerts import DANGER_PPM, WARNING_PPM

N_CHANNELS = 3
STATUS = {"lstm_svm": "PyTorch LSTM+SVM", "svm": "Pure SVM", "threshold": "Threshold",
          "logistic": "Logistic baseline", "rise": "Rise baseline"}
DEFAULT_SPEC = InputSpec()  # frozen, so safe as a default argument
CLASSES = np.array([0, 1])
RBF_CHUNK = 1024  # windows per kernel block in _rbf_svm_proba: 1,024 x 1,700 support vectors is 14 MB
# LSTM windows per forward pass on a CPU: the gates of a bigger batch no longer fit in cache (1 thread,
# hidden 50: 58 us a window at 512, 96 at 4,096, 105 at 8,192); a GPU takes the detector's batch_size
CPU_BATCH = 512


def check_windows(windows, window: int, name: str = "windows") -> np.ndarray:
    """(N, window, 3) finite float32, or a ValueError naming the parameter and what is wrong."""
    x = np.asarray(windows, dtype=np.float32)
    if x.ndim == 2 and x.shape == (window, N_CHANNELS):
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != (window, N_CHANNELS):
        raise ValueError(f"{name} must have shape (N, {window}, {N_CHANNELS}) (gas ppm, °C, %RH), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def check_labels(y, n: int) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).ravel()
    if len(y) != n:
        raise ValueError(f"y has {len(y)} labels for {n} windows")
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"y must contain both classes 0 and 1, got {sorted(set(np.unique(y).tolist()))}")
    return y


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


def window_statistics(x: np.ndarray) -> np.ndarray:
    """12 statistics of raw windows: mean, std, least-squares slope and last-minus-first per channel."""
    x = np.asarray(x, dtype=np.float64)
    t = np.arange(x.shape[1], dtype=np.float64)
    t -= t.mean()
    slope = np.einsum("t,ntc->nc", t, x) / (t @ t)
    return np.concatenate([x.mean(axis=1), x.std(axis=1), slope, x[:, -1] - x[:, 0]], axis=1)


def _rbf_svm_proba(pipeline, feats: np.ndarray) -> np.ndarray | None:
    """``pipeline.predict_proba(feats)`` for ``make_svm``'s shape (scaler, Platt-calibrated binary
    RBF SVC), or None for any other pipeline. libsvm's predict evaluates the kernel one window and one
    support vector at a time (about 50 us a window with 1,700 support vectors); as one matrix product
    per chunk it is the same figure to ~1e-12 in a fifth of the time (benchmarks/bench_gas_detector.py).
    It reads two private attributes of the fitted SVC (the resolved gamma, sparse or not): where a
    scikit-learn release lacks them, scikit-learn's own predict_proba runs."""
    from sklearn.metrics.pairwise import rbf_kernel
    from sklearn.svm import SVC

    *before, last = [step for _, step in pipeline.steps]
    fitted = getattr(last, "calibrated_classifiers_", None)
    if not fitted or len(fitted) != 1 or fitted[0].method != "sigmoid":
        return None
    svc = fitted[0].estimator
    gamma = getattr(svc, "_gamma", None)
    if type(svc) is not SVC or svc.kernel != "rbf" or len(svc.classes_) != 2 or gamma is None \
            or getattr(svc, "_sparse", True):
        return None
    x = feats
    for step in before:
        x = step.transform(x)
    x = np.asarray(x, dtype=np.float64)
    decision = np.concatenate([rbf_kernel(x[i : i + RBF_CHUNK], svc.support_vectors_, gamma=gamma) @ svc.dual_coef_[0]
                               for i in range(0, len(x), RBF_CHUNK)]) + svc.intercept_[0]
    p1 = fitted[0].calibrators[0].predict(decision)
    p1[(1.0 < p1) & (p1 <= 1.0 + 1e-5)] = 1.0  # as scikit-learn clips
    return np.column_stack([1.0 - p1, p1])


def _proba(pipeline, feats: np.ndarray) -> np.ndarray:
    if len(feats) == 0:
        return np.zeros((0, 2))
    proba = _rbf_svm_proba(pipeline, feats)
    if proba is None:
        proba = pipeline.predict_proba(feats)
    classes = list(pipeline.classes_)
    return proba[:, [classes.index(0), classes.index(1)]]


class Detector(ClassifierMixin, BaseEstimator):
    """Base: ``fit(windows, y, base)`` / ``predict_proba(windows, base)``.

    ``windows`` are raw (N, window, 3) readings (gas ppm, °C, %RH); ``base`` their clean-air
    baselines (N, 5) from ``features.InputSpec`` (computed over the samples before each window;
    when omitted, over the window itself, as for a series' first window). ``operating_point`` is
    the alert rule calibrated for this detector at training time ({"probability", "consecutive",
    ...}), None when it was not calibrated; ``fallback_reason`` says why ``bundle.load_detector``
    gave this detector instead of the one asked for."""

    kind = "base"
    device = "cpu"
    spec: InputSpec

    @classmethod
    def from_fitted(cls, pipeline=None, *, operating_point: dict | None = None, fallback_reason: str | None = None,
                    **params) -> "Detector":
        """A fitted detector from saved parts: ``params`` as for the constructor, ``pipeline`` the
        fitted scikit-learn pipeline (none for the threshold rule). Used by ``bundle.load_detector``."""
        det = cls(**params)
        det._set_fitted(pipeline)
        if operating_point is not None:
            det.operating_point_ = operating_point
        if fallback_reason is not None:
            det.fallback_reason_ = fallback_reason
        return det

    def _set_fitted(self, pipeline) -> None:
        """Every fitted attribute, in one place (``fit`` and ``from_fitted``)."""
        self.classes_ = CLASSES.copy()

    @property
    def window(self) -> int:
        return self.spec.window

    @property
    def status(self) -> str:
        return STATUS[self.kind]

    @property
    def is_trained(self) -> bool:
        return hasattr(self, "pipeline_")

    @property
    def operating_point(self) -> dict | None:
        return getattr(self, "operating_point_", None)

    @operating_point.setter
    def operating_point(self, value: dict | None) -> None:
        """Set by training once the alert threshold is calibrated on validation series."""
        self.operating_point_ = value

    @property
    def fallback_reason(self) -> str | None:
        return getattr(self, "fallback_reason_", None)

    def _check(self, windows, base):
        x = check_windows(windows, self.spec.window)
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

    def save(self, bundle_dir, **meta):
        from plugins.gasleak_lstm_svm.bundle import save_bundle

        return save_bundle(bundle_dir, self, **meta)


THRESHOLD_OPERATING_POINT = {"probability": 0.7, "consecutive": None, "calibrated": False}


class ThresholdDetector(Detector):
    """The last fallback: the window's maximum gas reading against warning/danger thresholds.

    Probability: ``0.5 * max/warning`` below warning (so ``predict`` is 0), 0.7 at warning rising to
    1.0 at danger, so the alert rule (p >= 0.7) fires exactly from the warning threshold. A fixed
    rule: usable without ``fit`` (``fit`` only checks the levels)."""

    kind = "threshold"

    def __init__(self, warning_ppm: float = WARNING_PPM, danger_ppm: float = DANGER_PPM, spec: InputSpec = DEFAULT_SPEC):
        self.warning_ppm = warning_ppm
        self.danger_ppm = danger_ppm
        self.spec = spec

    def __sklearn_is_fitted__(self) -> bool:
        return True  # nothing to learn

    @property
    def operating_point(self) -> dict:
        return getattr(self, "operating_point_", None) or dict(THRESHOLD_OPERATING_POINT)

    @operating_point.setter
    def operating_point(self, value: dict | None) -> None:
        self.operating_point_ = value

    def _levels(self) -> tuple[float, float]:
        w, d = float(self.warning_ppm), float(self.danger_ppm)
        if not 0 < w < d:
            raise ValueError(f"need 0 < warning_ppm < danger_ppm, got {self.warning_ppm}, {self.danger_ppm}")
        return w, d

    def fit(self, windows=None, y=None, base=None):
        self._levels()
        self._set_fitted(None)
        return self

    def predict_proba(self, windows, base=None) -> np.ndarray:
        peak = check_windows(windows, self.spec.window)[:, :, 0].max(axis=1).astype(np.float64)
        w, d = self._levels()
        p = np.where(peak < w, 0.5 * np.clip(peak, 0, None) / w, 0.7 + 0.3 * np.clip((peak - w) / (d - w), 0, 1))
        return np.column_stack([1 - p, p])

    def levels(self, windows) -> np.ndarray:
        """0 none, 1 warning, 2 danger per window."""
        peak = check_windows(windows, self.spec.window)[:, :, 0].max(axis=1)
        w, d = self._levels()
        return (peak >= w).astype(np.int64) + (peak >= d)


class _PipelineDetector(Detector):
    """A detector whose decision is a scikit-learn pipeline on ``_features(windows, base)``."""

    def _make(self):
        raise NotImplementedError

    def _features(self, x: np.ndarray, base: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _set_fitted(self, pipeline) -> None:
        self.pipeline_ = pipeline
        self.classes_ = np.asarray(pipeline.classes_)

    def fit(self, windows, y, base=None):
        x, base = self._check(windows, base)
        y = check_labels(y, len(x))
        self._set_fitted(self._make().fit(self._features(x, base), y))
        return self

    def predict_proba(self, windows, base=None) -> np.ndarray:
        if not self.is_trained:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(windows, y) first")
        x, base = self._check(windows, base)
        return _proba(self.pipeline_, self._features(x, base))


class SVMDetector(_PipelineDetector):
    """Pure SVM on the flattened model inputs (each window relative to its baseline)."""

    kind = "svm"

    def __init__(self, C: float = 1.0, gamma="scale", kernel: str = "rbf", cv: int = 5, spec: InputSpec = DEFAULT_SPEC):
        self.C = C
        self.gamma = gamma
        self.kernel = kernel
        self.cv = cv
        self.spec = spec

    def _make(self):
        return make_svm(self.C, self.gamma, self.kernel, self.cv)

    def _features(self, x, base):
        z = self.spec.transform(x, base)
        return z.reshape(len(z), -1)


class LogisticDetector(_PipelineDetector):
    """Baseline: logistic regression on 12 raw window statistics (``window_statistics``)."""

    kind = "logistic"

    def __init__(self, C: float = 1.0, spec: InputSpec = DEFAULT_SPEC):
        self.C = C
        self.spec = spec

    def _make(self):
        return make_logistic(self.C)

    def _features(self, x, base):
        return window_statistics(x)


class RiseDetector(_PipelineDetector):
    """Baseline: the gas of the last ``recent_s`` seconds over the clean-air baseline of the minutes
    before the window, in noise units; a one-feature logistic regression turns it into a probability
    (monotone, so the calibrated alert threshold is a threshold on the rise itself)."""

    kind = "rise"

    def __init__(self, recent_s: int = 10, spec: InputSpec = DEFAULT_SPEC):
        self.recent_s = recent_s
        self.spec = spec

    def _make(self):
        return make_logistic(1.0)

    def _features(self, x, base):
        recent = x[:, -self.recent_s :, 0].astype(np.float64).mean(axis=1)
        return np.arcsinh((recent - base[:, 0]) / base[:, 1])[:, None]


def resolve_device(device: str | None) -> str:
    """``device``, or cuda when available, else cpu."""
    import torch

    return str(device) if device is not None else "cuda" if torch.cuda.is_available() else "cpu"


class LSTMSVMDetector(_PipelineDetector):
    """The trained autoencoder's encoder (8 features per window) + a standardised RBF SVM.

    ``encoder`` is the stage-1 ``LSTMAutoencoder`` (trained by ``train.py`` through the runner; its
    input settings, saved in its hyper-parameters, are this detector's ``spec``); ``fit`` places it
    on ``device`` (None: cuda when available) as ``encoder_`` and trains the SVM on its features.
    ``fallback`` is an optional fitted ``SVMDetector`` saved alongside; ``encoder_checkpoint`` the
    encoder's Lightning checkpoint, copied into the bundle as it is.
    """

    kind = "lstm_svm"

    def __init__(self, encoder=None, C: float = 1.0, gamma="scale", kernel: str = "rbf", cv: int = 5,
                 device: str | None = None, batch_size: int = 4096, fallback: SVMDetector | None = None,
                 encoder_checkpoint: str | None = None):
        self.encoder = encoder
        self.C = C
        self.gamma = gamma
        self.kernel = kernel
        self.cv = cv
        self.device = device
        self.batch_size = batch_size
        self.fallback = fallback
        self.encoder_checkpoint = encoder_checkpoint

    @property
    def spec(self) -> InputSpec:
        """The encoder's input settings (what it was trained on)."""
        hparams = getattr(self.encoder, "hparams", None) or {}
        return InputSpec.from_dict(hparams.get("inputs"))

    def describe(self) -> dict:
        return super().describe() | {"device": getattr(self, "device_", self.device)}

    def _make(self):
        return make_svm(self.C, self.gamma, self.kernel, self.cv)

    def _place(self) -> None:
        if self.encoder is None:
            raise ValueError("LSTMSVMDetector needs the stage-1 encoder")
        self.device_ = resolve_device(self.device)
        self.encoder_ = self.encoder.to(self.device_).eval()

    def _set_fitted(self, pipeline) -> None:
        self._place()
        super()._set_fitted(pipeline)

    def fit(self, windows, y, base=None):
        x, base = self._check(windows, base)
        y = check_labels(y, len(x))
        self._place()  # the SVM learns on the placed encoder's features
        self._set_fitted(self._make().fit(self._features(x, base), y))
        return self

    def features(self, windows, base=None) -> np.ndarray:
        """(N, 8) LSTM features of raw windows, computed in batches without gradients."""
        return self._features(*self._check(windows, base))

    def _features(self, x, base) -> np.ndarray:
        import torch

        if not hasattr(self, "encoder_"):
            raise RuntimeError("LSTMSVMDetector is not fitted; call fit(windows, y) first")
        z = self.spec.transform(x, base)
        step = min(self.batch_size, CPU_BATCH) if self.device_ == "cpu" else self.batch_size
        out = []
        with torch.inference_mode():
            for i in range(0, len(z), step):
                batch = torch.from_numpy(z[i : i + step]).to(self.device_)
                out.append(self.encoder_(batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.encoder_.n_features), np.float32)


DETECTORS = {cls.kind: cls for cls in (LSTMSVMDetector, SVMDetector, ThresholdDetector, LogisticDetector, RiseDetector)}
