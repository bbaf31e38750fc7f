"""Checkpoint files: safe loading (weights_only) and atomic saving, so a kill never leaves a torn file."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from framework.errors import UserError


def check_path(path: str | os.PathLike) -> Path:
    """One-line errors for a path that is missing or is not a torch checkpoint."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"checkpoint not found: {p}")
    if p.is_dir() or not zipfile.is_zipfile(p):
        raise UserError(f"not a checkpoint file: {p}")
    return p


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint without running any pickled code (weights_only=True).

    ``mmap=True`` maps the tensors instead of reading them: a cheap check that a file would load."""
    p = check_path(path)
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's own message advises turning the protection off; to the holder of a hostile file, never.
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f"a reference to {found.group(1)}" if found else "Python objects other than tensors and plain values"
        raise UserError(f"refused checkpoint {p}: it holds {what}, which could run code when loaded; "
                        "it was not loaded") from None
    except Exception as e:  # truncated or foreign file
        raise UserError(f"cannot load checkpoint {p}: damaged or not a torch checkpoint ({str(e).splitlines()[0]})") from None


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same directory, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, but a checkpoint is either complete or absent."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        atomic_save(checkpoint, path)
