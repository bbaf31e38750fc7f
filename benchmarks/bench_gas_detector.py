"""Gas-leak detector throughput and latency against a bare PyTorch + scikit-learn loop doing the same.

    python benchmarks/bench_gas_detector.py [--bundle DIR] [--windows 20000] [--batch 4096] [--single 300] [--threads 1]

For each detector (LSTM+SVM, pure SVM, threshold, and the logistic and rise baselines) it measures windows scored per second in batches
and the latency of scoring one window, then the same work written as a bare loop (the encoder's
module called under inference_mode and the scikit-learn pipeline's predict_proba, no input checks,
no bundle), and prints detector/bare ratios. Uses the latest trained bundle (or --bundle); with
none it fits a small one first (speed depends on the SVM's support vectors, so figures from a
fully trained bundle are the ones to quote).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from plugins.gasleak_lstm_svm.data import SimulatorDataModule  # noqa: E402
from plugins.gasleak_lstm_svm.bundle import load_detector  # noqa: E402
from plugins.gasleak_lstm_svm.estimators import window_statistics  # noqa: E402


def small_bundle(path: Path) -> Path:
    from plugins.gasleak_lstm_svm.bundle import save_bundle
    from plugins.gasleak_lstm_svm.estimators import LSTMSVMDetector, SVMDetector
    from plugins.gasleak_lstm_svm.model import LSTMAutoencoder
    from plugins.gasleak_lstm_svm.train import svm_training_set

    dm = SimulatorDataModule(seconds_per_day=6 * 3600, train_days=1, val_days=1, test_days=1)
    dm.setup("fit")
    enc = LSTMAutoencoder(**dm.model_kwargs())
    x, base, y = svm_training_set(dm.windows("train", stride=5), 3000, 0.5, seed=0)
    det = LSTMSVMDetector(enc, device="cpu", fallback=SVMDetector().fit(x, y, base)).fit(x, y, base)
    return save_bundle(path, det)


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bare(kind: str, det):
    """The same scoring with nothing around it: inputs + module call + pipeline.predict_proba."""
    spec, pipe = det.spec, getattr(det, "pipeline_", None)
    if kind == "lstm_svm":
        enc = det.encoder_

        def score(x, base):
            z = spec.transform(x, base)
            with torch.inference_mode():
                feats = torch.cat([enc(torch.from_numpy(z[i : i + 4096])) for i in range(0, len(z), 4096)]).numpy()
            return pipe.predict_proba(feats)[:, 1]
    elif kind == "svm":

        def score(x, base):
            return pipe.predict_proba(spec.transform(x, base).reshape(len(x), -1))[:, 1]
    elif kind == "logistic":

        def score(x, base):
            return pipe.predict_proba(window_statistics(x))[:, 1]
    elif kind == "rise":

        def score(x, base):
            return pipe.predict_proba(np.arcsinh((x[:, -det.recent_s:, 0].mean(axis=1) - base[:, 0]) / base[:, 1])[:, None])[:, 1]
    else:

        def score(x, base):
            return np.minimum(x[:, :, 0].max(axis=1) / det.danger_ppm, 1.0)
    return score


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", help="detector bundle dir (default: the latest gasleak train run's)")
    ap.add_argument("--windows", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--single", type=int, default=300, help="single-window calls to time")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    bundle = args.bundle
    if not bundle:
        from framework import runs

        latest = runs.latest_train("gasleak")
        bundle = latest.get("detector") if latest else None
    if not bundle:
        bundle = small_bundle(Path("outputs/.bench_gasleak_bundle"))
        print(f"no trained detector found: using a small untrained-encoder bundle at {bundle}")
    dm = SimulatorDataModule(seconds_per_day=86400, train_days=0, val_days=0, test_days=1)
    dm.use_inputs(load_detector(bundle).spec)
    ws = dm.windows("test", stride=1)
    x, base, _ = ws.arrays(np.sort(np.random.default_rng(0).choice(len(ws), min(args.windows, len(ws)), replace=False)))
    print(f"bundle {bundle}; {len(x)} windows, batches of {args.batch}, {args.single} single-window calls, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'detector':<18}{'batched win/s':>15}{'bare win/s':>13}{'ratio':>8}{'single ms':>12}{'bare ms':>10}{'ratio':>8}")
    for kind in ("lstm_svm", "svm", "threshold", "logistic", "rise"):
        det = load_detector(bundle, kind=kind)
        if det.kind != kind:
            print(f"{kind:<18} not in the bundle")
            continue
        ref = bare(kind, det)
        det.predict_proba(x[:64], base[:64]), ref(x[:64], base[:64])  # warm up
        batches = [(x[i : i + args.batch], base[i : i + args.batch]) for i in range(0, len(x), args.batch)]
        t_det = min(timed(lambda: [det.predict_proba(b, c) for b, c in batches], 2))
        t_ref = min(timed(lambda: [ref(b, c) for b, c in batches], 2))
        one, one_base = x[:1], base[:1]
        s_det = statistics.median(timed(lambda: det.predict_proba(one, one_base), args.single)) * 1e3
        s_ref = statistics.median(timed(lambda: ref(one, one_base), args.single)) * 1e3
        # the same numbers out of both (the bare threshold loop is only a stand-in for the cost)
        if kind != "threshold":
            assert np.allclose(det.predict_proba(x[:256], base[:256])[:, 1], ref(x[:256], base[:256]), atol=1e-6)
        print(f"{det.status:<18}{len(x) / t_det:>15.0f}{len(x) / t_ref:>13.0f}{t_ref / t_det:>8.2f}"
              f"{s_det:>12.3f}{s_ref:>10.3f}{s_ref / s_det:>8.2f}")
    print("ratio = bare time / detector time (1.0: the detector adds nothing; below 1: its overhead)")
    # what the live service adds per window: the clean-air baseline from the sensor's buffer
    spec = dm.spec
    history = ws.signal[: spec.history].astype(np.float64)
    per = statistics.median(timed(lambda: spec.baseline_of_history(history), args.single)) * 1e6
    print(f"live service: one window's baseline from a {spec.history}-sample buffer: {per:.0f} µs (median)")


if __name__ == "__main__":
    main()
