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

**Domain randomisation** (``simulate_series(..., domain=DomainRanges())``): so that a detector
trained here meets real sensors, each series draws its own sensor and site (a ``SensorWorld``):
a clean-air background from 1 to 300 ppm (log-uniform; drift, noise, couplings and hard negatives
scale with it), leaks from a few noise sigmas (or 15 % of the background) above it up to 5000 ppm,
absolute and relative noise, drift, a first-order sensor response of 0-60 s on the gas channel,
readings every 0.5-5 s held on the 1 Hz grid (sample-and-hold, as an open-path laser logs), random
temperature/humidity couplings (some sensors have none), and a fourth leak kind, ``plume``: the
source runs for 10-40 minutes while the wind carries its gas onto the sensor in irregular gusts,
with stretches of clean air (longer than a window) between them; the label stays 1 while the source
is on. The "cleared" threshold becomes 10 % of the background or two noise sigmas, whichever is
larger. Without ``domain`` the output is exactly the standard world above.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
from scipy.signal import lfilter

LEAK_KINDS = ("seep", "burst", "intermittent")  # the standard world's leaks
DOMAIN_LEAK_KINDS = (*LEAK_KINDS, "plume")  # ... and a wind-blown plume (randomised domain)
HARD_NEGATIVE_KINDS = ("cooking", "humidity_spike", "hot_afternoon", "glitch", "dropout")
CLEAR_PPM = 30.0  # a leak event ends when its gas is back within this of the background
STANDARD_BACKGROUND_PPM = 55.0  # the middle of the standard world's 30..80 ppm clean-air reading
DOMAIN_STREAM = 0xD0  # the domain draw's own random stream: seed -> [seed, DOMAIN_STREAM]


