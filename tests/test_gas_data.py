"""Gas-leak data: simulator determinism and ground truth, windows and labels, the CSV reader."""

from __future__ import annotations

import numpy as np
import pytest

from framework.errors import UserError
from plugins.gasleak_lstm_svm.data import CsvDataModule, Series, SimulatorDataModule, Windows, hard_ends, label_runs, read_csv
from plugins.gasleak_lstm_svm.simulator import LeakEvent, simulate_series

KEYS = ("time", "gas_concentration", "temperature", "humidity", "label")


def test_simulator_is_deterministic_per_seed():
    a, b, c = simulate_series(7200, seed=3), simulate_series(7200, seed=3), simulate_series(7200, seed=4)
    for key in KEYS:
        assert np.array_equal(a[key], b[key]), key
    assert a["events"] == b["events"]
    assert not np.array_equal(a["gas_concentration"], c["gas_concentration"])
    assert all(len(a[k]) == 7200 for k in KEYS)
    assert np.array_equal(a["time"], np.arange(7200))


@pytest.mark.parametrize("seed", range(4))
def test_simulator_labels_match_events(seed):
    sim = simulate_series(86400, seed=seed)
    expected = np.zeros(86400, dtype=np.int8)
    for ev in sim["events"]:
        assert ev.kind in ("seep", "burst", "intermittent")
        expected[int(ev.start) : int(np.ceil(ev.end))] = 1
        # during the leak the gas is clearly above the reading just before it started
        seg = sim["gas_concentration"][int(ev.start) : int(ev.end)]
        before = np.median(sim["gas_concentration"][max(int(ev.start) - 300, 0) : int(ev.start)])
        assert seg.max() > before + 0.5 * ev.peak_ppm
    assert np.array_equal(sim["label"], expected)
    assert [(a, b) for a, b in label_runs(sim["label"])] == [(int(e.start), int(np.ceil(e.end))) for e in sim["events"]]


def test_simulator_scripted_leak_and_no_leaks():
    leak = LeakEvent(start=70, end=71, kind="burst", peak_ppm=1500)
    sim = simulate_series(600, seed=1, leaks=[leak], hard_negatives=False)
    (ev,) = sim["events"]
    assert ev.start == 70 and ev.end > 130  # the end follows the simulated clearing of the gas
    assert sim["label"][69] == 0 and sim["label"][70] == 1
    assert sim["gas_concentration"][75:100].mean() > 1000
    assert leak.end == 71  # the caller's event is not mutated
    quiet = simulate_series(3600, seed=1, leaks=[], hard_negatives=False)
    assert quiet["label"].sum() == 0 and quiet["gas_concentration"].max() < 200
    with pytest.raises(ValueError):
        LeakEvent(0, 10, "flood", 100)


def test_windows_are_labelled_by_their_last_sample():
    n = 200
    signal = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
    label = np.zeros(n, np.int8)
    label[100:150] = 1
    s = Series("a", signal, label, np.arange(n, dtype=float))
    ws = Windows([s, s], window=60, stride=1)
    assert len(ws) == 2 * (n - 59)
    x, base, y = ws.arrays([0, 41, 40, 141])
    assert np.array_equal(x[0], signal[:60])  # oldest first, last sample is index 59
    assert y.tolist() == [0, 1, 0, 0]  # window 41 ends at sample 100, the first leak sample
    assert base.shape == (4, 5)
    assert ws.series_index[-1] == 1 and np.array_equal(ws.gather([len(ws) - 1])[0], signal[-60:])
    xb, yb = ws.__getitems__([1, 2, 3])  # the model's inputs: 6 channels relative to the baseline
    assert xb.shape == (3, 60, 6) and yb.tolist() == [0, 0, 0]
    assert np.allclose(xb.numpy(), ws.spec.transform(ws.gather([1, 2, 3]), ws.baselines([1, 2, 3])))


def test_simulator_datamodule_splits_are_different_days():
    dm = SimulatorDataModule(seconds_per_day=3600, train_days=2, val_days=1, test_days=1)
    days = {split: [s.signal for s in dm.series(split)] for split in ("train", "val", "test")}
    flat = [d for ds in days.values() for d in ds]
    assert len(flat) == 4
    assert all(not np.array_equal(flat[i], flat[j]) for i in range(4) for j in range(i + 1, 4))
    kw = dm.model_kwargs()
    ws = dm.windows("train")  # 710 windows: all of them enter the statistics
    inputs = ws.inputs(np.arange(len(ws))).reshape(-1, 6).astype(np.float64)
    assert np.allclose(kw["channel_mean"], inputs.mean(axis=0), rtol=1e-4, atol=1e-6)  # training data only
    assert np.allclose(kw["channel_std"], inputs.std(axis=0), rtol=1e-4)
    assert kw["inputs"] == dm.spec.to_dict()


CSV_GOOD = "timestamp,gas_concentration,temperature,humidity,label,series_id\n"


