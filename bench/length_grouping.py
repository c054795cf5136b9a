"""Length-grouped training batches on BoolQ: padding, step time and dev score, before and after.

    python bench/length_grouping.py [--steps 60]

Trains the BoolQ config (Gemma 3 270M, ADePT, batch 8, ``task.max_length`` 256) twice through
the real stages (tokenize, shard, train), once with ``train.group_by_length`` off and once on,
same seed and steps, dev scored at the last step. Prints the padded share of the training
tokens over the shard's batches (an epoch), seconds per optimiser step and the dev score, and
the ratios.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import datasets
import numpy as np
from common import DATA_DIR, report

from pipeline.core.config import load_config
from pipeline.engine.batches import SHARD_INDICES, SHARDS, pad_fraction
from pipeline.runner import Runner
from stages.shard import training_lengths

REPO = Path(__file__).resolve().parents[1]


def shard_pad_fraction(run_dir: Path) -> float:
    meta = json.loads((run_dir / "shard" / SHARDS).read_text())
    shards = np.load(run_dir / "shard" / SHARD_INDICES)
    train = datasets.load_from_disk(str(run_dir / "tokenize" / "train"))
    return pad_fraction(shards, training_lengths(train), meta["batch_size"])


def train_once(root: Path, grouped: bool, steps: int) -> dict[str, float]:
    overrides = [
        f"name=lg_{'on' if grouped else 'off'}",
        f"output_dir={root}",
        f"task.data_dir={DATA_DIR}",
        f"train.steps={steps}",
        f"train.eval_every={steps}",
        f"train.warmup_steps={steps // 10}",
        f"train.group_by_length={str(grouped).lower()}",
    ]
    config = load_config(REPO / "configs" / "gemma3_270m_boolq.yaml", overrides)
    runner = Runner(config, track=False)
    runner.run(("tokenize", "shard", "train"))
    summary = json.loads((config.run_dir / "train" / "train_summary.json").read_text())
    return {
        "pad_fraction": round(shard_pad_fraction(config.run_dir), 4),
        "seconds_per_step": summary["seconds_per_step"],
        "dev_accuracy": summary["best_dev_accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = train_once(Path(tmp), False, args.steps)
        after = train_once(Path(tmp), True, args.steps)
    ratio = round(after["seconds_per_step"] / before["seconds_per_step"], 3)
    result = {"steps": args.steps, "before": before, "after": after, "step_time_ratio": ratio}
    rows = [
        (name, *(f"{r[k]:.3f}" for k in ("pad_fraction", "seconds_per_step", "dev_accuracy")))
        for name, r in (("random batches", before), ("length-grouped", after))
    ]
    report(result, rows, ("BoolQ train batches", "pad fraction", "s/step", "dev accuracy"))


if __name__ == "__main__":
    main()
