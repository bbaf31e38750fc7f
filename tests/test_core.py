"""The framework core through its real entry point, with a tiny plugin registered by entry point
from tests/plugin_fixture (a separate distribution: no core file names it)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, cli_env, last_json_line

FIXTURE = REPO / "tests" / "plugin_fixture"


@pytest.fixture
def tiny(run_cli):
    """run_cli with the tiny plugin's distribution on the path."""

    def run(*args, **kwargs):
        env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(FIXTURE), os.environ.get("PYTHONPATH")]))}
        env |= kwargs.pop("env", None) or {}
        return run_cli(*args, env=env, **kwargs)

    return run


def run_dirs(outputs: Path, task: str = "tiny", mode: str = "train") -> list[Path]:
    return sorted(p for p in (outputs / task / mode).iterdir() if p.is_dir()) if (outputs / task / mode).exists() else []


def assert_user_error(proc, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr  # one line, and the last word
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


# --- commands and user errors -------------------------------------------------------------------


def test_list_and_info(tiny):
    listing = tiny("list").stdout
    for task, modes in {"music": "train, generate, evaluate, serve", "gasleak": "train, evaluate, demo, serve",
                        "tiny": "train, predict, fail"}.items():
        assert f"  {task}:" in listing and f"modes: {modes}" in listing
    info = tiny("info").stdout
    assert f"torch {torch.__version__}" in info and "lightning" in info
    assert "trainer: accelerator=cpu" in info or "accelerator=gpu" in info
    assert ("CPU:" in info and "threads" in info) or "GPU 0:" in info
    assert "trainer: accelerator=" in tiny("info", "trainer=ddp").stdout and "strategy=ddp" in tiny("info", "trainer=ddp").stdout


def test_user_errors_are_one_line_exit_2(tiny, tmp_path):
    assert_user_error(tiny("task=musci", "train", check=False), "unknown task 'musci'", "gasleak", "music", "tiny")
    assert_user_error(tiny("task=tiny", "dance", check=False), "no mode 'dance'", "train, predict, fail")
    assert_user_error(tiny("task=tiny", "train", "trainer.no_such_key=1", check=False), "trainer.no_such_key")
    assert_user_error(tiny("task=tiny", "train", "model=nope", check=False), "model/nope")
    assert_user_error(tiny("task=tiny", "predict", "ckpt_path=/no/such.ckpt", check=False), "checkpoint not found")
    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("hello")
    assert_user_error(tiny("task=tiny", "predict", f"ckpt_path={not_ckpt}", check=False), "not a checkpoint")
    assert_user_error(tiny("task=tiny", "train", f"init_from={not_ckpt}", check=False), "not a checkpoint")
    assert_user_error(tiny("task=tiny", "train", "data.path=/no/such/dir", check=False), "data path does not exist")
    assert_user_error(tiny("task=tiny", "predict", check=False), "no trained tiny model")
    assert_user_error(tiny("task=tiny", "train", "mode=predict", check=False), "mode given twice")
    assert_user_error(tiny("task=tiny", "fail", check=False), "data path does not exist: /nowhere")
    assert_user_error(tiny("task=tiny", "train", "trainer.max_epochs=1", "optimized_metric=val/nope", check=False),
                      "optimized_metric 'val/nope' is not among this run's metrics", "best_model_score")


def test_hydra_flags_pass_through(tiny):
    job = yaml.safe_load(tiny("task=tiny", "train", "--cfg", "job", "trainer.max_epochs=7").stdout)
    assert job["mode"] == "train" and job["trainer"]["max_epochs"] == 7 and job["task"]["name"] == "tiny"
    assert "Powered by Hydra" in tiny("task=tiny", "--help").stdout
    assert "hydra_main" in tiny("-sc", "install=bash").stdout or "complete" in tiny("-sc", "install=bash").stdout


# --- training through the shared runner ---------------------------------------------------------


def test_tiny_plugin_trains_and_other_mode_finds_its_checkpoint(tiny, outputs):
    proc = tiny("task=tiny", "train", "trainer.max_epochs=2")
    (run,) = run_dirs(outputs)
    metrics = json.loads((run / "metrics.json").read_text())
    assert last_json_line(proc.stdout) == metrics
    assert metrics["epochs"] == 2 and metrics["val/loss"] > 0 and "test/loss" in metrics and "mem/rss_gib" in metrics
    assert (run / ".hydra" / "config.yaml").exists() and (run / "train.log").read_text().strip()
    assert (run / "history.png").stat().st_size > 1000 and (run / "csv" / "metrics.csv").exists()
    assert (run / "checkpoints" / "last.ckpt").exists()
    assert "remaining ~" in proc.stdout  # the whole-run time estimate (plain lines: not a TTY)
    record = json.loads((outputs / "tiny" / "runs.json").read_text())["latest_train"]
    assert record["run_dir"] == str(run.resolve()) and Path(record["checkpoint"]).name.startswith("best-")

    # every checkpoint the runner writes loads without unpickling code
    for ckpt in (run / "checkpoints").glob("*.ckpt"):
        state = torch.load(ckpt, weights_only=True)
        assert state["hyper_parameters"]["features"] == 4 and "state_dict" in state

    predicted = last_json_line(tiny("task=tiny", "predict").stdout)  # default: latest train run's best checkpoint
    assert predicted["epoch"] == torch.load(record["checkpoint"], weights_only=True)["epoch"]


def files_holding(root: Path, text: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def test_secret_overrides_stay_out_of_saved_files(tiny, outputs):
    secret, other = "s3cret-token-0123456789", "an0ther-token-9876543210"
    proc = tiny("task=tiny", "train", "trainer.max_epochs=1", f"+serve.token={secret}")
    assert "kept out of the saved config (<redacted>): serve.token" in proc.stderr + proc.stdout
    (run,) = run_dirs(outputs)
    assert "+serve.token=<redacted>" in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["serve"]["token"] == "<redacted>"
    # the job itself received the real value
    predicted = last_json_line(tiny("task=tiny", "predict", f"+serve.token={secret}").stdout)
    assert predicted["token_sha256"] == hashlib.sha256(secret.encode()).hexdigest()

    # resuming needs the secret again (one line), then continues the run
    assert_user_error(tiny("task=tiny", "train", "ckpt_path=last", "trainer.max_epochs=2", check=False),
                      "secret overrides", "serve.token=...")
    tiny("task=tiny", "train", "ckpt_path=last", "trainer.max_epochs=2", f"+serve.token={secret}")
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2

    # a sweep over secrets: neither the sweep's multirun.yaml nor any job keeps one
    sweep_proc = tiny("task=tiny", "train", "-m", "trainer.max_epochs=1", f"+serve.token={secret},{other}",
                      "+db.password=hunter2-hunter2")
    assert "#0 : " in sweep_proc.stdout + sweep_proc.stderr  # Hydra printed the job's overrides ...
    (sweep,) = (outputs / "tiny" / "multirun" / "train").iterdir()
    swept = yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
    assert {"+serve.token=<redacted>", "+db.password=<redacted>"} <= set(swept)
    for text in (secret, other, "hunter2"):
        assert files_holding(outputs, text) == [], text
        assert text not in sweep_proc.stdout + sweep_proc.stderr, text  # ... without the secrets
    shown = tiny("task=tiny", "train", "--cfg", "job", f"+serve.token={secret}", env={"GASLEAK_API_TOKEN": other})
    assert yaml.safe_load(shown.stdout)["serve"]["token"] == "<redacted>" and secret not in shown.stdout + shown.stderr
    resolved = tiny("task=tiny", "train", "--cfg", "job", "--resolve", "+serve.token=${oc.env:GASLEAK_API_TOKEN}",
                    env={"GASLEAK_API_TOKEN": other})
    assert other not in resolved.stdout + resolved.stderr


def test_a_run_refused_before_training_is_not_the_one_to_resume(tiny, outputs, tmp_path):
    tiny("task=tiny", "train", "trainer.max_epochs=1")
    (first,) = run_dirs(outputs)
    record = json.loads((outputs / "tiny" / "runs.json").read_text())
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"epoch": 0, "payload": _RunsCode()}, hostile)
    assert_user_error(tiny("task=tiny", "train", f"ckpt_path={hostile}", check=False), "refused checkpoint")
    time.sleep(1.1)  # run directories are named by the second
    assert_user_error(tiny("task=tiny", "train", "data.path=/no/such/dir", check=False), "data path does not exist")
    assert run_dirs(outputs) == [first]  # neither left a directory behind ...
    assert json.loads((outputs / "tiny" / "runs.json").read_text()) == record  # ... nor became the latest run
    out = tiny("task=tiny", "train", "ckpt_path=last", "trainer.max_epochs=2")
    assert "resuming" in out.stderr and last_json_line(out.stdout)["epochs"] == 2 and run_dirs(outputs) == [first]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this-ran > /dev/null",))


