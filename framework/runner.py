"""The shared Lightning runner: every plugin's `train` goes through `fit` (and usually `train`).

Everything is built from config in the lightning-hydra-template way: datamodule, module, callbacks,
loggers and Trainer are `hydra.utils.instantiate`d from `cfg.data`, `cfg.model`, `cfg.callbacks`,
`cfg.logger` and `cfg.trainer`.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

import lightning.pytorch as pl
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities.model_helpers import is_overridden
from omegaconf import DictConfig

from framework import checkpoints, devices, runs
from framework.errors import UserError
from framework.plugin import TaskData, TaskModel

log = logging.getLogger(__name__)

# Lightning 2.6 still checks `isinstance(spec, LeafSpec)`, which torch 2.1x deprecates: a warning on
# every run that the user can do nothing about.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)

# A DDP rank > 0 is started by Lightning as a new `python -m framework ...`; this variable tells it
# the exact job (overrides and run directory), so it joins this run instead of composing a new one.
DDP_JOB_ENV = "FRAMEWORK_DDP_JOB"


@dataclass
class FitResult:
    trainer: pl.Trainer
    module: pl.LightningModule
    datamodule: pl.LightningDataModule
    best_checkpoint: str | None
    metrics: dict = field(default_factory=dict)


def build_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    from framework import registry
    from framework.callbacks import HistoryPlot

    callbacks = []
    for name, spec in (cfg.get("callbacks") or {}).items():
        if spec is None or "_target_" not in spec:
            continue
        callback = instantiate(spec)
        if isinstance(callback, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue
        if isinstance(callback, HistoryPlot) and not callback.metrics:
            callback.metrics = registry.get(cfg.task.name).plot_metrics
        callbacks.append(callback)
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [instantiate(spec) for spec in (cfg.get("logger") or {}).values() if spec and "_target_" in spec]


class RecordStarted(pl.Callback):
    """Records the run as the task's latest started one when training starts, not before: a run refused
    while it is set up (a bad checkpoint, bad data) must not become what `ckpt_path=last` resumes."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            runs.record_started(self.cfg)


def build_trainer(cfg: DictConfig) -> pl.Trainer:
    requested = str(cfg.trainer.accelerator)
    accelerator = devices.resolve_accelerator(requested)
    if requested in ("gpu", "cuda") and accelerator == "cpu":
        log.warning("trainer.accelerator=%s but no CUDA device is available: training on CPU", requested)
    kwargs = dict(
        accelerator=accelerator,
        precision=devices.resolve_precision(cfg.trainer.precision, accelerator),
        callbacks=build_callbacks(cfg) + [RecordStarted(cfg)],
        logger=build_loggers(cfg) or False,
        plugins=[checkpoints.AtomicCheckpointIO()],
        default_root_dir=str(runs.run_dir()),
    )
    sync_batchnorm = cfg.trainer.get("sync_batchnorm", False)
    if sync_batchnorm is None:  # conf/trainer/ddp.yaml: synchronised batch norm where torch has it, on GPUs
        kwargs["sync_batchnorm"] = accelerator in ("gpu", "cuda")
    elif sync_batchnorm and accelerator not in ("gpu", "cuda"):
        raise UserError(f"trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on {accelerator})")
    return instantiate(cfg.trainer, **kwargs, _convert_="all")


def _announce_ddp_job(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    if "ddp" in str(cfg.trainer.strategy) and os.environ.get("LOCAL_RANK", "0") == "0":
        job = {"overrides": list(HydraConfig.get().overrides.task), "run_dir": str(runs.run_dir().resolve())}
        os.environ[DDP_JOB_ENV] = json.dumps(job)


def requeued_checkpoint() -> str | None:
    """A SLURM job requeued after its time limit (submitit does this) resumes from its own last.ckpt."""
    last = runs.last_checkpoint(runs.run_dir())
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0 and last.exists():
        log.info("requeued SLURM job: resuming from %s", last)
        return str(last)
    return None


def build_datamodule(data_cfg: DictConfig, checkpoint: dict | None = None, stage: str = "fit") -> pl.LightningDataModule:
    """The configured datamodule, set up for `stage`; with a checkpoint, first adopting what that model
    fixed (its vocabulary, its input scaling): for `init_from` and for evaluating a trained model."""
    datamodule = instantiate(data_cfg, _convert_="all")
    if checkpoint is not None and isinstance(datamodule, TaskData):
        datamodule.adopt_checkpoint(checkpoint)
    datamodule.prepare_data()
    datamodule.setup(stage)
    return datamodule


def fit(cfg: DictConfig) -> FitResult:
    """Seed, build datamodule/module/trainer from config, and fit (resuming from `ckpt_path` if given)."""
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    init = checkpoints.load(cfg.init_from) if cfg.get("init_from") else None
    datamodule = build_datamodule(cfg.data, init)
    model_kwargs = datamodule.model_kwargs() if isinstance(datamodule, TaskData) else {}
    module = instantiate(cfg.model, _convert_="all", **model_kwargs)
    if init is not None:
        if isinstance(module, TaskModel):
            module.load_init_weights(init["state_dict"])
        else:
            module.load_state_dict(init["state_dict"], strict=True)
        log.info("initialised weights from %s (optimizer settings from this run's config)", cfg.init_from)

    _announce_ddp_job(cfg)
    trainer = build_trainer(cfg)
    started = time.monotonic()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path") or requeued_checkpoint())
    checkpoint_cb = trainer.checkpoint_callback
    best = checkpoint_cb.best_model_path if checkpoint_cb is not None else ""
    if not best and checkpoint_cb is not None and checkpoint_cb.last_model_path:
        best = checkpoint_cb.last_model_path  # no monitored metric: the last one is the best we have
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    metrics |= {
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "fit_seconds": round(time.monotonic() - started, 2),
    }
    if checkpoint_cb is not None and checkpoint_cb.best_model_score is not None:
        metrics["best_model_score"] = float(checkpoint_cb.best_model_score)
    return FitResult(trainer, module, datamodule, best or None, metrics)


def test(result: FitResult, cfg: DictConfig) -> dict:
    """Score the datamodule's test split with the best checkpoint, when it has one."""
    if not cfg.get("test_after_fit", True) or not is_overridden("test_dataloader", result.datamodule):
        return {}
    ckpt = result.best_checkpoint if result.best_checkpoint else None
    scores = result.trainer.test(result.module, datamodule=result.datamodule, ckpt_path=ckpt, verbose=False)
    return {k: float(v) for k, v in (scores[0] if scores else {}).items()}


def train(cfg: DictConfig) -> dict:
    """The standard train mode: fit, test, and record this run as the task's latest trained model."""
    result = fit(cfg)
    metrics = result.metrics | test(result, cfg)
    if result.trainer.is_global_zero:
        runs.record_train(cfg, result.best_checkpoint)
        log.info("best checkpoint: %s", result.best_checkpoint)
    return metrics


@contextmanager
def job_scope():
    """Undo what a DDP fit leaves behind in this process (process group, Lightning's env variables),
    so the next job of a multirun starts its own ranks instead of waiting for the old ones."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        os.environ.clear()
        os.environ.update(saved)
