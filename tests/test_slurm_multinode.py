"""Two nodes for real: `scripts/slurm_cluster.sh up --nodes 2` puts each node in its own network
namespace (own address, hostname, slurmd); DeepSpeed ZeRO-3 trains with one gloo rank per node.

Every case is held to one reference: the same config trained by one node with two ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ENV, REPO, losses, pipeline, wait_for_step, write_config
from tests.slurm_helpers import (
    JobRunning,
    cluster_script,
    job_field,
    job_states,
    sbatch,
    slurm_cluster,
    wait_jobs,
)

pytestmark = pytest.mark.multinode
NODES = ("adept-n1", "adept-n2")
SECTIONS = {
    "method": {"dropout": 0.0},
    "task": {"train_limit": 64},
    "train": {
        "steps": 16,
        "batch_size": 2,  # per rank: a global batch of 4 either way
        "eval_every": 8,
        "log_every": 1,
        "checkpoint_every": 2,
        "lr": {"prompt": 0.05, "offset": 0.01},
    },
    "distributed": {"nproc_per_node": 2, "deepspeed": True, "zero_stage": 3},
    "export": {"register_model": False},
}
TOLERANCE = 1e-6  # the exact-resume tolerance of the two-rank tests (tests/test_distributed.py)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with slurm_cluster(nodes=2, directory=tmp_path_factory.mktemp("slurm-2n")) as env:
        yield env
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ns for ns in left.split() if ns.startswith("adept-")], left


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir) -> Path:
    """The config on one node with two ranks (no Slurm): its run directory."""
    root = tmp_path_factory.mktemp("one-node")
    proc = pipeline("run", str(write_config(root, tiny_model_dir, **SECTIONS)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "runs" / "tiny"


def submit(cluster, tmp_path: Path, model_dir: Path, *flags: str) -> tuple[str, Path, Path]:
    """`sbatch -N 2 FLAGS slurm/train_llama.sh CONFIG`: (job id, its log, the run directory)."""
    config = write_config(tmp_path, model_dir, **SECTIONS)
    (tmp_path / "logs").mkdir(exist_ok=True)
    proc = sbatch(
        cluster, "-N", "2", f"--chdir={tmp_path}", *flags, str(REPO / "slurm" / "train_llama.sh"),
        str(config),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    return job, tmp_path / "logs" / f"adept-train_{job}.out", tmp_path / "runs" / "tiny"


def run_dir_of(root: Path) -> Path:
    return root / "variants" / "v000"


def assert_same_as_reference(run_dir: Path, reference: Path) -> None:
    assert losses(run_dir) == pytest.approx(losses(reference), abs=TOLERANCE)
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    expected = json.loads((reference / "evaluate" / "metrics.json").read_text())
    for model in ("adapter", "zero_shot"):
        assert metrics[model] == pytest.approx(expected[model], abs=TOLERANCE), model


def wait_for_checkpoint(run_dir: Path, job: str, cluster) -> None:
    """Until step 3 is logged (so the step-2 checkpoint is on disk)."""
    history = run_dir / ".scratch" / "train" / "history.jsonl"
    wait_for_step(history, 3, JobRunning(job, cluster), timeout=600)
    assert list((run_dir / ".scratch" / "train" / "checkpoints").glob("step_*"))


def command_line(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def node_pids(node: str, commands: tuple[str, ...] = ()) -> list[int]:
    """Processes running in ``node``'s namespace (only those whose command line contains one of
    ``commands``, if given)."""
    out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True).stdout
    pids = [int(p) for p in out.split()]
    return [p for p in pids if not commands or any(c in command_line(p) for c in commands)]


def kill(pids: list[int]) -> None:
    assert pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_two_nodes_train_like_one_node_with_two_ranks(cluster, tmp_path, tiny_model_dir, reference):
    job, log, root = submit(cluster, tmp_path, tiny_model_dir, "--ntasks-per-node=1")
    wait_jobs([job], cluster)
    text = log.read_text()
    assert job_states(job, cluster) == ["COMPLETED"], text[-3000:]
    assert "task " + job + ": 2 node(s) x 1 rank(s), rendezvous adept-n1:" in text
    for rank, node in enumerate(NODES):  # one rank per node, each in its own namespace
        assert f"rank {rank} of 2 on {node}" in text
    assert_same_as_reference(run_dir_of(root), reference)


def test_requeue_checkpoints_on_both_nodes_and_resumes(
    cluster, tmp_path, tiny_model_dir, reference
):
    job, log, root = submit(cluster, tmp_path, tiny_model_dir)
    wait_for_checkpoint(run_dir_of(root), job, cluster)
    requeue = subprocess.run(
        ["scontrol", "requeue", job], capture_output=True, text=True, env=cluster
    )
    assert requeue.returncode == 0, requeue.stderr
    wait_jobs([job], cluster)
    text = log.read_text()
    assert job_states(job, cluster) == ["COMPLETED"], text[-3000:]
    assert text.count("received SIGTERM: checkpointing after this step") >= 2  # a rank per node
    assert "checkpoint written (exit 3)" in text and "restart 1" in text
    summary = json.loads((run_dir_of(root) / "train" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is not None
    assert_same_as_reference(run_dir_of(root), reference)


def test_a_rank_dying_names_its_node_and_a_rerun_resumes(
    cluster, tmp_path, tiny_model_dir, reference
):
    job, log, root = submit(cluster, tmp_path, tiny_model_dir)
    wait_for_checkpoint(run_dir_of(root), job, cluster)
    kill(node_pids("adept-n2", ("torch.distributed.run", "pipeline.cli")))  # slurmd lives on
    wait_jobs([job], cluster)
    text = log.read_text()
    assert job_states(job, cluster) == ["FAILED"]
    assert "error: train on 2 ranks failed on node adept-n2 (first failure: task 1:" in text
    checkpoints = sorted((run_dir_of(root) / ".scratch" / "train" / "checkpoints").glob("step_*"))
    assert checkpoints, "the last checkpoint must survive the failure"
    rerun, _, _ = submit(cluster, tmp_path, tiny_model_dir)
    assert wait_jobs([rerun], cluster)[rerun] == ["COMPLETED"]
    summary = json.loads((run_dir_of(root) / "train" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == int(checkpoints[-1].name.split("_")[1])
    assert_same_as_reference(run_dir_of(root), reference)


def test_a_node_crash_requeues_and_resumes_when_it_returns(
    cluster, tmp_path, tiny_model_dir, reference
):
    job, log, root = submit(cluster, tmp_path, tiny_model_dir)
    wait_for_checkpoint(run_dir_of(root), job, cluster)
    kill(node_pids("adept-n2"))  # slurmd, slurmstepd, torchrun, the rank: the node is gone
    deadline = time.monotonic() + 300  # Slurm declares the node down after SlurmdTimeout (30 s)

    def requeued() -> bool:
        restarts = job_field(job, "Restarts", cluster)
        return restarts == "1" and job_states(job, cluster) == ["PENDING"]

    while not requeued() and time.monotonic() < deadline:
        time.sleep(1)
    assert "srun: error: Node failure on adept-n2" in log.read_text()
    assert requeued(), job_states(job, cluster)  # requeued (--requeue), waiting for the node
    assert list((run_dir_of(root) / ".scratch" / "train" / "checkpoints").glob("step_*"))
    script_env = dict(os.environ, ADEPT_SLURM_DIR=cluster["ADEPT_SLURM_DIR"])
    back = cluster_script("up", "--nodes", "2", env=script_env)  # the node reboots
    assert back.returncode == 0, back.stdout + back.stderr
    wait_jobs([job], cluster)
    assert job_states(job, cluster) == ["COMPLETED"], log.read_text()[-3000:]
    summary = json.loads((run_dir_of(root) / "train" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is not None
    assert_same_as_reference(run_dir_of(root), reference)


def test_torchrun_on_two_nodes_without_slurm(cluster, tmp_path, tiny_model_dir, reference) -> None:
    """The README's commands: prepare once, one torchrun per node, then evaluate/export."""
    sections = dict(
        SECTIONS, distributed={**SECTIONS["distributed"], "nproc_per_node": 1, "nnodes": 2}
    )
    config = str(write_config(tmp_path, tiny_model_dir, **sections))
    env = dict(ENV, ADEPT_SLURM_DIR=cluster["ADEPT_SLURM_DIR"])
    env.pop("SLURM_CONF", None)

    def on(node: str, *command: str) -> list[str]:
        return ["bash", str(REPO / "scripts" / "slurm_cluster.sh"), "on", node, *command]

    run = [sys.executable, "-m", "pipeline.cli", "run", config]
    prepared = subprocess.run(on("adept-n1", *run, "--stages", "tokenize,shard"), env=env, cwd=REPO)
    assert prepared.returncode == 0
    torchrun = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"),
        *("--rdzv_backend", "c10d", "--rdzv_endpoint", "adept-n1:29400"),
    ]
    ranks = [
        subprocess.Popen(
            on(node, *torchrun, "-m", "pipeline.cli", "run", config, "--stages", "train"),
            env=env,
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in NODES
    ]
    logs = [rank.communicate(timeout=600)[1] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    for rank, (node, text) in enumerate(zip(NODES, logs, strict=True)):
        assert f"rank {rank} of 2 on {node}" in text
    finished = subprocess.run(
        on("adept-n1", *run, "--stages", "evaluate,export"), env=env, cwd=REPO
    )
    assert finished.returncode == 0
    assert_same_as_reference(tmp_path / "runs" / "tiny", reference)
