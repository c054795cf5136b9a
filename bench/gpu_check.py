"""GPU path check: attention choice, CUDA bitsandbytes 8-bit, DeepSpeed ZeRO-3 over NCCL (modes a
and b, with peak memory), the ADePT vs PT-100 step/latency ratios, and frozen forward+backward
throughput / MFU over a batch × length grid, on random Llama-shaped models (no download).

    python bench/gpu_check.py --size 1b            # one GPU: prints one JSON line per check
    python bench/gpu_check.py --checks mfu --mfu-sizes 1b,7b   # the MFU grid on 1B and 7B shapes
    python bench/gpu_check.py --size tiny --device cpu   # the same checks on CPU (gloo), quick

MFU counts the FLOPs a frozen base spends when only its inputs need gradients (prompt tuning,
ADePT): forward 2·N per token plus attention 4·L·s·d, backward to the inputs the same 2·N plus
8·L·s·d (N: the decoder's matrix parameters; attention counted in full, as PaLM's appendix
does, although causal kernels skip half). Peak bf16 dense FLOP/s: a table of known GPUs or
``--peak-tflops``.

The DeepSpeed check re-runs this file under ``torchrun --nproc_per_node 1`` (``--ds-worker``).
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.engine.hardware import describe_machine
from pipeline.engine.models import flash_attention_available, load_model, resolve_attention
from pipeline.methods import ADePT, PromptTuning

SIZES = {
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    ),
    "1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
    "7b": dict(  # Llama-2-7B
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
    ),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}
MFU_GRID = {  # (batch, tokens) per size: the 7B grid stays within ~60 GiB of activations
    "tiny": [(1, 64), (4, 128)],
    "1b": [(1, 512), (8, 512), (8, 2048), (32, 512), (32, 1024)],
    "7b": [(1, 512), (4, 512), (1, 2048), (4, 2048), (8, 1024)],
}


def random_llama(size: str, device: str = "cpu", **config):
    """A random-weight Llama of ``size`` in bf16, built on ``device`` (seed 0)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=32000, max_position_embeddings=4096, **SIZES[size], **config)
    torch.manual_seed(0)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)


def save_random_llama(size: str, directory: Path) -> Path:
    random_llama(size).save_pretrained(directory)
    return directory


def batch(n: int, length: int, device: str, answer: int = 2) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 32000, (n, length), generator=g)
    labels = ids.clone()
    labels[:, :-answer] = -100
    return {
        k: v.to(device)
        for k, v in {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "labels": labels,
        }.items()
    }


def timed(fn, device: str, repeats: int = 5) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def emit(check: str, **fields) -> None:
    print(json.dumps({"check": check, **fields, "machine": describe_machine()}), flush=True)


def check_speed(model_dir: Path, device: str, length: int, rows: int) -> None:
    base = load_model(str(model_dir), "bfloat16", "auto", device=device)
    data = batch(rows, length, device)

    def train_step(model):
        def step():
            model.zero_grad(set_to_none=True)
            model(**data).loss.backward()

        return step

    models = {
        "pt_100": PromptTuning(base, num_virtual_tokens=100),
        "adept_60": ADePT(base, num_virtual_tokens=60),
    }
    step_s = {k: timed(train_step(m.train()), device) for k, m in models.items()}
    scoring = {k: v for k, v in data.items() if k != "labels"}
    adept = models["adept_60"].eval()
    with torch.no_grad():
        adept.offset.up.weight.normal_(0, 0.02)
        infer = {
            "pt_100": timed(lambda: models["pt_100"].eval().next_token_logprobs(**scoring), device),
            "adept_60_unfolded": timed(lambda: adept.next_token_logprobs(**scoring), device),
        }
        adept.fold()
        infer["adept_60_folded"] = timed(lambda: adept.next_token_logprobs(**scoring), device)
    seq_ratio = (length + 60) / (length + 100)
    emit(
        "speed",
        attention=resolve_attention("auto"),
        batch=rows,
        tokens=length,
        train_step_s=step_s,
        adept_over_pt_train=step_s["adept_60"] / step_s["pt_100"],
        inference_s=infer,
        folded_over_pt_inference=infer["adept_60_folded"] / infer["pt_100"],
        seq_len_ratio=seq_ratio,
    )


