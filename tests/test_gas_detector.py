"""Gas-leak detectors: scikit-learn estimators, the threshold rule, persistence, fallbacks and tamper refusal.
(The alert rule is the alert engine's: test_gas_service_alerts.py.)"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from framework.errors import UserError
from plugins.gasleak_lstm_svm.data import Series, SimulatorDataModule, Windows
from plugins.gasleak_lstm_svm.bundle import find_detector, load_detector, save_bundle, sha256
from plugins.gasleak_lstm_svm.estimators import LogisticDetector, LSTMSVMDetector, RiseDetector, SVMDetector, ThresholdDetector
from plugins.gasleak_lstm_svm.features import InputSpec
from plugins.gasleak_lstm_svm.model import LSTMAutoencoder
from plugins.gasleak_lstm_svm.train import clean_air_ends, mined_negatives, svm_training_set


def windows_with_peak(ppm):
    x = np.zeros((len(ppm), 60, 3), np.float32)
    x[:, :, 0], x[:, :, 1], x[:, :, 2] = 50, 21, 45
    x[:, -1, 0] = ppm
    return x


def test_threshold_detector():
    det = ThresholdDetector()
    x = windows_with_peak([50, 499, 500, 750, 1000, 3000])
    proba = det.predict_proba(x)
    assert proba.shape == (6, 2) and np.allclose(proba.sum(1), 1)
    assert det.predict(x).tolist() == [0, 0, 1, 1, 1, 1]
    assert det.levels(x).tolist() == [0, 0, 1, 1, 2, 2]
    p = proba[:, 1]
    assert p[1] < 0.5 and np.isclose(p[2], 0.7) and np.isclose(p[3], 0.85) and p[4] == p[5] == 1.0
    assert det.status == "Threshold" and not det.is_trained
    with pytest.raises(ValueError, match=r"shape \(N, 60, 3\)"):
        det.predict_proba(np.zeros((2, 59, 3)))
    with pytest.raises(ValueError, match="NaN"):
        det.predict_proba(np.full((1, 60, 3), np.nan))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small real LSTM+SVM (a briefly trained autoencoder) with its pure-SVM fallback, saved."""
    torch.manual_seed(0)
    torch.set_num_threads(1)  # small LSTM batches: more threads only spin on a busy CI box
    dm = SimulatorDataModule(seconds_per_day=6 * 3600, train_days=1, val_days=1, test_days=1, train_stride=20)
    dm.setup("fit")
    enc = LSTMAutoencoder(**dm.model_kwargs())
    opt = torch.optim.Adam(enc.parameters(), 1e-3)
    for i, batch in enumerate(dm.train_dataloader()):
        loss = enc._losses(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i == 30:
            break
    x, base, y = svm_training_set(dm.windows("train", stride=5), 800, 0.5, seed=0)
    svm = SVMDetector(cv=3).fit(x, y, base)
    det = LSTMSVMDetector(enc, cv=3, device="cpu", fallback=svm).fit(x, y, base)
    bundle = tmp_path_factory.mktemp("bundle") / "detector"
    save_bundle(bundle, det, ThresholdDetector(450, 900))
    xt, bt, yt = dm.windows("test", stride=7).arrays()
    return {"bundle": bundle, "det": det, "svm": svm, "x": xt, "base": bt, "y": yt}


def copy_bundle(trained, tmp_path):
    dst = tmp_path / "detector"
    shutil.copytree(trained["bundle"], dst)
    return dst


def test_round_trip_gives_identical_probabilities(trained):
    det = trained["det"]
    loaded = load_detector(trained["bundle"])
    assert isinstance(loaded, LSTMSVMDetector) and loaded.status == "PyTorch LSTM+SVM"
    assert loaded.is_trained and loaded.device == "cpu" and loaded.fallback_reason is None
    x = trained["x"]
    assert np.array_equal(loaded.predict_proba(x), det.predict_proba(x))
    assert np.array_equal(loaded.predict(x), det.predict(x))
    svm = load_detector(trained["bundle"], kind="svm")
    assert svm.status == "Pure SVM" and np.array_equal(svm.predict_proba(x), trained["svm"].predict_proba(x))
    th = load_detector(trained["bundle"], kind="threshold")
    assert (th.warning_ppm, th.danger_ppm) == (450, 900)
    # a sanity check that the detector learned something (not a claim about the goals)
    assert (loaded.predict(x, trained["base"]) == trained["y"]).mean() > 0.9


def test_fast_scoring_paths_give_scikit_learn_and_torch_figures(trained, monkeypatch):
    """The SVMs' kernel as matrix products (estimators._rbf_svm_proba) = scikit-learn's predict_proba,
    and the LSTM's CPU chunks (CPU_BATCH) = one forward pass over every window."""
    from plugins.gasleak_lstm_svm import estimators

    det, svm, x, base = trained["det"], trained["svm"], trained["x"], trained["base"]
    assert len(x) > estimators.CPU_BATCH
    feats = det.features(x, base)
    monkeypatch.setattr(estimators, "RBF_CHUNK", 100)  # several kernel blocks
    for d, f in ((det, feats), (svm, svm._features(*svm._check(x, base)))):
        fast = estimators._rbf_svm_proba(d.pipeline_, f)
        assert fast is not None  # make_svm's shape takes the fast path ...
        np.testing.assert_allclose(fast, d.pipeline_.predict_proba(f), rtol=0, atol=1e-10)
        np.testing.assert_allclose(d.predict_proba(x, base), d.pipeline_.predict_proba(f), rtol=0, atol=1e-10)
    logistic = LogisticDetector().fit(x, trained["y"], base)
    assert estimators._rbf_svm_proba(logistic.pipeline_, np.zeros((3, 12))) is None  # ... other pipelines do not
    monkeypatch.setattr(estimators, "CPU_BATCH", len(x))
    np.testing.assert_allclose(det.features(x, base), feats, rtol=0, atol=1e-5)


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated"])
def test_lstm_that_cannot_load_falls_back_to_pure_svm(trained, tmp_path, damage, caplog):
    bundle = copy_bundle(trained, tmp_path)
    ckpt = bundle / "lstm.ckpt"
    if damage == "missing":
        ckpt.unlink()
    elif damage == "corrupt":
        ckpt.write_bytes(b"not a checkpoint")
    else:
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    det = load_detector(bundle)
    assert det.status == "Pure SVM" and det.is_trained
    assert "LSTM not loaded" in det.fallback_reason and "Pure SVM" in det.fallback_reason
    assert "LSTM not loaded" in caplog.text
    assert np.array_equal(det.predict_proba(trained["x"]), trained["svm"].predict_proba(trained["x"]))


def test_no_lstm_and_no_svm_falls_back_to_threshold(trained, tmp_path):
    bundle = tmp_path / "lstm_only"
    det = trained["det"]
    lonely = LSTMSVMDetector.from_fitted(det.pipeline_, encoder=det.encoder, device="cpu")
    save_bundle(bundle, lonely)
    assert load_detector(bundle).status == "PyTorch LSTM+SVM"
    (bundle / "lstm.ckpt").unlink()
    fallen = load_detector(bundle)
    assert fallen.status == "Threshold" and not fallen.is_trained
    assert "no Pure SVM in the bundle" in fallen.fallback_reason


def test_bundle_records_the_versions_it_was_trained_with(trained):
    import sklearn
    import torch

    versions = json.loads((trained["bundle"] / "manifest.json").read_text())["trained_with"]
    assert versions["torch"] == torch.__version__ and versions["scikit-learn"] == sklearn.__version__
    assert versions["numpy"] == np.__version__ and versions["python"].count(".") == 2
    assert versions["cpu_capability"] == torch.backends.cpu.get_cpu_capability()


@pytest.mark.parametrize("target", ["svm.skops", "lstm_svm.skops"])
def test_tampered_or_truncated_sklearn_file_is_refused(trained, tmp_path, target):
    bundle = copy_bundle(trained, tmp_path)
    data = (bundle / target).read_bytes()
    (bundle / target).write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=f"{target} does not match its sha256") as e:
        load_detector(bundle, kind="svm" if target == "svm.skops" else None)
    assert "\n" not in str(e.value)


