"""Task declarations: the built-in ones (``builtin/*.yaml``) and a user's own YAML."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import ValidationError

from ..util.errors import KeyPathError
from ..util.files import not_a_file
from ..util.strict_yaml import load_yaml
from .readers import DataError

if TYPE_CHECKING:
    from .base import Task

BUILTIN_DIR = Path(__file__).parent / "builtin"


class TaskDeclarationError(DataError, KeyPathError):
    """A task declaration that does not validate; the message names the YAML key path."""


def validation_message(exc: ValidationError, prefix: str) -> str:
    """``task.spec.key.path: message`` (a config key) or ``task file F: key.path: message``."""
    parts = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        joined = f"{prefix}.{key}" if prefix.startswith("task.") else f"{prefix}: {key}"
        where = joined if key else prefix
        parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)


def parse_task(data: Any, where: str) -> Task:
    """A task from its YAML mapping; ``where`` names it in errors (a file or a config key)."""
    if not isinstance(data, dict):
        raise TaskDeclarationError(f"{where}: a task declaration is a mapping, got {data!r}")
    from .base import Task  # its schema: built when a task is first parsed

    try:
        return Task.model_validate(data)
    except ValidationError as exc:
        raise TaskDeclarationError(validation_message(exc, where)) from None


def read_task_file(path: Path) -> dict[str, Any]:
    """The YAML mapping of a task file (errors name the file)."""
    if problem := not_a_file(path, "task file"):
        raise TaskDeclarationError(problem)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))  # a key given twice is an error
    except yaml.YAMLError as exc:
        raise TaskDeclarationError(f"task file {path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise TaskDeclarationError(f"task file {path}: expected a mapping of task keys")
    return data


def load_task_file(path: Path) -> Task:
    return parse_task(read_task_file(path), str(path))


class BuiltinTasks(Mapping[str, "Task"]):
    """The built-in tasks by name (``builtin/<name>.yaml``), each read when first asked for:
    checking a config that names one reads that file only."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._loaded: dict[str, Task] = {}

    def __getitem__(self, name: str) -> Task:
        if name not in self._loaded:
            path = self.directory / f"{name}.yaml"
            if name.startswith(".") or "/" in name or not path.is_file():
                raise KeyError(name)
            self._loaded[name] = load_task_file(path)
        return self._loaded[name]

    def __contains__(self, name: object) -> bool:
        """A built-in task's file exists (read only when the task is asked for)."""
        return (
            isinstance(name, str)
            and not name.startswith(".")
            and "/" not in name
            and (self.directory / f"{name}.yaml").is_file()
        )

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(p.stem for p in self.directory.glob("*.yaml")))

    def __len__(self) -> int:
        return len(list(self.directory.glob("*.yaml")))


TASKS = BuiltinTasks(BUILTIN_DIR)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"task.name: unknown task {name!r}; known: {', '.join(sorted(TASKS))}")
    return TASKS[name]
