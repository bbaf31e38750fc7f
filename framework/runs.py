"""Run directories, metrics.json, and the small per-task record of the latest train runs.

The record (``<outputs>/<task>/runs.json``) is what makes "the latest trained model" exact rather
than a guess by modification time: a train run writes ``latest_started`` when it begins and
``latest_train`` only when it has finished successfully.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from framework import checkpoints
from framework.errors import UserError

RECORD = "runs.json"


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _record_path(outputs: str | os.PathLike, task: str) -> Path:
    return Path(outputs) / task / RECORD


def _read_record(outputs, task) -> dict:
    path = _record_path(outputs, task)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _update_record(outputs, task, **entries) -> None:
    path = _record_path(outputs, task)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = _read_record(outputs, task) | entries
    tmp = path.with_name(f".{RECORD}.{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def record_started(cfg) -> None:
    _update_record(cfg.paths.outputs, cfg.task.name, latest_started={"run_dir": str(run_dir().resolve()), "time": time.time()})


def record_train(cfg, checkpoint: str | os.PathLike | None, **artifacts: Any) -> None:
    """Mark the current run as the task's latest successful train run."""
    entry = {"run_dir": str(run_dir().resolve()), "time": time.time()}
    entry["checkpoint"] = str(Path(checkpoint).resolve()) if checkpoint else None
    entry |= {k: str(v) for k, v in artifacts.items()}
    _update_record(cfg.paths.outputs, cfg.task.name, latest_train=entry)


def latest_train(task: str, outputs: str | os.PathLike | None = None) -> dict | None:
    return _read_record(outputs or default_outputs(), task).get("latest_train")


def latest_started(task: str, outputs: str | os.PathLike | None = None) -> dict | None:
    return _read_record(outputs or default_outputs(), task).get("latest_started")


def default_outputs() -> str:
    return os.environ.get("FRAMEWORK_OUTPUTS", "outputs")


def resolve_checkpoint(cfg) -> Path:
    """The model a non-train mode should use: `ckpt_path=` if given, else the latest successful train run's best."""
    if cfg.get("ckpt_path"):
        return checkpoints.check_path(cfg.ckpt_path)
    entry = latest_train(cfg.task.name, cfg.paths.outputs)
    if not entry or not entry.get("checkpoint"):
        raise UserError(
            f"no trained {cfg.task.name} model under {cfg.paths.outputs}/{cfg.task.name}; "
            f"run `python -m framework task={cfg.task.name} train` first or pass ckpt_path=<file>"
        )
    return checkpoints.check_path(entry["checkpoint"])


def _plain(value: Any) -> Any:
    """Make metrics JSON-safe: tensors and numpy scalars to floats, NaN/inf to null."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_metrics(metrics: dict, directory: Path | None = None) -> dict:
    metrics = _plain(dict(metrics))
    (directory or run_dir()).joinpath("metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
