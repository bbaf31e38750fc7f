"""The few callbacks Lightning lacks: memory figures, a whole-run time estimate, and a history plot.

Checkpointing, early stopping, learning-rate logging and per-step device statistics are Lightning's
own callbacks, configured in conf/callbacks/.
"""

from __future__ import annotations

import logging
import resource
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar, Timer
from lightning.pytorch.callbacks.progress import ProgressBar
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger(__name__)
GIB = 2**30


class MemoryMonitor(Callback):
    """Per-epoch memory metrics: CUDA allocated/reserved (current and epoch peak), or the process RSS on CPU."""

    def __init__(self) -> None:
        self.peak: dict[str, float] = {}

    def _on_cuda(self, pl_module) -> bool:
        return pl_module.device.type == "cuda"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._on_cuda(pl_module):
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def _figures(self, pl_module) -> dict[str, float]:
        if self._on_cuda(pl_module):
            dev = pl_module.device
            return {
                "mem/cuda_allocated_gib": torch.cuda.memory_allocated(dev) / GIB,
                "mem/cuda_reserved_gib": torch.cuda.memory_reserved(dev) / GIB,
                "mem/cuda_peak_allocated_gib": torch.cuda.max_memory_allocated(dev) / GIB,
                "mem/cuda_peak_reserved_gib": torch.cuda.max_memory_reserved(dev) / GIB,
            }
        import psutil

        rss = psutil.Process().memory_info().rss
        # ru_maxrss is in KiB on Linux
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {"mem/rss_gib": rss / GIB, "mem/peak_rss_gib": peak / GIB}

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        figures = self._figures(pl_module)
        for key, value in figures.items():
            self.peak[key] = max(self.peak.get(key, 0.0), value)
        pl_module.log_dict(figures, on_step=False, on_epoch=True, rank_zero_only=True)

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        if not self.peak:
            return
        if "mem/cuda_peak_allocated_gib" in self.peak:
            line = (
                f"GPU memory ({torch.cuda.get_device_name(pl_module.device)}): peak allocated "
                f"{self.peak['mem/cuda_peak_allocated_gib']:.2f} GiB, peak reserved "
                f"{self.peak['mem/cuda_peak_reserved_gib']:.2f} GiB"
            )
        else:
            line = f"CPU memory: peak resident {self.peak['mem/peak_rss_gib']:.2f} GiB"
        log.info(line)

    def state_dict(self) -> dict:
        return {"peak": dict(self.peak)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.peak = dict(state_dict.get("peak", {}))


class RunClock:
    """Elapsed and remaining time for the whole run (all epochs), from this process's progress rate."""

    def __init__(self) -> None:
        self.start_time: float | None = None
        self.start_fraction = 0.0

    @staticmethod
    def fraction(trainer) -> float:
        batches = trainer.num_training_batches
        if not batches or batches == float("inf"):
            return 0.0
        in_epoch = min(trainer.fit_loop.epoch_loop.batch_progress.current.completed / batches, 1.0)
        by_epochs = (trainer.current_epoch + in_epoch) / max(trainer.max_epochs or 1, 1)
        if trainer.max_steps and trainer.max_steps > 0:
            by_epochs = max(by_epochs, trainer.global_step / trainer.max_steps)
        return min(by_epochs, 1.0)

    def start(self, trainer) -> None:
        self.start_time = time.monotonic()
        self.start_fraction = self.fraction(trainer)

    def elapsed(self) -> float:
        return 0.0 if self.start_time is None else time.monotonic() - self.start_time

    def remaining(self, trainer) -> float | None:
        done = self.fraction(trainer) - self.start_fraction
        if done <= 0:
            return None
        left = self.elapsed() / done * (1.0 - self.fraction(trainer))
        # `trainer.max_time` becomes Lightning's Timer callback: the run ends by then at the latest
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        if timer is not None and timer.time_remaining("train") is not None:
            left = min(left, timer.time_remaining("train"))
        return left


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d}"
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class RichRunProgressBar(RichProgressBar):
    """Lightning's rich bar plus a column with the whole run's elapsed and remaining time."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.clock = RunClock()

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start(trainer)
        super().on_train_start(trainer, pl_module)

    def configure_columns(self, trainer) -> list:
        from rich.progress import ProgressColumn
        from rich.text import Text

        clock = self.clock

        class RunTimeColumn(ProgressColumn):
            def render(self, task) -> Text:
                return Text(f"run {_hms(clock.elapsed())} ~{_hms(clock.remaining(trainer))} left", style="cyan")

        return super().configure_columns(trainer) + [RunTimeColumn()]


class PlainRunProgress(ProgressBar):
    """Periodic plain lines for logs and CI (no TTY): epoch, step, metrics, and the whole run's time."""

    def __init__(self, refresh_seconds: float = 10.0) -> None:
        super().__init__()
        self.refresh_seconds = refresh_seconds
        self.clock = RunClock()
        self._enabled = True
        self._last_print = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        self.clock.start(trainer)
        self._last_print = time.monotonic()

    def _line(self, trainer, pl_module, what: str) -> str:
        metrics = {k: v for k, v in self.get_metrics(trainer, pl_module).items() if k != "v_num"}
        shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
        batches = trainer.num_training_batches
        done = trainer.fit_loop.epoch_loop.batch_progress.current.completed
        return (
            f"{what} epoch {trainer.current_epoch + 1}/{trainer.max_epochs} batch {done}/{batches} | {shown} | "
            f"run elapsed {_hms(self.clock.elapsed())}, remaining ~{_hms(self.clock.remaining(trainer))}"
        )

    def _print(self, text: str) -> None:
        if self._enabled and self.is_enabled:
            print(text, flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if time.monotonic() - self._last_print >= self.refresh_seconds:
            self._last_print = time.monotonic()
            self._print(self._line(trainer, pl_module, "train"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._last_print = time.monotonic()
        self._print(self._line(trainer, pl_module, "done"))

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    @property
    def is_disabled(self) -> bool:
        return not self._enabled


def run_progress_bar(refresh_seconds: float = 10.0) -> ProgressBar:
    """Rich bar on a terminal, plain periodic lines otherwise (CI, log files)."""
    if sys.stdout.isatty():
        return RichRunProgressBar()
    return PlainRunProgress(refresh_seconds=refresh_seconds)


class HistoryPlot(Callback):
    """At the end of fitting, plot the per-epoch loss curves from the CSV log into history.png."""

    def __init__(self, filename: str = "history.png", metrics: tuple[str, ...] = ()) -> None:
        self.filename = filename
        self.metrics = tuple(metrics)  # the runner sets the task's `Plugin.plot_metrics`

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.loggers import CSVLogger

        csv_logger = next((lg for lg in trainer.loggers if isinstance(lg, CSVLogger)), None)
        if csv_logger is None:
            return
        csv_logger.save()
        metrics_file = Path(csv_logger.log_dir) / "metrics.csv"
        if not metrics_file.exists():
            return
        out = Path(trainer.default_root_dir) / self.filename
        try:
            plot_history(metrics_file, out, self.metrics)
            log.info("training history: %s, plot: %s", metrics_file, out)
        except Exception as e:  # a plot must never fail a finished training
            log.warning("could not plot training history: %s", e)


def plot_history(metrics_csv: Path, out: Path, metrics: tuple[str, ...] = ()) -> None:
    """Losses in one panel; logged metrics whose names end in one of `metrics` in a second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    frame = pd.read_csv(metrics_csv)
    if "epoch" not in frame:
        return
    per_epoch = frame.groupby("epoch").last()
    curves = [c for c in per_epoch.columns if c.endswith("loss") or c.endswith("loss_epoch")]
    others = [c for c in per_epoch.columns if metrics and c.endswith(tuple(metrics))]
    panels = [p for p in (curves, others) if p]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, columns in zip(axes[0], panels):
        for column in columns:
            series = per_epoch[column].dropna()
            if len(series):
                ax.plot(series.index + 1, series.values, marker="o", label=column)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
