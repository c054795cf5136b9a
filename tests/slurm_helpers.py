"""A real Slurm for tests (scripts/slurm_cluster.sh): bring a cluster up and down, submit, wait."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import ENV, REPO

CLUSTER_SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def cluster_script(*args: str, env: dict[str, str] | None = None, timeout: float = 600):
    """``bash scripts/slurm_cluster.sh ARGS``, output captured."""
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or os.environ,
    )


@contextlib.contextmanager
def slurm_cluster(nodes: int = 1, directory: Path | None = None) -> Iterator[dict[str, str]]:
    """A running cluster; yields the environment to submit with (SLURM_CONF, PYTHON). ``down``
    afterwards. ``directory``: the cluster's files (default: the script's own)."""
    script_env = dict(os.environ)
    if directory is not None:
        script_env["ADEPT_SLURM_DIR"] = str(directory)
    up = cluster_script("up", "--nodes", str(nodes), env=script_env)
    assert up.returncode == 0, up.stdout + up.stderr
    conf = re.search(r"SLURM_CONF=(\S+)\)", up.stdout).group(1)
    os.environ["SLURM_CONF"] = conf
    env = dict(ENV, SLURM_CONF=conf, PYTHON=sys.executable)
    if directory is not None:
        env["ADEPT_SLURM_DIR"] = str(directory)
    try:
        yield env
    finally:
        cluster_script("down", env=script_env, timeout=180)


def job_states(job_id: str, env) -> list[str]:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=env
    ).stdout
    return re.findall(r"JobState=(\S+)", out)


def job_field(job_id: str, name: str, env) -> str | None:
    """One ``Key=value`` of ``scontrol show job`` (first task), e.g. Restarts."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, env=env
    ).stdout
    found = re.search(rf"\b{name}=(\S+)", out)
    return found.group(1) if found else None


def wait_jobs(job_ids: list[str], env, timeout: float = 900) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = {j: job_states(j, env) for j in job_ids}
        if all(s and set(s) <= TERMINAL for s in states.values()):
            return states
        time.sleep(1)
    raise AssertionError(f"jobs did not finish: {states}")


def sbatch(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sbatch", "--parsable", *args], capture_output=True, text=True, env=env, timeout=900
    )


class JobRunning:
    """A Slurm job standing in for a process (``poll()`` is None while it has not ended), for
    helpers that wait on a process."""

    def __init__(self, job_id: str, env) -> None:
        self.job_id, self.env = job_id, env

    def poll(self) -> int | None:
        states = job_states(self.job_id, self.env)
        return None if not states or states[0] not in TERMINAL else 1
