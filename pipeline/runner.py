"""Stage order, manifests, cache hits, the run-directory lock.

Each stage writes into a temporary directory that is renamed to ``runs/<name>/<stage>/`` when it
succeeds; its ``manifest.json`` (stage key, config hash, input digests, output checksums) is written
last. A stage whose manifest matches its key is a cache hit; ``--force`` re-runs it. A key is the
hash of the config values the stage reads plus the output digests of the stages it reads from,
so changing a learning rate re-runs train/evaluate/export but not tokenize/shard.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PipelineConfig

log = logging.getLogger(__name__)

STAGES = ("tokenize", "shard", "train", "evaluate", "export")
UPSTREAM: dict[str, tuple[str, ...]] = {
    "tokenize": (),
    "shard": ("tokenize",),
    "train": ("tokenize", "shard"),
    "evaluate": ("tokenize", "train"),
    "export": ("tokenize", "train", "evaluate"),
}
MANIFEST = "manifest.json"
SHARED_STAGES = ("tokenize",)
PREEMPTED_MARKER = "preempted.json"  # written by rank 0 of a stage stopped by a signal


def stage_key_inputs(config: PipelineConfig, stage: str) -> dict[str, Any]:
    """The config values a stage's outputs depend on."""
    c = config.to_dict()
    return {
        "tokenize": lambda: {"tokenizer": c["model"]["source"], "task": c["task"]},
        "shard": lambda: {"world_size": config.distributed.world_size, "seed": c["train"]["seed"]},
        "train": lambda: {k: c[k] for k in ("model", "method", "train", "distributed")},
        "evaluate": lambda: {"eval": c["eval"], "model": c["model"]},
        "export": lambda: {"export": c["export"]},
    }[stage]()


class StageError(RuntimeError):
    """A stage cannot run (missing inputs, lock held, ...)."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checksum_tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def ensure_writable(directory: Path) -> None:
    """Create ``directory`` and prove it takes files, or fail naming it (before any work)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise StageError(f"output directory {directory} is not writable: {exc.strerror}") from None


