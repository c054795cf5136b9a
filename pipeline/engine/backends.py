"""The two ways to run a training step, chosen by the config.

- ``distributed.deepspeed: false`` — :class:`LocalBackend`: one process, plain PyTorch (CPU or
  one GPU).
- ``distributed.deepspeed: true`` — :class:`DeepSpeedBackend` over ``world_size`` ranks (gloo on
  CPU, NCCL on GPU). Mode (a), bf16/fp32 base: the whole wrapped model is the engine's module, so
  ZeRO-3 partitions the frozen weights too (loaded partitioned: :func:`load_training_base`) and
  keeps optimiser state only for the adapter. Mode (b), 8-bit base: the int8 base stays
  replicated outside ZeRO (it cannot be partitioned); the engine's module holds only the adapter,
  whose parameters, gradients and optimiser state ZeRO shards.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..core.config import PipelineConfig
from ..core.stage import RunContext
from ..methods import SoftPromptModel
from ..util.deepspeed_import import import_deepspeed
from ..util.files import load_json
from ..util.ranks import dist_env
from .checkpoint import rng_state, set_rng_state
from .deepspeed_config import fill_ds_config, zero3_loading
from .distributed import all_reduce_mean
from .models import context_base_model
from .optim import build_optimizer, build_scheduler


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
        meta = load_json(directory / "state.json")
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
        deepspeed = import_deepspeed()

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


def build_backend(model: SoftPromptModel, config: PipelineConfig):
    if config.distributed.deepspeed:
        return DeepSpeedBackend(model, config)
    return LocalBackend(model, config)


def load_training_base(ctx: RunContext):
    """The frozen base for training: under DeepSpeed ZeRO-3 mode (a) partitioned as it loads
    (``deepspeed.zero.Init`` via transformers), so no rank ever holds the whole model."""
    config = ctx.config
    if not config.distributed.deepspeed:
        return context_base_model(ctx)
    world = dist_env()[1]
    return context_base_model(ctx, lambda: zero3_loading(config, world), key=f"zero3-{world}")
