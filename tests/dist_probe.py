"""Run under torchrun by test_distributed.py: per-rank ZeRO facts as JSON, one file per rank.

torchrun --nproc_per_node 2 tests/dist_probe.py MODEL_DIR OUT_DIR MODE  # bf16 | int8 | offload
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipeline.core.config import PipelineConfig
from pipeline.engine.backends import DeepSpeedBackend
from pipeline.engine.deepspeed_config import zero3_loading
from pipeline.engine.distributed import init_process_group
from pipeline.engine.models import load_model
from pipeline.methods import wrap
from pipeline.util.ranks import dist_env, exit_process


def main() -> None:
    model_dir, out_dir, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    int8 = mode == "int8"
    ds_config = "zero3_offload.json" if mode == "offload" else "zero3.json"
    config = PipelineConfig.model_validate(
        {
            "name": "probe",
            "model": {
                "source": model_dir,
                "dtype": "bfloat16",
                "attention": "sdpa",
                "load_in_8bit": int8,
            },
            "method": {"name": "adept", "num_virtual_tokens": 4, "budget_tokens": 10},
            "train": {
                "steps": 2,
                "batch_size": 2,
                "lr": {"prompt": 0.1, "offset": 0.01},
                "warmup_steps": 0,
            },
            "distributed": {
                "nproc_per_node": 2,
                "deepspeed": True,
                "zero_stage": 3,
                "ds_config": ds_config,
            },
        }
    )
    init_process_group()
    rank, world, _ = dist_env()
    with zero3_loading(config, world):  # the train stage's loading path
        base = load_model(model_dir, "bfloat16", "sdpa", load_in_8bit=int8, device="cpu")
    held_at_load = sum(getattr(p, "ds_tensor", p).numel() for p in base.parameters())
    torch.manual_seed(0)
    model = wrap(base, config.method_config(base.config.get_text_config()), register_base=not int8)
    base_before = {n: p.detach().clone() for n, p in base.named_parameters()} if int8 else {}
    backend = DeepSpeedBackend(model, config)
    adapter_before = backend.adapter_state()

    opt = backend.optimizer
    fp32_partition = sum(t.numel() for t in opt.fp32_partitioned_groups_flat)
    frozen = [p for p in backend.module.parameters() if not p.requires_grad]
    frozen_local = sum(p.ds_tensor.numel() for p in frozen if hasattr(p, "ds_tensor"))
    frozen_total = sum(getattr(p, "ds_numel", p.numel()) for p in frozen)

    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(5, 200, (2, 10), generator=g)
    labels = ids.clone()
    labels[:, :8] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    module = backend.module.eval()  # the shared prompt prefix against the usual path, ZeRO-3
    with torch.no_grad():
        forward = {}
        for shared in (False, True):
            module.shared_prefix = shared
            forward[str(shared).lower()] = float(module(**batch).loss)
    module.train()
    losses = [backend.train_step([batch])[0] for _ in range(2)]
    adapter_after = backend.adapter_state()
    changed = {
        n: bool((adapter_after[n] - adapter_before[n]).abs().max() > 0) for n in adapter_after
    }
    base_unchanged = (
        all(torch.equal(p, base_before[n]) for n, p in base.named_parameters()) if int8 else None
    )
    int8_layers = sum(type(m).__name__ == "Linear8bitLt" for m in base.modules())
    (out_dir / f"rank{rank}.json").write_text(
        json.dumps(
            {
                "world": world,
                "trainable": model.expected_trainable_parameters(),
                "optimizer_partition_elements": fp32_partition,
                "frozen_local_elements": frozen_local,
                "frozen_total_elements": frozen_total,
                "engine_param_names": sorted(n for n, _ in backend.module.named_parameters()),
                "losses": losses,
                "forward_loss": forward,
                "adapter_changed": changed,
                "base_unchanged": base_unchanged,
                "int8_layers": int8_layers,
                "held_at_load_elements": held_at_load,
            }
        )
    )


if __name__ == "__main__":
    main()
    exit_process(0)
