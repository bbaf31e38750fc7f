"""Sensor series -> windows (``data.window`` samples, 60 by default): the simulator and CSV sources, and the LightningDataModule.

Every source yields a list of ``Series`` (one recording each: readings of shape (T, 3) in raw units,
0/1 labels, timestamps). The datamodule concatenates them into one flat float32 array and keeps
only the *end index* of every window, so a million rows cost 12 MB and windows are gathered in
batches with one fancy-indexing call, never as Python objects per row or per window.

Labelling: a window is positive when its **last** sample is during a leak. A detector therefore
learns to answer "is there a leak now?", and a leak can be confirmed a few seconds after it starts
rather than after the minute it takes to fill a window.
"""

from __future__ import annotations

import copy
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from framework.errors import UserError
from framework.plugin import TaskData
from plugins.gasleak_lstm_svm.features import N_BASE, N_INPUTS, InputSpec
from plugins.gasleak_lstm_svm.simulator import DomainRanges, LeakEvent, simulate_series

log = logging.getLogger(__name__)

CHANNELS = ("gas_concentration", "temperature", "humidity")
CSV_COLUMNS = ("timestamp", *CHANNELS)
WINDOW = InputSpec.window  # the code default (60 s); data.window in config, saved with every detector


@dataclass
class Series:
    """One recording: ``signal`` (T, 3) float32 in raw units, ``label`` (T,) int8, ``time`` (T,) seconds."""

    series_id: str
    signal: np.ndarray
    label: np.ndarray
    time: np.ndarray
    events: list[LeakEvent] | None = None  # known ground truth (simulator); else derived from labels
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.signal)


def label_runs(label: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end)) index ranges where ``label`` is 1."""
    padded = np.concatenate([[0], np.asarray(label, dtype=np.int8), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist()))


# --------------------------------------------------------------------------------------------
# Windows over concatenated series
# --------------------------------------------------------------------------------------------


class Windows(Dataset):
    """Windows of ``window`` samples over series concatenated into one array.

    ``ends`` are indices (into the flat array) of each window's last sample; ``series_index`` says
    which series each window comes from. Supports batched fetching (``__getitems__``).
    """

    def __init__(self, series: list[Series], window: int = WINDOW, stride: int = 1, extra_ends: np.ndarray | None = None,
                 spec: InputSpec | None = None):
        self.series = series
        self.window = window
        self.spec = spec or InputSpec(window=window)
        self._base_flat: np.ndarray | None = None
        lengths = np.array([len(s) for s in series], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.signal = np.concatenate([s.signal for s in series]) if series else np.zeros((0, 3), np.float32)
        self.label = np.concatenate([s.label for s in series]) if series else np.zeros(0, np.int8)
        ends, which = [], []
        for i, n in enumerate(lengths):
            e = np.arange(window - 1, n, stride, dtype=np.int64)
            ends.append(self.offsets[i] + e)
            which.append(np.full(len(e), i, dtype=np.int32))
        self.ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        self.series_index = np.concatenate(which) if which else np.zeros(0, np.int32)
        if extra_ends is not None and len(extra_ends):
            order = np.argsort(np.concatenate([self.ends, extra_ends]), kind="stable")
            self.ends = np.concatenate([self.ends, extra_ends])[order]
            self.series_index = (np.searchsorted(self.offsets, self.ends, side="right") - 1).astype(np.int32)
        self._back = np.arange(window - 1, -1, -1, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def y(self) -> np.ndarray:
        return self.label[self.ends].astype(np.int64)

    def gather(self, idx) -> np.ndarray:
        """Raw windows (len(idx), window, 3) for window indices ``idx``."""
        return self.signal[self.ends[np.asarray(idx)][:, None] - self._back]

    def baselines(self, idx) -> np.ndarray:
        """(len(idx), 5) clean-air baselines of windows ``idx`` (``features.InputSpec``), computed
        once per series for every possible window end, so any subset of ends can be looked up."""
        if self._base_flat is None:
            base = np.zeros((len(self.signal), N_BASE))
            w = self.window
            for i, s in enumerate(self.series):
                if len(s) >= w:
                    a = self.offsets[i]
                    base[a + w - 1 : a + len(s)] = self.spec.baselines_for_series(s.signal, np.arange(w - 1, len(s)))
            self._base_flat = base
        return self._base_flat[self.ends[np.asarray(idx)]]

    def at(self, ends: np.ndarray) -> "Windows":
        """The same series with only the windows ending at ``ends`` (flat indices); shares the arrays
        and the baselines (computed first, so every subset reuses them)."""
        self.baselines(np.zeros(0, dtype=np.int64))
        sub = copy.copy(self)
        sub.ends = np.asarray(ends, dtype=np.int64)
        sub.series_index = (np.searchsorted(self.offsets, sub.ends, side="right") - 1).astype(np.int32)
        return sub

    def arrays(self, idx=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raw windows, their baselines and labels for window indices ``idx`` (all by default)."""
        idx = np.arange(len(self)) if idx is None else np.asarray(idx)
        return self.gather(idx), self.baselines(idx), self.y[idx]

    def inputs(self, idx) -> np.ndarray:
        """Model inputs (len(idx), window, 6): each window relative to its baseline."""
        return self.spec.transform(self.gather(idx), self.baselines(idx))

    def __getitem__(self, i):
        x, y = self.__getitems__([i])
        return x[0], int(y[0])

    def __getitems__(self, idx):
        return torch.from_numpy(self.inputs(idx)), torch.from_numpy(self.y[np.asarray(idx)])