@dataclass
class LeakEvent:
    """One leak, in seconds from the start of the series; ``end`` includes the clearing tail."""

    start: float
    end: float
    kind: str  # "seep" | "burst" | "intermittent" | "plume"
    peak_ppm: float

    def __post_init__(self):
        if self.kind not in DOMAIN_LEAK_KINDS:
            raise ValueError(f"LeakEvent.kind must be one of {DOMAIN_LEAK_KINDS}, got {self.kind!r}")
        if not self.end > self.start:
            raise ValueError(f"LeakEvent.end ({self.end}) must be after start ({self.start})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class HardNegative:
    start: float
    end: float
    kind: str


@dataclass(frozen=True)
class SensorWorld:
    """One series' sensor and site. The defaults are the standard world (the simulator's test week);
    ``DomainRanges.draw`` makes randomised ones. Gas quantities are in ppm."""

    background_ppm: float | None = None  # clean-air reading; None: 30..80 per node
    scale: float = 1.0  # size of the hard negatives (cooking, glitches, ...) relative to the standard world
    drift_ppm: float = 12.0  # slow baseline drift, peak
    noise_ppm: float = 2.0  # sensor noise sigma: noise_ppm + noise_relative * reading
    noise_relative: float = 0.01
    temp_coupling: float = 1.5  # ppm per °C away from the node's mean
    hum_coupling: float = 0.3  # ppm per %RH away from the node's mean
    temperature_c: tuple[float, float] = (18.0, 24.0)  # the node's mean temperature is drawn from this
    humidity_rh: tuple[float, float] = (35.0, 60.0)
    response_tau_s: float = 0.0  # first-order response of the gas sensor (0: instant)
    sample_interval_s: float = 1.0  # one reading every ..., held on the 1 Hz grid
    sample_phase_s: float = 0.0  # the first reading's time
    clear_ppm: float = CLEAR_PPM  # an event ends when its gas is back within this of the background
    leak_kinds: tuple[str, ...] = LEAK_KINDS
    leak_ppm: tuple[float, float] | None = None  # leak peaks, log-uniform; None: the standard per-kind ranges

    def to_dict(self) -> dict:
        return asdict(self)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


@dataclass(frozen=True)
class DomainRanges:
    """What randomised series are drawn from, one draw per series. ``(lo, hi)`` ranges are drawn
    uniformly, those marked log-uniform on a log scale (they span decades). Fractions are of the
    series' background, so a 2 ppm open-path laser and a 300 ppm MOX sensor get alike shapes."""

    background_ppm: tuple[float, float] = (1.0, 300.0)  # log-uniform; the whole signal scales with it
    leak_min_fraction: float = 0.15  # the smallest leak peaks this fraction of the background above it ...
    leak_min_sigmas: float = 3.0  # ... and at least this many noise sigmas
    leak_max_ppm: float = 5000.0  # the largest (natural gas near the source); peaks are log-uniform
    noise_fraction: tuple[float, float] = (0.003, 0.05)  # absolute noise sigma / background, log-uniform
    noise_relative: tuple[float, float] = (0.0, 0.03)  # noise proportional to the reading
    drift_fraction: tuple[float, float] = (0.0, 0.3)  # slow drift / background
    response_tau_s: tuple[float, float] = (0.0, 60.0)  # MOX sensors respond in tens of seconds
    sample_interval_s: tuple[float, float] = (0.5, 5.0)  # 2..0.2 Hz readings, held on the 1 Hz grid
    temp_coupling: tuple[float, float] = (0.0, 0.04)  # |gas change per °C| / background, random sign
    hum_coupling: tuple[float, float] = (0.0, 0.01)  # |gas change per %RH| / background, random sign
    no_coupling_probability: float = 0.25  # each coupling is absent with this probability
    temperature_c: tuple[float, float] = (5.0, 30.0)  # the site's mean temperature ...
    humidity_rh: tuple[float, float] = (30.0, 90.0)  # ... and humidity (indoor and outdoor)
    clear_fraction: float = 0.1  # an event has cleared within this fraction of the background ...
    clear_sigmas: float = 2.0  # ... or this many noise sigmas, whichever is larger
    leak_kinds: tuple[str, ...] = DOMAIN_LEAK_KINDS

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "leak_kinds":
                kinds = tuple(str(k) for k in value)
                if not kinds or any(k not in DOMAIN_LEAK_KINDS for k in kinds):
                    raise ValueError(f"leak_kinds must be a non-empty list of {', '.join(DOMAIN_LEAK_KINDS)}, got {list(kinds)}")
                object.__setattr__(self, f.name, kinds)
            elif isinstance(f.default, tuple):
                try:
                    pair = tuple(float(v) for v in value)
                except (TypeError, ValueError):
                    pair = ()
                if len(pair) != 2 or not 0 <= pair[0] <= pair[1]:
                    raise ValueError(f"{f.name} must be a range [lo, hi] with 0 <= lo <= hi, got {value!r}")
                object.__setattr__(self, f.name, pair)
            elif isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{f.name} must be a number >= 0, got {value!r}")
        for name in ("background_ppm", "noise_fraction", "sample_interval_s"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"{name} must be above 0, got {list(getattr(self, name))}")
        if self.no_coupling_probability > 1:
            raise ValueError(f"no_coupling_probability must be at most 1, got {self.no_coupling_probability}")

    @classmethod
    def from_dict(cls, values: dict | None) -> DomainRanges:
        """From config (unknown keys are an error, missing ones keep their defaults)."""
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(f.name for f in fields(cls))}")
        return cls(**values)

    def draw(self, rng: np.random.Generator) -> SensorWorld:
        background = _log_uniform(rng, *self.background_ppm)
        noise_ppm = background * _log_uniform(rng, *self.noise_fraction)
        noise_relative = rng.uniform(*self.noise_relative)
        sigma = noise_ppm + noise_relative * background  # the noise at clean air

        def coupling(span) -> float:
            size = rng.uniform(*span) * background * rng.choice((-1.0, 1.0))
            return 0.0 if rng.random() < self.no_coupling_probability else float(size)

        interval = rng.uniform(*self.sample_interval_s)
        smallest_leak = max(self.leak_min_fraction * background, self.leak_min_sigmas * sigma)
        return SensorWorld(
            background_ppm=background,
            scale=background / STANDARD_BACKGROUND_PPM,
            drift_ppm=background * rng.uniform(*self.drift_fraction),
            noise_ppm=noise_ppm,
            noise_relative=noise_relative,
            temp_coupling=coupling(self.temp_coupling),
            hum_coupling=coupling(self.hum_coupling),
            temperature_c=self.temperature_c,
            humidity_rh=self.humidity_rh,
            response_tau_s=rng.uniform(*self.response_tau_s),
            sample_interval_s=interval,
            sample_phase_s=rng.uniform(0, interval),
            clear_ppm=max(self.clear_fraction * background, self.clear_sigmas * sigma),
            leak_kinds=self.leak_kinds,
            leak_ppm=(smallest_leak, max(smallest_leak, self.leak_max_ppm)),
        )


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


def sensor_response(x: np.ndarray, tau: float, settled: bool = True) -> np.ndarray:
    """A first-order sensor (time constant ``tau`` s) reading ``x`` at 1 Hz; ``settled``: it starts
    at ``x[0]``, else at 0."""
    a = 1.0 - np.exp(-1.0 / tau)
    return lfilter([a], [1.0, a - 1.0], x, zi=[(1.0 - a) * x[0] if settled else 0.0])[0]


