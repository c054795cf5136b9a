"""Scale: ADePT (m=60 at the PT-100 budget) on a Llama-shaped model (random weights) under
DeepSpeed ZeRO-3 on 2 CPU ranks vs one process: per-rank frozen weights held, peak and steady
RSS, optimiser-state bytes, s/step, and the loss of every step (it must move).

    OMP_WAIT_POLICY=PASSIVE python bench/scale.py           # 1.57B, both world sizes
    # the shared prompt prefix under ZeRO-3 (two decoder calls = two parameter gathers a step):
    OMP_WAIT_POLICY=PASSIVE python bench/scale.py --dims medium --batch 8 --compare-prefix
    # Llama-2-7B's shape through the train stage's loading path, 2 ranks, each mode:
    OMP_WAIT_POLICY=PASSIVE python bench/scale.py --dims llama2-7b --worlds 2 --mode a \
        --checkpoint /tmp/llama2-7b-random     # mode a: bf16 base partitioned (zero.Init)
    OMP_WAIT_POLICY=PASSIVE python bench/scale.py --dims llama2-7b --worlds 2 --mode b \
        --checkpoint /tmp/llama2-7b-random     # mode b: int8 base replicated, engine = adapter

With ``--checkpoint`` the base is loaded by the pipeline's own ``load_model`` (under
``zero.Init`` in mode a, ``BitsAndBytesConfig`` in mode b) from a random-weight safetensors
checkpoint that the first run writes there (13.5 GB for the 7B shape; shards of random
N(0, 0.02) weights, never a whole model in memory); without it, from the config in memory.
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
from pipeline.engine.distributed import init_process_group  # noqa: E402
from pipeline.engine.hardware import describe_machine  # noqa: E402
from pipeline.engine.models import load_model  # noqa: E402
from pipeline.methods import wrap  # noqa: E402
from pipeline.util.ranks import dist_env  # noqa: E402

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

LLAMA2_7B_DIMS = dict(  # meta-llama/Llama-2-7b-hf's config.json
    DIMS,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
)

ALL_DIMS = {"full": DIMS, "medium": MEDIUM_DIMS, "smoke": SMOKE_DIMS, "llama2-7b": LLAMA2_7B_DIMS}
SHARD_BYTES = 2 * 2**30


def write_random_checkpoint(dims: dict, directory: Path, seed: int = 0) -> None:
    """A Hugging Face safetensors checkpoint of the Llama shape ``dims`` with random bf16
    weights (norms 1), written shard by shard from a meta-device skeleton; atomic (temp dir,
    then rename)."""
    from safetensors.torch import save_file

    config = LlamaConfig(**dims)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    tmp = directory.with_name(directory.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    weight_map, shard, shard_bytes, total = {}, {}, 0, 0

    def flush() -> None:
        nonlocal shard, shard_bytes
        name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
        save_file(shard, str(tmp / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
        shard, shard_bytes = {}, 0

    for name, meta in skeleton.state_dict().items():
        if "norm" in name:
            tensor = torch.ones(meta.shape, dtype=torch.bfloat16)
        else:
            tensor = (torch.randn(meta.shape, generator=generator) * 0.02).to(torch.bfloat16)
        shard[name] = tensor
        shard_bytes += tensor.numel() * 2
        total += tensor.numel() * 2
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index))
    config.dtype = torch.bfloat16
    config.save_pretrained(tmp)
    tmp.rename(directory)


def optimizer_state_bytes(backend: DeepSpeedBackend) -> int:
    """Bytes of this rank's optimiser state: ZeRO-3's fp32 master partitions plus the torch
    optimiser's moment tensors."""
    zero = backend.optimizer
    masters = sum(t.numel() * t.element_size() for t in zero.fp32_partitioned_groups_flat)
    moments = sum(
        v.numel() * v.element_size()
        for slots in zero.optimizer.state.values()
        for v in slots.values()
        if torch.is_tensor(v) and v.dim() > 0
    )
    return masters + moments


def load_base(config: PipelineConfig, dims: dict, checkpoint: str | None, world: int):
    """Mode a: partitioned as it is built (``zero.Init``, the train stage's loading); mode b:
    int8 via bitsandbytes, whole on every rank."""
    if config.model.load_in_8bit:
        return load_model(checkpoint, "bfloat16", load_in_8bit=True)
    with zero3_loading(config, world):
        if checkpoint:
            return load_model(checkpoint, "bfloat16")
        return AutoModelForCausalLM.from_config(LlamaConfig(**dims), dtype=torch.bfloat16).eval()


def anon_rss_mb() -> float:
    """Resident anonymous memory (what the OOM killer counts; RSS adds mapped file pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def progress(rank: int, what: str) -> None:
    """A line on stderr per phase (rank 0), with this rank's peak RSS so far."""
    if rank == 0:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        anon = anon_rss_mb() / 1024
        print(
            f"[scale] {what}; peak RSS {peak:.2f} GB, anon now {anon:.2f} GB",
            file=sys.stderr,
            flush=True,
        )


