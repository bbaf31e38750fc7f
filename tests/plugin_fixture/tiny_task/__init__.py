"""A plugin defined outside the framework: found through its entry point when this folder is on PYTHONPATH."""

from framework import Plugin

plugin = Plugin(
    name="tiny",
    description="linear regression on random data (test plugin)",
    modes={"train": "framework.runner:train", "predict": "tiny_task.modes:predict", "fail": "tiny_task.modes:fail"},
    conf_package="tiny_task.conf",
)
