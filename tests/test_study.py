"""`pipeline compare`: the lr grid on dev, seeds at the selected point, test, report, MLflow —
on a tiny Gemma-3 with real BoolQ rows, jobs as real `pipeline run` subprocesses, 2 at a time."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from scipy.stats import binomtest

from pipeline.cli import main
from pipeline.methods import adept_params, adept_rank
from pipeline.study.plan import load_study, plan_grid
from pipeline.study.report import cost_table, other_metrics_table, seed_table
from pipeline.study.stats import from_bits, paired_difference
from tests.helpers import REPO, write_config

METHODS = ("adept", "lora")
SEEDS = (1, 2)


def write_study(tmp: Path, model_dir: Path) -> Path:
    base = write_config(tmp, model_dir, train={"steps": 2, "eval_every": 2})
    study = {
        "name": "tiny_study",
        "base_config": base.name,
        "output_dir": str(tmp / "runs"),
        "report_dir": str(tmp / "reports"),
        "seeds": list(SEEDS),
        "parallel": 2,
        "common": {"task.train_limit": 16},
        "tasks": {"boolq": {"train.steps": 2, "train.eval_every": 2}},
        # each entry is the whole method section (the base config's belongs to one method)
        "methods": {
            "adept": {"method.num_virtual_tokens": 4, "method.budget_tokens": 10},
            "lora": {},
        },
        "comparisons": [["adept", "lora"]],
        "lr_grid": {
            "adept": [{"train.lr.prompt": 0.001}, {"train.lr.prompt": 0.3}],
            "lora": [{"train.lr.lora": 0.0001}, {"train.lr.lora": 0.05}],
        },
    }
    path = tmp / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("study")
    path = write_study(tmp, tiny_model_dir)
    assert main(["compare", str(path)]) == 0
    return path, tmp


METRICS, PREDICTIONS = "evaluate/metrics.json", "evaluate/predictions.jsonl"


def job_dir(tmp: Path, method: str, run: dict) -> Path:
    return tmp / f"runs/tiny_study/variants/boolq-{method}-lr{run['lr_index']}-s{run['seed']}"


def paired_standard_error(tmp: Path, boolq: dict) -> float:
    """Standard error of the per-row accuracy difference ADePT − LoRA (seeds averaged)."""
    per_row = []
    for method in ("adept", "lora"):
        seeds = []
        for run in boolq["methods"][method]:
            lines = (job_dir(tmp, method, run) / PREDICTIONS).read_text().splitlines()
            seeds.append([int(x["predicted"] == x["label"]) for x in map(json.loads, lines)])
        per_row.append([statistics.fmean(column) for column in zip(*seeds, strict=True)])
    diffs = [a - b for a, b in zip(*per_row, strict=True)]
    return statistics.pstdev(diffs) / len(diffs) ** 0.5


def dev(tmp: Path, key: str) -> float:
    summary = tmp / "runs/tiny_study/variants" / key / "train/train_summary.json"
    return json.loads(summary.read_text())["best_dev_accuracy"]


def test_dry_run_lists_grid_jobs(tmp_path, tiny_model_dir, capsys) -> None:
    path = write_study(tmp_path, tiny_model_dir)
    assert main(["compare", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if "pipeline.cli run" in line]
    assert len(commands) == 4 and all("--stages tokenize,shard,train" in c for c in commands)
    assert "# 4 grid jobs, then 4 seed jobs" in out
    assert not (tmp_path / "runs").exists()


def test_selection_seeds_and_report(finished_study) -> None:
    path, tmp = finished_study
    results = json.loads((tmp / "reports/tiny_study/results.json").read_text())["results"]
    boolq = results["boolq"]
    for method in METHODS:
        grid = [dev(tmp, f"boolq-{method}-lr{i}-s{SEEDS[0]}") for i in range(2)]
        chosen = 0 if grid[0] >= grid[1] else 1
        runs = boolq["methods"][method]
        assert [r["seed"] for r in runs] == list(SEEDS)
        assert all(r["lr_index"] == chosen for r in runs)
        for r in runs:  # the report's numbers are the evaluate stage's numbers
            metrics_file = (
                tmp / f"runs/tiny_study/variants/boolq-{method}-lr{chosen}-s{r['seed']}"
                "/evaluate/metrics.json"
            )
            adapter = json.loads(metrics_file.read_text())["adapter"]
            assert r["test"] == adapter["accuracy"] and r["test_metrics"] == adapter
            assert r["train_seconds_per_step"] > 0 and r["infer_seconds_per_batch"] > 0
    d, m = 64, 4  # tiny Gemma width; budget L=10 from the study's method section
    expected = adept_params(m, adept_rank(10, m, d), d)
    assert boolq["methods"]["adept"][0]["trainable_parameters"] == expected == 578
    metrics = json.loads(
        (job_dir(tmp, "adept", boolq["methods"]["adept"][0]) / METRICS).read_text()
    )
    assert boolq["zero_shot"] == metrics["zero_shot"]["accuracy"]  # the base, scored by evaluate
    report = (tmp / "reports/tiny_study/report.md").read_text()
    assert f"pipeline compare {path}" in report and "Git commit:" in report
    assert "2 job(s) at a time" in report  # the study file's parallel: 2
    lora_mean = statistics.fmean(r["test"] for r in boolq["methods"]["lora"])
    assert f"| LoRA | {boolq['methods']['lora'][0]['trainable_parameters']:,} | " in report
    assert f"{lora_mean:.3f} ± " in report
    paired = boolq["paired"][0]  # seeds pooled over the same test rows
    adept_mean = statistics.fmean(r["test"] for r in boolq["methods"]["adept"])
    assert (paired["a"], paired["b"], paired["seeds"]) == ("adept", "lora", len(SEEDS))
    assert paired["difference"] == pytest.approx(adept_mean - lora_mean, abs=1e-12)
    # McNemar: the exact two-sided binomial test on the discordant pairs (scipy's, not ours)
    discordant = paired["only_a_right"] + paired["only_b_right"]
    exact = binomtest(paired["only_a_right"], discordant, 0.5).pvalue if discordant else 1.0
    assert paired["mcnemar_p"] == pytest.approx(exact, rel=1e-9)
    assert paired["pairs"] == 12 * len(SEEDS)
    assert f"boolq ADePT − LoRA p = {paired['row_flip_p']:.3g}" in report  # rows as units
    # the bootstrap interval of a mean difference is close to the normal one, ±1.96 standard errors
    se = paired_standard_error(tmp, boolq)
    low, high = paired["difference"] - 1.96 * se, paired["difference"] + 1.96 * se
    assert paired["ci95"] == pytest.approx([low, high], abs=0.5 * se + 1e-12)
    assert "| boolq | ADePT − LoRA | " in report and "## Per seed" in report
    for run in boolq["methods"]["adept"]:  # per-row correctness kept: stats from results alone
        lines = (job_dir(tmp, "adept", run) / PREDICTIONS).read_text().splitlines()
        rows = [json.loads(line) for line in lines]
        assert run["test_correct"] == "".join(str(int(r["predicted"] == r["label"])) for r in rows)
    by_seed = {one["seed"]: one for one in paired["per_seed"]}
    assert sorted(by_seed) == list(SEEDS)
    for a, b in zip(boolq["methods"]["adept"], boolq["methods"]["lora"], strict=True):
        one = by_seed[a["seed"]]  # seed k of ADePT against seed k of LoRA, on the same rows
        assert one["difference"] == pytest.approx(a["test"] - b["test"], abs=1e-12)
        assert one["pairs"] == 12 and one["seeds"] == 1
        assert f"| boolq | ADePT − LoRA | {a['seed']} | {one['difference']:+.4f} |" in report
    assert sum(o["only_a_right"] for o in by_seed.values()) == paired["only_a_right"]
    assert "## Other test metrics" not in report  # BoolQ is scored by accuracy alone
    for png in ("bars.png", "curves.png"):
        assert (tmp / "reports/tiny_study" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_bootstrap_interval_is_a_95_percent_one() -> None:
    """Against scipy's percentile bootstrap of the same per-row differences (its own resamples):
    the ends agree within 0.15 standard errors, where a 90% interval would be 0.32 off."""
    from scipy.stats import bootstrap

    rng = np.random.default_rng(7)
    a = [(rng.random(2_000) < 0.80).astype(np.int8) for _ in range(3)]
    b = [(rng.random(2_000) < 0.77).astype(np.int8) for _ in range(3)]
    ours = paired_difference(a, b)
    per_row = (np.stack(a).astype(float) - np.stack(b)).mean(axis=0)
    theirs = bootstrap(
        (per_row,), np.mean, n_resamples=10_000, method="percentile", random_state=1
    ).confidence_interval
    se = per_row.std() / len(per_row) ** 0.5
    assert ours["ci95"] == pytest.approx([theirs.low, theirs.high], abs=0.15 * se)
    assert ours["ci95"][1] - ours["ci95"][0] == pytest.approx(2 * 1.96 * se, rel=0.05)


def test_row_flip_p_counts_rows_not_repeated_pairs() -> None:
    """Seeds that repeat the same per-row outcome add no evidence with rows as the units: the
    sign-flip p stays that of one seed while McNemar's pooled p shrinks. On one seed it agrees
    with McNemar's exact p (both test the same swap); with no difference it is 1."""
    rng = np.random.default_rng(7)
    a = (rng.random(400) < 0.85).astype(np.int8)
    b = a.copy()
    b[:30], a[30:45] = 1 - a[:30], 1 - b[30:45]  # ~30 rows only A right, ~15 only B right
    one = paired_difference([a], [b])
    five = paired_difference([a] * 5, [b] * 5)
    assert five["row_flip_p"] == one["row_flip_p"] and five["difference"] == one["difference"]
    assert five["mcnemar_p"] < one["mcnemar_p"] / 10
    assert one["row_flip_p"] == pytest.approx(one["mcnemar_p"], abs=0.02)
    assert paired_difference([a] * 3, [a] * 3)["row_flip_p"] == 1.0


