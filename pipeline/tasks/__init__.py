"""Tasks declared as data: templates, choices, labels, metrics, split protocol, file readers."""

from .base import Task
from .data import Encoder, check_task_data, load_task_splits, protocol_splits
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
from .sources import DataFile

__all__ = [
    "METRICS",
    "TASKS",
    "DataError",
    "DataFile",
    "Encoder",
    "Task",
    "TaskDeclarationError",
    "check_task_data",
    "get_task",
    "load_task_file",
    "load_task_splits",
    "parse_task",
    "protocol_splits",
    "read_task_file",
]
