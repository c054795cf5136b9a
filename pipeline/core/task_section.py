"""The ``task:`` section: a built-in task by name, or one declared in a file or inline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_serializer, model_validator

from .section import Section


class TaskSection(Section):
    name: str = Field(
        "boolq",
        description="A built-in task (pipeline/tasks/builtin/*.yaml), or the name of the task "
        "that task.file / task.spec declares.",
    )
    file: str | None = Field(
        None,
        description="A task declaration (YAML, same keys as the built-in ones); read when the "
        "config loads: its content becomes task.spec, so the cache follows the content.",
    )
    spec: dict[str, Any] | None = Field(
        None, description="A task declared inline (the keys of a task file)."
    )
    data_dir: str | None = Field(
        None,
        description="Local data root laid out like shared/data; else $PIPELINE_DATA_DIR, "
        "else the Hugging Face hub. A declared task's relative file paths start here "
        "(without one: at the working directory).",
    )
    max_length: int = Field(256, gt=0, description="Max input tokens (context + answer).")
    num_proc: int | None = Field(
        None,
        gt=0,
        description="Processes that tokenize (default: the cores this process owns, or "
        "OMP_NUM_THREADS); the output is the same for any number.",
    )
    train_limit: int | None = Field(None, gt=0)
    dev_limit: int | None = Field(None, gt=0)
    test_limit: int | None = Field(None, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _read_task_file(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("file") is None:
            return data
        from ..tasks import TaskDeclarationError, parse_task, read_task_file

        if data.get("spec") is not None:
            raise TaskDeclarationError("task: give task.file or task.spec, not both")
        path = Path(str(data["file"])).expanduser()
        spec = read_task_file(path)
        parse_task(spec, f"task file {path}")  # errors name the file, not task.spec
        return {**data, "file": None, "spec": spec}

    @model_serializer(mode="wrap")
    def _without_unset_declaration(self, handler) -> dict[str, Any]:
        """A built-in task dumps (and hashes) as before declarations existed (``num_proc`` is
        left out of hashes by the config's ``OUTPUT_NEUTRAL_KEYS``)."""
        data = handler(self)
        for key in ("file", "spec"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @model_validator(mode="after")
    def _known_task(self) -> TaskSection:
        from ..tasks import TASKS, TaskDeclarationError, parse_task

        if self.spec is None:
            if self.name not in TASKS:
                raise TaskDeclarationError(
                    f"task.name: unknown task {self.name!r}; known: {', '.join(sorted(TASKS))} "
                    "(or declare one with task.file / task.spec)"
                )
            return self
        declared = parse_task(self.spec, "task.spec").name
        if "name" in self.model_fields_set and self.name != declared:
            raise TaskDeclarationError(
                f"task.name: {self.name!r} differs from the declared task's name {declared!r}"
            )
        object.__setattr__(self, "name", declared)
        return self

    def definition(self):
        """The task: the declared one, else the built-in named ``name``."""
        from ..tasks import get_task, parse_task

        return parse_task(self.spec, "task.spec") if self.spec is not None else get_task(self.name)


def task_file_beside(data: dict[str, Any], config_dir: Path) -> dict[str, Any]:
    """A relative ``task.file`` in a config file starts at that file's directory (one given
    with ``--set`` starts at the working directory)."""
    task = data.get("task")
    if not isinstance(task, dict) or not isinstance(task.get("file"), str):
        return data
    file = Path(task["file"]).expanduser()
    return (
        data if file.is_absolute() else {**data, "task": {**task, "file": str(config_dir / file)}}
    )