def read_manifest(stage_dir: Path) -> dict[str, Any] | None:
    path = stage_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


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
            self.tracker.log_metrics(metrics, step)

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

    def memo(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def tokenizer(self):
        from .models import load_tokenizer

        m = self.config.model
        return self.memo("tokenizer", lambda: load_tokenizer(m.source, m.hub_token))

    def base_model(self, zero3_world_size: int | None = None):
        """The frozen base, loaded once per process. ``zero3_world_size``: load it for the ZeRO-3
        engine of that many ranks; in mode (a) the weights are then partitioned as they load
        (``deepspeed.zero.Init`` via transformers), so no rank ever holds the whole model, and
        such a base only works inside the engine."""
        from .distributed import zero3_loading
        from .models import load_model

        m = self.config.model

        def load():
            partitioned = zero3_world_size is not None
            with (
                zero3_loading(self.config, zero3_world_size)
                if partitioned
                else contextlib.nullcontext()
            ):
                return load_model(m.source, m.dtype, m.attention, m.load_in_8bit, token=m.hub_token)

        return self.memo(f"base_model-{zero3_world_size}", load)


@dataclass
class StageResult:
    stage: str
    status: str  # "ran" | "cached"
    seconds: float
    summary: dict[str, Any]
    path: Path


class RunLock:
    """An exclusive lock on a run directory; a second process refuses with a clear message."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.handle = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            holder = self.handle.read().strip() or "unknown"
            self.handle.close()
            raise StageError(
                f"run directory {self.path.parent} is in use by another pipeline process "
                f"(pid {holder}); wait for it or use another run name"
            ) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


class BlockingLock:
    """An exclusive flock that waits (for shared stages produced by whichever task is first)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> BlockingLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


class Runner:
    """Runs the requested stages in order, skipping those whose manifest matches."""

    def __init__(self, config: PipelineConfig, track: bool = True) -> None:
        self.config = config
        self.run_dir = config.run_dir
        self.track = track
        self.context = RunContext(config=config, run_dir=self.run_dir, stage_dir=self.stage_dir)

    def stage_dir(self, stage: str) -> Path:
        """Where a stage's output lives. Sweep variants share tokenized data: it sits under the
        sweep's root, keyed by the tokenize key (variants of different tasks do not collide)."""
        if stage in SHARED_STAGES and self.config.variant is not None:
            key = self.stage_key(stage)[0]
            return self.config.sweep_dir / "shared" / f"{stage}-{key}"
        return self.run_dir / stage

    def stage_lock(self, stage: str):
        """Shared stages are produced once: concurrent array tasks wait for the first."""
        if stage not in SHARED_STAGES or self.config.variant is None:
            return contextlib.nullcontext()
        shared = self.stage_dir(stage)
        return BlockingLock(shared.parent / f".{shared.name}.lock")

    def stage_key(self, stage: str) -> tuple[str, dict[str, str]]:
        inputs = {}
        for upstream in UPSTREAM[stage]:
            manifest = read_manifest(self.stage_dir(upstream))
            inputs[upstream] = manifest["digest"] if manifest else "missing"
        blob = json.dumps(
            {"stage": stage, "config": stage_key_inputs(self.config, stage), "inputs": inputs},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16], inputs

    def is_cached(self, stage: str) -> bool:
        manifest = read_manifest(self.stage_dir(stage))
        return manifest is not None and manifest.get("key") == self.stage_key(stage)[0]

    def plan(self, stages: tuple[str, ...] = STAGES) -> dict[str, str]:
        """Which stages would run and which are cached (upstream changes cascade)."""
        plan, dirty = {}, False
        for stage in STAGES:
            cached = self.is_cached(stage) and not dirty
            if stage in stages:
                plan[stage] = "cached" if cached else "run"
            dirty = dirty or not cached
        return plan

    def run_stage(self, stage: str, force: bool = False) -> StageResult:
        """Run one stage unless cached. Only rank 0 writes outputs and the manifest."""
        with self.stage_lock(stage):
            return self._run_stage(stage, force)

    def _run_stage(self, stage: str, force: bool) -> StageResult:
        from .distributed import barrier, dist_env

        rank = dist_env()[0]
        final = self.stage_dir(stage)
        key, inputs = self.stage_key(stage)
        manifest = read_manifest(final)
        if not force and manifest and manifest.get("key") == key:
            log.info("%s: cached (%s)", stage, final)
            return StageResult(stage, "cached", 0.0, manifest.get("summary", {}), final)
        if stage == "train" and self.needs_launcher():
            return self.launch_distributed(stage, force)
        work = final.parent / f".{final.name}.partial"  # never taken as complete: no manifest
        if rank == 0:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        barrier()
        self.context.stage, self.context.stage_key, self.context.work_dir = stage, key, work
        start = time.perf_counter()
        summary: dict[str, Any] = {}
        try:
            if stage == "train" or rank == 0:  # only training is data-parallel; ranks > 0 wait
                summary = importlib.import_module(f"stages.{stage}").run(self.context) or {}
        except BaseException:
            if rank == 0:
                shutil.rmtree(work, ignore_errors=True)
            raise
        seconds = time.perf_counter() - start
        if rank == 0:
            self._commit(stage, work, final, key, inputs, seconds, summary)
        barrier()
        return StageResult(stage, "ran", seconds, summary, final)

    def _commit(self, stage, work, final, key, inputs, seconds, summary) -> None:
        """Rename the finished work dir into place, then write its manifest last."""
        outputs = checksum_tree(work)
        digest = hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        write_json_atomic(
            final / MANIFEST,
            {
                "stage": stage,
                "key": key,
                "config_hash": self.config.config_hash,
                "inputs": inputs,
                "outputs": outputs,
                "digest": digest,
                "seconds": round(seconds, 3),
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "summary": summary,
            },
        )

    def needs_launcher(self) -> bool:
        from .distributed import is_distributed_launch

        return self.config.distributed.world_size > 1 and not is_distributed_launch()

    def launch_distributed(self, stage: str, force: bool) -> StageResult:
        """Start ``stage`` under torchrun on this node (nnodes > 1: launch with srun)."""
        import subprocess
        import sys

        import yaml

        from .training import Preempted

        dist = self.config.distributed
        if dist.nnodes > 1:
            raise StageError(
                f"distributed.nnodes={dist.nnodes}: start multi-node training with srun + "
                "torchrun on every node (see slurm/train_llama.sh), not from one process"
            )
        launch_dir = self.run_dir / ".scratch" / stage
        launch_dir.mkdir(parents=True, exist_ok=True)
        launch_config = launch_dir / "launch_config.yaml"
        launch_config.write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        launch_config.chmod(0o600)
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={dist.nproc_per_node}",
            "-m",
            "pipeline.cli",
            "run",
            str(launch_config),
            "--stages",
            stage,
        ] + (["--force"] if force else [])
        env = dict(
            os.environ,
            PIPELINE_LOCK_HELD="1",
            OMP_NUM_THREADS=os.environ.get(
                "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // dist.nproc_per_node))
            ),
        )
        log.info("launching %s on %d ranks: %s", stage, dist.nproc_per_node, " ".join(command))
        marker = launch_dir / PREEMPTED_MARKER
        marker.unlink(missing_ok=True)
        start = time.perf_counter()
        # torchrun gets its own session: a signal to our process group reaches it exactly once,
        # forwarded as SIGTERM (which torchrun passes to the workers and then waits for them)
        proc = subprocess.Popen(command, env=env, start_new_session=True)

        def forward(signum, frame) -> None:
            log.warning("received %s: asking the ranks to checkpoint", signal.Signals(signum).name)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)

        previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGUSR1)}
        try:
            returncode = proc.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if marker.is_file():
            stopped = json.loads(marker.read_text())
            marker.unlink()
            raise Preempted(stopped["step"], stopped["checkpoint"])
        manifest = read_manifest(self.stage_dir(stage))
        if returncode != 0 or manifest is None or manifest["key"] != self.stage_key(stage)[0]:
            raise StageError(
                f"{stage} on {dist.nproc_per_node} ranks failed "
                f"(exit code {returncode}); see the log above"
            )
        return StageResult(
            stage,
            "ran",
            time.perf_counter() - start,
            manifest.get("summary", {}),
            self.stage_dir(stage),
        )

    def run(self, stages: tuple[str, ...] = STAGES, force: bool = False) -> list[StageResult]:
        from .distributed import dist_env, init_process_group, is_distributed_launch
        from .tracking import Tracker, check_reachable, redact, tracking_uri

        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise StageError(f"--stages: unknown stage(s) {unknown}; known: {', '.join(STAGES)}")
        if is_distributed_launch():
            init_process_group()
        rank = dist_env()[0]
        if self.track and rank == 0:
            check_reachable(tracking_uri(self.config))  # fail fast, before any work
        ensure_writable(self.run_dir)
        take_lock = rank == 0 and not os.environ.get("PIPELINE_LOCK_HELD")
        with RunLock(self.run_dir) if take_lock else contextlib.nullcontext():
            if rank == 0:
                write_json_atomic(
                    self.run_dir / "config.resolved.json", redact(self.config.to_dict())
                )
            tracker = Tracker(self.config).start() if self.track and rank == 0 else None
            self.context.tracker = tracker
            results, status = [], "FAILED"
            try:
                if tracker:
                    tracker.log_resolved_config()
                for stage in (s for s in STAGES if s in stages):
                    results.append(self.run_stage(stage, force))
                    if tracker:
                        tracker.stage_done(stage, results[-1].status, results[-1].path)
                status = "FINISHED"
            except BaseException as exc:
                from .training import Preempted

                status = "KILLED" if isinstance(exc, Preempted | KeyboardInterrupt) else "FAILED"
                raise
            finally:
                if tracker:
                    tracker.end(status)
            return results
