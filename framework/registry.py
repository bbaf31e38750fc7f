"""Finds installed plugins through the ``framework.plugins`` entry-point group."""

from __future__ import annotations

import shlex
from functools import cache
from importlib.metadata import PackageNotFoundError, entry_points, version

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
    """The task's plugin, when it has this mode and what it requires is installed."""
    plugin = get(task)
    if mode not in plugin.modes:
        raise UserError(f"task {task!r} has no mode {mode!r}; modes: {', '.join(plugin.modes)}")
    missing = missing_requirements(plugin)
    if missing:
        wanted = " ".join(shlex.quote(spec) for spec, _ in missing)
        needs = ", ".join(spec + (f" (found {found})" if found else "") for spec, found in missing)
        raise UserError(f"task {task} needs {needs} (pip install {wanted})")
    return plugin


def missing_requirements(plugin: Plugin) -> list[tuple[str, str | None]]:
    """(requirement, installed version or None) for each of ``plugin.requires`` that is not met."""
    from packaging.requirements import Requirement

    missing = []
    for spec in plugin.requires:
        requirement = Requirement(spec)
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue  # not for this platform
        try:
            found = version(requirement.name)
        except PackageNotFoundError:
            missing.append((spec, None))
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            missing.append((spec, found))
    return missing
