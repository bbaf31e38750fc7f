"""A multi-task ML framework on PyTorch Lightning and Hydra; models come as plugins."""

from framework.errors import UserError
from framework.plugin import Plugin, TaskData, TaskModel

__all__ = ["Plugin", "TaskData", "TaskModel", "UserError"]
__version__ = "0.1.0"
