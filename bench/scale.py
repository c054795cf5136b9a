"""Scale: ADePT on a Llama-shaped 1.57B-parameter model (random init, bf16) under DeepSpeed
ZeRO-3 on 2 CPU ranks vs one process: per-rank frozen weights held, peak and steady RSS, s/step.

    OMP_WAIT_POLICY=PASSIVE python bench/scale.py           # runs both and prints the table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import PipelineConfig  # noqa: E402
from pipeline.distributed import (  # noqa: E402
    DeepSpeedBackend,
    dist_env,
    init_process_group,
    zero3_loading,
)
from pipeline.methods import ADePT  # noqa: E402

DIMS = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=16,
)


SMOKE_DIMS = dict(
    DIMS,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)


def worker(steps: int, seq: int, dims: dict) -> None:
    init_process_group()
    rank, world, _ = dist_env()
    config = PipelineConfig.model_validate(
        {
            "name": "scale",
            "model": {"dtype": "bfloat16"},
            "train": {"batch_size": 1, "steps": steps, "warmup_steps": 0},
            "distributed": {"deepspeed": True, "zero_stage": 3, "nproc_per_node": world},
        }
    )
    torch.manual_seed(0)
    with zero3_loading(config, world):  # the pipeline's mode (a): partitioned as it is built
        base = AutoModelForCausalLM.from_config(LlamaConfig(**dims), dtype=torch.bfloat16).eval()
    base.requires_grad_(False)
    total = sum(getattr(p, "ds_numel", p.numel()) for p in base.parameters())
    model = ADePT(base, num_virtual_tokens=60)
    backend = DeepSpeedBackend(model, config)
    frozen_local = sum(
        p.ds_tensor.numel()
        for p in backend.module.parameters()
        if not p.requires_grad and hasattr(p, "ds_tensor")
    )
    ids = torch.randint(10, 32000, (1, seq), generator=torch.Generator().manual_seed(rank))
    labels = ids.clone()
    labels[:, :-1] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        backend.train_step([batch])
        times.append(time.perf_counter() - start)
    Path(os.environ["SCALE_OUT"], f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world": world,
                "parameters": total,
                "frozen_elements_held": frozen_local,
                "fraction_held": frozen_local / total,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_now_mb": psutil.Process().memory_info().rss / 2**20,
                "seconds_per_step": sorted(times)[len(times) // 2],
            }
        )
    )


def launch(nproc: int, steps: int, seq: int, smoke: bool) -> list[dict]:
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, 2 // nproc)), PYTHONPATH=pythonpath)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        __file__,
        "--worker",
        "--steps",
        str(steps),
        "--seq",
        str(seq),
        *(["--smoke"] if smoke else []),
    ]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(cmd, env={**env, "SCALE_OUT": out}, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{nproc}-rank run failed:\n{proc.stderr[-3000:]}")
        return [json.loads(f.read_text()) for f in sorted(Path(out).glob("rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--smoke", action="store_true", help="tiny dims: check the script runs")
    args = parser.parse_args()
    if args.worker:
        return worker(args.steps, args.seq, SMOKE_DIMS if args.smoke else DIMS)
    rows = launch(1, args.steps, args.seq, args.smoke) + launch(2, args.steps, args.seq, args.smoke)
    one = rows[0]
    print(
        json.dumps(
            {
                "bench": "scale",
                "dims": SMOKE_DIMS if args.smoke else DIMS,
                "rows": rows,
                "rank_rss_over_single": [r["rss_now_mb"] / one["rss_now_mb"] for r in rows[1:]],
            }
        )
    )
    print("\n| world | rank | params | frozen held | peak RSS MB | RSS after setup MB | s/step |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['world']} | {r['rank']} | {r['parameters']:,} | {r['fraction_held']:.3f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_now_mb']:.0f} | {r['seconds_per_step']:.1f} |"
        )


if __name__ == "__main__":
    main()