def peak_tflops(device: str, override: float | None) -> float | None:
    if override or device != "cuda":
        return override
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def frozen_flops_per_token(config, tokens: int) -> float:
    """Forward + input-only backward FLOPs per token of a frozen decoder (see the docstring)."""
    d, layers, kv = config.hidden_size, config.num_hidden_layers, config.num_key_value_heads
    head = d // config.num_attention_heads
    matrices = layers * (2 * d * d + 2 * d * kv * head + 3 * d * config.intermediate_size)
    return 4 * matrices + 12 * layers * tokens * d


def frozen_step(model, embeds: torch.Tensor):
    def step() -> None:
        hidden = model.model(inputs_embeds=embeds).last_hidden_state
        model.lm_head(hidden[:, -2:]).float().logsumexp(-1).sum().backward()
        embeds.grad = None

    return step


def check_mfu(size: str, device: str, attention: str, peak: float | None) -> None:
    """Frozen bf16 decoder, gradients to the input embeddings only, logits at 2 positions."""
    model = random_llama(size, device, attn_implementation=attention).eval()
    config = model.config
    model.requires_grad_(False)
    for rows, tokens in MFU_GRID[size]:
        embeds = torch.randn(rows, tokens, config.hidden_size, device=device, dtype=torch.bfloat16)
        embeds.requires_grad_(True)
        try:
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            seconds = timed(frozen_step(model, embeds), device, repeats=3)
        except torch.OutOfMemoryError:
            emit("mfu", size=size, attention=attention, batch=rows, tokens=tokens, error="OOM")
            torch.cuda.empty_cache()
            continue
        tflops = frozen_flops_per_token(config, tokens) * rows * tokens / seconds / 1e12
        emit(
            "mfu",
            size=size,
            attention=attention,
            batch=rows,
            tokens=tokens,
            step_s=round(seconds, 4),
            tokens_per_s=round(rows * tokens / seconds),
            achieved_tflops=round(tflops, 1),
            mfu=round(tflops / peak, 3) if peak else None,
            peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if device == "cuda"
            else None,
        )
    if device == "cuda":
        model.to("meta")
        torch.cuda.empty_cache()


def check_int8(model_dir: Path, device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = load_model(
        str(model_dir),
        "bfloat16",
        "auto",
        load_in_8bit=True,
        device=device if device == "cpu" else None,
    )
    int8_layers = sum(type(m).__name__ == "Linear8bitLt" for m in base.modules())
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = ADePT(base, num_virtual_tokens=8, budget_tokens=16)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-2)
    data = batch(4, 64, str(next(base.parameters()).device))
    losses = []
    for _ in range(8):
        opt.zero_grad(set_to_none=True)
        loss = model(**data).loss
        loss.backward()
        opt.step()
        losses.append(round(loss.item(), 4))
    unchanged = all(torch.equal(p, before[n]) for n, p in base.named_parameters())
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    emit(
        "int8",
        device=str(next(base.parameters()).device),
        int8_layers=int8_layers,
        losses=losses,
        loss_fell=losses[-1] < losses[0],
        base_unchanged=unchanged,
        peak_gpu_gib=peak,
    )