def test_torch_threads_applies_to_any_mode(tiny, outputs):
    tiny("task=tiny", "train", "trainer.max_epochs=1")
    for threads in (1, 2):
        proc = tiny("task=tiny", "predict", f"torch_threads={threads}")
        assert f"torch uses {threads} threads" in proc.stdout + proc.stderr


def test_torch_threads_per_mode(tiny, outputs):
    def threads(proc) -> int:
        return int(re.search(r"torch uses (\d+) threads", proc.stdout + proc.stderr).group(1))

    tiny("task=tiny", "train", "trainer.max_epochs=1")
    default = threads(tiny("task=tiny", "predict"))
    mine = 2 if default == 1 else 1
    assert threads(tiny("task=tiny", "predict", f"torch_threads={{train:{default},predict:{mine}}}")) == mine
    # a mode the mapping leaves out, or sets to null, keeps torch's default
    assert threads(tiny("task=tiny", "predict", f"torch_threads={{train:{mine}}}")) == default
    assert threads(tiny("task=tiny", "predict", f"torch_threads={{train:{mine},predict:null}}")) == default


def test_torch_threads_setting_reads_a_number_or_a_mapping():
    from omegaconf import OmegaConf

    from framework.app import torch_threads
    from framework.errors import UserError

    per_mode = OmegaConf.create({"train": None, "generate": 1})
    assert torch_threads(per_mode, "generate") == 1
    assert torch_threads(per_mode, "train") is None and torch_threads(per_mode, "serve") is None
    assert torch_threads(3, "serve") == 3 and torch_threads(None, "serve") is None
    with pytest.raises(UserError, match="torch_threads=abc"):
        torch_threads("abc", "serve")


