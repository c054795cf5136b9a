"""The comparison study's report: markdown tables, two PNG plots, results.json, and one MLflow
run carrying all of it. Written to ``report_dir/<study name>/`` atomically (temp dir + rename)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from ..core.config import load_config
from ..methods import get_method
from ..tasks import get_task
from ..tracking.tracker import git_commit, tracking_uri
from ..util.files import atomic_directory
from .plan import Job, StudyConfig, dev_score, run_dir
from .stats import correct_rows, paired_difference


def method_label(name: str) -> str:
    """The method's label from its registration (``zero_shot``: the base model alone)."""
    return "zero-shot" if name == "zero_shot" else get_method(name).label


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
            entry["zero_shot_metrics"] = test["zero_shot"]
            entry["zero_shot_seconds_per_batch"] = timing["zero_shot_seconds_per_batch"]
            if "dev_zero_shot" in test:
                entry["dev_zero_shot"] = test["dev_zero_shot"][metric]
        entry["methods"].setdefault(job.method, []).append(
            {
                "seed": job.seed,
                "lr_index": job.lr_index,
                "overrides": list(job.overrides),
                "test": test["adapter"][metric],
                "test_metrics": test["adapter"],
                "dev": train[f"best_dev_{metric}"],
                "best_step": train["best_step"],
                "trainable_parameters": train["trainable_parameters"],
                "train_seconds_per_step": train["seconds_per_step"],
                "infer_seconds_per_batch": timing["adapter_seconds_per_batch"],
                "peak_rss_mib": train.get("peak_rss_mib"),
                "history": [
                    {k: r[k] for k in r if k == "step" or k == "train/loss" or k.startswith("dev/")}
                    for r in history
                ],
            }
        )
    for task, entry in results.items():
        entry["paired"] = paired_comparisons(study, task, seeds)
    return results


def paired_comparisons(study: StudyConfig, task: str, seeds: list[Job]) -> list[dict[str, Any]]:
    """The study's comparisons (e.g. ADePT − PT) on this task's test rows, seeds pooled."""
    correct: dict[str, list] = {}
    for job in sorted((j for j in seeds if j.task == task), key=lambda j: j.seed):
        predictions = run_dir(study, job) / "evaluate" / "predictions.jsonl"
        correct.setdefault(job.method, []).append(correct_rows(predictions))
    return [
        {"a": a, "b": b, **paired_difference(correct[a], correct[b])}
        for a, b in study.comparisons
        if a in correct and b in correct
    ]


