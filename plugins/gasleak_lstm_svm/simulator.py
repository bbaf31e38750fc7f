"""A seeded sensor-node simulator: gas (ppm), temperature (°C) and humidity (%RH) at 1 Hz.

The physics is deliberately simple but has what makes the task hard:

* daily temperature and humidity cycles, a per-node calibration offset, slow baseline drift,
  and cross-sensitivity of the (metal-oxide style) gas sensor to temperature and humidity;
* hard negatives that must not alarm: cooking (gas +20..80 ppm with heat and steam), a humidity
  spike (shower, kettle), a hot afternoon, one-sample glitches (up to 3000 ppm) and sensor
  dropouts (all channels read 0);
* leaks of three kinds with ground truth: a slow ``seep`` (first-order rise over minutes), a fast
  ``burst`` (seconds) and an ``intermittent`` leak (puffs on and off).

A leak's concentration follows a first-order model ``dC/dt = (S(t) - C) / tau``: the source ``S`` is
on at ``peak_ppm`` while the leak runs, and the gas clears with ``tau_down`` (15-40 s) once it stops.
An event runs from the source switching on until its excess gas has cleared to below
``CLEAR_PPM`` (30 ppm, about the size of a cooking hard negative), and ``label`` is 1 exactly on
``[start, end)``; the rest of the clearing follows unlabelled. Seeps rise with a time
constant of 30-150 s, bursts 1-4 s, intermittent leaks puff for 5-30 s with 10-40 s pauses (shorter
than a window, so every window of the event shows gas).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

LEAK_KINDS = ("seep", "burst", "intermittent")
HARD_NEGATIVE_KINDS = ("cooking", "humidity_spike", "hot_afternoon", "glitch", "dropout")
CLEAR_PPM = 30.0  # a leak event ends when its gas is back within this of the background


@dataclass
class LeakEvent:
    """One leak, in seconds from the start of the series; ``end`` includes the clearing tail."""

    start: float
    end: float
    kind: str  # "seep" | "burst" | "intermittent"
    peak_ppm: float

    def __post_init__(self):
        if self.kind not in LEAK_KINDS:
            raise ValueError(f"LeakEvent.kind must be one of {LEAK_KINDS}, got {self.kind!r}")
        if not self.end > self.start:
            raise ValueError(f"LeakEvent.end ({self.end}) must be after start ({self.start})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HardNegative:
    start: float
    end: float
    kind: str


def _smooth_walk(rng: np.random.Generator, n: int, scale: float, knots_every: int = 1800) -> np.ndarray:
    """Slow random variation: a random walk on coarse knots, linearly interpolated (cheap for a day)."""
    k = n // knots_every + 2
    knots = np.cumsum(rng.normal(0.0, 1.0, k))
    knots -= knots.mean()
    knots *= scale / max(np.abs(knots).max(), 1e-9)
    return np.interp(np.arange(n) / knots_every, np.arange(k), knots)


def _bump(n: int, start: int, rise: float, length: int, fall: float) -> np.ndarray:
    """0 -> 1 with time constant ``rise`` from ``start`` for ``length`` s, then back with ``fall``."""
    t = np.arange(n, dtype=np.float64) - start
    up = np.where(t >= 0, 1.0 - np.exp(-np.clip(t, 0, None) / rise), 0.0)
    level_at_end = 1.0 - np.exp(-length / rise)
    after = t >= length
    up[after] = level_at_end * np.exp(-(t[after] - length) / fall)
    return up


def leak_excess(event_start: int, source: np.ndarray, tau_up: float, tau_down: float) -> np.ndarray:
    """Integrate the first-order concentration model for a source profile (1 Hz)."""
    c = np.zeros(len(source))
    a_up, a_down = 1.0 - np.exp(-1.0 / tau_up), 1.0 - np.exp(-1.0 / tau_down)
    prev = 0.0
    for i, s in enumerate(source):  # at most a few thousand steps per event
        a = a_up if s > prev else a_down
        prev = prev + a * (s - prev)
        c[i] = prev
    return c


def _leak_profile(rng: np.random.Generator, kind: str, peak: float) -> tuple[np.ndarray, int]:
    """The excess ppm of one leak from its start, and the event's length in samples."""
    tau_down = rng.uniform(15, 40)
    if kind == "seep":
        on = int(rng.uniform(600, 1800))
        tau_up = rng.uniform(30, 150)  # reaches its plateau over 1.5 to 7.5 minutes
        source = np.full(on, peak)
    elif kind == "burst":
        on = int(rng.uniform(60, 480))
        tau_up = rng.uniform(1, 4)
        source = np.full(on, peak)
    else:  # intermittent: puffs of gas with pauses
        tau_up = rng.uniform(2, 10)
        pieces, total = [], int(rng.uniform(300, 1200))
        length = 0
        while length < total:
            # pauses shorter than a 60 s window: every window of the event still shows a puff
            puff, pause = int(rng.uniform(5, 30)), int(rng.uniform(10, 40))
            pieces += [np.full(puff, peak * rng.uniform(0.6, 1.0)), np.zeros(pause)]
            length += puff + pause
        source = np.concatenate(pieces[:-1])  # end on a puff; the tail below clears it
    # the event ends once the gas has cleared to within CLEAR_PPM of the background; it keeps
    # clearing after that (to below 1 ppm), unlabelled
    tail = int(np.ceil(tau_down * np.log(max(peak, 2.0))))
    excess = leak_excess(0, np.concatenate([source, np.zeros(tail)]), tau_up, tau_down)
    cleared = np.flatnonzero(excess[len(source):] < CLEAR_PPM)
    return excess, len(source) + (int(cleared[0]) if len(cleared) else tail)