def hard_ends(ws: Windows, follow: int = 30, jump: float = 0.5, before: int = 0) -> np.ndarray:
    """Window ends (flat indices) that decide latency and false alarms: the ``follow`` samples after
    a label change (a leak starting or ending) or after a sharp jump of the gas reading
    (|Δ log(1+ppm)| > ``jump``: bursts, glitches, dropouts), and the ``before`` samples before a label
    change (the last seconds of a leak, as its gas clears). Every end has a full window behind it."""
    gas = np.log1p(np.clip(ws.signal[:, 0], 0, None))
    label_changes = np.flatnonzero(np.diff(ws.label.astype(np.int8))) + 1
    jumps = np.flatnonzero(np.abs(np.diff(gas)) > jump) + 1
    ends = np.concatenate([(np.concatenate([label_changes, jumps])[:, None] + np.arange(follow)[None]).ravel(),
                           (label_changes[:, None] - np.arange(1, before + 1)[None]).ravel()])
    ends = ends[(ends >= 0) & (ends < len(ws.label))]
    series = np.searchsorted(ws.offsets, ends, side="right") - 1
    return np.unique(ends[(ends - ws.offsets[series] >= ws.window - 1) & (ends < ws.offsets[series + 1])])


def _collate(batch):
    return batch  # __getitems__ already built the batch tensors


# --------------------------------------------------------------------------------------------
# CSV reader
# --------------------------------------------------------------------------------------------


RESAMPLE_RULES = ("hold", "linear", "none")
GRID_TOLERANCE_S = 1e-3  # timestamps this close to a whole step count as on the 1 Hz grid


@dataclass
class CsvReport:
    """What loading one file found: bad rows (by line) and how its cadence was brought to 1 Hz."""

    rows: int = 0
    bad_lines: list[int] = field(default_factory=list)  # 1-based line numbers in the file
    action: str = "skip"
    resample: str = "hold"
    max_gap_s: float = 30.0
    series: int = 0  # series in the file (before gap splits)
    resampled: int = 0  # ... of which were not on the 1 Hz grid and were resampled
    median_interval_s: float | None = None  # between consecutive readings of a series, as read
    filled: int = 0  # 1 Hz samples with no reading within half a second (held or interpolated)
    gap_splits: int = 0  # gaps longer than max_gap_s: each ends a series and starts a new part
    duplicates: int = 0  # readings dropped for sharing a timestamp with a later one

    def summary(self, path) -> str:
        shown = ", ".join(map(str, self.bad_lines[:10])) + (" ..." if len(self.bad_lines) > 10 else "")
        verb = "skipped" if self.action == "skip" else "interpolated"
        text = f"{path}: {len(self.bad_lines)} bad row(s) of {self.rows} {verb}" + (f" (lines {shown})" if self.bad_lines else "")
        if self.resample == "none":
            return text + "; timestamps taken as they are (resample: none)"
        interval = "n/a" if self.median_interval_s is None else f"{self.median_interval_s:g} s"
        return (f"{text}; median interval {interval}, {self.resampled} of {self.series} series resampled to 1 Hz "
                f"({self.resample}), {self.filled} sample(s) filled, {self.gap_splits} gap(s) over {self.max_gap_s:g} s "
                f"split a series, {self.duplicates} duplicate timestamp(s) dropped (the last kept)")


