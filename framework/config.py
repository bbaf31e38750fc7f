"""Where the config lives and how it is composed; the CLI and the Hydra app both read it from here.

The shared config tree sits at the top of the repository as ``conf/`` and ships inside the installed
distribution as the package ``framework.conf`` (setup.py maps one to the other), so a wheel, ``pip
install .`` and a checkout all find it, from any working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from framework import registry
from framework.runs import override_key


def conf_dir() -> Path:
    """The installed ``framework.conf`` next to this package (a wheel), else the checkout's ``conf/``
    (a source tree or an editable install)."""
    installed = files("framework") / "conf"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / "conf"


# An absolute path: Hydra reads a relative one as a Python package when started with `python -m`.
CONF_DIR = conf_dir()


def default_config() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))


def default_task() -> str:
    for entry in default_config()["defaults"]:
        if isinstance(entry, dict) and "task" in entry:
            return entry["task"]
    raise RuntimeError("conf/config.yaml has no default task")


def add_search_path(overrides: list[str], entry: str) -> list[str]:
    for i, o in enumerate(overrides):
        if override_key(o) == "hydra.searchpath":
            items = o.split("=", 1)[1].strip()
            inner = items[1:-1].strip() if items.startswith("[") else items
            overrides[i] = f"hydra.searchpath=[{inner + ',' if inner else ''}{entry}]"
            return overrides
    return overrides + [f"hydra.searchpath=[{entry}]"]


def with_plugin_search_path(plugin, overrides: list[str]) -> list[str]:
    """The task's own conf package on Hydra's search path, for that task only."""
    if plugin.conf_package:
        return add_search_path(list(overrides), f"pkg://{plugin.conf_package}")
    return list(overrides)


def config_roots(plugin) -> list:
    """The folders whose subfolders are config groups: the shared conf/ and the plugin's conf package."""
    return [CONF_DIR] + ([files(plugin.conf_package)] if plugin.conf_package else [])


def compose(overrides: list[str]):
    """The config a run with these overrides would get (the Hydra config included), without running it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    task = {override_key(o): o.split("=", 1)[1] for o in overrides if "=" in o}.get("task", default_task())
    overrides = with_plugin_search_path(registry.get(task), overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