def test_bare_word_means_mode(tiny, outputs):
    a = yaml.safe_load(tiny("task=tiny", "predict", "--cfg", "job").stdout)
    b = yaml.safe_load(tiny("task=tiny", "mode=predict", "--cfg", "job").stdout)
    assert a == b and a["mode"] == "predict"


def test_init_from_starts_new_run_with_its_own_optimizer(tiny, outputs):
    tiny("task=tiny", "train", "trainer.max_epochs=3")
    first = run_dirs(outputs)[0]
    best = json.loads((outputs / "tiny" / "runs.json").read_text())["latest_train"]["checkpoint"]
    time.sleep(1.1)  # run directories are named by the second
    tiny("task=tiny", "train", f"init_from={best}", "trainer.max_epochs=1", "model.lr=0.001")
    second = [d for d in run_dirs(outputs) if d != first][0]
    before = json.loads((first / "metrics.json").read_text())
    after = json.loads((second / "metrics.json").read_text())
    # started from trained weights, so one slow epoch is already near the first run's loss, not at scratch level
    assert after["epochs"] == 1 and after["val/loss"] < before["val/loss"] * 1.5
    assert abs(after["lr-Adam"] - 0.001) < 1e-9


def test_resume_after_sigkill_mid_epoch(tiny, outputs):
    env = cli_env(outputs, PYTHONPATH=str(FIXTURE))
    # 12 batches per epoch at 0.15 s each: about 2 s an epoch
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", "task=tiny", "train", "trainer.max_epochs=4", "model.step_sleep=0.15"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 120
    last = None
    while time.time() < deadline:
        found = list((outputs / "tiny" / "train").glob("*/checkpoints/last.ckpt"))
        if found:
            last = found[0]
            break
        time.sleep(0.1)
    assert last is not None, "no last.ckpt appeared"
    time.sleep(0.7)  # well inside the second epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(last, weights_only=True)["epoch"] < 3  # killed before the end
    assert not list(last.parent.glob(".*tmp*"))  # no torn temporary left to resume from

    refused = tiny("task=tiny", "train", "ckpt_path=last", "model.lr=0.5", check=False)
    assert_user_error(refused, "would change the run", "model.lr")

    out = tiny("task=tiny", "train", "ckpt_path=last")
    (run,) = run_dirs(outputs)  # resumed in place: still one run directory
    metrics = last_json_line(out.stdout)
    assert metrics["epochs"] == 4 and json.loads((run / "metrics.json").read_text()) == metrics
    overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert "model.step_sleep=0.15" in overrides and "trainer.max_epochs=4" in overrides
    history = (run / "csv" / "metrics.csv").read_text().splitlines()
    epochs = {line.split(",")[0] for line in history[1:]}
    assert {"0", "1", "2", "3"} <= epochs  # history from before the kill kept
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3