def test_other_metrics_table_reports_macro_f1(tmp_path, tiny_model_dir) -> None:
    """A task scored by more than its selection metric (CB: accuracy and macro-F1) gets the other
    metrics' mean ± sd per method, and zero-shot's value, in their own table."""
    study, _ = load_study(write_study(tmp_path, tiny_model_dir))
    runs = {
        "adept": [{"test_metrics": {"accuracy": 0.8, "macro_f1": f}} for f in (0.5, 0.7)],
        "lora": [{"test_metrics": {"accuracy": 0.9, "macro_f1": f}} for f in (0.6, 0.6)],
    }
    results = {
        "cb": {"metric": "accuracy", "zero_shot_metrics": {"macro_f1": 0.25}, "methods": runs}
    }
    table = other_metrics_table(study, results)
    assert table[-1] == "| cb | macro_f1 | 0.250 | 0.600 ± 0.141 | 0.600 ± 0.000 |"
    assert table[2] == "| task | metric | zero-shot | ADePT | LoRA |" and len(table) == 5
    results["cb"]["methods"] = {m: [{"test_metrics": {"accuracy": 1.0}}] for m in runs}
    assert other_metrics_table(study, results) == []


def test_resumed_runs_are_marked_and_left_out_of_the_cost_means(tmp_path, tiny_model_dir):
    """A run resumed from a checkpoint timed only the steps after it: the per-seed table says
    so and the cost means leave it out (unless every run of the method resumed)."""
    study, _ = load_study(write_study(tmp_path, tiny_model_dir))

    def run(seconds: float, peak: float, resumed: int | None) -> dict:
        return {
            "test": 0.8,
            "dev": 0.7,
            "best_step": 4,
            "trainable_parameters": 10,
            "train_seconds_per_step": seconds,
            "infer_seconds_per_batch": 0.5,
            "peak_rss_mib": peak,
            "resumed_from_step": resumed,
        }

    runs = {
        "adept": [run(2.0, 900, None), run(9.0, 100, 450)],
        "lora": [run(3.0, 800, 450), run(5.0, 700, 300)],
    }
    results = {"boolq": {"metric": "accuracy", "methods": runs}}
    costs = cost_table(study, results)
    assert "| boolq | ADePT | 10 | 2.00 | 0.50 | 900 |" in costs
    assert "| boolq | LoRA | 10 | 4.00 | 0.50 | 800 |" in costs  # all resumed: all kept
    assert costs[-1].startswith("3 run(s) resumed from a checkpoint and timed only")
    seeds = seed_table(study, results)
    assert (
        "| boolq | ADePT | 0.800 (0.700, step 4) | 0.800 (0.700, step 4; resumed from step 450) |"
        in seeds
    )
    for record in runs["adept"] + runs["lora"]:
        record["resumed_from_step"] = None
    assert "resumed" not in "\n".join(cost_table(study, results) + seed_table(study, results))


