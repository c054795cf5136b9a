"""Process groups, DeepSpeed engine setup, and checkpoints for the train stage.

Two ways to train, chosen by the config:
- ``distributed.deepspeed: false`` — one process, plain PyTorch (CPU or one GPU).
- ``distributed.deepspeed: true`` — DeepSpeed over ``world_size`` ranks (gloo on CPU, NCCL on
  GPU). Mode (a), bf16/fp32 base: the whole wrapped model is the engine's module, so ZeRO-3
  partitions the frozen weights too and keeps optimiser state only for prompt + offset. Mode (b),
  8-bit base: the int8 base stays replicated outside ZeRO (it cannot be partitioned); the engine's
  module holds only the adapter, whose parameters, gradients and optimiser state ZeRO shards.

Checkpoints hold the adapter (never the frozen weights), optimiser, scheduler, per-rank RNG and
the data position; a sha256 manifest written last marks one complete and is verified on resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .config import PipelineConfig
from .methods import SoftPromptModel
from .training import build_optimizer, build_scheduler

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECKSUMS = "checksums.json"


# --------------------------------------------------------------------------- ranks
def dist_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's or Slurm's environment."""
    if "WORLD_SIZE" in os.environ:
        return (
            int(os.environ.get("RANK", 0)),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    if "SLURM_NTASKS" in os.environ and int(os.environ["SLURM_NTASKS"]) > 1:
        return (
            int(os.environ["SLURM_PROCID"]),
            int(os.environ["SLURM_NTASKS"]),
            int(os.environ.get("SLURM_LOCALID", 0)),
        )
    return 0, 1, 0


def is_distributed_launch() -> bool:
    return dist_env()[1] > 1


def init_process_group() -> None:
    """Join the process group once (gloo on CPU, NCCL on GPU); a no-op for one process."""
    rank, world, local_rank = dist_env()
    if torch.distributed.is_initialized():
        return
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local_rank)})
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    import deepspeed

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, timeout=timedelta(minutes=30), verbose=False
    )


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def collective_device() -> torch.device:
    """Where small collective tensors must live: NCCL reduces CUDA tensors only."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(value: float) -> float:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=collective_device())
    torch.distributed.all_reduce(tensor)
    return float(tensor) / torch.distributed.get_world_size()


def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says True (e.g. a signal arrived on one of them)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    tensor = torch.tensor([int(flag)], device=collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


# --------------------------------------------------------------------------- DeepSpeed config
def ds_config_path(config: PipelineConfig) -> Path:
    name = config.distributed.ds_config or f"zero{config.distributed.zero_stage}.json"
    for candidate in (Path(name), REPO_ROOT / "ds_configs" / name):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"distributed.ds_config: {name} not found (looked in ds_configs/)")


def fill_ds_config(config: PipelineConfig, world_size: int) -> dict[str, Any]:
    """Load the DeepSpeed JSON and replace its "auto" values from the pipeline config."""
    path = ds_config_path(config)
    data = json.loads(path.read_text())
    train = config.train
    values = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.max_grad_norm,
        "bf16.enabled": config.model.dtype == "bfloat16" and not config.model.load_in_8bit,
        "fp16.enabled": config.model.dtype == "float16",
        "zero_optimization.stage": config.distributed.zero_stage,
    }

    def fill(node: dict[str, Any], prefix: str = "") -> None:
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, dict):
                fill(value, f"{dotted}.")
            elif value == "auto":
                if dotted not in values:
                    raise ValueError(f'{path}: no pipeline value fills "auto" at {dotted}')
                node[key] = values[dotted]

    fill(data)
    stage = data.get("zero_optimization", {}).get("stage")
    if stage != config.distributed.zero_stage:
        raise ValueError(
            f"{path}: zero_optimization.stage={stage} but distributed.zero_stage="
            f"{config.distributed.zero_stage}"
        )
    return data


# --------------------------------------------------------------------------- checkpoints
def write_checksums(directory: Path) -> None:
    from .runner import checksum_tree, write_json_atomic

    sums = {k: v for k, v in checksum_tree(directory).items() if k != CHECKSUMS}
    write_json_atomic(directory / CHECKSUMS, sums)


def verify_checkpoint(directory: Path) -> None:
    """Raise when a checkpoint is incomplete or any file differs from its recorded sha256."""
    from .runner import sha256_file

    manifest = directory / CHECKSUMS
    if not manifest.is_file():
        raise ValueError(f"checkpoint {directory} is incomplete (no {CHECKSUMS})")
    for name, digest in json.loads(manifest.read_text()).items():
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


# --------------------------------------------------------------------------- backends
class LocalBackend:
    """One process, plain PyTorch: AdamW (two lr groups), linear schedule, clipping."""

    rank, world_size = 0, 1

    def __init__(self, model: SoftPromptModel, config: PipelineConfig) -> None:
        self.model, self.train_cfg = model, config.train
        self.optimizer = build_optimizer(model, config.train)
        self.scheduler = build_scheduler(self.optimizer, config.train)
        self.params = [p for p in model.parameters() if p.requires_grad]

    @property
    def module(self) -> SoftPromptModel:
        return self.model

    def learning_rates(self) -> dict[str, float]:
        return {g["name"]: g["lr"] for g in self.optimizer.param_groups}

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        losses = []
        for batch in micro_batches:
            loss = self.model(**batch).loss
            (loss / len(micro_batches)).backward()
            losses.append(loss.item())
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.train_cfg.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sum(losses) / len(losses), float(norm)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return self.model.adapter_state_dict()

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"adapter.{k}": v.contiguous() for k, v in self.adapter_state().items()}
        state = self.optimizer.state_dict()
        for index, slots in state["state"].items():
            for slot, value in slots.items():
                tensors[f"optimizer.{index}.{slot}"] = torch.as_tensor(value).contiguous()
        tensors.update({f"rng.{k}": v for k, v in rng_state().items()})
        save_file(tensors, directory / "state.safetensors")
        (directory / "state.json").write_text(
            json.dumps(
                {
                    "param_groups": state["param_groups"],
                    "scheduler": self.scheduler.state_dict(),
                }
            )
        )

    def load(self, directory: Path) -> None:
        tensors = load_file(directory / "state.safetensors")
        meta = json.loads((directory / "state.json").read_text())
        adapter = {
            k.removeprefix("adapter."): v for k, v in tensors.items() if k.startswith("adapter.")
        }
        self.model.load_state_dict(adapter, strict=False)
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, index, slot = key.split(".", 2)
                slots.setdefault(int(index), {})[slot] = value
        self.optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
        self.scheduler.load_state_dict(meta["scheduler"])
        set_rng_state(
            {k.removeprefix("rng."): v for k, v in tensors.items() if k.startswith("rng.")}
        )


class DeepSpeedBackend:
    """A DeepSpeed engine over the wrapped model (mode a) or over the adapter only (mode b)."""

    def __init__(self, model: SoftPromptModel, config: PipelineConfig) -> None:
        import deepspeed

        self.rank, self.world_size, _ = dist_env()
        ds_config = fill_ds_config(config, self.world_size)
        optimizer = build_optimizer(model, config.train)  # torch AdamW: no fused_adam build
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=lambda opt: build_scheduler(opt, config.train),
            config=ds_config,
        )
        self.params = [p for p in model.parameters() if p.requires_grad]

    @property
    def module(self) -> SoftPromptModel:
        return self.engine.module

    def learning_rates(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> tuple[float, float]:
        losses = []
        device = self.engine.device
        for batch in micro_batches:
            loss = self.engine(**{k: v.to(device) for k, v in batch.items()}).loss
            self.engine.backward(loss)  # DeepSpeed divides by gradient_accumulation_steps
            self.engine.step()  # updates only at the accumulation boundary
            losses.append(loss.item())
        norm = self.engine.get_global_grad_norm()
        return all_reduce_mean(sum(losses) / len(losses)), float(norm or 0.0)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The full adapter tensors on every rank (gathered from ZeRO-3 partitions)."""
        import deepspeed

        names = [n for n, p in self.module.named_parameters() if p.requires_grad]
        with deepspeed.zero.GatheredParameters(self.params, modifier_rank=None):
            return {
                n: p.detach().clone().float().cpu() for n, p in zip(names, self.params, strict=True)
            }

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(
            str(directory.parent), tag=directory.name, exclude_frozen_parameters=True
        )
        save_file(rng_state(), directory / f"rng_rank{self.rank}.safetensors")

    def load(self, directory: Path) -> None:
        self.engine.load_checkpoint(
            str(directory.parent), tag=directory.name, load_module_strict=False
        )
        set_rng_state(load_file(directory / f"rng_rank{self.rank}.safetensors"))


