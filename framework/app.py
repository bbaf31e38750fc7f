"""The Hydra task function: one run of one mode of one task."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping

import hydra
from omegaconf import DictConfig

from framework import registry, runs
from framework.config import CONF_DIR
from framework.errors import UserError, user_error_in

log = logging.getLogger("framework")


def run(cfg: DictConfig):
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from framework import devices

    plugin = registry.check_mode(cfg.task.name, cfg.mode)
    threads = torch_threads(cfg.get("torch_threads"), cfg.mode)
    if threads:
        import torch

        torch.set_num_threads(threads)
    is_zero = rank_zero_only.rank == 0
    if is_zero:
        for line in devices.report(dict(cfg.trainer)):
            log.info(line)
        log.info("task=%s mode=%s run dir: %s", cfg.task.name, cfg.mode, runs.run_dir())
        redacted = runs.redact_secrets()
        if redacted:
            log.info("kept out of the saved config (%s): %s", runs.REDACTED, ", ".join(redacted))
    from framework.runner import job_scope

    with job_scope():
        metrics = plugin.mode_function(cfg.mode)(cfg) or {}
    if is_zero:
        metrics = runs.write_metrics(metrics)
        print(json.dumps(metrics), flush=True)
    if cfg.get("optimized_metric"):
        if cfg.optimized_metric not in metrics:
            # after the run's results are saved; stops a sweep before more trials fail the same way
            raise UserError(f"optimized_metric {cfg.optimized_metric!r} is not among this run's metrics: "
                            f"{', '.join(sorted(metrics))}")
        return metrics[cfg.optimized_metric]
    return metrics


def torch_threads(setting, mode: str) -> int | None:
    """The torch CPU threads for ``mode``: ``torch_threads`` is one number for every mode or a mapping
    mode -> number (a task file's default); null, or a mode the mapping leaves out: torch's default."""
    chosen = setting.get(mode) if isinstance(setting, Mapping) else setting
    try:
        return int(chosen) if chosen else None
    except (TypeError, ValueError):
        raise UserError(f"torch_threads={setting}: give a number, or a mapping mode -> number") from None


def _run_reporting_user_errors(cfg: DictConfig):
    try:
        return run(cfg)
    except Exception as e:
        error = user_error_in(e)  # also one a library wrapped (Hydra's instantiate does)
        if error is None:
            raise
        if os.environ.get("LOCAL_RANK", "0") == "0":  # a DDP rank > 0 shares rank 0's directory
            runs.discard_if_empty()
        # Exit from inside the job: Hydra would otherwise add its own "Error executing job" line.
        print(f"error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig):
    return _run_reporting_user_errors(cfg)
