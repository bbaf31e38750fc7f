"""Each installed plugin follows the contract framework/plugin.py declares, and the config is found
where the installed distribution keeps it."""

from __future__ import annotations

import inspect
import sys
from importlib.resources import files

import pytest

from conftest import REPO
from framework import TaskData, TaskModel, registry
from framework.config import conf_dir
from framework.plugin import Plugin

sys.path.insert(0, str(REPO / "tests" / "plugin_fixture"))


@pytest.mark.parametrize("name", ["music", "gasleak"])
def test_plugin_declares_modes_config_and_artifact(name):
    plugin = registry.get(name)
    assert isinstance(plugin, Plugin) and plugin.name == name
    assert "train" in plugin.modes
    for mode in plugin.modes:
        function = plugin.mode_function(mode)
        assert callable(function) and list(inspect.signature(function).parameters) == ["cfg"], mode
    assert plugin.model_artifact in ("checkpoint", "directory")
    groups = {p.name for p in files(plugin.conf_package).iterdir() if p.is_dir()}
    assert {"data", "model"} <= groups


def test_datamodules_and_models_take_the_declared_hooks():
    from plugins.gasleak_lstm_svm.data import CsvDataModule, SimulatorDataModule
    from plugins.music_lstm.data import MusicDataModule
    from plugins.music_lstm.model import MusicLSTM
    from tiny_task.model import TinyData, TinyRegressor

    for cls in (MusicDataModule, SimulatorDataModule, CsvDataModule, TinyData):
        assert issubclass(cls, TaskData), cls
    for cls in (MusicLSTM, TinyRegressor):
        assert issubclass(cls, TaskModel), cls


def test_task_model_default_loads_weights_strictly():
    import torch
    from tiny_task.model import TinyRegressor

    old, new = TinyRegressor(features=3), TinyRegressor(features=3)
    new.load_init_weights(old.state_dict())
    assert torch.equal(new.linear.weight, old.linear.weight)
    with pytest.raises(RuntimeError):
        TinyRegressor(features=5).load_init_weights(old.state_dict())


def test_conf_dir_is_the_checkout_conf_here():
    # an installed wheel has framework/conf; this checkout keeps it at the top (scripts/wheel-smoke.sh
    # checks the installed case)
    assert conf_dir() == REPO / "conf" and (conf_dir() / "config.yaml").is_file()


def test_history_plot_shows_the_plugin_metrics(tmp_path):
    import pandas as pd

    from framework.callbacks import plot_history

    csv = tmp_path / "metrics.csv"
    pd.DataFrame({"epoch": [0, 1], "train/loss": [2.0, 1.0], "val/bpc": [3.0, 2.5]}).to_csv(csv, index=False)
    plot_history(csv, tmp_path / "only_losses.png")
    plot_history(csv, tmp_path / "with_bpc.png", ("bpc",))
    from PIL import Image

    assert Image.open(tmp_path / "with_bpc.png").width > Image.open(tmp_path / "only_losses.png").width


def test_a_mode_refuses_to_start_without_what_its_plugin_requires(monkeypatch, capsys):
    import torch

    from framework import cli

    needy = Plugin(name="needy", modes={"train": "framework.runner:train"}, requires=(
        "tiny-task>=0.1",  # the fixture's own distribution: met
        "no-such-distribution-for-tests>=1.0",
        "torch>=999",
        "another-missing-one; sys_platform == 'no-such-platform'",  # not for this platform: not checked
    ))
    monkeypatch.setattr(registry, "plugins", lambda: {"needy": needy})
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    assert registry.missing_requirements(needy) == [("no-such-distribution-for-tests>=1.0", None), ("torch>=999", torch.__version__)]
    with pytest.raises(SystemExit) as exit:
        cli.main(["task=needy", "train"])
    assert exit.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"error: task needy needs no-such-distribution-for-tests>=1.0, torch>=999 (found {torch.__version__}) "
        "(pip install 'no-such-distribution-for-tests>=1.0' 'torch>=999')"
    ]
    cli.main(["list"])  # listing needs nothing, and shows what each task needs
    assert f"    needs: {', '.join(needy.requires)}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["music", "gasleak"])
def test_plugin_requirements_are_installed_with_the_distribution(name):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    plugin = registry.get(name)
    assert plugin.requires and set(plugin.requires) <= set(dependencies)
    assert registry.missing_requirements(plugin) == []
