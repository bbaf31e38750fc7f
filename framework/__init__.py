"""A multi-task ML framework on PyTorch Lightning and Hydra; models come as plugins."""

from framework.errors import UserError
from framework.plugin import Plugin

__all__ = ["Plugin", "UserError"]
__version__ = "0.1.0"
