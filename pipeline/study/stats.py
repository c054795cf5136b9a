"""Paired statistics for two methods scored on the same test rows (pooled over seeds).

Seed k of method A is paired with seed k of method B: both scored every test row, so each
(seed, row) is one paired observation of "A right?" and "B right?". The difference of accuracies
gets a percentile bootstrap 95% interval (rows resampled, with their seeds), McNemar's exact
test (two-sided binomial on the discordant pairs) and a sign-flip randomisation p with the rows as
units. With seeds pooled, a row appears once per seed and those pairs are not independent (a row
one method gets right tends to stay right across seeds): McNemar's pooled p treats them as
independent and is too small then; the bootstrap interval and the row sign-flip p do not.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 10_000
BOOTSTRAP_SEED = 0
FLIP_SAMPLES = 10_000


def correct_rows(predictions: Path) -> np.ndarray:
    """1/0 per test row: the predicted choice is the gold one (evaluate/predictions.jsonl)."""
    rows = [json.loads(line) for line in predictions.read_text().splitlines() if line.strip()]
    return np.array([int(r["predicted"] == r["label"]) for r in rows], dtype=np.int8)


def to_bits(correct: np.ndarray) -> str:
    """Per-row correctness as a string of 0/1 (kept in results.json: paired statistics can be
    recomputed from the report alone)."""
    return "".join("1" if x else "0" for x in correct)


def from_bits(bits: str) -> np.ndarray:
    return np.frombuffer(bits.encode("ascii"), dtype=np.uint8) - ord("0")


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p: P(as unbalanced discordant split | no difference)."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def row_flip_p(diff: np.ndarray) -> float:
    """Two-sided randomisation p of the mean of ``diff`` (seeds, rows) with rows as the units:
    with no difference between the methods, swapping A and B on a row (all its seeds at once)
    changes nothing, so each row's summed difference is as likely negated as not. Integer sums:
    ties with the observed value are exact."""
    per_row = np.rint(diff.sum(axis=0)).astype(np.int32)  # -seeds..seeds
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    signs = rng.choice(np.array([-1, 1], dtype=np.int32), size=(FLIP_SAMPLES, per_row.size))
    extreme = np.count_nonzero(np.abs(signs @ per_row) >= abs(int(per_row.sum())))
    return float((1 + extreme) / (1 + FLIP_SAMPLES))


def paired_difference(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, Any]:
    """Accuracy of A − accuracy of B over the paired seeds, its bootstrap 95% interval,
    McNemar's p and the row sign-flip p. ``a[k]`` and ``b[k]``: per-row correctness of seed k
    on the same rows."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        raise ValueError("paired comparison needs the same seeds and test rows for both methods")
    left, right = np.stack(a), np.stack(b)  # (seeds, rows)
    diff = left.astype(np.float64) - right
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    rows = diff.shape[1]
    samples = rng.integers(0, rows, size=(BOOTSTRAP_SAMPLES, rows))
    boot = diff.mean(axis=0)[samples].mean(axis=1)
    low, high = np.percentile(boot, [2.5, 97.5])
    only_a, only_b = (
        int(((left == 1) & (right == 0)).sum()),
        int(((left == 0) & (right == 1)).sum()),
    )
    return {
        "difference": float(diff.mean()),
        "ci95": [float(low), float(high)],
        "mcnemar_p": mcnemar_p(only_a, only_b),
        "row_flip_p": row_flip_p(diff),
        "only_a_right": only_a,
        "only_b_right": only_b,
        "pairs": int(diff.size),
        "seeds": len(a),
    }
