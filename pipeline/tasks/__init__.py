"""Tasks declared as data: templates, choices, labels, metrics, split protocol, file readers."""

from .base import DataFile, Task
from .data import Encoder, load_task_splits, protocol_splits
from .metrics import METRICS
from .readers import DataError
from .registry import (
    TASKS,
    TaskDeclarationError,
    get_task,
    load_task_file,
    parse_task,
    read_task_file,
)

__all__ = [
    "METRICS",
    "TASKS",
    "DataError",
    "DataFile",
    "Encoder",
    "Task",
    "TaskDeclarationError",
    "get_task",
    "load_task_file",
    "load_task_splits",
    "parse_task",
    "protocol_splits",
    "read_task_file",
]
