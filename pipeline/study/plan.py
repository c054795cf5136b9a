"""The method comparison study behind ``pipeline compare``: the study file and the job plan.

Plan (every job is a plain ``pipeline run`` of the base config with ``--set`` overrides, so each
can be re-run by hand, and every stage is cached: re-running the command resumes a stopped study):

1. grid:   each task × method × learning-rate point, first seed, stages tokenize → train;
2. select: per task × method, the point with the best dev score (ties: the earlier point);
3. seeds:  every seed at the selected point, through evaluate (test, the paper's protocol); the
           first seed's train stage is a cache hit. Zero-shot is scored once per task.
4. report: :mod:`.report` (markdown table, plots, MLflow).

:mod:`.jobs` runs the plan.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..core.config import ConfigError, load_config
from ..core.yaml_files import read_yaml
from ..util.files import not_a_file

log = logging.getLogger(__name__)

TRAIN_STAGES = ("tokenize", "shard", "train")
TEST_STAGES = (*TRAIN_STAGES, "evaluate")
TRAIN_SUMMARY = Path("train", "train_summary.json")  # a job's outputs the study reads
TEST_METRICS = Path("evaluate", "metrics.json")


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, description="Study name: runs go to output_dir/name.")
    base_config: str = Field(
        ..., description="Pipeline config every job starts from (relative to the study file)."
    )
    output_dir: str = "runs"
    report_dir: str = Field("reports", description="The report goes to report_dir/name.")
    seeds: list[int] = Field(
        ...,
        min_length=1,
        description="train.seed values; the first one also runs the learning-rate grid.",
    )
    parallel: int = Field(2, gt=0, description="Jobs at a time.")
    threads_per_run: int = Field(1, gt=0, description="OMP/torch threads of each job.")
    common: dict[str, Any] = Field(default_factory=dict, description="KEY.PATH: value for all.")
    tasks: dict[str, dict[str, Any]] = Field(..., min_length=1)
    methods: dict[str, dict[str, Any]] = Field(
        ...,
        min_length=1,
        description="Per method: its whole method section as method.KEY: value (the base "
        "config's method section is not merged in).",
    )
    comparisons: list[tuple[str, str]] = Field(
        [("adept", "prompt_tuning"), ("adept", "dept")],
        description="Method pairs (A, B) whose paired test difference A − B the report gives "
        "(bootstrap interval, McNemar); pairs with a method the study lacks are skipped.",
    )
    lr_grid: dict[str, list[dict[str, Any]]] = Field(
        ...,
        description="Per method: the learning-rate points (train.lr.GROUP: value) tried on "
        "dev; a group left out takes the method's default.",
    )

    @model_validator(mode="after")
    def _grid_covers_methods(self) -> StudyConfig:
        missing = sorted(set(self.methods) - set(self.lr_grid))
        extra = sorted(set(self.lr_grid) - set(self.methods))
        if missing or extra:
            raise ValueError(
                f"lr_grid must list exactly the methods: missing {missing}, unknown {extra}"
            )
        empty = sorted(m for m, points in self.lr_grid.items() if not points)
        if empty:
            raise ValueError(f"lr_grid: no learning-rate point for {empty}")
        return self

    @property
    def study_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def method_label(name: str) -> str:
    """The method's label from its registration (``zero_shot``: the base model alone)."""
    from ..methods import get_method

    return "zero-shot" if name == "zero_shot" else get_method(name).label


def load_study(path: str | os.PathLike) -> tuple[StudyConfig, Path]:
    """The validated study and its base config path; every job config is validated too."""
    path = Path(path)
    if problem := not_a_file(path, "study file"):
        raise ConfigError(problem)
    try:
        study = StudyConfig.model_validate(read_yaml(path) or {})
    except ValidationError as exc:
        errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid study: {errors}") from None
    base = (path.parent / study.base_config).resolve()
    for job in plan_grid(study):  # fail before any work on a bad override
        load_config(base, job.overrides)
    return study, base


@dataclass(frozen=True)
class Job:
    task: str
    method: str
    lr_index: int
    seed: int
    overrides: tuple[str, ...]
    stages: tuple[str, ...]

    @property
    def key(self) -> str:
        return job_key(self.task, self.method, self.lr_index, self.seed)


def job_key(task: str, method: str, lr_index: int, seed: int) -> str:
    """The job's variant name: its run directory under ``variants/`` and its log file name."""
    return f"{task}-{method}-lr{lr_index}-s{seed}"


def section(prefix: str, entries: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The study's ``<prefix>KEY: value`` entries as one mapping (e.g. the method section)."""
    return {**extra, **{k.removeprefix(prefix): v for k, v in entries.items()}}


def _sets(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def make_job(
    study: StudyConfig,
    task: str,
    method: str,
    lr_index: int,
    seed: int,
    stages: tuple[str, ...],
    zero_shot: bool = False,
) -> Job:
    key = job_key(task, method, lr_index, seed)
    values = {
        "name": study.name,
        "variant": key,
        "output_dir": study.output_dir,
        "tracking.experiment": study.name,
        "eval.zero_shot": zero_shot,
        **study.common,
        "task.name": task,
        **study.tasks[task],
        # the method section and the learning rates are replaced, not merged with the base
        # config's: they belong to the base config's method, each method has its own
        "method": section("method.", study.methods[method], name=method),
        "train.lr": section("train.lr.", study.lr_grid[method][lr_index]),
        "train.seed": seed,
    }
    return Job(task, method, lr_index, seed, tuple(_sets(values)), stages)


def plan_grid(study: StudyConfig) -> list[Job]:
    return [
        make_job(study, task, method, i, study.seeds[0], TRAIN_STAGES)
        for task in study.tasks
        for method in study.methods
        for i in range(len(study.lr_grid[method]))
    ]


def plan_seeds(study: StudyConfig, selected: dict[tuple[str, str], int]) -> list[Job]:
    """Every seed at the selected point; the first method's first seed also scores zero-shot."""
    first_method = next(iter(study.methods))
    return [
        make_job(
            study,
            task,
            method,
            selected[task, method],
            seed,
            TEST_STAGES,
            zero_shot=method == first_method and seed == study.seeds[0],
        )
        for task in study.tasks
        for method in study.methods
        for seed in study.seeds
    ]


def run_dir(study: StudyConfig, job: Job) -> Path:
    return study.study_dir / "variants" / job.key


def finished(study: StudyConfig, job: Job) -> bool:
    """Whether ``job``'s last stage has written its result (what the report reads)."""
    last = TEST_METRICS if "evaluate" in job.stages else TRAIN_SUMMARY
    return (run_dir(study, job) / last).is_file()


def dev_score(study: StudyConfig, job: Job) -> float:
    summary = json.loads((run_dir(study, job) / TRAIN_SUMMARY).read_text())
    return next(v for k, v in summary.items() if k.startswith("best_dev_"))


def select(study: StudyConfig, grid: list[Job]) -> dict[tuple[str, str], int]:
    """Per task × method, the grid point with the best dev score (the earlier one on ties)."""
    best: dict[tuple[str, str], tuple[float, int]] = {}
    for job in grid:
        score = dev_score(study, job)
        current = best.get((job.task, job.method))
        if current is None or score > current[0]:
            best[job.task, job.method] = (score, job.lr_index)
    return {key: index for key, (_, index) in best.items()}
