"""The runner: stages in order, cache hits, manifests, the run-directory lock.

The stages come from their own declarations (``stages.PIPELINE``; see
:class:`pipeline.core.stage.Stage`). Each stage writes into a temporary directory that is renamed
to ``runs/<name>/<stage>/`` when it succeeds; its ``manifest.json`` (stage key, config hash,
input digests, output checksums) is written last. A stage whose manifest matches its key is a
cache hit; ``--force`` re-runs it. A key is the hash of the config values the stage declares plus
the output digests of its upstream stages (and the stage's code version once raised), so changing
a learning rate re-runs train/evaluate/export but not tokenize/shard. A distributed stage asked
for several ranks is started under torchrun (pipeline/launch/commands.py) unless this process
already is a rank.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from stages import PIPELINE

from .core.config import LAUNCH_CONFIG_ENV, PipelineConfig
from .core.stage import RunContext, Stage, StageError, StageResult, read_manifest
from .engine.distributed import barrier, init_process_group
from .engine.hardware import with_resolved_dtype
from .engine.models import cache_dir
from .launch.commands import distributed_stage_command, rank_env
from .launch.signals import Preempted, clear_marker, raise_if_marked, run_forwarding_signals
from .launch.slurm import NodeFailures
from .tracking.tracker import Tracker, check_reachable, tracking_uri
from .util.files import (
    MANIFEST,
    checksum_tree,
    disk_full,
    ensure_writable,
    read_json,
    tree_bytes,
    write_json_atomic,
)
from .util.locks import BlockingLock, RunLock
from .util.ranks import dist_env, is_distributed_launch
from .util.secrets import redact

log = logging.getLogger(__name__)

STAGE_NAMES = tuple(stage.name for stage in PIPELINE)
BY_NAME = {stage.name: stage for stage in PIPELINE}
ORIGIN_FILE = "origin.json"  # the config file this run directory belongs to


class Runner:
    """Runs the requested stages in order, skipping those whose manifest matches."""

    def __init__(
        self, config: PipelineConfig, track: bool = True, config_file: Path | None = None
    ) -> None:
        config = with_resolved_dtype(config, cache_dir())  # auto → this machine's dtype
        self.config = config
        self.config_file = config_file
        self.run_dir = config.run_dir
        self.track = track
        self.context = RunContext(config=config, run_dir=self.run_dir, stage_dir=self.stage_dir)

    # ------------------------------------------------------------------ keys and places
    def stage_dir(self, name: str) -> Path:
        """Where a stage's output lives. Sweep variants share a shared stage's output (the
        tokenized data): it sits under the sweep's root, keyed by the stage key."""
        if BY_NAME[name].shared and self.config.variant is not None:
            key = self.stage_key(BY_NAME[name])[0]
            return self.config.sweep_dir / "shared" / f"{name}-{key}"
        return self.run_dir / name

    def stage_lock(self, stage: Stage):
        """Shared stages are produced once: concurrent array tasks wait for the first."""
        if not stage.shared or self.config.variant is None:
            return contextlib.nullcontext()
        shared = self.stage_dir(stage.name)
        return BlockingLock(shared.parent / f".{shared.name}.lock")

    def stage_key(self, stage: Stage) -> tuple[str, dict[str, str]]:
        inputs = {}
        for upstream in stage.upstream:
            manifest = read_manifest(self.stage_dir(upstream))
            inputs[upstream] = manifest["digest"] if manifest else "missing"
        keyed = {"stage": stage.name, "config": stage.key_inputs(self.config), "inputs": inputs}
        if stage.version > 1:
            keyed["version"] = stage.version
        blob = json.dumps(keyed, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16], inputs

    def is_cached(self, stage: Stage) -> bool:
        manifest = read_manifest(self.stage_dir(stage.name))
        return manifest is not None and manifest.get("key") == self.stage_key(stage)[0]

    def plan(self, names: tuple[str, ...] = STAGE_NAMES) -> dict[str, str]:
        """Which stages would run and which are cached (upstream changes cascade)."""
        plan, dirty = {}, False
        for stage in PIPELINE:
            cached = self.is_cached(stage) and not dirty
            if stage.name in names:
                plan[stage.name] = "cached" if cached else "run"
            dirty = dirty or not cached
        return plan

    # ------------------------------------------------------------------ running one stage
    def run_stage(self, stage: Stage, force: bool = False) -> StageResult:
        """Run one stage unless cached. Only rank 0 writes outputs and the manifest."""
        with self.stage_lock(stage):
            return self._run_stage(stage, force)

    def _run_stage(self, stage: Stage, force: bool) -> StageResult:
        rank = dist_env()[0]
        final = self.stage_dir(stage.name)
        key, inputs = self.stage_key(stage)
        manifest = read_manifest(final)
        if not force and manifest and manifest.get("key") == key:
            log.info("%s: cached (%s)", stage.name, final)
            return StageResult(stage.name, "cached", 0.0, manifest.get("summary", {}), final)
        if force and not is_distributed_launch():  # --force: a fresh run, never a resume
            shutil.rmtree(self.run_dir / ".scratch" / stage.name, ignore_errors=True)
        if stage.distributed and self.needs_launcher():
            return self.launch_distributed(stage, force)
        work = final.parent / f".{final.name}.partial"  # never taken as complete: no manifest
        if rank == 0:
            if work.exists():
                shutil.rmtree(work)
            work.mkdir(parents=True)
        barrier()
        self.context.stage, self.context.stage_key, self.context.work_dir = stage.name, key, work
        start = time.perf_counter()
        summary: dict[str, Any] = {}
        try:
            if stage.distributed or rank == 0:  # other stages run on rank 0; the rest wait
                summary = stage.run(self.context) or {}
        except BaseException as exc:
            written = tree_bytes(work) if rank == 0 else 0
            if rank == 0:
                shutil.rmtree(work, ignore_errors=True)
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise disk_full(stage.name, work, written) from None
            raise
        seconds = time.perf_counter() - start
        if rank == 0:
            self._commit(stage, work, final, key, inputs, seconds, summary)
        barrier()
        return StageResult(stage.name, "ran", seconds, summary, final)

    def _commit(self, stage, work, final, key, inputs, seconds, summary) -> None:
        """Check the declared outputs, rename the work dir into place, write the manifest last."""
        missing = [name for name in stage.outputs if not (work / name).exists()]
        if missing:
            shutil.rmtree(work, ignore_errors=True)
            raise StageError(f"stage {stage.name!r} finished without its outputs {missing}")
        outputs = checksum_tree(work)
        digest = hashlib.sha256(json.dumps(outputs, sort_keys=True).encode()).hexdigest()
        if final.exists():
            shutil.rmtree(final)
        work.rename(final)
        write_json_atomic(
            final / MANIFEST,
            {
                "stage": stage.name,
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

    def check_origin(self) -> None:
        """One run directory, one config file: a second YAML file with the same ``name`` would
        silently overwrite the first one's outputs and continue its MLflow run."""
        if self.config_file is None:
            return
        here = str(Path(self.config_file).resolve())
        recorded = read_json(self.run_dir / ORIGIN_FILE)
        if recorded is None:
            write_json_atomic(self.run_dir / ORIGIN_FILE, {"config_file": here})
        elif recorded["config_file"] != here:
            raise StageError(
                f"{self.run_dir} holds the run of {recorded['config_file']}; {here} has the same "
                "name: give it another `name:` (or delete that run directory to start over)"
            )

    def needs_launcher(self) -> bool:
        return self.config.distributed.world_size > 1 and not is_distributed_launch()

    def launch_distributed(self, stage: Stage, force: bool) -> StageResult:
        """Run ``stage`` on every rank (pipeline/launch/commands.py) and wait for it."""
        dist = self.config.distributed
        launch_dir = self.run_dir / ".scratch" / stage.name
        launch_dir.mkdir(parents=True, exist_ok=True)
        launch_config = launch_dir / "launch_config.yaml"
        launch_config.write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        launch_config.chmod(0o600)
        command = distributed_stage_command(
            launch_config, stage.name, dist.nproc_per_node, dist.nnodes, force
        )
        log.info("launching %s on %d ranks: %s", stage.name, dist.world_size, " ".join(command))
        clear_marker(launch_dir)
        start = time.perf_counter()
        failures = NodeFailures() if dist.nnodes > 1 else None
        # the ranks read the resolved config the runner wrote, internal keys included
        env = {**rank_env(dist.nproc_per_node), LAUNCH_CONFIG_ENV: str(launch_config.resolve())}
        returncode, _ = run_forwarding_signals(command, env, stderr_tap=failures)
        raise_if_marked(launch_dir)
        manifest = read_manifest(self.stage_dir(stage.name))
        if returncode != 0 or manifest is None or manifest["key"] != self.stage_key(stage)[0]:
            where = failures.summary() if failures else ""
            raise StageError(
                f"{stage.name} on {dist.world_size} ranks failed{where} (exit code {returncode}); "
                "see the log above. Checkpoints are kept: re-running resumes from the last one"
            )
        seconds = time.perf_counter() - start
        summary = manifest.get("summary", {})
        return StageResult(stage.name, "ran", seconds, summary, self.stage_dir(stage.name))

    # ------------------------------------------------------------------ the whole run
    def run(self, names: tuple[str, ...] = STAGE_NAMES, force: bool = False) -> list[StageResult]:
        unknown = [s for s in names if s not in BY_NAME]
        if unknown:
            raise StageError(
                f"--stages: unknown stage(s) {unknown}; known: {', '.join(STAGE_NAMES)}"
            )
        if is_distributed_launch():
            init_process_group()
        rank = dist_env()[0]
        if self.track and rank == 0:
            check_reachable(tracking_uri(self.config))  # fail fast, before any work
        ensure_writable(self.run_dir)
        if rank == 0 and not is_distributed_launch():
            self.check_origin()
        take_lock = rank == 0 and not os.environ.get("PIPELINE_LOCK_HELD")
        with RunLock(self.run_dir) if take_lock else contextlib.nullcontext():
            if rank == 0:
                resolved = redact(self.config.to_dict())
                write_json_atomic(self.run_dir / "config.resolved.json", resolved)
            tracker = Tracker(self.config).start() if self.track and rank == 0 else None
            self.context.tracker = tracker
            return self._run_all(names, force, tracker)

    def _run_all(self, names, force, tracker) -> list[StageResult]:
        results, status = [], "FAILED"
        try:
            if tracker:
                tracker.log_resolved_config()
            for stage in (s for s in PIPELINE if s.name in names):
                results.append(self.run_stage(stage, force))
                if tracker:
                    tracker.stage_done(stage, results[-1].status, results[-1].path)
            status = "FINISHED"
        except BaseException as exc:
            status = "KILLED" if isinstance(exc, Preempted | KeyboardInterrupt) else "FAILED"
            raise
        finally:
            if tracker:
                tracker.end(status)
        return results
