"""Tasks declared as data: templates, choices, labels, metrics, split protocol, file readers."""

from .base import Task
from .data import Encoder
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
from .splits import SplitPlan, check_task_data, load_task_splits, plan_splits

__all__ = [
    "METRICS",
    "TASKS",
    "DataError",
    "DataFile",
    "Encoder",
    "SplitPlan",
    "Task",
    "TaskDeclarationError",
    "check_task_data",
    "get_task",
    "load_task_file",
    "load_task_splits",
    "parse_task",
    "plan_splits",
    "read_task_file",
]
