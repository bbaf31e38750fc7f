"""Gas CSV reader: real sensor cadence (coarse, jittered, gappy, duplicated timestamps) to 1 Hz."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from framework.errors import UserError
from plugins.gasleak_lstm_svm.data import CsvDataModule, label_runs, read_csv

HEADER = "timestamp,gas_concentration,temperature,humidity,label,series_id\n"


def write(path, rows) -> None:
    """rows: (timestamp, gas, temperature, humidity, label, series_id) tuples."""
    path.write_text(HEADER + "".join(",".join(map(str, r)) + "\n" for r in rows))


def latest_at_or_before(times, values, t):
    """The plain reading of 'hold': the value of the last reading not after t."""
    return [v for ts, v in zip(times, values) if ts <= t + 1e-9][-1]


def test_five_second_cadence_becomes_1hz_with_held_values(tmp_path):
    times = np.arange(0, 300, 5)
    gas = 2.0 + np.arange(len(times)) * 0.1
    write(tmp_path / "laser.csv", [(t, round(g, 3), 15, 80, 0, "p1") for t, g in zip(times, gas)])
    (s,), report = read_csv(tmp_path / "laser.csv")
    assert len(s) == 296 and np.array_equal(s.time, np.arange(296))  # 0..295 s, one sample a second
    expected = [latest_at_or_before(times, np.round(gas, 3), t) for t in range(296)]
    assert np.allclose(s.signal[:, 0], expected)
    assert report.resampled == 1 and report.median_interval_s == 5 and report.filled == 296 - len(times)


def test_jittered_timestamps_hold_or_interpolate_onto_the_grid(tmp_path):
    rng = np.random.default_rng(0)
    times = 1000.0 + np.cumsum(rng.uniform(0.7, 1.4, 400))
    gas = 10.0 + 2.0 * (times - times[0])  # a straight line: interpolation must give it back exactly
    write(tmp_path / "jitter.csv", [(f"{t:.4f}", f"{g:.4f}", 20, 50, 0, "mox") for t, g in zip(times, gas)])
    (held,), report = read_csv(tmp_path / "jitter.csv", resample="hold")
    span = int(np.floor(round(times[-1], 4) - round(times[0], 4)))
    assert len(held) == span + 1 and np.array_equal(held.time, np.arange(span + 1))
    grid = round(times[0], 4) + np.arange(span + 1)
    expected = [latest_at_or_before(np.round(times, 4), np.round(gas, 4), t) for t in grid]
    assert np.allclose(held.signal[:, 0], expected, atol=1e-3)
    assert held.meta["t0"] == pytest.approx(times[0], abs=1e-4)
    (linear,), _ = read_csv(tmp_path / "jitter.csv", resample="linear")
    assert np.allclose(linear.signal[:, 0], 10.0 + 2.0 * np.arange(span + 1), atol=1e-3)
    assert 0 < report.filled < span / 3  # seconds with no reading within half a second: only some
    assert 0.9 < report.median_interval_s < 1.2


def test_a_gap_longer_than_max_gap_s_splits_the_series(tmp_path):
    times = [*range(0, 100), *range(145, 245)]  # a 46 s gap after t=99
    write(tmp_path / "gap.csv", [(t, 50 + (t >= 145), 21, 45, 0, "node") for t in times])
    parts, report = read_csv(tmp_path / "gap.csv", max_gap_s=30)
    assert [p.series_id for p in parts] == ["node_part1", "node_part2"]
    assert [len(p) for p in parts] == [100, 100] and report.gap_splits == 1
    assert [p.meta["t0"] for p in parts] == [0, 145] and all(np.array_equal(p.time, np.arange(100)) for p in parts)
    assert report.filled == 0 and report.resampled == 0  # each part was already 1 Hz
    (whole,), report = read_csv(tmp_path / "gap.csv", max_gap_s=60)
    assert len(whole) == 245 and report.gap_splits == 0
    assert report.filled == 45 and np.all(whole.signal[100:145, 0] == 50)  # the gap holds the last reading


def test_on_grid_series_come_out_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    t = 1_700_000_000.5 + np.arange(500)
    gas = rng.normal(400, 20, 500).round(3)
    label = (np.arange(500) % 200 > 150).astype(int)
    write(tmp_path / "grid.csv", [(f"{a:.1f}", g, 21.5, 44, lab, "n") for a, g, lab in zip(t, gas, label)])
    for rule in ("hold", "linear"):
        (s,), report = read_csv(tmp_path / "grid.csv", resample=rule)
        (raw,), _ = read_csv(tmp_path / "grid.csv", resample="none")
        assert np.array_equal(s.time, raw.time) and np.array_equal(s.time, t - t[0])
        assert np.array_equal(s.signal, raw.signal) and np.array_equal(s.label, raw.label)
        assert np.allclose(s.signal[:, 0], gas) and s.label.tolist() == label.tolist()
        assert report.resampled == 0 and report.filled == 0 and report.median_interval_s == 1


def test_labels_are_held_from_their_readings(tmp_path):
    times = np.arange(0, 600, 4)
    label = ((times >= 200) & (times < 400)).astype(int)
    write(tmp_path / "lab.csv", [(t, 2 + 5 * lab, 15, 80, lab, "x") for t, lab in zip(times, label)])
    for rule in ("hold", "linear"):
        (s,), _ = read_csv(tmp_path / "lab.csv", resample=rule)
        assert label_runs(s.label) == [(200, 400)]  # the release starts and ends where its readings say


def test_duplicate_timestamps_keep_the_last_row(tmp_path):
    write(tmp_path / "dup.csv", [(0, 10, 20, 40, 0, "d"), (1, 11, 20, 40, 0, "d"), (1, 99, 20, 40, 1, "d"), (2, 12, 20, 40, 1, "d")])
    (s,), report = read_csv(tmp_path / "dup.csv")
    assert s.signal[:, 0].tolist() == [10, 99, 12] and s.label.tolist() == [0, 1, 1]
    assert report.duplicates == 1 and report.resampled == 0


def test_the_load_summary_counts_per_file(tmp_path, caplog):
    rows = [(t, 400, 21, 45, 0, "a_grid") for t in range(200)]  # on the grid
    rows += [(t, 2, 15, 80, 0, "b_laser") for t in range(0, 200, 5)]  # 5 s cadence ...
    rows += [(t, 2, 15, 80, 0, "b_laser") for t in range(300, 400, 5)]  # ... and a 105 s gap
    write(tmp_path / "mixed.csv", rows)
    caplog.set_level(logging.INFO, logger="plugins.gasleak_lstm_svm.data")
    dm = CsvDataModule(path=str(tmp_path / "mixed.csv"), test_path=str(tmp_path / "mixed.csv"))
    ids = sorted(s.series_id for s in dm.series("test"))
    assert ids == ["a_grid", "b_laser_part1", "b_laser_part2"]
    report = dm.reports[str(tmp_path / "mixed.csv")]
    # b: 196 + 96 grid seconds, of which 40 + 20 hold a reading of their own
    assert (report.series, report.resampled, report.gap_splits) == (2, 1, 1)
    assert report.filled == (196 - 40) + (96 - 20) and report.median_interval_s == 1
    summary = report.summary("mixed.csv")
    assert "1 of 2 series resampled to 1 Hz (hold)" in summary and f"{report.filled} sample(s) filled" in summary
    assert "1 gap(s) over 30 s split a series" in summary and "median interval 1 s" in summary
    assert summary in caplog.text  # logged when the file is read


@pytest.mark.parametrize("kwargs, match", [
    ({"resample": "cubic"}, "data.resample must be one of hold, linear, none"),
    ({"max_gap_s": 0.5}, "data.max_gap_s must be"),
    ({"max_gap_s": "long"}, "data.max_gap_s must be"),
])
def test_bad_cadence_options_are_one_line_user_errors(tmp_path, kwargs, match):
    write(tmp_path / "ok.csv", [(0, 1, 2, 3, 0, "s")])
    with pytest.raises(UserError, match=match):
        read_csv(tmp_path / "ok.csv", **kwargs)
    with pytest.raises(UserError, match=match):
        CsvDataModule(path=str(tmp_path / "ok.csv"), **kwargs)
