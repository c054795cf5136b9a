"""Tasks: templates, verbalisers, metrics, split protocol, file readers."""

from .base import DataFile, Task
from .data import Encoder, load_task_splits, protocol_splits
from .metrics import METRICS
from .readers import DataError
from .registry import TASKS, get_task

__all__ = [
    "METRICS",
    "TASKS",
    "DataError",
    "DataFile",
    "Encoder",
    "Task",
    "get_task",
    "load_task_splits",
    "protocol_splits",
]
