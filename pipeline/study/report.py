"""The comparison study's report: markdown tables, two PNG plots, results.json, and one MLflow
run carrying all of it. Written to ``report_dir/<study name>/`` atomically (temp dir + rename)."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from ..core.config import load_config
from ..tasks import get_task
from ..tracking.tracker import git_commit, tracking_uri
from ..util.files import atomic_directory
from .plan import (
    TEST_METRICS,
    TRAIN_SUMMARY,
    Job,
    StudyConfig,
    dev_score,
    method_label,
    run_dir,
)
from .plots import plot_bars, plot_curves
from .stats import (
    FLIP_SAMPLES,
    correct_rows,
    from_bits,
    mean_spread,
    paired_difference,
    to_bits,
)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def collect(study: StudyConfig, seeds: list[Job]) -> dict[str, Any]:
    """Per task: zero-shot test score and, per method, one record per seed."""
    results: dict[str, Any] = {}
    for job in seeds:
        task = get_task(job.task)
        metric = task.selection_metric
        root = run_dir(study, job)
        train = _read_json(root / TRAIN_SUMMARY)
        test = _read_json(root / TEST_METRICS)
        timing = _read_json(root / "evaluate" / "timing.json")
        correct = correct_rows(root / "evaluate" / "predictions.jsonl")
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
                "test_correct": to_bits(correct),
                "dev": train[f"best_dev_{metric}"],
                "best_step": train["best_step"],
                "trainable_parameters": train["trainable_parameters"],
                "train_seconds_per_step": train["seconds_per_step"],
                "infer_seconds_per_batch": timing["adapter_seconds_per_batch"],
                "peak_rss_mib": train.get("peak_rss_mib"),
                "resumed_from_step": train.get("resumed_from_step"),
                "history": [
                    {k: r[k] for k in r if k == "step" or k == "train/loss" or k.startswith("dev/")}
                    for r in history
                ],
            }
        )
    for entry in results.values():
        entry["paired"] = paired_comparisons(study, entry)
    return results


def paired_comparisons(study: StudyConfig, entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The study's comparisons (e.g. ADePT − PT) on one task's test rows: seeds pooled, and
    each seed alone (``per_seed``). Seed k of A is paired with seed k of B."""
    correct = {
        method: {run["seed"]: from_bits(run["test_correct"]) for run in runs}
        for method, runs in entry["methods"].items()
    }
    comparisons = []
    for a, b in study.comparisons:
        if a not in correct or b not in correct:
            continue
        seeds = sorted(set(correct[a]) & set(correct[b]))
        pooled = paired_difference([correct[a][s] for s in seeds], [correct[b][s] for s in seeds])
        per_seed = [
            {"seed": s, **paired_difference([correct[a][s]], [correct[b][s]])} for s in seeds
        ]
        comparisons.append({"a": a, "b": b, **pooled, "per_seed": per_seed})
    return comparisons


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
                f"{r['test']:.3f} ({r['dev']:.3f}, step {r['best_step']}{_resumed(r)})"
                for r in entry["methods"][method]
            ]
            lines.append(f"| {task} | {method_label(method)} | {' | '.join(cells)} |")
    return lines


def _resumed(record: dict[str, Any]) -> str:
    step = record.get("resumed_from_step")
    return f"; resumed from step {step}" if step else ""


def paired_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    if not any(entry.get("paired") for entry in results.values()):
        return []  # results collected before paired statistics existed
    lines = ["## Paired differences on the same test rows (seeds pooled)", ""]
    lines += _table(
        ["task", "comparison", "difference", "bootstrap 95% interval", "McNemar p", "discordant"]
    )
    per_seed, by_rows = [], []
    for task, entry in results.items():
        for c in entry.get("paired", []):
            label = f"{method_label(c['a'])} − {method_label(c['b'])}"
            lines.append(f"| {task} | {label} | {_paired_cells(c)} |")
            per_seed += [
                f"| {task} | {label} | {one['seed']} | {_paired_cells(one)} |"
                for one in c.get("per_seed", [])
            ]
            if "row_flip_p" in c and c["seeds"] > 1:
                by_rows.append(f"{task} {label} p = {c['row_flip_p']:.3g}")
    if by_rows:
        lines += [
            "",
            "Pooled, each test row appears once per seed and its pairs are not independent: "
            "the bootstrap resamples rows with all their seeds, McNemar's p treats every pair "
            "as independent (too small when a row stays right or wrong across seeds). With rows "
            f"as the units (sign-flip randomisation, {FLIP_SAMPLES:,} flips): "
            + "; ".join(by_rows)
            + ".",
        ]
    if per_seed:
        lines += ["", "## Paired differences per seed", ""]
        head = ["task", "comparison", "seed", "difference", "bootstrap 95% interval", "McNemar p"]
        lines += [*_table([*head, "discordant"]), *per_seed]
    return lines


def _paired_cells(c: dict[str, Any]) -> str:
    """Difference, interval, p and discordant pairs of one paired comparison."""
    low, high = c["ci95"]
    cells = [
        f"{c['difference']:+.4f}",
        f"[{low:+.4f}, {high:+.4f}]",
        f"{c['mcnemar_p']:.3g}",
        f"{c['only_a_right']} vs {c['only_b_right']} of {c['pairs']}",
    ]
    return " | ".join(cells)


def cost_table(study: StudyConfig, results: dict[str, Any]) -> list[str]:
    lines = ["## Cost (mean over seeds; wall seconds and peak RSS on this machine)", ""]
    head = ["task", "method", "trainable params", "train s/step", "test s/batch", "peak MiB"]
    lines += _table(head)
    resumed = 0
    for task, entry in results.items():
        for method in study.methods:
            # a resumed run timed and measured only the steps after its checkpoint
            whole = [r for r in entry["methods"][method] if not r.get("resumed_from_step")]
            runs = whole or entry["methods"][method]
            resumed += len(entry["methods"][method]) - len(whole)
            peaks = [r["peak_rss_mib"] for r in runs if r.get("peak_rss_mib")]
            cells = [
                f"{runs[0]['trainable_parameters']:,}",
                f"{statistics.fmean(r['train_seconds_per_step'] for r in runs):.2f}",
                f"{statistics.fmean(r['infer_seconds_per_batch'] for r in runs):.2f}",
                f"{max(peaks):,.0f}" if peaks else "n/a",
            ]
            lines.append(f"| {task} | {method_label(method)} | {' | '.join(cells)} |")
    if resumed:
        lines += [
            "",
            f"{resumed} run(s) resumed from a checkpoint and timed only the steps after it; "
            "the train s/step and peak MiB means leave them out, except for a method whose "
            "every run resumed.",
        ]
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
