"""Tasks declared as data: templates, choices, labels, metrics, split protocol, file readers.

Each name loads its submodule when first used (PEP 562), so a config check that only needs a
built-in task's name imports none of the readers, metrics or split planning."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

SUBMODULE_OF = {
    "Task": "base",
    "Encoder": "data",
    "METRICS": "metrics",
    "DataError": "readers",
    "TASKS": "registry",
    "TaskDeclarationError": "registry",
    "get_task": "registry",
    "load_task_file": "registry",
    "parse_task": "registry",
    "read_task_file": "registry",
    "DataFile": "sources",
    "SplitPlan": "splits",
    "check_task_data": "splits",
    "load_task_splits": "splits",
    "plan_splits": "splits",
}


def __getattr__(name: str) -> Any:
    if name not in SUBMODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{SUBMODULE_OF[name]}", __name__), name)


__all__ = [  # the names SUBMODULE_OF loads
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
