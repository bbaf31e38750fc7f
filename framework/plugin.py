"""The plugin contract: what a plugin declares, and the hooks the runner and the modes call.

A plugin package exposes one ``Plugin`` object and registers it under the
``framework.plugins`` entry-point group::

    [project.entry-points."framework.plugins"]
    music = "plugins.music_lstm:plugin"

Importing the package must stay cheap (no torch import at module level): the
CLI imports every plugin to list tasks and check the mode before Hydra starts.
This module imports nothing heavy either, so the hook classes below are plain
mixins to combine with Lightning's classes.

Modes map a name to ``"module:function"``. Each function takes the composed
config (``DictConfig``) and returns a flat dict of final metrics; the core
writes it to ``metrics.json`` in the run directory and prints it as the last
line. ``train`` normally points at ``framework.runner:train`` (the shared
Lightning runner); a plugin whose training has more stages wraps
``framework.runner.fit`` in its own function.

``requires`` lists the distributions the plugin needs beyond the framework's own, as pip
requirement strings (``"music21>=9.1"``). ``python -m framework list`` shows them, and a mode of
the task refuses to start, with one line naming what to install, while one is missing or too old.
Add them to the distribution's dependencies too (pyproject.toml groups them by plugin).

``conf_package`` is a Python package holding all of the plugin's config: its
``task/<name>.yaml`` (mode sections included) and its groups (``data/``,
``model/``, ``experiment/``, ``hparams_search/`` ...). The CLI puts it on Hydra's
search path only when that task is selected, so ``data=csv`` means this
plugin's CSV loader and no other's. The core's conf/ holds only what is shared.
The task file may give its modes' torch CPU threads (``torch_threads: {train: null, generate: 1}``);
the core sets them before the mode runs, so a mode does not set them itself.

The runner calls these hooks, and nothing else beyond Lightning's own API:

- a datamodule that subclasses ``TaskData`` is asked for ``model_kwargs()`` (passed to the model's
  constructor, e.g. a vocabulary) and, with ``init_from``, to ``adopt_checkpoint(checkpoint)``;
- a module that subclasses ``TaskModel`` loads ``init_from`` weights through ``load_init_weights``.

A plain ``LightningDataModule``/``LightningModule`` works too: it gets no model arguments, and
``init_from`` loads its weights with ``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal, Mapping


@dataclass(frozen=True)
class Plugin:
    name: str
    modes: Mapping[str, str]
    conf_package: str | None = None
    description: str = ""
    # What a trained model is on disk: a Lightning checkpoint file, or a directory the plugin's
    # modes resolve themselves (the gas detector's bundle). The CLI checks a checkpoint file before
    # Hydra starts and leaves a directory to the plugin.
    model_artifact: Literal["checkpoint", "directory"] = "checkpoint"
    # Logged metrics plotted next to the losses in history.png: names ending in one of these.
    plot_metrics: tuple[str, ...] = ()
    # Distributions the plugin needs beyond the framework's own, as pip requirements: "music21>=9.1".
    requires: tuple[str, ...] = ()

    def mode_function(self, mode: str) -> Callable:
        module_name, _, attr = self.modes[mode].partition(":")
        return getattr(importlib.import_module(module_name), attr)


class TaskData:
    """Mixin for a plugin's ``LightningDataModule``: ``class MyData(TaskData, L.LightningDataModule)``."""

    def model_kwargs(self) -> dict:
        """Keyword arguments for the model's constructor that only the data knows (sizes, vocabulary)."""
        return {}

    def adopt_checkpoint(self, checkpoint: dict) -> None:
        """Before ``prepare_data``: take over what a trained model fixed (its vocabulary, its input
        scaling), for ``init_from`` and for evaluating that model. Raise ``UserError`` for a checkpoint
        of another kind."""


class TaskModel:
    """Mixin for a plugin's ``LightningModule``: ``class MyModel(TaskModel, L.LightningModule)``."""

    def load_init_weights(self, state_dict: dict) -> None:
        """Start from another run's weights (``init_from``); override to grow or map tensors."""
        self.load_state_dict(state_dict, strict=True)
