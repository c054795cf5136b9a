"""Running the study's plan: jobs as subprocesses, ``parallel`` at a time with
``threads_per_run`` CPU threads each (the local equivalent of a Slurm array throttled to
``%parallel``), then the report."""

from __future__ import annotations

import logging
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..launch.commands import pipeline_command, shell_join, threads_env
from .plan import Job, StudyConfig, finished, load_study, plan_grid, plan_seeds, select
from .report import write_report

log = logging.getLogger(__name__)


class StudyError(RuntimeError):
    """Some study jobs failed; the message lists them with their log files."""


def job_command(base: Path, job: Job) -> list[str]:
    return pipeline_command(base, stages=job.stages, overrides=job.overrides)


def run_jobs(study: StudyConfig, base: Path, jobs: list[Job], phase: str) -> None:
    """Run ``jobs`` ``study.parallel`` at a time; raise StudyError naming every failed job."""
    logs = study.study_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = threads_env(study.threads_per_run)

    def run_one(job: Job) -> tuple[Job, int, Path]:
        log_file = logs / f"{job.key}.{phase}.log"
        with open(log_file, "w") as out:
            rc = subprocess.run(
                job_command(base, job), stdout=out, stderr=subprocess.STDOUT, env=env
            ).returncode
        log.info("%s %s: exit %d", phase, job.key, rc)
        return job, rc, log_file

    with ThreadPoolExecutor(max_workers=study.parallel) as pool:
        results = list(pool.map(run_one, jobs))
    failed = [f"{job.key} (exit {rc}, log {path})" for job, rc, path in results if rc != 0]
    if failed:
        raise StudyError(f"{len(failed)} {phase} job(s) failed: " + "; ".join(failed))


def require_finished(study: StudyConfig, jobs: list[Job], phase: str, path: os.PathLike) -> None:
    """``--report-only`` renders saved outputs: name every job that has none yet, and how to
    finish them, instead of failing on the first missing file."""
    unfinished = [job.key for job in jobs if not finished(study, job)]
    if unfinished:
        raise StudyError(
            f"--report-only: {len(unfinished)} of {len(jobs)} {phase} job(s) have not finished "
            f"({', '.join(unfinished)}); `pipeline compare {path}` runs them (finished stages "
            "are cached)"
        )


def by_cost(jobs: list[Job], study: StudyConfig) -> list[Job]:
    """Longest tasks first (task order in the study file is cheapest first by convention)."""
    order = {task: i for i, task in enumerate(study.tasks)}
    return sorted(jobs, key=lambda job: -order[job.task])


def compare(
    path: str | os.PathLike,
    dry_run: bool = False,
    parallel: int | None = None,
    command: str | None = None,
    report_only: bool = False,
) -> Path:
    """Run (or, with ``dry_run``, print) the whole study; returns the report directory.
    ``report_only``: render the report from the jobs' existing outputs, running nothing (e.g.
    at a later commit than the one the jobs ran at)."""
    study, base = load_study(path)
    if parallel is not None:
        study.parallel = parallel
    grid = plan_grid(study)
    if dry_run:
        for job in grid:
            print(shell_join(job_command(base, job)))
        seed_jobs = len(study.tasks) * len(study.methods) * len(study.seeds)
        print(f"# {len(grid)} grid jobs, then {seed_jobs} seed jobs at the selected points")
        return Path(study.report_dir) / study.name

    def run_phase(jobs: list[Job], phase: str) -> None:
        if report_only:
            require_finished(study, jobs, phase, path)
        else:
            run_jobs(study, base, by_cost(jobs, study), phase)

    run_phase(grid, "grid")
    seeds = plan_seeds(study, select(study, grid))
    run_phase(seeds, "seeds")
    return write_report(study, path, base, grid, seeds, command, ran_jobs=not report_only)
