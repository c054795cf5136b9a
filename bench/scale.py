"""Scale: ADePT on a Llama-shaped 1.57B-parameter model (random init, bf16) under DeepSpeed
ZeRO-3 on 2 CPU ranks vs one process: per-rank frozen weights held, peak and steady RSS, s/step.

    OMP_WAIT_POLICY=PASSIVE python bench/scale.py           # runs both and prints the table
    # the shared prompt prefix under ZeRO-3 (two decoder calls = two parameter gathers a step):
    OMP_WAIT_POLICY=PASSIVE python bench/scale.py --dims medium --batch 8 --compare-prefix
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
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

from pipeline.core.config import PipelineConfig  # noqa: E402
from pipeline.engine.backends import DeepSpeedBackend  # noqa: E402
from pipeline.engine.deepspeed_config import zero3_loading  # noqa: E402
from pipeline.engine.distributed import dist_env, init_process_group  # noqa: E402
from pipeline.methods import ADePT  # noqa: E402

DIMS = dict(
    vocab_size=32000,
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=16,
)


MEDIUM_DIMS = dict(  # ~165M parameters: compute and ZeRO-3 gathers both visible on 2 cores
    DIMS,
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=8,
    num_attention_heads=8,
    num_key_value_heads=8,
)
SMOKE_DIMS = dict(
    DIMS,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)

ALL_DIMS = {"full": DIMS, "medium": MEDIUM_DIMS, "smoke": SMOKE_DIMS}


def worker(steps: int, seq: int, dims: dict, batch_size: int, compare_prefix: bool) -> None:
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
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(10, 32000, (batch_size, seq), generator=generator)
    labels = ids.clone()
    labels[:, :-1] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    modes = (True, False) if compare_prefix else (model.shared_prefix,)
    times: dict[bool, list[float]] = {mode: [] for mode in modes}
    backend.train_step([batch])  # warm-up (first gathers, allocator)
    for _ in range(steps):
        for mode in modes:  # round-robin, so load drift hits both paths alike
            backend.module.shared_prefix = mode
            start = time.perf_counter()
            backend.train_step([batch])
            times[mode].append(time.perf_counter() - start)
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
                "batch": batch_size,
                **{
                    f"seconds_per_step{'_shared' if mode else '_unshared'}": statistics.median(t)
                    for mode, t in times.items()
                },
            }
        )
    )


def launch(nproc: int, args: argparse.Namespace) -> list[dict]:
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
        str(args.steps),
        "--seq",
        str(args.seq),
        "--batch",
        str(args.batch),
        "--dims",
        args.dims,
        *(["--compare-prefix"] if args.compare_prefix else []),
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
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument(
        "--dims", choices=sorted(ALL_DIMS), default="full", help="smoke: check the script runs"
    )
    parser.add_argument(
        "--compare-prefix", action="store_true", help="time shared vs unshared prompt prefix"
    )
    args = parser.parse_args()
    dims = ALL_DIMS[args.dims]
    if args.worker:
        return worker(args.steps, args.seq, dims, args.batch, args.compare_prefix)
    rows = launch(1, args) + launch(2, args)
    one = rows[0]
    print(
        json.dumps(
            {
                "bench": "scale",
                "dims": dims,
                "rows": rows,
                "rank_rss_over_single": [r["rss_now_mb"] / one["rss_now_mb"] for r in rows[1:]],
            }
        )
    )
    timed = [k for k in rows[0] if k.startswith("seconds_per_step")]
    print(
        "\n| world | rank | params | frozen held | peak RSS MB | RSS after setup MB | "
        + " | ".join(k.replace("seconds_per_step", "s/step") for k in timed)
        + " |"
    )
    print("|---" * (6 + len(timed)) + "|")
    for r in rows:
        print(
            f"| {r['world']} | {r['rank']} | {r['parameters']:,} | {r['fraction_held']:.3f} | "
            f"{r['peak_rss_mb']:.0f} | {r['rss_now_mb']:.0f} | "
            + " | ".join(f"{r[k]:.2f}" for k in timed)
            + " |"
        )


if __name__ == "__main__":
    main()
