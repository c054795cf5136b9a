"""The study report's two plots: test score bars per task × method (mean ± sd over seeds), and
learning curves (train loss, dev metric; mean over seeds)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .plan import StudyConfig, method_label
from .stats import mean_spread


def plot_bars(study: StudyConfig, results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, methods = list(results), list(study.methods)
    series = ["zero_shot", *methods]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    for i, method in enumerate(series):
        if method == "zero_shot":
            means = [results[t].get("zero_shot", 0.0) for t in tasks]
            spreads = [0.0] * len(tasks)
        else:
            stats = [mean_spread([r["test"] for r in results[t]["methods"][method]]) for t in tasks]
            means, spreads = [m for m, _ in stats], [s for _, s in stats]
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(tasks))]
        ax.bar(xs, means, width, yerr=spreads, capsize=3, label=method_label(method))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8, ncol=len(series), loc="upper center")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def mean_curve(runs: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """Steps where the first seed logged ``key`` and the mean over seeds there."""
    steps = [r["step"] for r in runs[0]["history"] if key in r]
    means = [
        statistics.fmean(
            row[key] for run in runs for row in run["history"] if row["step"] == step and key in row
        )
        for step in steps
    ]
    return steps, means


def plot_curves(study: StudyConfig, results: dict[str, Any], out: Path) -> None:
    """Per task: train loss (top) and the dev metric (bottom) over steps, mean over seeds;
    zero-shot's dev score as a dashed line where it was measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4 * len(tasks), 6), dpi=100, squeeze=False)
    for column, task in enumerate(tasks):
        entry = results[task]
        dev_key = f"dev/{entry['metric']}"
        for color, method in enumerate(study.methods, start=1):  # C0 is zero-shot in the bars
            runs, label = entry["methods"][method], method_label(method)
            axes[0][column].plot(*mean_curve(runs, "train/loss"), color=f"C{color}", label=label)
            axes[1][column].plot(*mean_curve(runs, dev_key), "o-", color=f"C{color}", label=label)
        if "dev_zero_shot" in entry:
            axes[1][column].axhline(entry["dev_zero_shot"], color="C0", ls="--", label="zero-shot")
        axes[0][column].set_title(f"{task}: train loss (mean over seeds)")
        axes[1][column].set_title(f"{task}: dev {entry['metric']} (mean over seeds)")
        axes[1][column].set_xlabel("step")
    axes[0][0].set_ylabel("loss")
    axes[1][0].set_ylabel(entry["metric"])
    axes[1][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