@contextlib.contextmanager
def zero3_loading(config: PipelineConfig, world_size: int) -> Iterator[None]:
    """Mode (a) under ZeRO-3: models built or loaded inside are partitioned at construction
    (transformers sees a live ``HfDeepSpeedConfig``), so per-rank memory is 1/world of the
    frozen weights from the start. A no-op for other modes and without DeepSpeed."""
    dist = config.distributed
    if not (dist.deepspeed and dist.zero_stage == 3 and not config.model.load_in_8bit):
        yield
        return
    from transformers.integrations import HfDeepSpeedConfig

    keep_alive = HfDeepSpeedConfig(fill_ds_config(config, world_size))  # noqa: F841 (weakref)
    yield


def build_backend(model: SoftPromptModel, config: PipelineConfig):
    if config.distributed.deepspeed:
        return DeepSpeedBackend(model, config)
    return LocalBackend(model, config)


class Checkpointer:
    """``<scratch>/checkpoints/step_<N>/`` directories; keeps the newest ``keep`` complete ones."""

    def __init__(self, root: Path, stage_key: str, keep: int = 2) -> None:
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
            from .runner import write_json_atomic

            write_json_atomic(
                directory / "client_state.json",
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
            state = json.loads((directory / "client_state.json").read_text())
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
        state = json.loads((directory / "client_state.json").read_text())
        log.info("resumed from %s (step %d)", directory, state["step"])
        return state
