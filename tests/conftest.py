"""Shared fixtures: run the real entry point in a subprocess with isolated outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def cli_env(outputs: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["FRAMEWORK_OUTPUTS"] = str(outputs)
    env.setdefault("FRAMEWORK_CACHE", str(outputs / ".cache"))
    env["PYTHONUNBUFFERED"] = "1"
    # keep subprocesses from oversubscribing CI's two cores
    env.setdefault("OMP_NUM_THREADS", "2")
    env.update(extra)
    return env


def last_json_line(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output"
    return json.loads(lines[-1])


@pytest.fixture
def outputs(tmp_path: Path) -> Path:
    path = tmp_path / "outputs"
    path.mkdir()
    return path


@pytest.fixture
def run_cli(outputs: Path):
    """run_cli("task=music", "train", ...) -> CompletedProcess; outputs go under the test's tmp dir."""

    def run(*args: str, timeout: float = 600, check: bool = True, env: dict | None = None, cwd: Path | None = None):
        proc = subprocess.run(
            [sys.executable, "-m", "framework", *args],
            cwd=cwd or REPO,
            env=cli_env(outputs, **(env or {})),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
            )
        return proc

    return run
