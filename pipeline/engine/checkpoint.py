"""Training checkpoints: ``<scratch>/checkpoints/step_<N>/`` with the adapter (never the frozen
weights), optimiser, scheduler, per-rank RNG and the data position. A sha256 manifest written
last marks one complete; it is verified on resume, and a checkpoint of another stage key (another
config) is ignored.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from ..util.files import checksum_tree, load_json, sha256_file, write_json_atomic
from ..util.ranks import dist_env
from .distributed import barrier

log = logging.getLogger(__name__)

CHECKSUMS = "checksums.json"
CLIENT_STATE = "client_state.json"
KEEP_CHECKPOINTS = 2  # complete checkpoints kept: the newest may be the one a crash corrupts


def write_checksums(directory: Path) -> None:
    sums = checksum_tree(directory, skip=(CHECKSUMS,))
    write_json_atomic(directory / CHECKSUMS, sums)


def verify_checkpoint(directory: Path) -> None:
    """Raise when a checkpoint is incomplete or any file differs from its recorded sha256."""
    manifest = directory / CHECKSUMS
    if not manifest.is_file():
        raise ValueError(f"checkpoint {directory} is incomplete (no {CHECKSUMS})")
    for name, digest in load_json(manifest).items():
        path = directory / name
        if not path.is_file() or sha256_file(path) != digest:
            raise ValueError(
                f"checkpoint {directory} is corrupt: {name} does not match its checksum; "
                "delete it to restart from the previous checkpoint or from scratch"
            )


def rng_state() -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])


class Checkpointer:
    """``<scratch>/checkpoints/step_<N>/`` directories; keeps the newest ``keep`` complete ones.
    ``backend`` (save/load of its own state) is the local or DeepSpeed backend."""

    def __init__(self, root: Path, stage_key: str, keep: int = KEEP_CHECKPOINTS) -> None:
        self.root, self.stage_key, self.keep = root / "checkpoints", stage_key, keep
        self.rank = dist_env()[0]

    def save(self, backend, step: int, client_state: dict[str, Any]) -> Path:
        directory = self.root / f"step_{step:08d}"
        if self.rank == 0 and directory.exists():
            shutil.rmtree(directory)
        barrier()
        backend.save(directory)
        barrier()
        if self.rank == 0:
            write_json_atomic(
                directory / CLIENT_STATE,
                {**client_state, "step": step, "stage_key": self.stage_key},
            )
            write_checksums(directory)  # written last: marks the checkpoint complete
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        barrier()
        return directory

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("step_*") if (p / CHECKSUMS).is_file())

    def latest(self) -> Path | None:
        """The newest complete checkpoint of this stage key; verified against its checksums."""
        for directory in reversed(self.complete()):
            state = load_json(directory / CLIENT_STATE)
            if state.get("stage_key") != self.stage_key:
                log.info("ignoring checkpoint %s from another config", directory)
                continue
            verify_checkpoint(directory)
            return directory
        return None

    def resume(self, backend) -> dict[str, Any] | None:
        directory = self.latest()
        if directory is None:
            return None
        backend.load(directory)
        state = load_json(directory / CLIENT_STATE)
        log.info("resumed from %s (step %d)", directory, state["step"])
        return state