def test_csv_bad_rows_reported_and_skipped_or_interpolated(tmp_path, caplog):
    path = tmp_path / "bad.csv"
    path.write_text(
        CSV_GOOD
        + "0,50,20,40,0,a\n"
        + "1,51,20,40,0,a\n"
        + "2,abc,20,40,0,a\n"  # line 4: non-numeric
        + "3,52,20,40,0,a,extra\n"  # line 5: too many fields
        + "4,,20,40,0,a\n"  # line 6: missing
        + "5,53,20,40,1,a\n"
        + "6,54,nan,40,1,a\n"  # line 8: NaN
        + "0,40,21,41,0,b\n"
        + "1,41,21,41,7,b\n"  # line 10: label not 0/1
        + "2,42,21,41,1,b\n"
    )
    series, report = read_csv(path, "skip", resample="none")
    assert report.bad_lines == [4, 5, 6, 8, 10]
    assert "5 bad row(s)" in caplog.text and "lines 4, 5, 6, 8, 10" in caplog.text
    by_id = {s.series_id: s for s in series}
    assert by_id["a"].signal[:, 0].tolist() == [50, 51, 53]
    assert by_id["b"].label.tolist() == [0, 1]
    # on the 1 Hz grid (the default, resample=hold) the seconds of skipped rows hold the reading before
    by_id = {s.series_id: s for s in read_csv(path, "skip")[0]}
    assert by_id["a"].signal[:, 0].tolist() == [50, 51, 51, 51, 51, 53] and by_id["b"].label.tolist() == [0, 0, 1]

    series, report = read_csv(path, "interpolate")
    a = {s.series_id: s for s in series}["a"]
    assert a.signal.shape == (7, 3)  # the over-long line 5 is still dropped (its second holds the reading before)
    assert {s.series_id: s for s in read_csv(path, "interpolate", resample="none")[0]}["a"].signal.shape == (6, 3)
    assert np.isfinite(a.signal).all()
    assert 51 < a.signal[2, 0] < 53 and a.signal[5, 1] == 20

    with pytest.raises(UserError, match="on_bad_rows"):
        read_csv(path, "guess")


def test_csv_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_csv(tmp_path / "none.csv")
    p = tmp_path / "cols.csv"
    p.write_text("time,gas\n1,2\n")
    with pytest.raises(UserError, match="lacks column"):
        read_csv(p)
    p.write_text("timestamp,gas_concentration,temperature,humidity\n1,2,3,4\n")
    with pytest.raises(UserError, match="no 'label' column"):
        read_csv(p)
    with pytest.raises(UserError, match="data.path"):
        CsvDataModule(path=None)


def write_sim_csv(path, days: int, seconds: int, seed: int = 0, datetimes: bool = False):
    import pandas as pd

    frames = []
    for d in range(days):
        sim = simulate_series(seconds, seed=seed + d)
        ts = sim["time"] if not datetimes else pd.to_datetime(sim["time"], unit="s", origin="2024-01-01").astype(str)
        frames.append(pd.DataFrame({"timestamp": ts, "gas_concentration": sim["gas_concentration"],
                                    "temperature": sim["temperature"], "humidity": sim["humidity"],
                                    "label": sim["label"], "series_id": f"node{d}"}))
    pd.concat(frames).to_csv(path, index=False)


def test_csv_datamodule_splits_by_series_and_reads_datetimes(tmp_path):
    path = tmp_path / "rec.csv"
    write_sim_csv(path, days=6, seconds=600, datetimes=True)
    dm = CsvDataModule(path=str(path), val_fraction=0.2, test_fraction=0.2)
    ids = {split: {s.series_id for s in dm.series(split)} for split in ("train", "val", "test")}
    assert ids["train"] | ids["val"] | ids["test"] == {f"node{i}" for i in range(6)}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    s = dm.series("train")[0]
    assert np.allclose(np.diff(s.time), 1.0)  # ISO date-times become seconds


def test_csv_million_rows_loads_fast(tmp_path):
    """A million rows in a few hundred series: vectorised loading, no Python object per row."""
    import time

    rng = np.random.default_rng(0)
    n, n_series = 1_000_000, 400
    per = n // n_series
    path = tmp_path / "big.csv"
    t = np.tile(np.arange(per), n_series)
    sid = np.repeat(np.arange(n_series), per)
    gas = rng.normal(50, 3, n).round(2)
    with open(path, "w") as f:
        f.write("timestamp,gas_concentration,temperature,humidity,label,series_id\n")
        np.savetxt(f, np.column_stack([t, gas, np.full(n, 21.5), np.full(n, 45.0), (t % 500 > 450).astype(int), sid]),
                   fmt=["%d", "%.2f", "%.1f", "%.1f", "%d", "%d"], delimiter=",")
    started = time.perf_counter()
    series, report = read_csv(path)
    elapsed = time.perf_counter() - started
    assert len(series) == n_series and sum(map(len, series)) == n and not report.bad_lines
    assert elapsed < 60, f"reading 1e6 rows took {elapsed:.1f} s"
    ws = Windows(series, 60, stride=10)
    assert len(ws) == n_series * len(range(59, per, 10))


def test_hard_windows_before_a_leak_ends_are_optional():
    n = 400
    signal = np.tile(np.float32([50, 21, 45]), (n, 1))
    label = np.zeros(n, np.int8)
    label[200:300] = 1  # one leak, samples 200..299
    ws = Windows([Series("s", signal, label, np.arange(n, dtype=float))], window=60, stride=1)
    after = hard_ends(ws, follow=30)
    assert after.tolist() == list(range(200, 230)) + list(range(300, 330))  # after the start and the end
    both = hard_ends(ws, follow=30, before=20)
    assert both.tolist() == list(range(180, 230)) + list(range(280, 330))  # and the 20 before each change
    assert label[280:300].all()  # ... which, before the end, are the leak's last seconds
