"""The comparison study's report: markdown tables, two PNG plots, results.json, and one MLflow
run carrying all of it. Written to ``report_dir/<study name>/`` atomically (temp dir + rename)."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from .config import load_config
from .study import Job, StudyConfig, dev_score, run_dir
from .tasks import get_task
from .tracking import git_commit, tracking_uri

METHOD_LABELS = {
    "zero_shot": "zero-shot",
    "prompt_tuning": "PT",
    "dept": "DePT",
    "adept": "ADePT",
    "lora": "LoRA",
}


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def collect(study: StudyConfig, seeds: list[Job]) -> dict[str, Any]:
    """Per task: zero-shot test score and, per method, one record per seed."""
    results: dict[str, Any] = {}
    for job in seeds:
        task = get_task(job.task)
        metric = task.selection_metric
        root = run_dir(study, job)
        train = _read_json(root / "train" / "train_summary.json")
        test = _read_json(root / "evaluate" / "metrics.json")
        timing = _read_json(root / "evaluate" / "timing.json")
        history = [
            json.loads(line)
            for line in (root / "train" / "history.jsonl").read_text().splitlines()
            if line.strip()
        ]
        entry = results.setdefault(job.task, {"metric": metric, "methods": {}})
        if "zero_shot" in test:
            entry["zero_shot"] = test["zero_shot"][metric]
            entry["zero_shot_seconds_per_batch"] = timing["zero_shot_seconds_per_batch"]
        entry["methods"].setdefault(job.method, []).append(
            {
                "seed": job.seed,
                "lr_index": job.lr_index,
                "overrides": list(job.overrides),
                "test": test["adapter"][metric],
                "dev": train[f"best_dev_{metric}"],
                "best_step": train["best_step"],
                "trainable_parameters": train["trainable_parameters"],
                "train_seconds_per_step": train["seconds_per_step"],
                "infer_seconds_per_batch": timing["adapter_seconds_per_batch"],
                "history": [
                    {k: r[k] for k in r if k == "step" or k == "train/loss" or k.startswith("dev/")}
                    for r in history
                ],
            }
        )
    return results


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def grid_scores(study: StudyConfig, grid: list[Job]) -> dict[str, dict[str, list[float]]]:
    scores: dict[str, dict[str, list[float]]] = {}
    for job in grid:
        scores.setdefault(job.task, {}).setdefault(job.method, []).append(dev_score(study, job))
    return scores


def render_markdown(
    study: StudyConfig, results: dict[str, Any], grid: dict[str, Any], command: str, commit: str
) -> str:
    tasks = list(results)
    methods = list(study.methods)
    head = ["method", "trainable params", *[f"{t} ({results[t]['metric']})" for t in tasks], "mean"]
    lines = [
        f"# Method comparison: {study.name}",
        "",
        f"Command: `{command}`  ",
        f"Git commit: `{commit}`  ",
        f"Seeds: {', '.join(map(str, study.seeds))}; learning rate per task × method picked on "
        f"dev from {', '.join(f'{m}: {len(p)}' for m, p in study.lr_grid.items())} grid points "
        f"(first seed); test = the paper's protocol split. {study.parallel} jobs at a time, "
        f"{study.threads_per_run} CPU thread(s) each.",
        "",
        "## Test score (mean ± sample sd over seeds)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    zero = [results[t].get("zero_shot") for t in tasks]
    if all(z is not None for z in zero):
        cells = [f"{z:.3f}" for z in zero]
        lines.append(f"| zero-shot | 0 | {' | '.join(cells)} | {statistics.fmean(zero):.3f} |")
    for method in methods:
        means, cells, params = [], [], 0
        for task in tasks:
            runs = results[task]["methods"][method]
            mean, sd = mean_spread([r["test"] for r in runs])
            means.append(mean)
            params = runs[0]["trainable_parameters"]
            cells.append(f"{mean:.3f} ± {sd:.3f}")
        label = METHOD_LABELS.get(method, method)
        lines.append(
            f"| {label} | {params:,} | {' | '.join(cells)} | {statistics.fmean(means):.3f} |"
        )
    cost_head = ["method", *[f"{t} train s/step" for t in tasks]]
    cost_head += [f"{t} test s/batch" for t in tasks]
    lines += ["", "## Cost (mean over seeds; wall seconds on this machine)", ""]
    lines += ["| " + " | ".join(cost_head) + " |", "|" + "---|" * len(cost_head)]
    for method in methods:
        train = [
            statistics.fmean(r["train_seconds_per_step"] for r in results[t]["methods"][method])
            for t in tasks
        ]
        infer = [
            statistics.fmean(r["infer_seconds_per_batch"] for r in results[t]["methods"][method])
            for t in tasks
        ]
        cells = [f"{v:.2f}" for v in train + infer]
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {' | '.join(cells)} |")
    lines += ["", "## Learning-rate grid (dev score of the first seed per grid point)", ""]
    lines += ["| task | method | " + " | ".join(f"point {i}" for i in range(_widest(study))) + " |"]
    lines += ["|---|---|" + "---|" * _widest(study)]
    for task in tasks:
        for method in methods:
            chosen = results[task]["methods"][method][0]["lr_index"]
            cells = [
                f"**{s:.3f}**" if i == chosen else f"{s:.3f}"
                for i, s in enumerate(grid[task][method])
            ]
            lines.append(f"| {task} | {METHOD_LABELS.get(method, method)} | {' | '.join(cells)} |")
    lines += ["", "Grid points:", ""]
    for method, points in study.lr_grid.items():
        shown = "; ".join(f"{i}: {json.dumps(p)}" for i, p in enumerate(points))
        lines.append(f"- {METHOD_LABELS.get(method, method)}: {shown}")
    lines += ["", "Per-task settings (all methods): ", ""]
    for task, values in study.tasks.items():
        lines.append(f"- {task}: {json.dumps({**study.common, **values})}")
    lines += ["", "![test scores](bars.png)", "", "![learning curves](curves.png)", ""]
    return "\n".join(lines)


def _widest(study: StudyConfig) -> int:
    return max(len(points) for points in study.lr_grid.values())


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
        ax.bar(xs, means, width, yerr=spreads, capsize=3, label=METHOD_LABELS.get(method, method))
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize=8, ncol=len(series), loc="upper center")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def plot_curves(study: StudyConfig, results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(results)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.2), dpi=100, squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for color, method in enumerate(study.methods, start=1):  # C0 is zero-shot in the bars
            runs = results[task]["methods"][method]
            steps = [r["step"] for r in runs[0]["history"] if "train/loss" in r]
            losses = [
                statistics.fmean(
                    row["train/loss"]
                    for run in runs
                    for row in run["history"]
                    if row["step"] == step and "train/loss" in row
                )
                for step in steps
            ]
            ax.plot(steps, losses, color=f"C{color}", label=METHOD_LABELS.get(method, method))
        ax.set_title(f"{task}: train loss (mean over seeds)")
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


def log_to_mlflow(study: StudyConfig, base: Path, results: dict[str, Any], report: Path) -> str:
    """One MLflow run (experiment = study name) with the summary metrics and the report files."""
    import mlflow

    from .tracking import ensure_sqlite_schema

    first = load_config(base, [f"output_dir={json.dumps(study.output_dir)}"])
    uri = tracking_uri(first)
    ensure_sqlite_schema(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(study.name)
    with mlflow.start_run(run_name=f"{study.name}-report") as run:
        mlflow.set_tags({"kind": "study_report", "git_commit": git_commit()})
        metrics = {}
        for task, entry in results.items():
            if "zero_shot" in entry:
                metrics[f"test.{task}.zero_shot"] = entry["zero_shot"]
            for method, runs in entry["methods"].items():
                mean, sd = mean_spread([r["test"] for r in runs])
                metrics[f"test.{task}.{method}.mean"] = mean
                metrics[f"test.{task}.{method}.sd"] = sd
        mlflow.log_metrics(metrics)
        mlflow.log_artifacts(str(report), artifact_path="report")
        return run.info.run_id


def write_report(
    study: StudyConfig,
    study_file: str | os.PathLike,
    base: Path,
    grid: list[Job],
    seeds: list[Job],
    command: str | None = None,
) -> Path:
    """Collect, render and publish; returns ``report_dir/<name>``."""
    results = collect(study, seeds)
    command = command or f"pipeline compare {study_file}"
    commit = git_commit()
    final = Path(study.report_dir) / study.name
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{study.name}.", dir=final.parent))
    try:
        markdown = render_markdown(study, results, grid_scores(study, grid), command, commit)
        (tmp / "report.md").write_text(markdown)
        plot_bars(study, results, tmp / "bars.png")
        plot_curves(study, results, tmp / "curves.png")
        record = {"study": study.model_dump(), "command": command, "git_commit": commit}
        (tmp / "results.json").write_text(json.dumps({**record, "results": results}, indent=1))
        run_id = log_to_mlflow(study, base, results, tmp)
        (tmp / "mlflow_run.txt").write_text(run_id + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final
