"""Inference latency per batch (rank-classification scoring of real rows): ADePT folded vs
unfolded vs PT-100 vs the base model without a prompt. Ratios measured in this one run.

    OMP_WAIT_POLICY=PASSIVE python bench/inference.py --task boolq
"""

from __future__ import annotations

import argparse

import torch
from common import gemma, interleaved_medians, real_batch, report

from pipeline.engine.scoring import score_choices
from pipeline.methods import ADePT, PromptTuning, ZeroShot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="boolq", choices=["sst2", "boolq"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    tokenizer, base = gemma("auto")
    _, encoded = real_batch(tokenizer, args.task, args.batch, split="test")
    contexts, choices = encoded["context_ids"], encoded["choice_ids"]
    n = max(len(c) for c in contexts)

    def scorer(model):
        model.eval()

        def score():
            with torch.no_grad():
                score_choices(model, contexts, choices, tokenizer.pad_token_id, args.batch)

        return score

    adept = ADePT(base, num_virtual_tokens=60)
    with torch.no_grad():  # a trained-looking FFN, so folding has something to fold
        adept.offset.up.weight.normal_(0, 0.02)
    folded = ADePT(base, adept.config)
    folded.soft_prompt.load_state_dict(adept.soft_prompt.state_dict())
    folded.offset.load_state_dict(adept.offset.state_dict())
    folded.fold()
    seconds = interleaved_medians(
        {
            "base_no_prompt": scorer(ZeroShot(base)),
            "pt_100": scorer(PromptTuning(base, num_virtual_tokens=100)),
            "adept_60_unfolded": scorer(adept),
            "adept_60_folded": scorer(folded),
        },
        args.repeats,
    )
    seq_ratio = (n + 60) / (n + 100)
    ratio = seconds["adept_60_folded"] / seconds["pt_100"]
    result = {
        "bench": "inference",
        "task": args.task,
        "batch": args.batch,
        "max_input_tokens": n,
        "seconds": seconds,
        "folded_over_pt": ratio,
        "seq_len_ratio": seq_ratio,
        "goal_met": ratio <= seq_ratio + 0.03,
    }
    report(
        result,
        [(k, f"{v:.3f}", f"{v / seconds['pt_100']:.3f}") for k, v in seconds.items()],
        ("model", "s/batch", "vs PT-100"),
    )
    print(f"\nfolded ADePT / PT-100 = {ratio:.3f} (goal <= {seq_ratio + 0.03:.3f})")


if __name__ == "__main__":
    main()