def held_index(n: int, interval: float, phase: float) -> np.ndarray:
    """Sample-and-hold: for each of ``n`` 1 Hz samples, the sample of the latest reading at or before
    it, readings being taken every ``interval`` s from ``phase`` (before the first one: sample 0)."""
    k = np.floor((np.arange(n) - phase) / interval)
    return np.clip(np.floor(phase + k * interval), 0, n - 1).astype(np.int64)


def _plume_source(rng: np.random.Generator, on: int, peak: float) -> np.ndarray:
    """The wind carries a plume onto the sensor and away: gusts of gas (3-120 s of 2-8 s puffs at
    10-100 % of ``peak``) with stretches of clean air (5-240 s, log-uniform) between them, the
    first gust after 0-120 s (the wind has to turn towards the sensor)."""
    pieces = [np.zeros(int(rng.uniform(0, 120)))]
    length = len(pieces[0])
    while length < on:
        gust, calm = int(_log_uniform(rng, 3, 120)), int(_log_uniform(rng, 5, 240))
        puffs = peak * rng.uniform(0.1, 1.0, gust // 2 + 1)
        pieces += [np.repeat(puffs, rng.integers(2, 9, len(puffs)))[:gust], np.zeros(calm)]
        length += gust + calm
    return np.concatenate(pieces)[:on]


def _leak_profile(rng: np.random.Generator, kind: str, peak: float, clear_ppm: float = CLEAR_PPM,
                  response_tau: float = 0.0) -> tuple[np.ndarray, int]:
    """The excess ppm of one leak from its start, and the event's length in samples: until the gas
    the sensor reads (after its response ``response_tau``) is back within ``clear_ppm``."""
    tau_down = rng.uniform(15, 40)
    if kind == "seep":
        on = int(rng.uniform(600, 1800))
        tau_up = rng.uniform(30, 150)  # reaches its plateau over 1.5 to 7.5 minutes
        source = np.full(on, peak)
    elif kind == "burst":
        on = int(rng.uniform(60, 480))
        tau_up = rng.uniform(1, 4)
        source = np.full(on, peak)
    elif kind == "plume":
        on = int(rng.uniform(600, 2400))
        tau_up = tau_down = rng.uniform(1, 5)  # outdoors the wind brings the gas and takes it away
        source = _plume_source(rng, on, peak)
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
    # the event ends once the gas has cleared to within clear_ppm of the background; it keeps
    # clearing after that (to below clear_ppm / 30: 1 ppm in the standard world), unlabelled
    floor = clear_ppm / CLEAR_PPM
    tail = int(np.ceil((tau_down + response_tau) * np.log(max(peak / floor, 2.0))))
    excess = leak_excess(0, np.concatenate([source, np.zeros(tail)]), tau_up, tau_down)
    sensed = sensor_response(excess, response_tau, settled=False) if response_tau > 0 else excess
    cleared = np.flatnonzero(sensed[len(source):] < clear_ppm)
    return excess, len(source) + (int(cleared[0]) if len(cleared) else tail)


def random_leaks(seconds: int, rng: np.random.Generator, per_hour: float = 1 / 6, margin: int = 600,
                 min_leaks: int = 0, kinds: tuple[str, ...] = LEAK_KINDS,
                 peak_ppm: tuple[float, float] | None = None) -> list[LeakEvent]:
    """Place non-overlapping random leaks (start/kind/peak only; ``end`` is fixed by the profile).
    ``peak_ppm`` (lo, hi): peaks log-uniform in it; None: the standard world's per-kind ranges."""
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
        kind = str(rng.choice(kinds))
        if peak_ppm is None:
            peak = {"seep": rng.uniform(300, 1500), "burst": rng.uniform(1000, 5000), "intermittent": rng.uniform(300, 1500)}[kind]
        else:
            peak = _log_uniform(rng, *peak_ppm)
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
    domain: DomainRanges | dict | None = None,
) -> dict:
    """Simulate one node for ``seconds`` seconds at 1 Hz.

    ``leaks=None`` places random leaks (``leaks_per_hour``, at least ``min_leaks`` where they fit);
    ``leaks=[]`` gives none; given events
    keep their ``start``, ``kind`` and ``peak_ppm`` and get their ``end`` recomputed from the
    simulated clearing of the gas (so labels always match what the sensor sees).
    Returns numpy arrays ``time``, ``gas_concentration``, ``temperature``, ``humidity``, ``label``,
    plus ``events`` (the LeakEvents) and ``hard_negatives`` (what was mixed in to fool a detector).
    ``domain`` (``DomainRanges`` or a dict of its fields): draw this series' sensor and site from
    those ranges (seeded by ``seed``); ``domain`` in the result is then the drawn
    ``SensorWorld.to_dict()``. None (the default): the standard world, ``domain`` None.
    """
    if seconds < 1:
        raise ValueError(f"seconds must be >= 1, got {seconds}")
    n = int(seconds)
    if domain is None:
        world = SensorWorld()
    else:
        ranges = domain if isinstance(domain, DomainRanges) else DomainRanges.from_dict(domain)
        world = ranges.draw(np.random.default_rng([seed, DOMAIN_STREAM]))
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    hour = (start_hour + t / 3600.0) % 24.0
    daily = np.sin(2 * np.pi * (hour - 9.0) / 24.0)  # peaks mid-afternoon

    temp0, amp = rng.uniform(*world.temperature_c), rng.uniform(2, 4)
    hum0 = rng.uniform(*world.humidity_rh)
    temp = temp0 + amp * daily + _smooth_walk(rng, n, 0.8)
    hum = hum0 - 1.5 * amp * daily + _smooth_walk(rng, n, 3.0)
    level = rng.uniform(30, 80) if world.background_ppm is None else world.background_ppm
    gas_base = level + _smooth_walk(rng, n, world.drift_ppm, knots_every=3600)
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
            gas_extra += world.scale * rng.uniform(20, 80) * b * flicker
            temp += rng.uniform(1, 3) * b
            hum += rng.uniform(5, 15) * b
            negatives.append(HardNegative(s, min(s + dur + 600, n), "cooking"))
        for _ in range(rng.poisson(0.1 * per_hour)):  # shower / kettle: humidity jumps
            dur = int(rng.uniform(300, 1200))
            s = place(dur)
            b = _bump(n, s, rng.uniform(30, 90), dur, rng.uniform(300, 900))
            dh = rng.uniform(20, 35)
            hum += dh * b
            gas_extra += world.scale * 0.5 * dh * b
            negatives.append(HardNegative(s, min(s + dur + 1800, n), "humidity_spike"))
        if rng.random() < 0.5 * min(1.0, n / 86400 * 2):  # a hot afternoon
            s = place(4 * 3600)
            b = _bump(n, s, 3600, 2 * 3600, 3600)
            temp += rng.uniform(5, 9) * b
            negatives.append(HardNegative(s, min(s + 5 * 3600, n), "hot_afternoon"))
    temp_excess = temp - temp0
    hum_excess = hum - hum0
    gas = gas_base + gas_extra + world.temp_coupling * temp_excess + world.hum_coupling * hum_excess

    label = np.zeros(n, dtype=np.int8)
    if leaks is None:
        events = random_leaks(n, rng, leaks_per_hour, min_leaks=min_leaks, kinds=world.leak_kinds, peak_ppm=world.leak_ppm)
    else:
        events = [LeakEvent(**e.to_dict()) for e in leaks]
    for ev in events:
        s = int(ev.start)
        if s >= n:
            continue
        excess, length = _leak_profile(rng, ev.kind, ev.peak_ppm, world.clear_ppm, world.response_tau_s)
        turbulence = 1.0 + 0.08 * _smooth_walk(rng, len(excess), 1.0, knots_every=5)
        seg = slice(s, min(s + len(excess), n))
        gas[seg] += (excess * turbulence)[: seg.stop - s]
        ev.end = float(s + length)
        label[s : min(int(np.ceil(ev.end)), n)] = 1

    if world.response_tau_s > 0:  # the sensor lags the gas; its noise and glitches do not
        gas = sensor_response(gas, world.response_tau_s)
    gas = gas + rng.normal(0, 1.0, n) * (world.noise_ppm + world.noise_relative * gas)
    temp = temp + rng.normal(0, 0.1, n)
    hum = hum + rng.normal(0, 0.5, n)

    if hard_negatives:
        for _ in range(rng.poisson(0.3 * per_hour)):  # one-sample glitch
            i = int(rng.integers(0, n))
            gas[i] = world.scale * rng.uniform(200, 3000)
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
    if world.sample_interval_s > 1:  # a slower sensor: its latest reading, repeated until the next
        held = held_index(n, world.sample_interval_s, world.sample_phase_s)
        gas, temp, hum = gas[held], temp[held], hum[held]
    return {
        "time": t,
        "gas_concentration": gas.astype(np.float32),
        "temperature": temp.astype(np.float32),
        "humidity": hum.astype(np.float32),
        "label": label,
        "events": events,
        "hard_negatives": sorted(negatives, key=lambda h: h.start),
        "domain": None if domain is None else world.to_dict(),
    }
