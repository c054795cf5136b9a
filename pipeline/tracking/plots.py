"""Small matplotlib plots (Agg backend, no display needed)."""

from __future__ import annotations

import json
from pathlib import Path


def loss_curve(history: Path, out: Path) -> Path | None:
    """Train loss (and dev metrics) per step from history.jsonl → PNG; None without data."""
    if not history.is_file():
        return None
    rows = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    loss = [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]
    if not loss:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(*zip(*loss, strict=True), color="C0", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    dev_keys = sorted({k for r in rows for k in r if k.startswith("dev/")})
    if dev_keys:
        twin = ax.twinx()
        for color, key in enumerate(dev_keys, start=1):
            points = [(r["step"], r[key]) for r in rows if key in r]
            twin.plot(*zip(*points, strict=True), "o--", color=f"C{color}", label=key)
        twin.set_ylabel("dev metric")
        handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower left", framealpha=0.8)
    else:
        ax.legend(loc="upper right")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