def worker(args: argparse.Namespace, dims: dict) -> None:
    init_process_group()
    rank, world, _ = dist_env()
    int8 = args.mode == "b"
    config = PipelineConfig.model_validate(
        {
            "name": "scale",
            "model": {"dtype": "bfloat16", "load_in_8bit": int8},
            "method": {"name": "adept", "num_virtual_tokens": 60, "budget_tokens": 100},
            "train": {"batch_size": 1, "steps": args.steps, "warmup_steps": 0},
            "distributed": {
                "deepspeed": True,
                "zero_stage": 3,
                "nproc_per_node": world,
                "ds_config": args.ds_config,
            },
        }
    )
    torch.manual_seed(0)
    base = load_base(config, dims, args.checkpoint, world)
    progress(rank, "base loaded")
    base.requires_grad_(False)
    held = [getattr(p, "ds_tensor", p) for p in base.parameters()]
    total = sum(getattr(p, "ds_numel", p.numel()) for p in base.parameters())
    model = wrap(base, config.method_config(base.config), register_base=not int8)
    backend = DeepSpeedBackend(model, config)
    trainable = sum(getattr(p, "ds_numel", p.numel()) for p in backend.params)
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(10, dims["vocab_size"], (args.batch, args.seq), generator=generator)
    labels = ids.clone()
    labels[:, :-1] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    modes = (True, False) if args.compare_prefix else (model.shared_prefix,)
    times: dict[bool, list[float]] = {mode: [] for mode in modes}
    progress(rank, "engine built")
    losses = [backend.train_step([batch])[0]]  # warm-up (first gathers, allocator)
    progress(rank, f"warm-up step: loss {losses[0]:.4f}")
    for _ in range(args.steps):
        for mode in modes:  # round-robin, so load drift hits both paths alike
            backend.module.shared_prefix = mode
            start = time.perf_counter()
            losses.append(backend.train_step([batch])[0])
            times[mode].append(time.perf_counter() - start)
            progress(rank, f"step: loss {losses[-1]:.4f}, {times[mode][-1]:.1f} s")
    Path(os.environ["SCALE_OUT"], f"rank{rank}.json").write_text(
        json.dumps(
            {
                "rank": rank,
                "world": world,
                "mode": args.mode,
                "parameters": total,
                "trainable": trainable,
                "frozen_elements_held": sum(t.numel() for t in held),
                "frozen_bytes_held": sum(t.numel() * t.element_size() for t in held),
                "fraction_held": sum(t.numel() for t in held) / total,
                "optimizer_state_bytes": optimizer_state_bytes(backend),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "rss_now_mb": psutil.Process().memory_info().rss / 2**20,
                "anon_rss_now_mb": anon_rss_mb(),  # without file pages (mmap'd checkpoint)
                "batch": args.batch,
                "losses": losses,
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
        "--mode",
        args.mode,
        *(["--layers", str(args.layers)] if args.layers else []),
        *(["--ds-config", args.ds_config] if args.ds_config else []),
        *(["--checkpoint", args.checkpoint] if args.checkpoint else []),
        *(["--compare-prefix"] if args.compare_prefix else []),
    ]
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(cmd, env={**env, "SCALE_OUT": out}, stdout=subprocess.PIPE, text=True)
        if proc.returncode:
            raise SystemExit(f"{nproc}-rank run failed (exit {proc.returncode}; see stderr)")
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
    parser.add_argument(
        "--mode", choices=("a", "b"), default="a", help="a: bf16 base partitioned; b: int8 base"
    )
    parser.add_argument("--checkpoint", help="load the base from here (written if missing)")
    parser.add_argument("--worlds", default="1,2", help="world sizes to run, e.g. 2")
    parser.add_argument(
        "--layers", type=int, help="override the number of decoder layers (find what fits)"
    )
    parser.add_argument(
        "--ds-config", help="DeepSpeed JSON (ds_configs/); 7B on 24 GB: zero3_low_memory.json"
    )
    args = parser.parse_args()
    dims = ALL_DIMS[args.dims]
    if args.layers:
        dims = {**dims, "num_hidden_layers": args.layers}
    if args.worker:
        return worker(args, dims)
    if args.checkpoint and not Path(args.checkpoint).exists():
        write_random_checkpoint(dims, Path(args.checkpoint))
    rows = [row for world in args.worlds.split(",") for row in launch(int(world), args)]
    one = rows[0]
    print(
        json.dumps(
            {
                "bench": "scale",
                "machine": describe_machine(),
                "dims": dims,
                "rows": rows,
                "rank_rss_over_single": [r["rss_now_mb"] / one["rss_now_mb"] for r in rows[1:]],
            }
        )
    )
    timed = [k for k in rows[0] if k.startswith("seconds_per_step")]
    print(
        "\n| world | mode | rank | params | trainable | frozen held (elements, MB) | "
        "optimiser state MB | peak RSS MB | RSS (anon) after steps MB | "
        + " | ".join(k.replace("seconds_per_step", "s/step") for k in timed)
        + " | loss first → last |"
    )
    print("|---" * (10 + len(timed)) + "|")
    for r in rows:
        print(
            f"| {r['world']} | {r['mode']} | {r['rank']} | {r['parameters']:,} | "
            f"{r['trainable']:,} | {r['frozen_elements_held']:,} ({r['fraction_held']:.3f}), "
            f"{r['frozen_bytes_held'] / 2**20:,.0f} | {r['optimizer_state_bytes'] / 2**20:.2f} | "
            f"{r['peak_rss_mb']:,.0f} | {r['rss_now_mb']:,.0f} ({r['anon_rss_now_mb']:,.0f}) | "
            + " | ".join(f"{r[k]:.2f}" for k in timed)
            + f" | {r['losses'][0]:.4f} → {r['losses'][-1]:.4f} |"
        )


if __name__ == "__main__":
    main()
