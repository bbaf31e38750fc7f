"""Gas simulator domain randomisation: the standard world unchanged, randomised sensors and sites
(background, cadence, response, plumes), their labels, and the datamodule's share of them."""

from __future__ import annotations

import numpy as np
import pytest

from framework.errors import UserError
from plugins.gasleak_lstm_svm.data import SimulatorDataModule, label_runs
from plugins.gasleak_lstm_svm.simulator import DomainRanges, LeakEvent, simulate_series

CHANNELS = ("gas_concentration", "temperature", "humidity")

# Figures of the simulator as it was before domain randomisation (main at eb747d9), for two seeded
# configurations: a few readings, the channel means and the events. Any change to the standard
# world's random stream or physics moves these by far more than the tolerance.
STANDARD_BEFORE = {
    "day_seed7": (
        dict(seconds=86400, seed=7, start_hour=0.0, min_leaks=1),
        {"index": [0, 1234, 5000, 7000, 86399],
         "gas_concentration": [79.02496337890625, 77.80689239501953, 73.62767791748047, 74.61363220214844, 78.90161895751953],
         "temperature": [19.941043853759766, 19.512920379638672, 18.716032028198242, 18.837915420532227, 18.46209144592285],
         "humidity": [58.53355407714844, 58.172119140625, 59.91028594970703, 60.66856002807617, 78.98149108886719],
         "means": [136.147334041463, 21.76597129161711, 57.13726557298943],
         "events": [("seep", 10979, 12315, 1226.355622), ("burst", 15720, 15923, 3700.405329), ("seep", 22155, 22841, 719.379175),
                    ("burst", 48845, 49014, 3264.334101), ("seep", 56196, 57646, 475.175318), ("seep", 68170, 69553, 1313.421715)],
         "hard_negatives": 19, "label_sum": 5227},
    ),
    "busy_seed11": (
        dict(seconds=14400, seed=11, leaks_per_hour=1.0, hard_negatives_per_hour=3.0),
        {"index": [0, 1234, 5000, 7000, 14399],
         "gas_concentration": [64.78313446044922, 59.810638427734375, 59.17258834838867, 584.9921264648438, 54.464515686035156],
         "temperature": [18.143468856811523, 18.165618896484375, 18.915454864501953, 19.35124969482422, 21.292970657348633],
         "humidity": [51.37425231933594, 49.4550666809082, 51.68614959716797, 50.38503646850586, 44.8542594909668],
         "means": [178.58667889118195, 19.51899522754881, 49.53989341285494],
         "events": [("intermittent", 1584, 2436, 1118.923903), ("seep", 6690, 7634, 605.461231), ("seep", 12163, 13125, 920.036409)],
         "hard_negatives": 3, "label_sum": 2758},
    ),
}


@pytest.mark.parametrize("case", sorted(STANDARD_BEFORE))
def test_without_domain_the_standard_world_is_unchanged(case):
    kwargs, before = STANDARD_BEFORE[case]
    sim = simulate_series(**kwargs)
    assert sim["domain"] is None
    for channel in CHANNELS:
        assert np.allclose(sim[channel][before["index"]], before[channel], rtol=1e-6), channel
    means = [np.mean(sim[c], dtype=np.float64) for c in CHANNELS]
    assert np.allclose(means, before["means"], rtol=1e-6)
    events = [(e.kind, e.start, e.end, e.peak_ppm) for e in sim["events"]]
    assert [e[:3] for e in events] == [e[:3] for e in before["events"]]
    assert np.allclose([e[3] for e in events], [e[3] for e in before["events"]], rtol=1e-8)
    assert len(sim["hard_negatives"]) == before["hard_negatives"] and int(sim["label"].sum()) == before["label_sum"]
    explicit = simulate_series(**kwargs, domain=None)
    assert all(np.array_equal(sim[c], explicit[c]) for c in (*CHANNELS, "label"))


def test_domain_series_are_reproducible_per_seed_and_differ_from_the_standard_world():
    a, b = simulate_series(3600, seed=5, domain={}), simulate_series(3600, seed=5, domain=DomainRanges())
    other, standard = simulate_series(3600, seed=6, domain={}), simulate_series(3600, seed=5)
    for key in (*CHANNELS, "label", "time"):
        assert np.array_equal(a[key], b[key]), key
    assert a["events"] == b["events"] and a["domain"] == b["domain"]
    assert a["domain"] != other["domain"] and not np.array_equal(a["gas_concentration"], other["gas_concentration"])
    assert not np.array_equal(a["gas_concentration"], standard["gas_concentration"])
    assert np.array_equal(a["time"], np.arange(3600)) and len(a["gas_concentration"]) == 3600


