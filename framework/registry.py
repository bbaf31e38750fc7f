"""Finds installed plugins through the ``framework.plugins`` entry-point group."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from framework.errors import UserError
from framework.plugin import Plugin

GROUP = "framework.plugins"


@cache
def plugins() -> dict[str, Plugin]:
    found = {}
    for ep in entry_points(group=GROUP):
        plugin = ep.load()
        if not isinstance(plugin, Plugin):
            raise TypeError(f"entry point {ep.name!r} in {GROUP} is {type(plugin).__name__}, not a framework.Plugin")
        found[ep.name] = plugin
    return dict(sorted(found.items()))


def get(task: str) -> Plugin:
    known = plugins()
    if task not in known:
        raise UserError(f"unknown task {task!r}; tasks: {', '.join(known) or '(none installed)'}")
    return known[task]


def check_mode(task: str, mode: str) -> Plugin:
    plugin = get(task)
    if mode not in plugin.modes:
        raise UserError(f"task {task!r} has no mode {mode!r}; modes: {', '.join(plugin.modes)}")
    return plugin
