"""A real single-node Slurm (scripts/slurm_cluster.sh): array jobs, dependencies, preemption."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml

from tests.helpers import (
    ENV,
    REPO,
    assert_accuracy_is_its_predictions,
    losses,
    pipeline,
    wait_for_step,
    write_config,
)
from tests.slurm_helpers import JobRunning, job_states, sbatch, slurm_cluster, wait_jobs


@pytest.fixture(scope="module")
def slurm():
    with slurm_cluster(nodes=1) as env:
        yield env


def sweep_config(tmp: Path, model_dir: Path, lrs: list[float], **sections) -> Path:
    config = write_config(tmp, model_dir, **sections)
    data = yaml.safe_load(config.read_text())
    data["sweep"] = {"train.lr.prompt": lrs}
    config.write_text(yaml.safe_dump(data))
    return config


def test_array_job_runs_every_variant(slurm, tmp_path, tiny_model_dir) -> None:
    config = sweep_config(tmp_path, tiny_model_dir, [0.05, 0.01])
    listed = pipeline("sweep", str(config))
    assert listed.returncode == 0 and "--array=0-1 --output='logs/%x_%A_%a.out'" in listed.stdout
    (tmp_path / "logs").mkdir()
    proc = sbatch(
        slurm,
        "--array=0-1",
        "--output=logs/%x_%A_%a.out",  # the command `pipeline sweep` printed
        f"--chdir={tmp_path}",
        str(REPO / "slurm" / "train_llama.sh"),
        str(config),
    )
    assert proc.returncode == 0, proc.stderr
    array_id = proc.stdout.strip()
    assert set(wait_jobs([array_id], slurm)[array_id]) == {"COMPLETED"}
    root = tmp_path / "runs" / "tiny"
    shared = list((root / "shared").glob("tokenize-*"))
    assert len(shared) == 1 and (shared[0] / "manifest.json").is_file()  # tokenized once
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.parent / 'mlflow.db'}")
    runs = client.search_runs(client.get_experiment_by_name("adept").experiment_id)
    by_variant = {r.data.tags["pipeline.variant"]: r for r in runs}
    assert sorted(by_variant) == ["v000", "v001"]
    for index, lr in enumerate([0.05, 0.01]):
        log = tmp_path / "logs" / f"adept-train_{array_id}_{index}.out"
        assert log.is_file() and f"task {array_id}_{index}:" in log.read_text()
        run_dir = root / "variants" / f"v{index:03d}"
        assert_accuracy_is_its_predictions(run_dir)
        assert (run_dir / "export" / "registered.json").is_file()
        run = by_variant[f"v{index:03d}"]
        assert run.info.status == "FINISHED"
        assert run.data.params["train.lr.prompt"] == str(lr)
        assert run.data.tags["slurm.array_job_id"] == array_id
        assert run.data.tags["slurm.array_task_id"] == str(index)


def submit_and_wait(config: Path, env, cwd: Path) -> dict[str, list[str]]:
    """`pipeline submit`, then the final states of its jobs keyed by stage."""
    proc = pipeline("submit", str(config), env=env, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(re.findall(r"^(\w+)\s+job (\d+)$", proc.stdout, re.M))
    assert list(jobs) == ["tokenize", "train", "evaluate"]
    by_id = wait_jobs(list(jobs.values()), env)
    return {stage: by_id[job_id] for stage, job_id in jobs.items()}, jobs


def test_submit_chains_stages_and_stops_on_failure(slurm, tmp_path, tiny_model_dir) -> None:
    ok = sweep_config(tmp_path / "ok", tiny_model_dir, [0.05, 0.01])
    states, jobs = submit_and_wait(ok, slurm, tmp_path)
    assert all(set(s) == {"COMPLETED"} for s in states.values()), states
    root = tmp_path / "ok" / "runs" / "tiny"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root.parent / 'mlflow.db'}")
    for index, variant in enumerate(("v000", "v001")):
        assert (root / "variants" / variant / "evaluate" / "metrics.json").is_file()
        assert (root / "variants" / variant / "export" / "task.json").is_file()
        run_id = json.loads((root / "variants" / variant / "mlflow_run.json").read_text())
        tags = client.get_run(run_id["run_id"]).data.tags
        # the sweep's one view is the training array, though the evaluate array ran last
        assert tags["slurm.array_job_id"] == jobs["train"], tags
        assert tags["slurm.array_task_id"] == str(index)
        assert tags["slurm.evaluate.job_id"] != jobs["train"]

    # variant 1 diverges (NaN loss, exit 2): evaluate/export must never run
    bad = sweep_config(
        tmp_path / "bad",
        tiny_model_dir,
        [0.05, 1e6],
        model={"dtype": "float16"},
        train={"max_grad_norm": 1e30, "steps": 8, "warmup_steps": 0},
    )
    states, _ = submit_and_wait(bad, slurm, tmp_path)
    assert states["tokenize"] == ["COMPLETED"]
    assert "FAILED" in states["train"]
    assert set(states["evaluate"]) == {"CANCELLED"}, states
    assert not list((tmp_path / "bad" / "runs" / "tiny").glob("variants/*/evaluate"))


def test_requeued_task_resumes_to_the_same_result(slurm, tmp_path, tiny_model_dir) -> None:
    sections = {
        "task": {"train_limit": 64},
        "train": {"steps": 40, "checkpoint_every": 2, "eval_every": 20},
    }
    ref = write_config(tmp_path / "ref", tiny_model_dir, **sections)
    assert pipeline("run", str(ref), "--variant", "0").returncode == 0
    config = write_config(tmp_path / "cut", tiny_model_dir, **sections)
    (tmp_path / "logs").mkdir()
    proc = sbatch(slurm, f"--chdir={tmp_path}", str(REPO / "slurm" / "train_llama.sh"), str(config))
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    run_dir = tmp_path / "cut" / "runs" / "tiny" / "variants" / "v000"
    history = run_dir / ".scratch" / "train" / "history.jsonl"

    wait_for_step(history, 3, JobRunning(job, slurm))
    requeue = subprocess.run(
        ["scontrol", "requeue", job], capture_output=True, text=True, env=slurm
    )
    assert requeue.returncode == 0, requeue.stderr
    wait_jobs([job], slurm, timeout=900)
    assert job_states(job, slurm) == ["COMPLETED"]
    summary = json.loads((run_dir / "train" / "train_summary.json").read_text())
    assert summary["resumed_from_step"] is not None
    ref_dir = tmp_path / "ref" / "runs" / "tiny" / "variants" / "v000"
    assert losses(run_dir) == losses(ref_dir)
    assert json.loads((run_dir / "evaluate" / "metrics.json").read_text()) == json.loads(
        (ref_dir / "evaluate" / "metrics.json").read_text()
    )
    # a plain (non-array) job's log is named by its job id alone, no 4294967294 task id
    assert [p.name for p in (tmp_path / "logs").iterdir()] == [f"adept-train_{job}.out"]
    assert "restart 1" in (tmp_path / "logs" / f"adept-train_{job}.out").read_text()


def test_requeueing_one_array_task_leaves_its_sibling_alone(slurm, tmp_path, tiny_model_dir):
    """`scontrol requeue <A>_1` stops, checkpoints and requeues task 1 only: task 0 (whose own
    job id is the array's id) runs through once, never signalled, never restarted."""
    sections = {
        "task": {"train_limit": 64},
        "train": {"steps": 40, "checkpoint_every": 2, "eval_every": 20},
    }
    config = sweep_config(tmp_path, tiny_model_dir, [0.01, 0.02], **sections)
    (tmp_path / "logs").mkdir()
    proc = sbatch(
        slurm,
        f"--chdir={tmp_path}",
        "--array=0-1",
        "--output=logs/%x_%A_%a.out",  # as `pipeline sweep` prints it
        "--cpus-per-task=1",
        str(REPO / "slurm" / "train_llama.sh"),
        str(config),
    )
    assert proc.returncode == 0, proc.stderr
    array = proc.stdout.strip()
    variants = tmp_path / "runs" / "tiny" / "variants"

    history = variants / "v001" / ".scratch" / "train" / "history.jsonl"
    wait_for_step(history, 3, JobRunning(f"{array}_1", slurm))
    requeue = subprocess.run(
        ["scontrol", "requeue", f"{array}_1"], capture_output=True, text=True, env=slurm
    )
    assert requeue.returncode == 0, requeue.stderr
    wait_jobs([array], slurm, timeout=900)
    assert set(job_states(array, slurm)) == {"COMPLETED"}
    logs = {i: (tmp_path / "logs" / f"adept-train_{array}_{i}.out").read_text() for i in (0, 1)}
    assert "received" not in logs[0] and "restart 1" not in logs[0], logs[0]
    assert f"requeueing {array}_1" in logs[1] and "restart 1" in logs[1], logs[1]
    summaries = [
        json.loads((variants / v / "train" / "train_summary.json").read_text())
        for v in ("v000", "v001")
    ]
    assert summaries[0]["resumed_from_step"] is None
    assert summaries[1]["resumed_from_step"] is not None


def test_submit_without_slurm_is_a_clear_error(tmp_path, tiny_model_dir) -> None:
    config = write_config(tmp_path, tiny_model_dir)
    env = dict(ENV, PATH=str(Path(sys.executable).parent))  # no sbatch on this PATH
    proc = pipeline("submit", str(config), env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert "pipeline submit needs Slurm: sbatch is not on PATH" in proc.stderr


def listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses with a socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


def job_process_running(command_line: str) -> bool:
    """Whether a process with exactly this command line exists."""
    return subprocess.run(["pgrep", "-f", f"^{command_line}$"], capture_output=True).returncode == 0


def test_daemons_listen_on_loopback_and_down_leaves_nothing_running(slurm, tmp_path) -> None:
    """slurmctld and slurmd bind 127.0.0.1 (not 0.0.0.0); `down` with a job running cancels it
    and returns with no daemon, slurmstepd or job process left. Runs last: it stops the cluster
    (and brings it back for the fixture's own `down`)."""
    assert listening_addresses(6817) == {"127.0.0.1"}
    assert listening_addresses(6818) == {"127.0.0.1"}
    marker = f"sleep 3{os.getpid() % 1000:03d}"  # a command line only this job runs
    job = sbatch(slurm, "-o", str(tmp_path / "job.out"), "--wrap", marker).stdout.strip()
    # RUNNING is reported once the node is allocated, a moment before slurmstepd has started the
    # batch script: wait for the job's own process, not only for the state.
    deadline = time.monotonic() + 60
    while not job_process_running(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert job_states(job, slurm) == ["RUNNING"]
    assert job_process_running(marker)
    script = str(REPO / "scripts" / "slurm_cluster.sh")
    assert subprocess.run(["bash", script, "down"], timeout=120).returncode == 0
    left = subprocess.run(
        ["pgrep", "-af", f"slurmctld|slurmd|slurmstepd|^{marker}$"], capture_output=True, text=True
    ).stdout
    assert not [line for line in left.splitlines() if "<defunct>" not in line], left
    up = subprocess.run(["bash", script, "up"], capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr


def test_node_failures_name_the_node_that_failed_first() -> None:
    """What the runner says when a multi-node stage fails, from srun's own stderr lines."""
    from pipeline.launch.slurm import NodeFailures

    rank_died = NodeFailures()
    for line in (
        "07:36:03 INFO pipeline.runner: launching train on 2 ranks: srun --nodes=2 ...\n",
        "srun: error: adept-n2: task 1: Killed\n",
        "srun: launch/slurm: _step_signal: Terminating StepId=8.0\n",
        "srun: error: adept-n1: task 0: Exited with exit code 1\n",
    ):
        rank_died(line)
    assert rank_died.summary() == " on node adept-n2 (first failure: task 1: Killed)"
    node_died = NodeFailures()  # Slurm's verdict wins over the survivor's own failure
    node_died("srun: error: adept-n1: task 0: Exited with exit code 1\n")
    node_died("srun: error: Node failure on adept-n2\n")
    assert node_died.summary() == " on node adept-n2 (Slurm: node failure)"
    assert NodeFailures().summary() == ""
