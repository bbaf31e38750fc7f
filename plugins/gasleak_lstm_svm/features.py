"""What the models see: each window relative to the sensor's own recent clean-air baseline.

Real sensors differ in scale (an open-path laser reads a few ppm above a 2 ppm background, a
metal-oxide sensor hundreds, a natural-gas leak near its source thousands), drift slowly and sit in
rooms of their own temperature and humidity. A model trained on absolute readings learns one
sensor's units; these inputs are the same for all of them:

* the **baseline** of a window: the ``quantile`` (10 %) of the gas readings and the median
  temperature and humidity over the ``baseline_s`` samples (10 minutes) *before* the window, so
  the window itself never hides in its own baseline; a low quantile stays near clean air while a
  plume comes and goes. The **spread** (the noise scale) is the distance from that quantile to
  the one 0.2 above it (10 % to 30 %), in units of the Gaussian's sigma, floored at 1 % of the
  baseline: noise units differ per sensor, and a perfectly flat signal must not divide by zero.
  A plume only ever adds gas, so these low quantiles stay on clean air until it fills most of
  the span; the inter-quartile range (``spread="iqr"``, the bundles saved before the choice) starts
  measuring the plume once it fills a quarter, and minutes into a steady release the rise in noise
  units collapses. While fewer than ``window`` samples
  precede the window (a series' first minutes, or after a gap), the baseline is taken over the
  series' first ``window`` samples.
* per sample of the window, six channels: the gas rise in noise units ``asinh((gas - base) /
  spread)``, the relative rise ``asinh((gas - base) / (0.05 * base))`` (a log scale above a 5 %
  rise: a few ppm on 2 ppm and thousands on 50 both resolved), temperature and humidity as
  changes from their baseline (°C, %RH), the level itself ``log(1 + ppm)`` (what a sensor's own
  recordings can teach; the simulator's randomised backgrounds teach that it alone means little),
  and "gas seen in the last minutes": the 90 % quantile of the baseline span over its baseline,
  in noise units (a plume comes and goes; a window of a minute can fall between two gusts).
  With ``weather=False`` the Δ°C and Δ%RH channels carry zeros: where the weather changed by chance
  while gas was released (the shared field recordings), a model learns the weather, not the gas.

The same code serves training, evaluation (``baselines_for_series``: rolling statistics over a
whole series) and the live service (``baselines_of_history``: a round's new windows of one sensor
from its buffer); a test checks that the two agree on a recorded series.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

N_RAW = 3       # gas ppm, °C, %RH
N_INPUTS = 6    # rise (noise units), relative rise, Δ°C, Δ%RH, log level, gas seen recently
N_BASE = 5      # baseline gas, spread, baseline °C, baseline %RH, high quantile of gas
# a sensor with this many new windows in a round (a backlog) gets rolling statistics, not a sort per window
ROLLING_MIN = 48
HIGH_QUANTILE = 0.9  # "gas seen in the last minutes": a plume that crossed the sensor 10 % of the time
IQR_TO_SIGMA = 1.349
SPREADS = ("iqr", "lower")
LOWER_SPAN = 0.2     # spread "lower": from the baseline quantile to 0.2 above it
REL_FLOOR = 0.01     # spread >= 1 % of the baseline
ABS_FLOOR = 1e-3     # ... and >= 0.001 ppm (a baseline of 0)
REL_UNIT = 0.05      # the relative rise is linear below 5 % of the baseline, logarithmic above


def _quantile(ordered: np.ndarray, q: float) -> np.ndarray:
    """The q-quantile of each row of sorted ``ordered``, interpolated linearly between the two
    nearest ranks as ``np.quantile`` does (the same values, to rounding)."""
    pos = q * (ordered.shape[1] - 1)
    lo = int(np.floor(pos))
    hi, t = min(lo + 1, ordered.shape[1] - 1), pos - lo
    below, above = ordered[:, lo], ordered[:, hi]
    return below + (above - below) * t


@dataclass(frozen=True)
class InputSpec:
    """How raw readings become model inputs; saved in every checkpoint and bundle."""

    window: int = 60
    baseline_s: int = 600
    quantile: float = 0.1
    weather: bool = True  # False: the models see no temperature or humidity (zeros in channels 2, 3)
    spread: str = "lower"  # the noise scale: "lower" quantiles of the baseline span (below a plume), or "iqr"

    def __post_init__(self):
        if self.window < 2:
            raise ValueError(f"window must be >= 2 samples, got {self.window}")
        if self.baseline_s < self.window:
            raise ValueError(f"baseline_s ({self.baseline_s}) must be at least the window ({self.window})")
        if not 0.0 < self.quantile < 0.5:
            raise ValueError(f"baseline quantile must be in (0, 0.5), got {self.quantile}")
        if self.spread not in SPREADS:
            raise ValueError(f"baseline spread must be one of {', '.join(SPREADS)}, got {self.spread!r}")

    @property
    def spread_quantiles(self) -> tuple[float, float, float]:
        """(low, high, sigmas between them) of the noise scale. "iqr": the quartiles, which a plume
        reaches once it fills a quarter of the span (the scale balloons, the rise shrinks, minutes
        into a release); "lower": the baseline quantile and 0.2 above it, reached only once a plume
        fills most of the span."""
        if self.spread == "iqr":
            return 0.25, 0.75, IQR_TO_SIGMA
        normal = NormalDist()
        high = self.quantile + LOWER_SPAN
        return self.quantile, high, normal.inv_cdf(high) - normal.inv_cdf(self.quantile)

    @property
    def history(self) -> int:
        """Samples a sensor must keep to score its newest window: the baseline span plus the window."""
        return self.baseline_s + self.window

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "InputSpec":
        d = d or {}
        # a bundle saved before "spread" existed used the inter-quartile range
        return cls(**{k: d[k] for k in ("window", "baseline_s", "quantile", "weather") if k in d},
                   spread=d.get("spread", "iqr"))

    # ---- baselines -------------------------------------------------------------------------------
    def _stats(self, gas_q, spread_low, spread_high, temp, hum, q_high) -> np.ndarray:
        sigmas = self.spread_quantiles[2]
        spread = np.maximum((spread_high - spread_low) / sigmas, np.maximum(REL_FLOOR * np.abs(gas_q), ABS_FLOOR))
        return np.stack([gas_q, spread, temp, hum, q_high], axis=-1).astype(np.float64)

    def baselines_for_series(self, signal: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """(len(ends), 5) baselines for the windows ending at ``ends`` (indices into one series)."""
        import pandas as pd

        ends = np.asarray(ends, dtype=np.int64)
        if len(ends) == 0:
            return np.zeros((0, N_BASE))
        w, b = self.window, self.baseline_s
        frame = pd.DataFrame(np.asarray(signal, dtype=np.float64))
        # the baseline span of the window ending at e ends at sample e - w (inclusive) ...
        at = np.maximum(ends - w, w - 1)  # ... or, early in a series, covers its first w samples
        return self._stats_of_rolling(frame.rolling(b, min_periods=1), at)

    def _stats_of_rolling(self, roll, at: np.ndarray) -> np.ndarray:
        """Baselines at rows ``at`` of a pandas rolling window over (gas, °C, %RH) samples."""
        gas = roll[0]
        low, high, _ = self.spread_quantiles
        return self._stats(gas.quantile(self.quantile).to_numpy()[at], gas.quantile(low).to_numpy()[at],
                           gas.quantile(high).to_numpy()[at], roll[1].median().to_numpy()[at],
                           roll[2].median().to_numpy()[at], gas.quantile(HIGH_QUANTILE).to_numpy()[at])

    def baselines_of_history(self, history: np.ndarray, count: int = 1, since_reset: int | None = None) -> np.ndarray:
        """(count, 5) baselines of the newest ``count`` windows of ``history``: (n, 3) samples of one
        sensor, the newest last. ``since_reset`` counts the samples since the sensor's last reset up
        to the newest (default n: ``history`` starts at the reset); a sensor's buffer need only hold
        the last ``self.history + count - 1`` of them."""
        h = np.asarray(history, dtype=np.float64)
        return self.baselines_of_histories([(h, count, len(h) if since_reset is None else since_reset)])

    def baselines_of_histories(self, segments: list[tuple[np.ndarray, int, int]]) -> np.ndarray:
        """``baselines_of_history`` of many sensors at once: ``(history, count, since_reset)`` each,
        their rows one after the other. The whole baseline spans of all of them are sorted in one
        call (per-call overhead, not arithmetic, is what a live round pays for); the short ones of a
        sensor's first minutes one by one."""
        from numpy.lib.stride_tricks import sliding_window_view

        w, b = self.window, self.baseline_s
        out = np.empty((sum(count for _, count, _ in segments), N_BASE))
        spans, rows, row = [], [], 0
        stretches, stretch_rows = [], []  # many windows of one sensor: rolling statistics
        for history, count, since_reset in segments:
            n = len(history)
            if since_reset - count + 1 >= w + b:  # every window has a whole span before it: the usual case
                lo = n - count + 1 - w - b
                if count >= ROLLING_MIN:
                    stretches.append(history[lo: n - w])
                    stretch_rows.append(np.arange(row, row + count))
                else:
                    spans.append(history[None, lo: lo + b].transpose(0, 2, 1) if count == 1  # (count, 3, b), views
                                 else sliding_window_view(history[lo: n - w], b, axis=0))
                    rows.append(np.arange(row, row + count))
                row += count
                continue
            ends = np.arange(n - count, n)              # each window's newest sample
            seen = int(since_reset) - (n - 1 - ends)    # samples since the reset up to it
            first = ends + 1 - seen                     # where the reset is (only read when it is in history)
            settled = seen - w >= w                     # a window's worth of samples precedes the window
            lo = np.where(settled, np.maximum(first, ends + 1 - w - b), first)
            hi = np.where(settled, ends + 1 - w, first + w)  # early on: the first window's samples
            for j in range(count):
                out[row + j] = self._stats_of_spans(history[None, lo[j]:hi[j]].transpose(0, 2, 1))[0]
            row += count
        if spans:
            out[np.concatenate(rows)] = self._stats_of_spans(np.concatenate(spans))
        if stretches:
            out[np.concatenate(stretch_rows)] = self._rolling_stats(stretches)
        return out

    def _rolling_stats(self, stretches: list[np.ndarray]) -> np.ndarray:
        """Baselines of every whole span in each stretch ((b + count - 1, 3) samples: count windows'
        spans), as evaluate computes them: rolling quantiles over the stretches end to end (one pass
        for all; a span that straddles two stretches is computed and not read). Sorting each window's
        span instead would copy count times b samples (a backlog of 256 windows on 400 sensors: 1.5 GB)."""
        import pandas as pd

        b = self.baseline_s
        frame = pd.DataFrame(np.concatenate(stretches))
        ends = np.cumsum([len(st) for st in stretches])
        at = np.concatenate([np.arange(end - len(st) + b - 1, end) for st, end in zip(stretches, ends)])
        return self._stats_of_rolling(frame.rolling(b), at)

    def _stats_of_spans(self, spans: np.ndarray) -> np.ndarray:
        """(m, 5) baselines of ``spans`` (m, 3, length): quantiles as ``np.quantile``'s default
        (linear), read off one sort (numpy's vectorised sort beats its partition-based quantile)."""
        ordered = np.sort(spans, axis=2)
        gas, temp, hum = ordered[:, 0], ordered[:, 1], ordered[:, 2]
        low, high, _ = self.spread_quantiles
        return self._stats(_quantile(gas, self.quantile), _quantile(gas, low), _quantile(gas, high),
                           _quantile(temp, 0.5), _quantile(hum, 0.5), _quantile(gas, HIGH_QUANTILE))

    def baseline_of_history(self, history: np.ndarray) -> np.ndarray:
        """(5,) baseline of the newest window of ``history`` ((n, 3) samples since the sensor's
        reset, or their last ``self.history``; n >= window)."""
        return self.baselines_of_history(history, 1)[0]

    def baseline_of_window(self, windows: np.ndarray) -> np.ndarray:
        """Baselines when a window comes with no history: taken over the window itself (its series'
        first window). Used when a caller passes bare windows."""
        return self._stats_of_spans(np.asarray(windows, dtype=np.float64).transpose(0, 2, 1))

    # ---- inputs ----------------------------------------------------------------------------------
    def transform(self, windows: np.ndarray, base: np.ndarray) -> np.ndarray:
        """Raw windows (N, W, 3) and their baselines (N, 5) -> model inputs (N, W, 6), float32."""
        x = np.asarray(windows, dtype=np.float64)
        b = np.asarray(base, dtype=np.float64)[:, None, :]
        rise = x[..., 0] - b[..., 0]
        out = np.empty(x.shape[:2] + (N_INPUTS,), dtype=np.float32)
        out[..., 0] = np.arcsinh(rise / b[..., 1])
        out[..., 1] = np.arcsinh(rise / np.maximum(REL_UNIT * np.abs(b[..., 0]), b[..., 1]))
        out[..., 2] = x[..., 1] - b[..., 2] if self.weather else 0.0
        out[..., 3] = x[..., 2] - b[..., 3] if self.weather else 0.0
        out[..., 4] = np.log1p(np.clip(x[..., 0], 0, None))
        out[..., 5] = np.arcsinh((b[..., 4] - b[..., 0]) / b[..., 1])
        return out
