"""The stage contract: what a stage declares about itself, and what it sees when it runs.

Each file in ``stages/`` ends with one :class:`Stage` declaration — its name, the stages whose
outputs it reads, the config values its cache key covers, the files it must leave behind — and
the runner (:mod:`pipeline.runner`) reads those declarations through plain imports.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..util.files import MANIFEST, read_json, write_json_atomic
from .config import PipelineConfig

WHOLE_CONFIG = "*"
ATTEMPT_FILE = "attempt.json"


class StageError(RuntimeError):
    """A stage cannot run (missing inputs, missing outputs, ...)."""


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline, declared in its own file."""

    name: str
    run: Callable[[RunContext], dict[str, Any]]
    upstream: tuple[str, ...] = ()
    """Stages whose outputs this one reads (their digests are part of its cache key)."""
    config_keys: tuple[str, ...] = ()
    """Dotted config paths this stage reads or writes; ``"*"``: the whole config."""
    outputs: tuple[str, ...] = ()
    """Files or directories every successful run leaves in the stage directory."""
    tracked: dict[str, str] = field(default_factory=dict)
    """Outputs logged to MLflow: output name → artifact directory."""
    shared: bool = False
    """Produced once per sweep and shared by its variants (keyed by this stage's key)."""
    distributed: bool = False
    """Runs on every rank (under torchrun when the config asks for several ranks)."""
    version: int = 1
    """Raised when the stage's code changes what it writes for the same config and inputs, so
    outputs cached by older code re-run. Version 1 adds nothing to the key (caches written before
    stages had versions stay valid)."""

    def key_inputs(self, config: PipelineConfig) -> dict[str, Any]:
        """The config values this stage's outputs depend on."""
        data = config.keyed_dict()
        if WHOLE_CONFIG in self.config_keys:
            return data
        picked = {}
        for dotted in self.config_keys:
            node: Any = data
            for part in dotted.split("."):
                node = node[part]
            picked[dotted] = node
        return picked


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """A stage directory's manifest (written last: a directory without one is incomplete)."""
    return read_json(stage_dir / MANIFEST)


@dataclass
class RunContext:
    """What a stage sees: the config, where to write, upstream outputs, shared loaded objects."""

    config: PipelineConfig
    run_dir: Path
    stage: str = ""
    stage_key: str = ""
    work_dir: Path = Path()
    tracker: Any = None
    stage_dir: Callable[[str], Path] | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.tracker is not None:
            scope = f"{self.stage}:{self.stage_key}:{self.attempt()}"
            self.tracker.log_metrics(metrics, step, scope=scope)

    def input_dir(self, stage: str) -> Path:
        path = self.stage_dir(stage) if self.stage_dir else self.run_dir / stage
        if read_manifest(path) is None:
            raise StageError(
                f"stage {self.stage!r} needs the output of {stage!r}, but {path} has no complete "
                f"output; run `pipeline run CONFIG --stages {stage}` first"
            )
        return path

    def scratch_dir(self) -> Path:
        """A per-stage directory that survives interruptions (checkpoints)."""
        path = self.run_dir / ".scratch" / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def attempt(self) -> str:
        """This stage's attempt id: the same across interruptions and resumes (it lives in the
        scratch directory), new after ``--force`` (which clears it). Metric points are unique
        per attempt and step. Read once per process and stage (it is asked at every logged step)."""

        def read_or_create() -> str:
            path = self.scratch_dir() / ATTEMPT_FILE
            if not path.is_file():
                write_json_atomic(path, {"attempt": uuid.uuid4().hex})
            return read_json(path)["attempt"]

        return self.memo(f"attempt:{self.stage}:{self.stage_key}", read_or_create)

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        """``make()`` once per process (a loaded model shared by the stages of one run)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@dataclass
class StageResult:
    stage: str
    status: str  # "ran" | "cached"
    seconds: float
    summary: dict[str, Any]
    path: Path