def test_backgrounds_and_leak_peaks_span_decades():
    drawn, typical = [], []
    for seed in range(40):
        sim = simulate_series(1800, seed, leaks=[], hard_negatives=False, domain={})
        drawn.append(sim["domain"]["background_ppm"])
        typical.append(np.median(sim["gas_concentration"]))
    drawn, typical = np.array(drawn), np.array(typical)
    assert drawn.min() < 3 and drawn.max() > 100  # log-uniform over 1..300 ppm
    assert np.all(np.abs(np.log(typical / drawn)) < np.log(1.5))  # ... and the readings follow it
    peaks = [e.peak_ppm for seed in range(10)
             for e in simulate_series(7200, seed, hard_negatives=False, leaks_per_hour=2, domain={})["events"]]
    assert min(peaks) < 5 and max(peaks) > 1000  # a few ppm above the background up to thousands


def test_hard_negatives_scale_with_the_background():
    standard = simulate_series(86400, seed=4, leaks=[], hard_negatives_per_hour=3.0)
    laser = simulate_series(86400, seed=4, leaks=[], hard_negatives_per_hour=3.0, domain={"background_ppm": [2, 2]})
    kinds = {h.kind for h in laser["hard_negatives"]}
    assert {"cooking", "glitch", "dropout"} <= kinds
    assert standard["gas_concentration"].max() > 200  # glitches of 200..3000 ppm on a 30..80 ppm background
    assert laser["gas_concentration"].max() < 3000 * 2 / 55 + 10  # ... scaled to a 2 ppm one


def test_coarse_cadence_holds_each_reading_on_the_1hz_grid():
    sim = simulate_series(1200, seed=2, domain={"sample_interval_s": [5, 5]})
    for channel in CHANNELS:
        x = sim[channel]
        changes = np.flatnonzero(np.diff(x) != 0) + 1
        runs = np.diff(changes)
        assert len(runs) > 200 and np.all(runs == 5), channel  # one new reading every 5 s, held between
    fast = simulate_series(1200, seed=2, domain={"sample_interval_s": [0.5, 1.0]})
    assert np.count_nonzero(np.diff(fast["gas_concentration"]) == 0) < 5  # 1-2 Hz: a fresh reading every second


def test_sensor_response_delays_the_rise_and_the_clearing():
    fixed = {"background_ppm": [10, 10], "sample_interval_s": [1, 1], "noise_fraction": [0.01, 0.01]}
    burst = [LeakEvent(start=300, end=301, kind="burst", peak_ppm=2000)]
    runs = {}
    for tau in (0, 30):
        sim = simulate_series(1800, seed=3, leaks=burst, hard_negatives=False, domain={**fixed, "response_tau_s": [tau, tau]})
        assert sim["domain"]["response_tau_s"] == tau
        half = int(np.argmax(sim["gas_concentration"] > 10 + 1000))
        runs[tau] = (half - 300, sim["events"][0].end)
    assert runs[0][0] < 8  # a burst rises in 1-4 s
    assert runs[30][0] > runs[0][0] + 15  # a 30 s sensor reaches half of it about 21 s later
    assert runs[30][1] > runs[0][1]  # ... and reads the gas for longer, so the event's label ends later


@pytest.mark.parametrize("seed", range(6))
def test_domain_labels_cover_each_event(seed):
    sim = simulate_series(86400, seed, domain={}, start_hour=0.0, min_leaks=1)
    n, gas, clear = len(sim["label"]), sim["gas_concentration"], sim["domain"]["clear_ppm"]
    assert label_runs(sim["label"]) == [(int(e.start), min(int(np.ceil(e.end)), n)) for e in sim["events"]]
    for ev in sim["events"]:
        assert ev.kind in ("seep", "burst", "intermittent", "plume")
        before = np.median(gas[max(int(ev.start) - 300, 0): int(ev.start)])
        assert gas[int(ev.start): int(np.ceil(ev.end))].max() > before + clear  # the sensor sees every leak