def test_report_is_logged_to_mlflow(finished_study) -> None:
    _, tmp = finished_study
    run_id = (tmp / "reports/tiny_study/mlflow_run.txt").read_text().strip()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp / 'runs' / 'mlflow.db'}")
    run = client.get_run(run_id)
    results = json.loads((tmp / "reports/tiny_study/results.json").read_text())["results"]
    adept = [r["test"] for r in results["boolq"]["methods"]["adept"]]
    assert run.data.metrics["test.boolq.adept.mean"] == pytest.approx(statistics.fmean(adept))
    artifacts = {a.path for a in client.list_artifacts(run_id, "report")}
    assert {"report/report.md", "report/bars.png", "report/curves.png"} <= artifacts
    experiment = client.get_experiment(run.info.experiment_id)
    job_runs = client.search_runs([experiment.experiment_id])
    # the report + 4 grid jobs + 2 new seed jobs (the first seed's job continues its grid run)
    assert len(job_runs) == 1 + 4 + 2


def test_rerun_is_served_from_cache(finished_study) -> None:
    path, tmp = finished_study
    assert main(["compare", str(path)]) == 0
    logs = sorted((tmp / "runs/tiny_study/logs").glob("*.seeds.log"))
    assert len(logs) == 4
    for log in logs:
        text = log.read_text()
        assert " train     cached" in text and " evaluate  cached" in text, log.name


