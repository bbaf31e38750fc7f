"""Run directories, metrics.json, and the small per-task record of the latest train runs.

A run directory's layout is known here and nowhere else: Hydra's saved config in ``.hydra/``
(``config.yaml``, ``overrides.yaml``), Lightning's checkpoints in ``checkpoints/``, ``metrics.json``,
and whatever a plugin's mode writes next to them (the gas detector's ``detector/`` bundle).

The record (``<outputs>/<task>/runs.json``) is what makes "the latest trained model" exact rather
than a guess by modification time: a train run writes ``latest_started`` when it begins and
``latest_train`` only when it has finished successfully.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from framework import checkpoints
from framework.errors import UserError

RECORD = "runs.json"
# A command-line override whose last key part ends like this is a secret (serve.token=...). Hydra
# saves every override in the run's .hydra/ files; the job rewrites those entries to REDACTED.
SECRET_KEY = re.compile(r"(token|password|passwd|secret|api_?key)$", re.IGNORECASE)
REDACTED = "<redacted>"
SAVED = ".hydra"  # Hydra's output_subdir (its default): the job's config as composed, and its overrides
CHECKPOINTS = "checkpoints"  # ModelCheckpoint's dirpath in conf/callbacks/default.yaml


def run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def last_checkpoint(directory: str | os.PathLike) -> Path:
    """Where a train run keeps its latest checkpoint (which may not exist yet)."""
    return Path(directory) / CHECKPOINTS / "last.ckpt"


def run_dir_of(path: str | os.PathLike, holding: str = SAVED) -> Path | None:
    """The run directory ``path`` is or lies in: ``path`` itself, its folder or the folder above
    (a checkpoint in ``<run>/checkpoints/``, a bundle ``<run>/detector/`` or a file in one), whichever
    first holds ``holding``: Hydra's saved config by default, or a plugin's artifact folder (the gas
    plugin's ``detector``). None when none does (a checkpoint copied out of its run)."""
    path = Path(path).resolve()
    return next((p for p in [path, *path.parents][:3] if (p / holding).exists()), None)


def saved_config(directory: str | os.PathLike):
    """The config a run composed (``.hydra/config.yaml``), or None when it saved none."""
    from omegaconf import OmegaConf

    path = Path(directory) / SAVED / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def saved_overrides(directory: str | os.PathLike) -> list[str] | None:
    """The command-line overrides a run was started with (``.hydra/overrides.yaml``), or None."""
    from omegaconf import OmegaConf

    path = Path(directory) / SAVED / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else None


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


def discard_if_empty() -> bool:
    """Remove this job's run directory when it holds nothing but what Hydra wrote at the start (.hydra/
    and the log): a run refused before it produced anything leaves no directory behind."""
    from hydra.core.hydra_config import HydraConfig

    directory = run_dir()
    saved = HydraConfig.get().output_subdir
    for path in directory.rglob("*"):
        inside_saved = saved is not None and path.relative_to(directory).parts[0] == saved
        if path.is_file() and not inside_saved and path.suffix != ".log":
            return False
    shutil.rmtree(directory, ignore_errors=True)
    try:
        directory.parent.rmdir()  # <task>/<mode>/ when this was its only run
    except OSError:
        pass
    return True


def record_train(cfg, checkpoint: str | os.PathLike | None, **artifacts: Any) -> None:
    """Mark the current run as the task's latest successful train run."""
    entry = {"run_dir": str(run_dir().resolve()), "time": time.time()}
    entry["checkpoint"] = str(Path(checkpoint).resolve()) if checkpoint else None
    entry |= {k: str(v) for k, v in artifacts.items()}
    _update_record(cfg.paths.outputs, cfg.task.name, latest_train=entry)


def override_key(override: str) -> str:
    """`+a.b=1` -> `a.b`."""
    return override.split("=", 1)[0].lstrip("+~")


def is_secret(override: str) -> bool:
    _, sep, value = override.partition("=")
    return bool(sep) and value != REDACTED and bool(SECRET_KEY.search(override_key(override).rsplit(".", 1)[-1]))


def secret_values(overrides: list[str], environ: dict | None = None) -> list[str]:
    """The secrets a command line gives (sweeps too: `serve.token=a,b`) or the environment holds
    (GASLEAK_API_TOKEN, *_PASSWORD), longest first; very short ones would redact ordinary text."""
    found = set()
    for override in overrides:
        if is_secret(override):
            value = override.split("=", 1)[1]
            found |= {value, *value.split(",")}
    env = os.environ if environ is None else environ
    found |= {value for name, value in env.items() if SECRET_KEY.search(name)}
    return sorted((v for v in found if len(v) >= 6), key=len, reverse=True)


class RedactingStream:
    """A text stream that writes REDACTED in place of each secret: Hydra prints overrides (a multirun's
    `#0 : ...` lines) and configs (`--cfg job`) itself, with no hook to redact them."""

    def __init__(self, stream, secrets: list[str]):
        self._stream, self._secrets = stream, secrets

    def write(self, text: str) -> int:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def redact_secrets() -> list[str]:
    """Keep secrets given as overrides out of the files Hydra saved for this job (.hydra/ and, in a
    multirun, the sweep's multirun.yaml). The running job keeps the real values. Returns their keys."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    secrets = [o for o in hc.overrides.task if is_secret(o)]
    if not secrets:
        return []
    keys = [override_key(o) for o in secrets]

    def redact_list(items):
        return [f"{o.split('=', 1)[0]}={REDACTED}" if is_secret(o) else o for o in items]

    def rewrite(path: Path, change) -> None:
        if path.exists():
            conf = OmegaConf.load(path)
            conf = change(conf) or conf
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            OmegaConf.save(conf, tmp)
            os.replace(tmp, path)

    def hydra_file(conf) -> None:
        conf.hydra.overrides.task = redact_list(conf.hydra.overrides.task)
        job = conf.hydra.get("job")
        if job and isinstance(job.get("override_dirname"), str):  # rebuilt as Hydra builds it
            dirname = job.config.override_dirname
            lines = sorted(o for o in conf.hydra.overrides.task if override_key(o) not in dirname.exclude_keys)
            job.override_dirname = dirname.item_sep.join(lines).replace("=", dirname.kv_sep)

    def job_config(conf) -> None:
        for key in keys:
            if OmegaConf.select(conf, key, default=None) is not None:
                OmegaConf.update(conf, key, REDACTED, merge=False)

    if hc.output_subdir is not None:
        saved = Path(hc.runtime.output_dir) / hc.output_subdir
        rewrite(saved / "overrides.yaml", lambda conf: OmegaConf.create(redact_list(list(conf))))
        rewrite(saved / "hydra.yaml", hydra_file)
        rewrite(saved / "config.yaml", job_config)
    if hc.mode == RunMode.MULTIRUN:
        rewrite(Path(hc.sweep.dir) / "multirun.yaml", lambda conf: hydra_file(conf) or job_config(conf))
    return keys


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
