"""Train-step time on one real batch: our methods vs HF PEFT prompt tuning vs a raw lower bound.

The raw lower bound is the least any soft-prompt method can cost: a frozen forward + backward
with a single trainable prompt tensor of ADePT's length (60), the LM head only at the answer
positions. All timings come from this one run (median of --steps after a warm-up step).

    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py --task sst2
    OMP_WAIT_POLICY=PASSIVE python bench/train_step.py --task boolq
"""

from __future__ import annotations

import argparse

import torch
from common import gemma, interleaved_medians, real_batch, report
from peft import PromptTuningConfig, get_peft_model

from pipeline.engine.hardware import resolve_precision
from pipeline.methods import ADePT, DePT, PromptTuning


def optimizer_step(params, loss_fn):
    optimizer = torch.optim.AdamW(params, lr=1e-3)

    def step():
        optimizer.zero_grad()
        loss_fn().backward()
        optimizer.step()

    return step


def raw_lower_bound(base, batch, m: int):
    """Frozen body + one (m, d) prompt tensor; head at the answer positions only."""
    emb = base.get_input_embeddings()
    prompt = torch.nn.Parameter(emb(torch.arange(m)).detach().float().clone())
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    full_mask = torch.cat([mask.new_ones(ids.shape[0], m), mask], 1)
    rows, cols = torch.nonzero(labels != -100, as_tuple=True)

    def loss():
        embeds = emb(ids)
        x = torch.cat([prompt.to(embeds.dtype).expand(ids.shape[0], -1, -1), embeds], 1)
        hidden = base.get_decoder()(inputs_embeds=x, attention_mask=full_mask).last_hidden_state
        logits = base.get_output_embeddings()(hidden[rows, cols + m - 1].contiguous()).float()
        return torch.nn.functional.cross_entropy(logits, labels[rows, cols])

    return optimizer_step([prompt], loss)


def peft_prompt_tuning(base, batch, length: int):
    model = get_peft_model(
        base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=length)
    )
    params = [p for p in model.parameters() if p.requires_grad]
    step = optimizer_step(params, lambda: model(**batch).loss)
    return step, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2", choices=["sst2", "boolq"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    args.dtype = resolve_precision(args.dtype).dtype
    tokenizer, base = gemma(args.dtype)
    batch, _ = real_batch(tokenizer, args.task, args.batch)
    n = batch["input_ids"].shape[1]

    def ours(method, **kw):
        model = method(base, **kw).train()
        params = [p for p in model.parameters() if p.requires_grad]
        return optimizer_step(params, lambda: model(**batch).loss)

    steps = {
        "raw_lower_bound_60": raw_lower_bound(base, batch, 60),
        "adept_60": ours(ADePT, num_virtual_tokens=60),
        "dept_60": ours(DePT, num_virtual_tokens=60, max_length=n),
        "pt_100": ours(PromptTuning, num_virtual_tokens=100),
    }
    steps["peft_pt_100"], _ = peft_prompt_tuning(base, batch, 100)  # prompt learning: no
    seconds = interleaved_medians(steps, args.steps)  # layer of the shared base is replaced

    ratios = {
        "adept_over_raw": seconds["adept_60"] / seconds["raw_lower_bound_60"],
        "pt_over_peft_pt": seconds["pt_100"] / seconds["peft_pt_100"],
        "adept_over_pt": seconds["adept_60"] / seconds["pt_100"],
        "seq_len_ratio": (n + 60) / (n + 100),
    }
    goals = {
        "adept_over_raw": ratios["adept_over_raw"] <= 1.05,
        "pt_over_peft_pt": ratios["pt_over_peft_pt"] <= 1.0,
        "adept_over_pt": ratios["adept_over_pt"] <= ratios["seq_len_ratio"] + 0.03,
    }
    result = {
        "bench": "train_step",
        "task": args.task,
        "dtype": args.dtype,
        "batch": args.batch,
        "input_tokens": n,
        "seconds": seconds,
        "ratios": ratios,
        "goals_met": goals,
    }
    table = [
        (k, f"{v:.3f}", f"{v / seconds['raw_lower_bound_60']:.3f}") for k, v in seconds.items()
    ]
    report(result, table, ("method", "s/step", "vs raw lower bound"))
    print(
        f"\nADePT / raw = {ratios['adept_over_raw']:.3f} (goal <= 1.05), "
        f"PT / PEFT PT = {ratios['pt_over_peft_pt']:.3f} (goal <= 1.0), "
        f"ADePT / PT-100 = {ratios['adept_over_pt']:.3f} "
        f"(goal <= {ratios['seq_len_ratio'] + 0.03:.3f})"
    )


if __name__ == "__main__":
    main()