def mean_spread(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def grid_scores(study: StudyConfig, grid: list[Job]) -> dict[str, dict[str, list[float]]]:
    scores: dict[str, dict[str, list[float]]] = {}
    for job in grid:
        scores.setdefault(job.task, {}).setdefault(job.method, []).append(dev_score(study, job))
    return scores


def render_markdown(
    study: StudyConfig,
    results: dict[str, Any],
    grid: dict[str, Any],
    command: str,
    commit: str,
    ran_jobs: bool = True,
) -> str:
    """The report; ``ran_jobs`` false: rendered from saved outputs, which do not record how many
    jobs ran at a time."""
    how = (
        f"{study.parallel} job(s) at a time, {study.threads_per_run} CPU thread(s) each."
        if ran_jobs
        else "Rendered from the jobs' saved outputs (`--report-only`): how many jobs ran at a "
        "time is not recorded."
    )
    lines = [
        f"# Method comparison: {study.name}",
        "",
        f"Command: `{command}`  ",
        f"Git commit: `{commit}`  ",
        f"Seeds: {', '.join(map(str, study.seeds))}; learning rate per task × method picked on "
        f"dev from {', '.join(f'{m}: {len(p)}' for m, p in study.lr_grid.items())} grid points "
        f"(first seed); test = the paper's protocol split. {how}",
    ]
    for section in (test_table, other_metrics_table, seed_table, paired_table, cost_table):
        if rendered := section(study, results):
            lines += ["", *rendered]
    lines += ["", *grid_table(study, results, grid)]
    lines += ["", "![test scores](bars.png)", "", "![learning curves](curves.png)", ""]
    return "\n".join(lines)


def render_saved(directory: Path) -> str:
    """(Re-)render ``report.md`` and the plots of a report directory from its results.json
    alone (no job outputs needed); returns the markdown."""
    record = json.loads((directory / "results.json").read_text())
    study = StudyConfig.model_validate(record["study"])
    results = record["results"]
    markdown = render_markdown(
        study,
        results,
        record["grid"],
        record["command"],
        record["git_commit"],
        record.get("ran_jobs", False),
    )
    (directory / "report.md").write_text(markdown)
    plot_bars(study, results, directory / "bars.png")
    plot_curves(study, results, directory / "curves.png")
    return markdown


def _table(head: list[str]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]


def test_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    tasks = list(results)
    head = ["method", "trainable params", *[f"{t} ({results[t]['metric']})" for t in tasks], "mean"]
    lines = ["## Test score (mean ± sample sd over seeds)", "", *_table(head)]
    zero = [results[t].get("zero_shot") for t in tasks]
    if all(z is not None for z in zero):
        cells = [f"{z:.3f}" for z in zero]
        lines.append(f"| zero-shot | 0 | {' | '.join(cells)} | {statistics.fmean(zero):.3f} |")
    for method in study.methods:
        means, cells = [], []
        for task in tasks:
            mean, sd = mean_spread([r["test"] for r in results[task]["methods"][method]])
            means.append(mean)
            cells.append(f"{mean:.3f} ± {sd:.3f}")
        params = results[tasks[0]]["methods"][method][0]["trainable_parameters"]
        label = method_label(method)
        lines.append(
            f"| {label} | {params:,} | {' | '.join(cells)} | {statistics.fmean(means):.3f} |"
        )
    return lines


def other_metrics_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    """The test metrics besides the selection one (CB: macro-F1); empty when there are none."""
    rows = []
    for task, entry in results.items():
        runs = entry["methods"]
        first = runs[next(iter(runs))][0].get("test_metrics", {})
        for name in (n for n in first if n != entry["metric"]):
            zero = entry.get("zero_shot_metrics", {}).get(name)
            cells = ["–" if zero is None else f"{zero:.3f}"]
            for method in study.methods:
                mean, sd = mean_spread([r["test_metrics"][name] for r in runs[method]])
                cells.append(f"{mean:.3f} ± {sd:.3f}")
            rows.append(f"| {task} | {name} | {' | '.join(cells)} |")
    if not rows:
        return []
    head = ["task", "metric", "zero-shot", *map(method_label, study.methods)]
    title = "## Other test metrics (mean ± sample sd over seeds; not used for selection)"
    return [title, "", *_table(head), *rows]


def seed_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    lines = ["## Per seed: test (dev at the kept step, kept step)", ""]
    lines += _table(["task", "method", *[f"seed {seed}" for seed in study.seeds]])
    for task, entry in results.items():
        for method in study.methods:
            cells = [
                f"{r['test']:.3f} ({r['dev']:.3f}, step {r['best_step']})"
                for r in entry["methods"][method]
            ]
            lines.append(f"| {task} | {method_label(method)} | {' | '.join(cells)} |")
    return lines


def paired_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    if not any(entry.get("paired") for entry in results.values()):
        return []  # results collected before paired statistics existed
    lines = ["## Paired differences on the same test rows (seeds pooled)", ""]
    lines += _table(
        ["task", "comparison", "difference", "bootstrap 95% interval", "McNemar p", "discordant"]
    )
    for task, entry in results.items():
        for c in entry.get("paired", []):
            low, high = c["ci95"]
            lines.append(
                f"| {task} | {method_label(c['a'])} − {method_label(c['b'])} | "
                f"{c['difference']:+.4f} | [{low:+.4f}, {high:+.4f}] | {c['mcnemar_p']:.3g} | "
                f"{c['only_a_right']} vs {c['only_b_right']} of {c['pairs']} |"
            )
    return lines


def cost_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    lines = ["## Cost (mean over seeds; wall seconds and peak RSS on this machine)", ""]
    head = ["task", "method", "trainable params", "train s/step", "test s/batch", "peak MiB"]
    lines += _table(head)
    for task, entry in results.items():
        for method in study.methods:
            runs = entry["methods"][method]
            peaks = [r["peak_rss_mib"] for r in runs if r.get("peak_rss_mib")]
            cells = [
                f"{runs[0]['trainable_parameters']:,}",
                f"{statistics.fmean(r['train_seconds_per_step'] for r in runs):.2f}",
                f"{statistics.fmean(r['infer_seconds_per_batch'] for r in runs):.2f}",
                f"{max(peaks):,.0f}" if peaks else "n/a",
            ]
            lines.append(f"| {task} | {method_label(method)} | {' | '.join(cells)} |")
    return lines


def grid_table(study: StudyConfig, results: dict[str, Any], grid: dict[str, Any]) -> list[str]:
    lines = ["## Learning-rate grid (dev score of the first seed per grid point)", ""]
    lines += _table(["task", "method", *[f"point {i}" for i in range(_widest(study))]])
    for task in results:
        for method in study.methods:
            chosen = results[task]["methods"][method][0]["lr_index"]
            cells = [
                f"**{s:.3f}**" if i == chosen else f"{s:.3f}"
                for i, s in enumerate(grid[task][method])
            ]
            lines.append(f"| {task} | {method_label(method)} | {' | '.join(cells)} |")
    lines += ["", "Grid points:", ""]
    for method, points in study.lr_grid.items():
        shown = "; ".join(f"{i}: {json.dumps(p)}" for i, p in enumerate(points))
        lines.append(f"- {method_label(method)}: {shown}")
    lines += ["", "Per-task settings (all methods): ", ""]
    for task, values in study.tasks.items():
        lines.append(f"- {task}: {json.dumps({**study.common, **values})}")
    return lines


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


def log_to_mlflow(study: StudyConfig, base: Path, results: dict[str, Any], report: Path) -> str:
    """One MLflow run (experiment = study name) with the summary metrics and the report files."""
    import mlflow

    from ..tracking.tracker import ensure_sqlite_schema, use_experiment

    first = load_config(base, [f"output_dir={json.dumps(study.output_dir)}"])
    uri = tracking_uri(first)
    ensure_sqlite_schema(uri)
    use_experiment(uri, study.name)
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
    ran_jobs: bool = True,
) -> Path:
    """Collect, render and publish; returns ``report_dir/<name>``."""
    results = collect(study, seeds)
    command = command or f"pipeline compare {study_file}"
    commit = git_commit()
    final = Path(study.report_dir) / study.name
    with atomic_directory(final) as tmp:
        record = {
            "study": study.model_dump(),
            "command": command,
            "git_commit": commit,
            "ran_jobs": ran_jobs,
            "grid": grid_scores(study, grid),
            "results": results,
        }
        (tmp / "results.json").write_text(json.dumps(record, indent=1))
        render_saved(tmp)
        run_id = log_to_mlflow(study, base, results, tmp)
        (tmp / "mlflow_run.txt").write_text(run_id + "\n")
    return final