def random_leaks(seconds: int, rng: np.random.Generator, per_hour: float = 1 / 6, margin: int = 600,
                 min_leaks: int = 0) -> list[LeakEvent]:
    """Place non-overlapping random leaks (start/kind/peak only; ``end`` is fixed by the profile)."""
    n = max(int(rng.poisson(per_hour * seconds / 3600)), min_leaks)
    starts: list[int] = []
    for _ in range(n * 20):
        if len(starts) == n:
            break
        s = int(rng.uniform(120, max(seconds - 600, 121)))
        if all(abs(s - o) > margin + 2400 for o in starts):
            starts.append(s)
    events = []
    for s in sorted(starts):
        kind = str(rng.choice(LEAK_KINDS))
        peak = {"seep": rng.uniform(300, 1500), "burst": rng.uniform(1000, 5000), "intermittent": rng.uniform(300, 1500)}[kind]
        events.append(LeakEvent(float(s), float(s + 1), kind, float(peak)))
    return events


def simulate_series(
    seconds: int,
    seed: int,
    leaks: list[LeakEvent] | None = None,
    hard_negatives: bool = True,
    start_hour: float = 8.0,
    leaks_per_hour: float = 1 / 6,
    hard_negatives_per_hour: float = 1.0,
    min_leaks: int = 0,
) -> dict:
    """Simulate one node for ``seconds`` seconds at 1 Hz.

    ``leaks=None`` places random leaks (``leaks_per_hour``, at least ``min_leaks`` where they fit);
    ``leaks=[]`` gives none; given events
    keep their ``start``, ``kind`` and ``peak_ppm`` and get their ``end`` recomputed from the
    simulated clearing of the gas (so labels always match what the sensor sees).
    Returns numpy arrays ``time``, ``gas_concentration``, ``temperature``, ``humidity``, ``label``,
    plus ``events`` (the LeakEvents) and ``hard_negatives`` (what was mixed in to fool a detector).
    """
    if seconds < 1:
        raise ValueError(f"seconds must be >= 1, got {seconds}")
    n = int(seconds)
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    hour = (start_hour + t / 3600.0) % 24.0
    daily = np.sin(2 * np.pi * (hour - 9.0) / 24.0)  # peaks mid-afternoon

    temp0, amp = rng.uniform(18, 24), rng.uniform(2, 4)
    hum0 = rng.uniform(35, 60)
    temp = temp0 + amp * daily + _smooth_walk(rng, n, 0.8)
    hum = hum0 - 1.5 * amp * daily + _smooth_walk(rng, n, 3.0)
    gas_base = rng.uniform(30, 80) + _smooth_walk(rng, n, 12.0, knots_every=3600)
    gas_extra = np.zeros(n)
    negatives: list[HardNegative] = []

    if hard_negatives:
        per_hour = hard_negatives_per_hour * n / 3600

        def place(duration: int) -> int:
            return int(rng.integers(0, max(n - duration, 1)))

        for _ in range(rng.poisson(0.12 * per_hour)):  # cooking: gas, heat and steam together
            dur = int(rng.uniform(600, 2400))
            s = place(dur)
            b = _bump(n, s, rng.uniform(60, 180), dur, rng.uniform(120, 400))
            flicker = 1.0 + 0.2 * _smooth_walk(rng, n, 1.0, knots_every=30)
            gas_extra += rng.uniform(20, 80) * b * flicker
            temp += rng.uniform(1, 3) * b
            hum += rng.uniform(5, 15) * b
            negatives.append(HardNegative(s, min(s + dur + 600, n), "cooking"))
        for _ in range(rng.poisson(0.1 * per_hour)):  # shower / kettle: humidity jumps
            dur = int(rng.uniform(300, 1200))
            s = place(dur)
            b = _bump(n, s, rng.uniform(30, 90), dur, rng.uniform(300, 900))
            dh = rng.uniform(20, 35)
            hum += dh * b
            gas_extra += 0.5 * dh * b
            negatives.append(HardNegative(s, min(s + dur + 1800, n), "humidity_spike"))
        if rng.random() < 0.5 * min(1.0, n / 86400 * 2):  # a hot afternoon
            s = place(4 * 3600)
            b = _bump(n, s, 3600, 2 * 3600, 3600)
            temp += rng.uniform(5, 9) * b
            negatives.append(HardNegative(s, min(s + 5 * 3600, n), "hot_afternoon"))
    temp_excess = temp - temp0
    hum_excess = hum - hum0
    gas = gas_base + gas_extra + 1.5 * temp_excess + 0.3 * hum_excess

    label = np.zeros(n, dtype=np.int8)
    events = random_leaks(n, rng, leaks_per_hour, min_leaks=min_leaks) if leaks is None else [LeakEvent(**e.to_dict()) for e in leaks]
    for ev in events:
        s = int(ev.start)
        if s >= n:
            continue
        excess, length = _leak_profile(rng, ev.kind, ev.peak_ppm)
        turbulence = 1.0 + 0.08 * _smooth_walk(rng, len(excess), 1.0, knots_every=5)
        seg = slice(s, min(s + len(excess), n))
        gas[seg] += (excess * turbulence)[: seg.stop - s]
        ev.end = float(s + length)
        label[s : min(int(np.ceil(ev.end)), n)] = 1

    gas = gas + rng.normal(0, 1.0, n) * (2.0 + 0.01 * gas)
    temp = temp + rng.normal(0, 0.1, n)
    hum = hum + rng.normal(0, 0.5, n)

    if hard_negatives:
        for _ in range(rng.poisson(0.3 * per_hour)):  # one-sample glitch
            i = int(rng.integers(0, n))
            gas[i] = rng.uniform(200, 3000)
            negatives.append(HardNegative(i, i + 1, "glitch"))
        for _ in range(rng.poisson(0.08 * per_hour)):  # the node drops out: everything reads 0
            dur = int(rng.uniform(20, 300))
            s = place(dur)
            if label[max(s - 120, 0) : s + dur + 120].any():
                continue  # a dropout hides a leak's ground truth; keep them apart
            gas[s : s + dur] = temp[s : s + dur] = hum[s : s + dur] = 0.0
            negatives.append(HardNegative(s, s + dur, "dropout"))

    np.clip(gas, 0, None, out=gas)
    np.clip(hum, 0, 100, out=hum)
    return {
        "time": t,
        "gas_concentration": gas.astype(np.float32),
        "temperature": temp.astype(np.float32),
        "humidity": hum.astype(np.float32),
        "label": label,
        "events": events,
        "hard_negatives": sorted(negatives, key=lambda h: h.start),
    }