def test_tampered_manifest_is_refused(trained, tmp_path):
    bundle = copy_bundle(trained, tmp_path)
    (bundle / "manifest.json").write_text("{ not json")
    with pytest.raises(UserError, match="manifest.json is damaged"):
        load_detector(bundle)
    manifest = json.loads((trained["bundle"] / "manifest.json").read_text())
    manifest["files"]["svm.skops"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="does not match its sha256"):
        load_detector(bundle, kind="svm")
    manifest["files"]["../evil.skops"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="outside the bundle"):
        load_detector(bundle)
    with pytest.raises(UserError, match="not found"):
        load_detector(tmp_path / "nowhere")


def test_untrusted_types_are_refused_even_with_a_matching_hash(trained, tmp_path):
    """Someone swaps in a pipeline holding a function and fixes the hash: skops' trusted list refuses it."""
    import skops.io as sio
    from sklearn.preprocessing import FunctionTransformer

    bundle = copy_bundle(trained, tmp_path)
    sio.dump(FunctionTransformer(os.system), bundle / "svm.skops")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["svm.skops"] = sha256(bundle / "svm.skops")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="untrusted types"):
        load_detector(bundle, kind="svm")


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this-ran > /dev/null",))


def test_a_hostile_lstm_checkpoint_with_a_matching_hash_is_refused_and_falls_back(trained, tmp_path):
    bundle = copy_bundle(trained, tmp_path)
    torch.save({"hyper_parameters": {}, "state_dict": {}, "payload": _RunsCode()}, bundle / "lstm.ckpt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["lstm.ckpt"] = sha256(bundle / "lstm.ckpt")
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    det = load_detector(bundle)
    assert det.status == "Pure SVM" and "refused checkpoint" in det.fallback_reason
    assert "weights_only" not in det.fallback_reason  # never the advice to turn the protection off


def test_find_detector(trained, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(trained["bundle"], run / "detector")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes(b"x")
    cfg = lambda p: OmegaConf.create({"ckpt_path": p, "task": {"name": "gasleak"}})  # noqa: E731
    for hint in (run / "detector", run, run / "checkpoints" / "best.ckpt"):
        assert find_detector(cfg(str(hint))) == run / "detector"
    with pytest.raises(UserError, match="no detector bundle"):
        find_detector(cfg(str(tmp_path)))
    monkeypatch.setenv("FRAMEWORK_OUTPUTS", str(tmp_path / "empty"))
    with pytest.raises(UserError, match="no trained detector; run `python -m framework task=gasleak train` first"):
        find_detector(OmegaConf.create({"ckpt_path": None, "task": {"name": "gasleak"}, "paths": {"outputs": str(tmp_path / "empty")}}))


def test_svm_training_set_mixes_hard_and_leak_windows():
    dm = SimulatorDataModule(seconds_per_day=6 * 3600, train_days=1, val_days=1, test_days=1, leaks_per_hour=0.5)
    ws = dm.windows("train", stride=2)
    x, base, y = svm_training_set(ws, 1500, 0.5, seed=0, positive_fraction=0.4)
    assert x.shape == (1500, 60, 3) and base.shape == (1500, 5) and len(y) == 1500
    assert 0.3 < y.mean() < 0.5  # leaks are ~10% of these windows; the sample is rebalanced
    x2, _, y2 = svm_training_set(ws, 1500, 0.5, seed=0)
    assert y2.mean() < y.mean()
    # every sampled window is a real window of the data with its last-sample label and its own baseline
    i = np.flatnonzero(np.all(ws.signal[59:] == x[0, -1], axis=1))[0] + 59
    assert np.array_equal(ws.signal[i - 59 : i + 1], x[0]) and ws.label[i] == y[0]
    assert np.allclose(base[0], ws.spec.baselines_for_series(ws.signal, [i])[0])


def _series_with_a_release_and_a_bump(n: int = 900) -> Series:
    """Clean air at 50 ppm with a release (label 1) at 300-400 and a clean-air bump (label 0) at 700-720."""
    sig = np.zeros((n, 3), np.float32)
    sig[:, 0], sig[:, 1], sig[:, 2] = 50, 21, 45
    label = np.zeros(n, np.int8)
    label[300:400], sig[300:400, 0] = 1, 400
    sig[700:720, 0] = 120
    return Series("s", sig, label, np.arange(n, dtype=np.float64))


def test_clean_air_ends_keep_away_from_releases():
    series = _series_with_a_release_and_a_bump()
    ws = Windows([series, series], 60, 1)
    ends = clean_air_ends(ws, stride=3, margin=120)
    expected = [ws.offsets[i] + e for i in range(2) for e in range(59, len(series), 3)
                if not series.label[max(e - 59 - 120, 0) : e + 1].any()]
    assert ends.tolist() == expected
    # before the release up to its first second; after it, once the window and 120 s before it are clear
    assert {59, 299} <= set(expected) and min(e for e in expected if 299 < e < 900) == 581  # 400 + 59 + 120, on the grid


class _GasMaxDetector:
    """p = the window's highest gas reading / 1000: a stand-in that is fooled by the bump."""

    def predict_proba(self, x, base=None):
        p = np.clip(x[:, :, 0].max(axis=1) / 1000 * 4, 0, 1)
        return np.column_stack([1 - p, p])


def test_mined_negatives_are_the_clean_air_windows_scoring_highest():
    series = _series_with_a_release_and_a_bump()
    ws = Windows([series], 60, 1)
    ends, scanned = mined_negatives(_GasMaxDetector(), ws, count=50, stride=1, margin=120)
    assert scanned == len(clean_air_ends(ws, 1, 120))
    # the bump's windows (p = 0.48 on 120 ppm: under the floor) ... none at 0.5
    assert len(ends) == 0
    ends, _ = mined_negatives(_GasMaxDetector(), ws, count=50, stride=1, margin=120, floor=0.4)
    # ... with a lower floor: 50 windows, each holding part of the bump, none near the release
    assert len(ends) == 50 and np.all(ws.label[ends] == 0)
    assert all(700 <= e and e - 59 < 720 for e in ends)
    assert np.all(np.diff(ends) > 0)


def _toy_batch(n: int = 32, seed: int = 0):
    """Model inputs of raw windows: half plain air (~50 ppm), half with gas rising over the last 10 s; label = leak."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 60, 3)
    x[..., 0] = 50 + 2 * torch.randn(n, 60, generator=g)
    x[..., 1], x[..., 2] = 21.0, 45.0
    y = torch.arange(n) % 2
    x[y == 1, -10:, 0] += torch.linspace(30, 300, 10)
    spec = InputSpec()
    return torch.from_numpy(spec.transform(x.numpy(), spec.baseline_of_window(x.numpy()))), y


def test_auxiliary_loss_is_configurable_and_trains_the_encoder():
    torch.set_num_threads(1)  # tiny batches: more threads only spin on a busy CI box
    batch = _toy_batch()
    flat = batch[0].reshape(-1, 6)  # standardised as the data module does (unscaled inputs saturate the LSTM)
    kw = {"channel_mean": flat.mean(0).tolist(), "channel_std": flat.std(0).clamp_min(1e-3).tolist()}
    torch.manual_seed(0)
    plain = LSTMAutoencoder(**kw)  # aux_weight 0 (the Python default): a plain autoencoder
    losses = plain._losses(batch)
    assert plain.aux_head is None and set(losses) == {"recon", "loss"} and losses["loss"] == losses["recon"]
    assert isinstance(LSTMAutoencoder(**kw, aux_weight=1.0).aux_head, torch.nn.Linear)  # aux_hidden 0: linear
    torch.manual_seed(0)
    aux = LSTMAutoencoder(**kw, aux_weight=5.0, aux_hidden=4)
    assert isinstance(aux.aux_head, torch.nn.Sequential)  # one hidden layer of 4
    losses = aux._losses(batch)
    assert torch.isclose(losses["loss"], losses["recon"] + 5.0 * losses["aux"])
    # same seed, same initial encoder and features: the head is not on the detector's path
    assert torch.equal(plain.eval()(batch[0]), aux.eval()(batch[0]))
    # the supervised term reaches the encoder's LSTM ...
    aux.train().zero_grad()
    losses["aux"].backward()
    assert aux.lstm.weight_hh_l0.grad.abs().sum() > 0

    # ... and the same 150 steps with it give other features, whose head now separates the toy classes
    # (40 were enough on one machine and not on another: the head's loss plateaus near ln 2 first)
    def train(model):
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(150):
            loss = model.train()._losses(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval()

    first = float(losses["aux"])
    torch.manual_seed(1)
    train(plain)
    torch.manual_seed(1)
    train(aux)
    assert float(aux._losses(batch)["aux"]) < 0.5 * first
    assert not torch.allclose(plain(batch[0]), aux(batch[0]), atol=1e-3)


# ---- scikit-learn estimator conventions ---------------------------------------------------------------


def _estimators(trained):
    spec = InputSpec(window=60, baseline_s=300)
    return [SVMDetector(C=2.0, cv=3, spec=spec), LogisticDetector(C=0.5, spec=spec), RiseDetector(recent_s=5, spec=spec),
            LSTMSVMDetector(trained["det"].encoder, C=2.0, cv=3, device="cpu", fallback=trained["svm"])]


def test_detectors_follow_scikit_learn_conventions(trained):
    from sklearn.base import clone, is_classifier
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    x, base, y = trained["x"], trained["base"], trained["y"]
    for det in _estimators(trained):
        name = type(det).__name__
        params = det.get_params(deep=False)
        assert set(vars(det)) == set(params), name  # __init__ stores its parameters and nothing else
        assert is_classifier(det) and not det.is_trained and not hasattr(det, "classes_"), name
        with pytest.raises(NotFittedError):
            check_is_fitted(det)
        with pytest.raises(RuntimeError, match="not fitted"):
            det.predict_proba(x[:3], base[:3])
        copy = clone(det)
        assert type(copy) is type(det) and copy is not det
        for key, value in params.items():
            if key in ("encoder", "fallback"):  # estimators and modules are cloned or copied, not shared
                assert copy.get_params(deep=False)[key] is not value, (name, key)
            else:
                assert copy.get_params(deep=False)[key] == value, (name, key)
        # set_params changes what fit uses; get_params reads it back
        if "C" in params:
            assert copy.set_params(C=3.0).get_params()["C"] == 3.0 and det.C != 3.0
        det.fit(x, y, base)
        check_is_fitted(det)
        assert det.classes_.tolist() == [0, 1] and det.is_trained, name
        assert det.predict_proba(x, base).shape == (len(x), 2)
        # the parameters are the whole recipe: a clone fitted on the same data gives the same probabilities
        assert np.array_equal(clone(det).fit(x, y, base).predict_proba(x, base), det.predict_proba(x, base)), name
    # fitted attributes end in an underscore; the LSTM is placed by fit, not by __init__
    lstm = _estimators(trained)[-1]
    assert not hasattr(lstm, "encoder_") and lstm.device == "cpu"
    lstm.fit(x, y, base)
    assert lstm.encoder_ is lstm.encoder and lstm.device_ == "cpu" and lstm.pipeline_ is not None
    assert lstm.spec == InputSpec.from_dict(lstm.encoder.hparams["inputs"])  # the encoder's inputs


def test_threshold_rule_is_an_estimator_fitted_by_construction():
    from sklearn.base import clone
    from sklearn.utils.validation import check_is_fitted

    det = ThresholdDetector(300, 600, spec=InputSpec(window=30, baseline_s=120))
    check_is_fitted(det)  # a fixed rule: nothing to learn
    assert det.get_params() == {"warning_ppm": 300, "danger_ppm": 600, "spec": InputSpec(window=30, baseline_s=120)}
    assert clone(det).get_params() == det.get_params()
    assert det.fit().classes_.tolist() == [0, 1] and not det.is_trained
    x = np.full((2, 30, 3), 50.0, np.float32)
    x[1, -1, 0] = 600
    assert det.levels(x).tolist() == [0, 2]
    with pytest.raises(ValueError, match="need 0 < warning_ppm < danger_ppm"):
        ThresholdDetector(900, 600).fit()


def test_loaded_detectors_are_fitted_estimators_with_their_parameters(trained):
    from sklearn.utils.validation import check_is_fitted

    for kind in ("lstm_svm", "svm"):
        det = load_detector(trained["bundle"], kind=kind)
        check_is_fitted(det)
        assert det.classes_.tolist() == [0, 1] and det.is_trained
        assert det.get_params()["cv"] == 3  # saved in the manifest, not the constructor's default (5)


def test_configured_alert_levels_reach_the_threshold_fallback(trained, tmp_path):
    """evaluate and serve pass alerts.warning_ppm/danger_ppm: the threshold rule (asked for, or the
    last fallback) uses them, not the levels the bundle was saved with (450/900 here)."""
    from plugins.gasleak_lstm_svm.service.modes import _detector

    assert (load_detector(trained["bundle"], kind="threshold").warning_ppm) == 450  # no configuration: the bundle's
    th = load_detector(trained["bundle"], kind="threshold", warning_ppm=300, danger_ppm=600)
    assert (th.warning_ppm, th.danger_ppm) == (300, 600)
    bundle = tmp_path / "lstm_only"
    det = trained["det"]
    save_bundle(bundle, LSTMSVMDetector.from_fitted(det.pipeline_, encoder=det.encoder, device="cpu"),
                ThresholdDetector(450, 900))
    (bundle / "lstm.ckpt").unlink()
    cfg = OmegaConf.create({"ckpt_path": str(bundle), "task": {"name": "gasleak"},
                            "alerts": {"warning_ppm": 250, "danger_ppm": 800}})
    served, _ = _detector(cfg, train_if_missing=False)  # what demo and serve run on
    assert served.status == "Threshold" and (served.warning_ppm, served.danger_ppm) == (250, 800)
    cfg.alerts.warning_ppm = 900
    with pytest.raises(UserError, match="warning_ppm < danger_ppm"):
        _detector(cfg, train_if_missing=False)


def test_a_shorter_window_flows_from_the_data_to_the_service(tmp_path):
    """data.window=30: the detector is trained on 30-sample windows, its bundle says so, and the live
    pipeline scores from the 30th reading on, with evaluate's probabilities."""
    from plugins.gasleak_lstm_svm.scoring import series_probabilities
    from plugins.gasleak_lstm_svm.service.alerts import AlertRules
    from plugins.gasleak_lstm_svm.service.pipeline import Pipeline
    from plugins.gasleak_lstm_svm.service.schemas import Reading
    from plugins.gasleak_lstm_svm.service.storage import Storage

    dm = SimulatorDataModule(window=30, baseline_s=120, seconds_per_day=3 * 3600, train_days=1, val_days=1, test_days=1,
                             leaks_per_hour=1.0)
    x, base, y = svm_training_set(dm.windows("train", stride=5), 600, 0.5, seed=0)
    assert x.shape[1:] == (30, 3)
    bundle = save_bundle(tmp_path / "b", SVMDetector(cv=3, spec=dm.spec).fit(x, y, base))
    assert json.loads((bundle / "manifest.json").read_text())["window"] == 30
    det = load_detector(bundle)
    assert det.spec.window == 30 and load_detector(bundle, kind="threshold").spec.window == 30
    rec = dm.series("test")[0]
    rec = type(rec)(rec.series_id, rec.signal[:600], rec.label[:600], rec.time[:600])
    offline = series_probabilities(det, rec)
    assert np.isnan(offline[:29]).all() and not np.isnan(offline[29:]).any()

    storage = Storage(tmp_path / "gas.sqlite")
    pipeline = Pipeline(det, storage, AlertRules())
    t0 = 1_700_000_000.0
    pipeline.clock = lambda: t0 + 1000
    readings = [Reading(sensor_id="s", timestamp=t0 + float(t), gas_concentration=float(g), temperature=float(c),
                        humidity=float(h)) for t, (g, c, h) in zip(rec.time, rec.signal)]
    for i in range(0, len(readings), 97):  # rounds as readings arrive
        pipeline.ingest(readings[i : i + 97], "test")
        pipeline.process_pending()
    rows = storage.readings(sensor_id="s", limit=10_000)
    online = np.array([np.nan if r["probability"] is None else r["probability"] for r in rows])
    storage.close()
    assert pipeline.window == 30 and pipeline.stats["windows_scored"] == len(rec) - 29
    assert np.array_equal(np.isnan(online), np.isnan(offline))
    assert np.allclose(online[29:], offline[29:], atol=1e-6)