def test_report_only_renders_without_running_jobs(
    finished_study, tmp_path, tiny_model_dir, capsys
) -> None:
    """--report-only re-renders from the jobs' outputs and starts no job (no log is touched);
    without outputs it fails naming every unfinished job and writes no report."""
    path, tmp = finished_study
    logs = {p: p.stat().st_mtime_ns for p in (tmp / "runs/tiny_study/logs").iterdir()}
    before = json.loads((tmp / "reports/tiny_study/results.json").read_text())["results"]
    assert main(["compare", str(path), "--report-only"]) == 0
    assert {p: p.stat().st_mtime_ns for p in logs} == logs
    after = json.loads((tmp / "reports/tiny_study/results.json").read_text())["results"]
    assert after == before
    report = (tmp / "reports/tiny_study/report.md").read_text()
    assert "saved outputs (`--report-only`)" in report and "job(s) at a time" not in report
    fresh = write_study(tmp_path, tiny_model_dir)
    capsys.readouterr()
    assert main(["compare", str(fresh), "--report-only"]) == 2
    error = capsys.readouterr().err
    study, _ = load_study(fresh)
    grid = plan_grid(study)
    assert f"--report-only: {len(grid)} of {len(grid)} grid job(s) have not finished" in error
    assert all(job.key in error for job in grid), error
    assert not (tmp_path / "reports").exists()


COMMITTED_WITH_ROWS = sorted(  # reports whose results.json keeps per-row test correctness
    p.parent.name
    for p in (REPO / "reports").glob("study_*/results.json")
    if '"test_correct"' in p.read_text()
)


@pytest.mark.parametrize("report", COMMITTED_WITH_ROWS)
def test_committed_paired_statistics_recompute_from_the_stored_rows(report) -> None:
    """Every paired statistic in a committed report (pooled and per seed, the row sign-flip p
    included) is what the current code computes from the per-row correctness stored beside it."""
    results = json.loads((REPO / "reports" / report / "results.json").read_text())["results"]
    for entry in results.values():
        rows = {
            method: {run["seed"]: from_bits(run["test_correct"]) for run in runs}
            for method, runs in entry["methods"].items()
        }
        assert entry["paired"]
        for c in entry["paired"]:
            a, b = rows[c["a"]], rows[c["b"]]
            seeds = sorted(a)
            pooled = paired_difference([a[s] for s in seeds], [b[s] for s in seeds])
            assert pooled == {k: v for k, v in c.items() if k not in ("a", "b", "per_seed")}
            for one in c["per_seed"]:
                alone = paired_difference([a[one["seed"]]], [b[one["seed"]]])
                assert alone == {k: v for k, v in one.items() if k != "seed"}


@pytest.mark.parametrize("report", sorted(p.name for p in (REPO / "reports").glob("study_*")))
def test_committed_reports_are_a_fresh_render_of_their_results(report, tmp_path) -> None:
    """Each committed report.md is exactly what the current renderer makes of its results.json
    (no hand edits, no stale renderer)."""
    import shutil

    from pipeline.study.report import render_saved

    copy = tmp_path / report
    copy.mkdir()
    shutil.copy(REPO / "reports" / report / "results.json", copy)
    assert render_saved(copy) == (REPO / "reports" / report / "report.md").read_text()
