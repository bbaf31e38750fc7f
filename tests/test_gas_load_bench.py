"""A short, bounded run of the open-loop load benchmark: it starts the service, loads it, and checks
that what SQLite holds equals what was acknowledged (the benchmark's own exit status)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_load_benchmark_runs_and_loses_nothing(tmp_path):
    env = dict(os.environ, FRAMEWORK_OUTPUTS=str(tmp_path / "outputs"), PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "benchmarks/bench_gas_load.py", "--detector", "threshold", "--rates", "40",
                          "--seconds", "1.5", "--sensors", "4", "--warmup", "62", "--batch", "10", "--batch-rate", "10",
                          "--connections", "4", "--no-mqtt"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "HTTP open loop 40 req/s x 1 reading(s)" in out.stdout
    assert "HTTP open loop 10 req/s x 10 reading(s)" in out.stdout
    assert "-> OK" in out.stdout
    scored = [line for line in out.stdout.splitlines() if line.startswith("      40 req/s")]
    assert scored and " 0 scored" not in scored[0]  # warmed up: the timed readings were scored