def test_atomic_save_keeps_previous_checkpoint_on_failure(tmp_path):
    from framework.checkpoints import atomic_save

    target = tmp_path / "last.ckpt"
    atomic_save({"epoch": 1}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_save({"epoch": 2, "bad": Unpicklable()}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


# --- sweeps and scale -----------------------------------------------------------------------------


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_two_point_multirun(tiny, outputs, launcher):
    tiny("task=tiny", "train", "-m", "model.lr=0.01,0.1", "trainer.max_epochs=1", f"hydra/launcher={launcher}")
    (sweep,) = (outputs / "tiny" / "multirun" / "train").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [j.name for j in jobs] == ["0", "1"]
    lrs = sorted(json.loads((j / "metrics.json").read_text())["lr-Adam"] for j in jobs)
    assert lrs == pytest.approx([0.01, 0.1])


def test_optuna_search_reports_best_params(tiny, outputs):
    tiny("task=tiny", "train", "hparams_search=tiny_optuna", "trainer.max_epochs=1")
    (sweep,) = (outputs / "tiny" / "multirun" / "train").iterdir()
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert 0.001 <= result["best_params"]["model.lr"] <= 0.2
    scores = [json.loads((j / "metrics.json").read_text())["best_model_score"] for j in sweep.iterdir() if j.name.isdigit()]
    assert len(scores) == 3 and result["best_value"] == pytest.approx(min(scores))


def test_submitit_local_launcher(tiny, outputs):
    tiny("task=tiny", "train", "-m", "trainer.max_epochs=1", "hydra/launcher=submitit_local")
    (sweep,) = (outputs / "tiny" / "multirun" / "train").iterdir()
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epochs"] == 1


def test_ddp_two_cpu_processes_one_output_dir(tiny, outputs):
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=2"]
    metrics = last_json_line(tiny("task=tiny", "train", *ddp).stdout)
    (run,) = run_dirs(outputs)
    assert metrics["epochs"] == 2 and metrics["global_step"] == 2 * 6  # 192 samples / 16 per batch / 2 ranks
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert [p.name for p in (run / "checkpoints").glob("last*.ckpt")] == ["last.ckpt"]

    tiny("task=tiny", "train", "-m", "model.lr=0.01,0.1", *ddp)
    sweeps = list((outputs / "tiny" / "multirun" / "train").iterdir())
    assert len(sweeps) == 1, sweeps  # rank 1 joined each job instead of starting its own multirun
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    assert all((sweeps[0] / j / "metrics.json").exists() for j in jobs)


DDP_CPU = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
           "trainer.enable_progress_bar=false")


@pytest.mark.slow
def test_ddp_on_cpu_trains_the_music_model_with_its_batch_norm(run_cli, outputs, tmp_path):
    tune = "X:{n}\nT:reel {n}\nM:4/4\nL:1/8\nK:D\n|:D2FA dAFA|B2GB dBGB|A2FA dAFA|BAGF E2D2:|\n\n"
    (tmp_path / "abc" / "irish").mkdir(parents=True)
    (tmp_path / "abc" / "irish" / "tunes.abc").write_text("".join(tune.format(n=n) for n in range(24)))
    proc = run_cli("task=music", "train", "model=tiny", "data=abc_dir", f"data.path={tmp_path / 'abc'}", "data.seq_len=32",
                   "data.batch_size=4", "data.batches_per_epoch=4", *DDP_CPU, timeout=300)
    metrics = last_json_line(proc.stdout)
    (run,) = run_dirs(outputs, "music")
    assert metrics["epochs"] == 1 and "val/loss" in metrics and (run / "train_rank1.log").exists()
    best = json.loads((outputs / "music" / "runs.json").read_text())["latest_train"]["checkpoint"]
    assert torch.load(best, weights_only=True)["hyper_parameters"]["norm"] == "batch"  # the default model's norm


@pytest.mark.slow
def test_ddp_on_cpu_trains_the_gas_detector_and_fits_the_svms_once(run_cli, outputs):
    from test_gas_train_eval import TINY

    proc = run_cli("task=gasleak", "train", *TINY, *DDP_CPU, timeout=300)
    metrics = last_json_line(proc.stdout)
    (run,) = run_dirs(outputs, "gasleak")
    assert metrics["autoencoder/epochs"] == 1 and (run / "train_rank1.log").exists()
    validated = [line.split(":")[0] for line in proc.stdout.splitlines() if ": validation accuracy" in line]
    assert validated and len(validated) == len(set(validated))  # stage 2 on rank 0 only: each SVM fitted once
    assert proc.stdout.count("saved to") == 1  # one bundle, written by rank 0
    assert json.loads((run / "detector" / "manifest.json").read_text())["primary"] == "lstm_svm"


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["music", "gasleak"])
@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp"])
def test_every_task_composes_with_every_trainer(task, trainer):
    from hydra.utils import get_class

    from framework.config import compose

    cfg = compose([f"task={task}", f"trainer={trainer}"])
    assert cfg.task.name == task and cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert get_class(cfg.data._target_) and get_class(cfg.model._target_)
    assert cfg.callbacks.model_checkpoint.monitor == cfg.task.monitor
    if trainer == "ddp":
        assert cfg.trainer.strategy == "ddp"
    if trainer == "cpu":
        assert cfg.trainer.accelerator == "cpu"
