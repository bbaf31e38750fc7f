"""Device detection and the device report that `python -m framework info` prints and every run logs."""

from __future__ import annotations

import os
import platform
import sys

import torch


def accelerator() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device() -> torch.device:
    return torch.device(accelerator())


def resolve_precision(precision: str | int | None, accel: str | None = None) -> str | int:
    """`auto` means bf16-mixed on GPUs that support it, 16-mixed on older GPUs, full precision elsewhere."""
    if precision not in (None, "auto"):
        return precision
    accel = accel or accelerator()
    if accel in ("cuda", "gpu") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_accelerator(requested: str) -> str:
    """Map `auto` to what Lightning will pick; fall back to CPU when a GPU was asked for but is absent."""
    if requested in ("gpu", "cuda") and not torch.cuda.is_available():
        return "cpu"
    if requested == "auto":
        return {"cuda": "gpu", "mps": "mps", "cpu": "cpu"}[accelerator()]
    return requested


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report(trainer_cfg: dict | None = None) -> list[str]:
    """Lines describing software versions, hardware, and what the default trainer will use."""
    import lightning

    lines = [
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__}, lightning {lightning.__version__}",
    ]
    if torch.cuda.is_available():
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        lines.append(f"CUDA {torch.version.cuda}, cuDNN {cudnn}")
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            free, total = torch.cuda.mem_get_info(i)
            lines.append(
                f"GPU {i}: {props.name}, {total / 2**30:.1f} GiB total, {free / 2**30:.1f} GiB free, "
                f"compute capability {props.major}.{props.minor}"
            )
    else:
        lines.append(f"CUDA: not available (torch built with CUDA {torch.version.cuda})")
        lines.append(
            f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores, torch uses {torch.get_num_threads()} threads"
        )
    trainer_cfg = trainer_cfg or {}
    accel = resolve_accelerator(str(trainer_cfg.get("accelerator", "auto")))
    devices = trainer_cfg.get("devices", "auto")
    if accel == "cpu" and devices in ("auto", None):
        devices = 1  # Lightning's `auto` on CPU is one process
    precision = resolve_precision(trainer_cfg.get("precision", "auto"), accel)
    strategy = trainer_cfg.get("strategy", "auto")
    lines.append(f"trainer: accelerator={accel} devices={devices} strategy={strategy} precision={precision}")
    return lines
