"""What a plugin is: a name, its modes, and where its config options live.

A plugin package exposes one ``Plugin`` object and registers it under the
``framework.plugins`` entry-point group::

    [project.entry-points."framework.plugins"]
    music = "plugins.music_lstm:plugin"

Importing the package must stay cheap (no torch import at module level): the
CLI imports every plugin to list tasks and check the mode before Hydra starts.

Modes map a name to ``"module:function"``. Each function takes the composed
config (``DictConfig``) and returns a flat dict of final metrics; the core
writes it to ``metrics.json`` in the run directory and prints it as the last
line. ``train`` normally points at ``framework.runner:train`` (the shared
Lightning runner); a plugin whose training has more stages wraps
``framework.runner.fit`` in its own function.

``conf_package`` is a Python package holding the plugin's config groups
(``data/``, ``model/``, ...). The CLI puts it on Hydra's search path only when
that task is selected, so ``data=csv`` means this plugin's CSV loader and no
other's. A plugin from another distribution may also ship its
``task/<name>.yaml`` there.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Mapping


@dataclass(frozen=True)
class Plugin:
    name: str
    modes: Mapping[str, str]
    conf_package: str | None = None
    description: str = ""

    def mode_function(self, mode: str) -> Callable:
        module_name, _, attr = self.modes[mode].partition(":")
        return getattr(importlib.import_module(module_name), attr)