def check_cadence_options(resample, max_gap_s) -> None:
    if resample not in RESAMPLE_RULES:
        raise UserError(f"data.resample must be one of {', '.join(RESAMPLE_RULES)}, got {resample!r}")
    if isinstance(max_gap_s, bool) or not isinstance(max_gap_s, (int, float)) or not max_gap_s >= 1:
        raise UserError(f"data.max_gap_s must be a number of seconds >= 1, got {max_gap_s!r}")


def read_csv(path, on_bad_rows: str = "skip", sample_every: int = 1, require_label: bool = True,
             resample: str = "hold", max_gap_s: float = 30.0) -> tuple[list[Series], CsvReport]:
    """Read ``timestamp,gas_concentration,temperature,humidity[,label][,series_id]`` into Series.

    Vectorised with pandas: a million rows take a couple of seconds. Rows with missing or
    non-numeric values (or the wrong number of fields) are reported by line number and, per
    ``on_bad_rows``, skipped or (``interpolate``) filled linearly within their series; rows with
    too many fields are always skipped. Timestamps may be numbers (seconds) or ISO date-times.

    Cadence (``resample``): the model reads 1 Hz. Of readings sharing a timestamp the last is kept.
    A series whose readings are already 1 s apart comes out unchanged. Otherwise it is put on a
    1 Hz grid starting at its first reading: ``hold`` gives each second the latest reading at or
    before it (what a live sensor's current value means), ``linear`` interpolates between the
    readings either side; labels are always held. A gap longer than ``max_gap_s`` is not filled:
    it ends the series, and the readings after it form a new one (ids ``<id>_part1``, ``_part2``,
    ...). When resampling, a row whose timestamp is unusable is dropped even with ``interpolate``
    (it has no place on the grid). ``none``: rows are taken as they come (no grid, no splits).
    """
    import pandas as pd

    path = Path(path)
    if on_bad_rows not in ("skip", "interpolate"):
        raise UserError(f"data.on_bad_rows must be 'skip' or 'interpolate', got {on_bad_rows!r}")
    check_cadence_options(resample, max_gap_s)
    if not path.is_file():
        raise UserError(f"CSV file not found: {path}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            df = pd.read_csv(path, dtype=str, skip_blank_lines=False, on_bad_lines="warn", keep_default_na=True)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read CSV {path}: {str(e).strip().splitlines()[0]}") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in CSV_COLUMNS if c not in df.columns]
    if missing:
        raise UserError(f"CSV {path} lacks column(s) {', '.join(missing)}; needs {','.join(CSV_COLUMNS)}[,label][,series_id]")
    if require_label and "label" not in df.columns:
        raise UserError(f"CSV {path} has no 'label' column (1 during a leak); training and evaluation need one")

    skipped = sorted(int(n) for w in caught for n in re.findall(r"line (\d+)", str(w.message)))
    lines = np.setdiff1d(np.arange(2, 2 + len(df) + len(skipped)), skipped)
    values = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in CHANNELS}
    ts_raw = df["timestamp"]
    ts = pd.to_numeric(ts_raw, errors="coerce").to_numpy(np.float64)
    if np.isnan(ts).mean() > 0.5:  # not numbers: date-times
        parsed = pd.to_datetime(ts_raw, errors="coerce", utc=True, format="mixed")
        ts = (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(np.float64)  # NaT -> NaN
    label = pd.to_numeric(df["label"], errors="coerce").to_numpy(np.float64) if "label" in df.columns else np.zeros(len(df))
    sid = df["series_id"].fillna("").astype(str).str.strip().to_numpy() if "series_id" in df.columns else np.full(len(df), "0")

    data = np.column_stack([ts, values[CHANNELS[0]], values[CHANNELS[1]], values[CHANNELS[2]], label])
    bad = ~np.isfinite(data).all(axis=1)
    if "label" in df.columns:
        bad |= ~np.isin(label, (0, 1)) & np.isfinite(label)
        data[~np.isin(label, (0, 1)), 4] = np.nan
    report = CsvReport(rows=len(df) + len(skipped), bad_lines=sorted(skipped + lines[bad].tolist()), action=on_bad_rows,
                       resample=resample, max_gap_s=float(max_gap_s))
    if on_bad_rows == "skip":
        keep = ~bad
        data, sid = data[keep], sid[keep]

    codes, names = pd.factorize(sid, sort=True)
    order = np.lexsort((np.nan_to_num(data[:, 0], nan=np.inf), codes))  # by series, then time (stable: file order)
    data, codes = data[order], codes[order]
    bounds = np.flatnonzero(np.diff(codes)) + 1
    series, intervals = [], []
    for chunk, code in zip(np.split(data, bounds), codes[np.concatenate([[0], bounds])] if len(codes) else []):
        if resample != "none":
            chunk = chunk[np.isfinite(chunk[:, 0])]
        if on_bad_rows == "interpolate":
            chunk = _interpolate(chunk)
        if len(chunk) == 0 or not np.isfinite(chunk).all():
            continue
        report.series += 1
        parts = [chunk] if resample == "none" else _to_1hz(chunk, resample, max_gap_s, report, intervals)
        for k, part in enumerate(parts):
            part = part[:: max(1, int(sample_every))]
            meta = {"t0": float(part[0, 0])}
            if len(parts) > 1:
                meta.update(source_id=str(names[code]), part=k + 1)
            series.append(
                Series(
                    series_id=str(names[code]) + (f"_part{k + 1}" if len(parts) > 1 else ""),
                    signal=part[:, 1:4].astype(np.float32),
                    label=part[:, 4].round().astype(np.int8),
                    time=part[:, 0] - part[0, 0],
                    meta=meta,
                )
            )
    if intervals:
        report.median_interval_s = float(np.median(np.concatenate(intervals)))
    log.log(logging.WARNING if report.bad_lines else logging.INFO, report.summary(path))
    if resample != "none" and report.median_interval_s is not None and report.median_interval_s > max_gap_s:
        log.warning(f"{path}: readings are {report.median_interval_s:g} s apart, more than data.max_gap_s "
                    f"({max_gap_s:g}): nearly every reading became its own series; raise data.max_gap_s")
    if not series:
        raise UserError(f"CSV {path} has no usable rows")
    return series, report


def _on_grid(t: np.ndarray) -> bool:
    return bool(np.all(np.abs(np.diff(t) - 1.0) <= GRID_TOLERANCE_S))


def _to_1hz(chunk: np.ndarray, rule: str, max_gap_s: float, report: CsvReport, intervals: list) -> list[np.ndarray]:
    """One series' rows (sorted by time, finite) -> parts on a 1 Hz grid (see ``read_csv``); counts
    into ``report`` and appends the series' reading intervals to ``intervals``."""
    last_of_each_time = np.r_[chunk[1:, 0] != chunk[:-1, 0], True]
    report.duplicates += int(len(chunk) - last_of_each_time.sum())
    chunk = chunk[last_of_each_time]
    intervals.append(np.diff(chunk[:, 0]))
    if _on_grid(chunk[:, 0]):
        return [chunk]
    cuts = np.flatnonzero(intervals[-1] > max_gap_s) + 1
    report.gap_splits += len(cuts)
    parts, resampled = [], False
    for part in np.split(chunk, cuts):
        t = part[:, 0]
        if _on_grid(t):
            parts.append(part)
            continue
        resampled = True
        grid = t[0] + np.arange(int(np.floor(t[-1] - t[0] + GRID_TOLERANCE_S)) + 1)
        out = part[np.searchsorted(t, grid + GRID_TOLERANCE_S, side="right") - 1]  # hold: the latest reading
        out[:, 0] = grid
        if rule == "linear":
            for j in range(1, 4):  # the channels; the label (column 4) stays held
                out[:, j] = np.interp(grid, t, part[:, j])
        readings_near = np.searchsorted(t, grid + 0.5) - np.searchsorted(t, grid - 0.5)
        report.filled += int(np.count_nonzero(readings_near == 0))
        parts.append(out)
    report.resampled += resampled
    return parts


def _interpolate(chunk: np.ndarray) -> np.ndarray:
    """Fill NaNs linearly along the series (nearest value at the ends; labels by nearest)."""
    chunk = chunk.copy()
    n = np.arange(len(chunk))
    for j in range(chunk.shape[1]):
        col = chunk[:, j]
        ok = np.isfinite(col)
        if ok.all() or not ok.any():
            continue
        col[~ok] = np.interp(n[~ok], n[ok], col[ok])
    return chunk


# --------------------------------------------------------------------------------------------
# DataModules
# --------------------------------------------------------------------------------------------


class GasDataModule(TaskData, L.LightningDataModule):
    """Windows for the autoencoder (stage 1) and arrays for the SVM (stage 2) from train/val/test series.

    Subclasses implement ``load_series(split)``. Windows reach the model relative to their
    clean-air baseline (``features.InputSpec``: ``window``, ``baseline_s``, ``baseline_quantile``,
    ``baseline_spread``, ``weather_inputs``);
    the standardisation statistics of those inputs come from the training series only and reach
    the model through ``model_kwargs()``, so they are saved inside its checkpoint. Fine-tuning
    (``init_from=<bundle or checkpoint>``) keeps the checkpoint's inputs and statistics
    (``adopt_checkpoint``).
    """

    def __init__(self, window: int = WINDOW, train_stride: int = 10, val_stride: int = 30, eval_stride: int = 1,
                 batch_size: int = 32, num_workers: int = 0, baseline_s: int = 600, baseline_quantile: float = 0.1,
                 max_train_windows: int | None = None, hard_windows: bool = True, hard_before: int = 0, seed: int = 0,
                 weather_inputs: bool = True, baseline_spread: str = "lower"):
        super().__init__()
        self.window, self.train_stride, self.val_stride, self.eval_stride = window, train_stride, val_stride, eval_stride
        self.batch_size, self.num_workers = batch_size, num_workers
        try:
            self.spec = InputSpec(window=window, baseline_s=baseline_s, quantile=baseline_quantile, weather=weather_inputs,
                                  spread=baseline_spread)
        except ValueError as e:
            raise UserError(f"data: {e}") from None
        self._adopted: dict | None = None
        self.max_train_windows, self.seed, self.hard_windows = max_train_windows, seed, hard_windows
        self.hard_before = hard_before
        self._series: dict[str, list[Series]] = {}
        self.train_set = self.val_set = self.test_set = None

    # -- sources ------------------------------------------------------------------------------
    def load_series(self, split: str) -> list[Series]:
        raise NotImplementedError

    def series(self, split: str) -> list[Series]:
        if split not in self._series:
            found = [s for s in self.load_series(split) if len(s) >= self.window]
            if not found:
                raise UserError(f"no {split} series of at least {self.window} samples")
            self._series[split] = found
        return self._series[split]

    def series_for_calibration(self) -> list[Series]:
        """The series the alert calibration starts from: the validation series (the simulator adds days)."""
        return self.series("val")

    def windows(self, split: str, stride: int | None = None) -> Windows:
        stride = stride or {"train": self.train_stride, "val": self.val_stride}.get(split, self.eval_stride)
        return Windows(self.series(split), self.window, stride, spec=self.spec)

    # -- Lightning hooks -----------------------------------------------------------------------
    def setup(self, stage: str | None = None):
        if stage in ("fit", None) and self.train_set is None:
            self.train_set = self.windows("train")
            if self.hard_windows:  # also every window right after a leak starts/ends or the gas jumps
                base = self.train_set
                hard = hard_ends(base, before=self.hard_before)
                self.train_set = Windows(base.series, self.window, self.train_stride, extra_ends=np.setdiff1d(hard, base.ends),
                                         spec=self.spec)
            if self.max_train_windows and len(self.train_set) > self.max_train_windows:
                keep = np.random.default_rng(self.seed).choice(len(self.train_set), self.max_train_windows, replace=False)
                self.train_set.ends = self.train_set.ends[np.sort(keep)]
            self.val_set = self.windows("val")
        if stage == "test" and self.test_set is None:
            self.test_set = self.windows("test", stride=self.val_stride)

    def use_inputs(self, spec: InputSpec) -> None:
        """Windows as a trained detector sees them (its ``spec``: window length, baseline ...),
        whatever this datamodule's own settings say (evaluate, fine-tuning)."""
        if spec.window != self.window:
            self._series = {}  # kept series were chosen for the old window length
        self.spec = spec
        self.window = spec.window

    def adopt_checkpoint(self, checkpoint: dict) -> None:
        """Fine-tuning: keep the inputs and standardisation the checkpoint's model was trained with."""
        hp = checkpoint.get("hyper_parameters", {})
        if "inputs" not in hp:
            raise UserError("init_from: not a gas-leak autoencoder checkpoint (no input settings)")
        self.use_inputs(InputSpec.from_dict(hp["inputs"]))
        self._adopted = {k: hp[k] for k in ("channel_mean", "channel_std", "inputs")}

    def model_kwargs(self) -> dict:
        if self._adopted is not None:
            return dict(self._adopted)
        ws = self.windows("train", stride=max(1, self.train_stride))
        pick = np.random.default_rng(self.seed).choice(len(ws), min(len(ws), 20_000), replace=False)
        x = ws.inputs(np.sort(pick)).reshape(-1, N_INPUTS).astype(np.float64)
        std = x.std(axis=0)
        return {"channel_mean": x.mean(axis=0).tolist(), "channel_std": np.where(std > 1e-6, std, 1.0).tolist(),
                "inputs": self.spec.to_dict()}

    def _loader(self, ds: Windows, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=_collate, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.test_set, shuffle=False)


def randomised_days(days: int, fraction: float) -> np.ndarray:
    """Which of ``days`` days come from the randomised domain: round(days * fraction) of them,
    halves down (a single day at 0.5 stays standard), spread evenly."""
    d = np.arange(days)
    return np.ceil((d + 1) * fraction - 0.5) > np.ceil(d * fraction - 0.5)


class SimulatorDataModule(GasDataModule):
    """Simulated days: train, validation and test are different seeds, hence different days.

    ``domain_fraction`` of the train and validation days (and every test day with ``domain_test``)
    come from the randomised domain (``simulator.DomainRanges``, overridden by ``domain``); their
    series ids end in ``-domain`` and ``meta["domain"]`` holds the drawn sensor and site (None on
    standard days). The default 0 is the standard simulator.

    ``calibration_days``: the days the alert calibration starts from (``series_for_calibration``):
    the validation days and more of their kind until there are this many (None: the validation
    days). A budget of one false alert a day is judged on their clean air, and two days cannot
    tell 0.5 a day from 2; the simulator can make as many days as that needs."""

    def __init__(self, seconds_per_day: int = 86400, train_days: int = 4, val_days: int = 1, test_days: int = 7,
                 leaks_per_hour: float = 1 / 6, min_leaks_per_day: int = 1, hard_negatives_per_hour: float = 1.0,
                 start_hour: float = 0.0, seed: int = 0, domain_fraction: float = 0.0, domain_test: bool = False,
                 domain: dict | None = None, calibration_days: int | None = None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.seconds_per_day, self.start_hour = seconds_per_day, start_hour
        if calibration_days is not None and (isinstance(calibration_days, bool) or not isinstance(calibration_days, int)
                                             or calibration_days < 1):
            raise UserError(f"data.calibration_days must be a whole number of days (1 or more) or null, got {calibration_days!r}")
        self.calibration_days = calibration_days
        self.days = {"train": train_days, "val": val_days, "test": test_days}
        self.leaks_per_hour, self.hard_negatives_per_hour = leaks_per_hour, hard_negatives_per_hour
        self.min_leaks_per_day = min_leaks_per_day
        if isinstance(domain_fraction, bool) or not isinstance(domain_fraction, (int, float)) or not 0 <= domain_fraction <= 1:
            raise UserError(f"data.domain_fraction must be a number from 0 to 1, got {domain_fraction!r}")
        self.domain_fraction = {"train": domain_fraction, "val": domain_fraction, "test": 1.0 if domain_test else 0.0}
        try:
            self.domain = DomainRanges.from_dict(domain)
        except (TypeError, ValueError) as e:
            raise UserError(f"data.domain: {e}") from None

    def series_for_calibration(self) -> list[Series]:
        """The validation days, then the next days of the validation seeds up to ``calibration_days``."""
        if "calibration" not in self._series:
            days = max(self.calibration_days or 0, self.days["val"])
            randomised = randomised_days(days, self.domain_fraction["val"])
            self._series["calibration"] = self.series("val") + [self._day("val", d, randomised[d])
                                                                for d in range(self.days["val"], days)]
        return self._series["calibration"]

    def load_series(self, split: str) -> list[Series]:
        return [self._day(split, d, r) for d, r in enumerate(randomised_days(self.days[split], self.domain_fraction[split]))]

    def _day(self, split: str, day: int, randomised: bool) -> Series:
        base = {"train": 0, "val": 10_000, "test": 20_000}[split]  # disjoint seeds per split
        sim = simulate_series(self.seconds_per_day, seed=self.seed * 100_000 + base + day, start_hour=self.start_hour,
                              leaks_per_hour=self.leaks_per_hour, hard_negatives_per_hour=self.hard_negatives_per_hour,
                              min_leaks=self.min_leaks_per_day, domain=self.domain if randomised else None)
        signal = np.column_stack([sim[c] for c in CHANNELS]).astype(np.float32)
        return Series(f"{split}-day{day}" + ("-domain" if randomised else ""), signal, sim["label"], sim["time"],
                      sim["events"], {"hard_negatives": sim["hard_negatives"], "domain": sim["domain"]})


class CsvDataModule(GasDataModule):
    """Recordings from CSV. Train/val (and test unless ``test_path``) are split by series id;
    a file with a single series is split in time instead. Each series is brought to 1 Hz by
    ``resample`` (``hold`` | ``linear`` | ``none``) and split at gaps over ``max_gap_s`` (see ``read_csv``)."""

    def __init__(self, path: str | None = None, test_path: str | None = None, on_bad_rows: str = "skip",
                 sample_every: int = 1, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0,
                 resample: str = "hold", max_gap_s: float = 30.0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if not path:
            raise UserError("data=csv needs data.path=<file.csv>")
        self.path, self.test_path = path, test_path
        self.on_bad_rows, self.sample_every = on_bad_rows, sample_every
        check_cadence_options(resample, max_gap_s)  # before the (lazy) first read
        self.resample, self.max_gap_s = resample, max_gap_s
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.reports: dict[str, CsvReport] = {}
        self._split: dict[str, list[Series]] | None = None

    def _read(self, path) -> list[Series]:
        series, report = read_csv(path, self.on_bad_rows, self.sample_every, resample=self.resample, max_gap_s=self.max_gap_s)
        self.reports[str(path)] = report
        return series

    def load_series(self, split: str) -> list[Series]:
        if split == "test" and self.test_path:
            return self._read(self.test_path)
        if self._split is None:
            self._split = self._split_series(self._read(self.path))
        return self._split[split]

    def _split_series(self, series: list[Series]) -> dict[str, list[Series]]:
        test_frac = 0.0 if self.test_path else self.test_fraction
        if len(series) >= 3:
            order = np.random.default_rng(self.seed).permutation(len(series))
            n_val = max(1, round(self.val_fraction * len(series)))
            n_test = max(1, round(test_frac * len(series))) if test_frac else 0
            pick = lambda idx: [series[i] for i in sorted(idx)]  # noqa: E731
            return {"val": pick(order[:n_val]), "test": pick(order[n_val:n_val + n_test]), "train": pick(order[n_val + n_test:])}
        # too few recordings to split by id: cut each in time (train | val | test)
        out = {"train": [], "val": [], "test": []}
        for s in series:
            n = len(s)
            a, b = int(n * (1 - self.val_fraction - test_frac)), int(n * (1 - test_frac))
            for split, sl in (("train", slice(0, a)), ("val", slice(a, b)), ("test", slice(b, n))):
                if sl.stop - sl.start > 0:
                    out[split].append(Series(f"{s.series_id}:{split}", s.signal[sl], s.label[sl], s.time[sl] - s.time[sl][0]))
        return out
