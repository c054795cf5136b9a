"""Train-step time of the soft-prompt methods on one real batch (Gemma 3 270M by default).

Prints one JSON line and a markdown table; ratios are measured in this one run.

    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py --task sst2 --dtype bfloat16 --batch 8
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import time
from pathlib import Path

import torch

from pipeline.methods import ADePT, DePT, PromptTuning
from pipeline.models import GEMMA_PACKAGE_SOURCE, load_model, load_tokenizer

TEXTS = {
    "sst2": ("glue/sst2/train.tsv", lambda r: f"{r['sentence'].strip()}\nSentiment:"),
    "boolq": (
        "superglue/boolq/train.jsonl",
        lambda r: f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",
    ),
}


def read_rows(data_dir: Path, task: str, n: int) -> list[str]:
    rel, template = TEXTS[task]
    path = data_dir / rel
    with open(path, newline="") as f:
        if path.suffix == ".tsv":
            rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
        else:
            rows = [json.loads(next(f)) for _ in range(n)]
    return [template(r) for r in rows]


def batch(tokenizer, texts: list[str], max_length: int):
    enc = tokenizer(
        [t + " yes" for t in texts],
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    labels = torch.full_like(enc["input_ids"], -100)
    labels[:, -1] = enc["input_ids"][:, -1]  # left padding: the answer is the last token
    return enc["input_ids"], enc["attention_mask"], labels


def time_steps(model, ids, mask, labels, steps: int) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        model(ids, mask, labels=labels).loss.backward()
        optimizer.step()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=GEMMA_PACKAGE_SOURCE)
    parser.add_argument("--task", choices=sorted(TEXTS), default="sst2")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--data-dir", default=os.environ.get("PIPELINE_DATA_DIR", "../shared/data"))
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    base = load_model(args.model, dtype=args.dtype, attention="sdpa")
    ids, mask, labels = batch(
        tokenizer, read_rows(Path(args.data_dir), args.task, args.batch), args.max_length
    )
    methods = {
        "pt100": lambda: PromptTuning(base, num_virtual_tokens=100),
        "dept60": lambda: DePT(base, num_virtual_tokens=60, max_length=args.max_length),
        "adept60": lambda: ADePT(base, num_virtual_tokens=60),
    }
    seconds = {
        name: time_steps(make(), ids, mask, labels, args.steps) for name, make in methods.items()
    }
    n = ids.shape[1]
    result = {
        "bench": "train_step",
        "task": args.task,
        "dtype": args.dtype,
        "batch": args.batch,
        "input_tokens": n,
        "seconds": seconds,
        "adept_over_pt100": seconds["adept60"] / seconds["pt100"],
        "seq_len_ratio": (n + 60) / (n + 100),
    }
    print(json.dumps(result))
    print("\n| method | s/step | vs PT-100 |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {s / seconds['pt100']:.3f} |")
    print(f"\nsequence-length ratio (n+60)/(n+100) = {result['seq_len_ratio']:.3f}")


if __name__ == "__main__":
    main()
