"""Command-line mistakes with the real plugins: each is one line on stderr, exit code 2, no traceback,
and leaves no run behind (no run directory, nothing recorded as the latest run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from test_core import assert_user_error


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this-ran > /dev/null",))


@pytest.fixture(scope="module")
def hostile_ckpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "model.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "payload": _RunsCode()}, path)
    return path


MISTAKES = {  # arguments, fragments of the one line
    "generate: not a number": (["task=music", "generate", "generate.num_tunes=abc"],
                                 ["generate.num_tunes=abc", "takes a number", "default 8"]),
    "music train: not a number": (["task=music", "train", "trainer.max_epochs=abc"], ["trainer.max_epochs takes a number"]),
    "gasleak train: not a number": (["task=gasleak", "train", "trainer.max_epochs=abc"], ["trainer.max_epochs takes a number"]),
    "not a number in a sweep": (["task=gasleak", "train", "-m", "trainer.max_epochs=1,abc"], ["trainer.max_epochs=abc"]),
    "a boolean for a number": (["task=music", "evaluate", "evaluate.batch_size=true"], ["evaluate.batch_size=true: evaluate.batch_size takes a number"]),
    "not a boolean": (["task=gasleak", "serve", "mqtt.enabled=maybe"], ["mqtt.enabled takes true or false"]),
    "port out of range": (["task=gasleak", "serve", "serve.port=99999"], ["serve.port=99999", "0 to 65535"]),
    "unknown experiment": (["task=music", "train", "experiment=nonexistent"],
                           ["experiment/nonexistent", "music_smoke"]),
    "unknown hparams_search": (["task=gasleak", "train", "hparams_search=nope"], ["hparams_search/nope", "gasleak_optuna"]),
    "a plugin's message, unwrapped": (["task=gasleak", "train", "data=csv"], ["error: data=csv needs data.path=<file.csv>"]),
    "unknown alert rule to calibrate": (["task=gasleak", "train", "alerts.calibration.rules=[cusum]"],
                                        ["alerts.calibration.rules must be a list of consecutive, evidence"]),
    "hostile resume checkpoint": (["task=music", "train", "ckpt_path={hostile}"], ["refused checkpoint", "posix.system"]),
    "hostile init_from": (["task=music", "train", "init_from={hostile}"], ["refused checkpoint", "could run code"]),
    "hostile checkpoint to generate from": (["task=music", "generate", "ckpt_path={hostile}"], ["refused checkpoint"]),
    "nothing to resume": (["task=music", "train", "ckpt_path=last"], ["ckpt_path=last: no music train run"]),
}


@pytest.mark.parametrize("name", list(MISTAKES))
def test_a_mistake_is_one_line_and_leaves_no_run(run_cli, outputs, hostile_ckpt, name):
    args, fragments = MISTAKES[name]
    proc = run_cli(*[a.format(hostile=hostile_ckpt) for a in args], check=False, timeout=300)
    line = assert_user_error(proc, *fragments)
    if name == "a plugin's message, unwrapped":
        assert line == fragments[0]  # not "Error in call to target ...: UserError(...) full_key: data"
    assert "weights_only" not in line  # never the advice to turn the protection off
    task = args[0].split("=")[1]
    assert not (outputs / task / "runs.json").exists() or "latest" not in json.loads((outputs / task / "runs.json").read_text())
    left = [p for p in (outputs / task).rglob("*") if p.is_file() and p.name != "runs.json"] if (outputs / task).exists() else []
    assert not left, left


def test_a_reader_that_stops_early_gets_no_traceback():
    import subprocess
    import sys

    # `python -m framework list | true`: the reader is gone before list writes
    proc = subprocess.run(["bash", "-c", f"'{sys.executable}' -m framework list | true"],
                          capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