def ds_worker(model_dir: Path, int8: bool) -> None:
    """Under torchrun: ADePT through DeepSpeedBackend (ZeRO-3) for 3 steps."""
    from pipeline.core.config import PipelineConfig
    from pipeline.engine.backends import DeepSpeedBackend
    from pipeline.engine.distributed import init_process_group
    from pipeline.methods import wrap

    config = PipelineConfig.model_validate(
        {
            "name": "gpu-check",
            "model": {"source": str(model_dir), "dtype": "bfloat16", "load_in_8bit": int8},
            "method": {"name": "adept", "num_virtual_tokens": 8, "budget_tokens": 16},
            "train": {
                "steps": 3,
                "batch_size": 4,
                "lr": {"prompt": 0.03, "offset": 0.01},
                "warmup_steps": 0,
            },
            "distributed": {"deepspeed": True, "zero_stage": 3},
        }
    )
    init_process_group()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    base = load_model(
        str(model_dir),
        "bfloat16",
        "auto",
        load_in_8bit=int8,
        device=None if int8 and device == "cuda" else device,
    )
    model = wrap(base, config.method_config(base.config.get_text_config()), register_base=not int8)
    backend = DeepSpeedBackend(model, config)
    data = {k: v for k, v in batch(4, 64, "cpu").items()}
    losses = [round(backend.train_step([data])[0], 4) for _ in range(3)]
    emit(
        "deepspeed",
        mode="b (int8 base)" if int8 else "a (bf16 under ZeRO-3)",
        model_parameters=sum(getattr(p, "ds_numel", p.numel()) for p in base.parameters()),
        backend=torch.distributed.get_backend(),
        engine_device=str(backend.engine.device),
        losses=losses,
        peak_gpu_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2)
        if device == "cuda"
        else None,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )


def mfu_grid(args: argparse.Namespace, peak: float | None) -> None:
    for size in args.mfu_sizes.split(","):
        for attention in args.attentions.split(","):
            if attention == "flash_attention_2" and not flash_attention_available():
                emit("mfu", size=size, attention=attention, error="flash-attn not installed")
                continue
            check_mfu(size, args.device, attention, peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ds-worker", choices=["bf16", "int8"])
    parser.add_argument("--model-dir")
    parser.add_argument(
        "--checks", default="speed,int8,deepspeed,mfu", help="comma-separated subset"
    )
    parser.add_argument("--ds-size", choices=sorted(SIZES), default="tiny", help="ZeRO-3 model")
    parser.add_argument("--mfu-sizes", default="1b", help="comma-separated sizes for the grid")
    parser.add_argument("--attentions", default="sdpa,flash_attention_2", help="for the grid")
    parser.add_argument("--peak-tflops", type=float, help="bf16 dense peak (default: by name)")
    args = parser.parse_args()
    if args.ds_worker:
        ds_worker(Path(args.model_dir), args.ds_worker == "int8")
        return
    emit(
        "env",
        torch=torch.__version__,
        cuda=torch.version.cuda,
        gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    )
    with tempfile.TemporaryDirectory() as tmp:
        big = save_random_llama(args.size, Path(tmp) / "model")
        ds_model = big if args.ds_size == args.size else None
        ds_model = ds_model or save_random_llama(args.ds_size, Path(tmp) / args.ds_size)
        peak = peak_tflops(args.device, args.peak_tflops)
        checks = {
            "speed": lambda: check_speed(big, args.device, args.tokens, args.batch),
            "int8": lambda: check_int8(big, args.device),
            "mfu": lambda: mfu_grid(args, peak),
        }
        wanted = args.checks.split(",")
        for name, fn in checks.items():
            if name not in wanted:
                continue
            try:
                fn()
            except Exception as exc:  # report and go on: each check stands alone
                emit(name, error=f"{type(exc).__name__}: {exc}")
        for mode in ("bf16", "int8") if "deepspeed" in wanted else ():
            rc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nproc_per_node",
                    "1",
                    "--master_port",
                    "29531",
                    __file__,
                    "--ds-worker",
                    mode,
                    "--model-dir",
                    str(ds_model),
                ],
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            ).returncode
            if rc:
                emit("deepspeed", mode=mode, error=f"worker exit {rc}")


if __name__ == "__main__":
    main()
