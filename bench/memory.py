"""Peak RSS and optimiser-state bytes per method (one process each, Gemma 3 270M bf16, a few
train steps on real SST-2 rows). Per-rank figures under ZeRO-3 come from bench/scale.py.

    OMP_WAIT_POLICY=PASSIVE python bench/memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from common import gemma, peak_rss_mb, real_batch, report

from pipeline.engine.hardware import describe_machine
from pipeline.methods import ADePT, DePT, LoRA, PromptTuning, ZeroShot

METHODS = {
    "base_forward_only": None,
    "pt_100": lambda base, n: PromptTuning(base, num_virtual_tokens=100),
    "dept_60": lambda base, n: DePT(base, num_virtual_tokens=60, max_length=n),
    "adept_60": lambda base, n: ADePT(base, num_virtual_tokens=60),
    "lora_r1": lambda base, n: LoRA(base),
}


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(method: str) -> None:
    tokenizer, base = gemma("auto")
    batch, _ = real_batch(tokenizer, "sst2", 8)
    loaded = peak_rss_mb()
    reset_peak_rss()  # from here on VmHWM is the peak of the training steps alone
    if METHODS[method] is None:
        with torch.no_grad():
            ZeroShot(base)(**batch)
        state_bytes = 0
    else:
        model = METHODS[method](base, batch["input_ids"].shape[1]).train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-3)
        for _ in range(2):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
        state_bytes = sum(
            t.numel() * t.element_size()
            for s in optimizer.state.values()
            for t in s.values()
            if torch.is_tensor(t)
        )
    print(
        json.dumps(
            {
                "method": method,
                "machine": describe_machine(),
                "load_peak_rss_mb": loaded,
                "train_peak_rss_mb": vm_hwm_mb(),
                "optimizer_state_bytes": state_bytes,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        return child(args.child)
    rows = []
    for method in METHODS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", method],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    report(
        {"bench": "memory", "rows": rows},
        [
            (
                r["method"],
                f"{r['load_peak_rss_mb']:.0f}",
                f"{r['train_peak_rss_mb']:.0f}",
                f"{r['optimizer_state_bytes']:,}",
            )
            for r in rows
        ],
        (
            "method",
            "peak RSS while loading MB",
            "peak RSS while training MB",
            "optimizer state bytes",
        ),
    )


if __name__ == "__main__":
    main()