def test_a_plume_comes_and_goes_while_its_label_stays_on():
    quiet = {"background_ppm": [2, 2], "noise_fraction": [0.01, 0.01], "noise_relative": [0, 0], "drift_fraction": [0, 0],
             "response_tau_s": [0, 0], "sample_interval_s": [1, 1], "no_coupling_probability": 1}
    for seed in range(4):
        sim = simulate_series(4000, seed, leaks=[LeakEvent(300, 301, "plume", 10.0)], hard_negatives=False, domain=quiet)
        (ev,) = sim["events"]
        assert ev.end - ev.start >= 600 and sim["label"][300: int(ev.end)].all()
        excess = sim["gas_concentration"][300: int(ev.end)] - 2.0
        seen = excess > sim["domain"]["clear_ppm"]
        assert 0.1 < seen.mean() < 0.9 and excess.max() > 5  # gusts of gas ...
        calm = [b - a for a, b in label_runs(~seen)]
        assert max(calm) > 60  # ... and clean air for longer than a window in between


def test_datamodule_draws_its_share_of_days_from_the_domain():
    dm = SimulatorDataModule(seconds_per_day=1200, train_days=4, val_days=2, test_days=2, domain_fraction=0.5)
    for split, expected in (("train", 2), ("val", 1), ("test", 0)):
        series = dm.series(split)
        randomised = [s for s in series if s.meta["domain"] is not None]
        assert len(randomised) == expected, split
        assert all(s.series_id.endswith("-domain") for s in randomised)
        assert all(s.meta["domain"]["background_ppm"] > 0 for s in randomised)
    everything = SimulatorDataModule(seconds_per_day=1200, train_days=1, val_days=1, test_days=2, domain_fraction=1.0, domain_test=True)
    assert all(s.meta["domain"] for split in ("train", "val", "test") for s in everything.series(split))
    standard = SimulatorDataModule(seconds_per_day=1200, train_days=2, val_days=1, test_days=1)  # domain_fraction 0
    for day, s in enumerate(standard.series("train")):
        assert s.meta["domain"] is None
        assert np.array_equal(s.signal[:, 0], simulate_series(1200, seed=day, start_hour=0.0, min_leaks=1)["gas_concentration"])
    narrow = SimulatorDataModule(seconds_per_day=600, train_days=1, val_days=1, test_days=1, domain_fraction=1.0,
                                 domain={"background_ppm": [400, 500]})
    assert 400 <= narrow.series("train")[0].meta["domain"]["background_ppm"] <= 500


def test_calibration_days_continue_the_validation_days():
    """The calibration's extra days are the validation seeds' next days (the validation days of a
    module with more of them), randomised in the same pattern, none of them a training or test day."""
    dm = SimulatorDataModule(seconds_per_day=1200, train_days=2, val_days=2, test_days=2, domain_fraction=0.5,
                             calibration_days=5)
    cal = dm.series_for_calibration()
    assert len(cal) == 5 and cal[:2] == dm.series("val")
    longer = SimulatorDataModule(seconds_per_day=1200, train_days=2, val_days=5, test_days=2, domain_fraction=0.5)
    for a, b in zip(cal, longer.series("val")):
        assert a.series_id == b.series_id and np.array_equal(a.signal, b.signal)
    assert [s.meta["domain"] is not None for s in cal] == [False, True, False, True, False]
    others = [s.signal[:, 0] for split in ("train", "test") for s in dm.series(split)]
    assert not any(np.array_equal(c.signal[:, 0], o) for c in cal for o in others)
    # none (or fewer than the validation days): the validation days alone
    for days in (None, 1):
        few = SimulatorDataModule(seconds_per_day=600, val_days=2, calibration_days=days)
        assert few.series_for_calibration() == few.series("val")


@pytest.mark.parametrize("kwargs, match", [
    ({"domain_fraction": 1.5}, "domain_fraction"),
    ({"domain": {"backgrounds": [1, 2]}}, "unknown key.*backgrounds"),
    ({"domain": {"background_ppm": [300, 1]}}, "background_ppm must be a range"),
    ({"domain": {"sample_interval_s": [0, 2]}}, "sample_interval_s must be above 0"),
    ({"domain": {"leak_kinds": ["seep", "flood"]}}, "leak_kinds"),
    ({"calibration_days": 0}, "calibration_days must be a whole number"),
    ({"calibration_days": 2.5}, "calibration_days must be a whole number"),
])
def test_bad_domain_config_is_a_one_line_user_error(kwargs, match):
    with pytest.raises(UserError, match=match) as err:
        SimulatorDataModule(seconds_per_day=600, **kwargs)
    assert "\n" not in str(err.value)
