"""How many CPU threads a process should use: the cores it owns, not the machine's.

PyTorch's default is the machine's core count, which oversubscribes a process pinned to fewer
cores (taskset, a container's cgroup quota, a Slurm task) and ranks that share a node. The
number here is ``OMP_NUM_THREADS`` when set, else the CPUs this process may run on (its affinity
mask, capped by a cgroup CPU quota and by Slurm's allocation) divided among the ranks on
this node. No torch: the launcher computes it for the ranks it starts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path | None = None) -> int | None:
    """CPUs allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``), rounded
    up; None without a quota."""
    root = root or CGROUP_ROOT
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def owned_cpus() -> tuple[int, str]:
    """(CPUs this process may use, where that number comes from)."""
    count, source = len(os.sched_getaffinity(0)), "affinity mask"
    quota = cgroup_cpu_quota()
    if quota is not None and quota < count:
        count, source = quota, "cgroup CPU quota"
    for variable in ("SLURM_CPUS_PER_TASK", "SLURM_CPUS_ON_NODE"):  # the first one set counts
        slurm = os.environ.get(variable, "")
        if slurm.isdigit() and int(slurm) > 0:
            if int(slurm) < count:
                count, source = int(slurm), variable
            break
    return count, source


def thread_count(local_ranks: int = 1) -> tuple[int, str]:
    """(threads for this process, why): ``OMP_NUM_THREADS`` wins; else the owned CPUs split
    between the ``local_ranks`` processes of this node."""
    explicit = os.environ.get("OMP_NUM_THREADS", "").strip()
    if explicit.isdigit() and int(explicit) > 0:
        return int(explicit), "OMP_NUM_THREADS"
    count, source = owned_cpus()
    threads = max(1, count // max(1, local_ranks))
    split = f", split between {local_ranks} ranks" if local_ranks > 1 else ""
    return threads, f"{count} CPU(s) from the {source}{split}"
