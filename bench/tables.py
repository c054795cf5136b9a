"""The benchmark tables of docs/benchmarks.md, rendered from the JSON lines the benches printed
(kept as a JSON list per bench in reports/bench/NAME.json): a table is never copied by hand.

    python bench/tables.py            # print every table
    python bench/tables.py --write    # rewrite the marked blocks of docs/benchmarks.md, README.md

A block in a page is ``<!-- table: NAME -->`` … ``<!-- end table -->``; NAME is a renderer below,
reading its file of reports/bench. tests/test_docs.py checks the pages hold the fresh render.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "reports" / "bench"
PAGES = (
    REPO / "docs" / "benchmarks.md",
    REPO / "docs" / "study.md",
    REPO / "docs" / "tasks.md",
    REPO / "README.md",
)
MAIN_JOB = "main job (SST-2)"
LABELS = {
    "prompt_tuning": "PT-100",
    "dept": "DePT",
    "adept": "ADePT",
    "lora": "LoRA",
    "zero_shot": "zero-shot",
}
BLOCK = re.compile(r"(<!-- table: (\S+) -->\n).*?(<!-- end table -->)", re.S)


def machine(row: dict) -> str:
    m = row["machine"]
    return f"{m['cpu']}, {m['isa']}, {m['cpus']} CPUs, {m['threads']} threads, torch {m['torch']}"


def cli_startup(rows: list[dict]) -> list[str]:
    lines = []
    for row in rows:
        lines += [
            *([""] if lines else []),
            f"Measured on {machine(row)}; median of {row['repeats']} runs each, round-robin"
            + (f" ({row['note']})" if row.get("note") else "")
            + ":",
            "",
            "| command | median s | × baseline |",
            "|---|---|---|",
        ]
        for name, seconds in row["median_seconds"].items():
            lines.append(f"| `{name}` | {seconds:.3f} | {row['ratio_to_baseline'][name]:.2f} |")
    return lines


def estimate_accuracy(rows: list[dict]) -> list[str]:
    """One block per machine (and dtype) the runs were measured on."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((machine(row), row["dtype"]), []).append(row)
    lines: list[str] = []
    for (where, dtype), group in groups.items():
        lines += [*([""] if lines else []), *estimate_block(where, dtype, group)]
    return lines


def estimate_block(where: str, dtype: str, rows: list[dict]) -> list[str]:
    probe = (
        "a fresh probe on the idle machine, taken after the measured runs (`--reestimate`)"
        if any(row.get("estimate_probed_after_run") for row in rows)
        else "a fresh probe on the idle machine, taken just before each run"
    )
    lines = [
        f"Measured on {where}, idle; {dtype}. Estimates: `pipeline validate` with {probe}.",
        "",
        "| run | stage | estimate | measured | estimate / measured |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        for stage, guess in row["estimate_s"].items():
            got = row["stage_s"][stage]
            ratio = f"{guess / got:.2f}" if got >= 5 else "—"
            lines.append(f"| {row['run']} | {stage} | {guess:.0f} s | {got:.0f} s | {ratio} |")
        lines.append(
            f"| {row['run']} | **whole command** | {row['estimate_total_s']:.0f} s | "
            f"{row['wall_s']:.0f} s | **{row['total_ratio']:.2f}** |"
        )
    lines += ["", "Commands:", ""]
    lines += [f"- {row['run']}: `{row['command'].strip()}`" for row in rows]
    return lines


def study_costs(rows: list[dict]) -> list[str]:
    """Per study (one JSON line each): train s/step and test s/batch per task × method, the
    shared prompt prefix on and off (LoRA and zero-shot have no prompt: one path, one column)."""

    def fmt(value: float | None) -> str:
        return "—" if value is None else f"{value:.2f}"

    lines = []
    for row in rows:
        lines += [
            f"`{row['study']}`, measured on {machine(row)}; {row['dtype']}:",
            "",
            "| task | method | train s/step | train s/step, prefix not shared | test s/batch | "
            "test s/batch, prefix not shared | test s/batch, FFN folded |",
            "|---|---|---|---|---|---|---|",
        ]
        for c in row["cells"]:
            train = c.get("train", {})
            test = {k.removeprefix("test_"): v for k, v in c.items() if k.startswith("test_")}
            test = test or {"unshared": c["test"]}  # zero-shot: one path
            cells = (
                train.get("train_shared", train.get("train_unshared")),
                train.get("train_unshared") if "train_shared" in train else None,
                test.get("shared", test.get("unshared")),
                test.get("unshared") if "shared" in test else None,
                test.get("folded"),
            )
            method = LABELS.get(c["method"], c["method"])
            lines.append(f"| {c['task']} | {method} | " + " | ".join(map(fmt, cells)) + " |")
        lines.append("")
    return lines[:-1]


def tokenize_scale(rows: list[dict]) -> list[str]:
    """Rows/s, × the raw tokenizer, × one process, peak memory and output size per run; then the
    whole run through shard and a few train steps."""
    lines = []
    for row in rows:
        lines += [
            f"Measured on {machine(row)}, idle (`python bench/tokenize_scale.py`). Rows/s: all"
            " three splits over the stage's own seconds, tokenizer loading included; raw: "
            "`tokenizer(texts)` in batches of 4,096 on one thread; memory: peak PSS of the whole "
            "process tree (pages the forked workers share counted once), sampled every 0.2 s.",
            "",
            "| shape | rows | num_proc | rows/s | × raw tokenizer (1 thread) | × num_proc 1 | "
            "peak memory | "
            "input → output |",
            "|---|---|---|---|---|---|---|---|",
        ]
        single = {
            (r["shape"], r["rows"]): r["rows_per_second"] for r in row["runs"] if r["num_proc"] == 1
        }
        for r in row["runs"]:
            one = single.get((r["shape"], r["rows"]))
            speedup = f"{r['rows_per_second'] / one:.2f}" if one else "-"
            lines.append(
                f"| {r['shape']} | {r['rows']:,} | {r['num_proc']} | {r['rows_per_second']:,} | "
                f"{r['rows_per_second'] / r['raw_tokenizer_rows_per_second']:.2f} | {speedup} | "
                f"{r['tree_pss_mib']:,} MiB | {r['input_mib']:,} → {r['output_mib']:,} MiB |"
            )
        whole = row.get("whole_run")
        if whole:
            lines += [
                "",
                f"The whole `pipeline run --stages {whole['stages']}` of the {whole['rows']:,}-row"
                f" {whole['shape']} task ({whole['train_steps']} train steps, Gemma 3 270M loaded):"
                f" peak memory {whole['tree_pss_mib']:,} MiB (PSS; the main process's RSS "
                f"{whole['main_rss_mib']:,} MiB), shard output {whole['shard_output_kib']:,} KiB "
                f"in {whole['shard_seconds']:.1f} s, {whole['wall_seconds']:.0f} s in all"
                + (f" ({whole['note']})." if whole.get("note") else "."),
            ]
    return lines


def main_job(rows: list[dict]) -> list[str]:
    """The README's first-run table: the main job's scores, dev curve, pace and wall time, a
    column per machine it was measured on (each one VM's measurement)."""
    runs = [r for r in rows if r["run"] == MAIN_JOB]

    def line(what: str, values: list[str]) -> str:
        return f"| {what} | {' | '.join(values)} |"

    def curve(row: dict) -> str:
        points = ", ".join(f"{s}: {d['accuracy']:.3f}" for s, d in row["dev_curve"].items())
        return f"{points}; kept step {row['best_step']}"

    def wall(row: dict) -> str:
        minutes, seconds = divmod(round(row["wall_s"]), 60)
        return f"{minutes} min {seconds:02d} s"

    return [
        line("machine, dtype", [f"{machine(r)}; {r['dtype']}" for r in runs]),
        "|---|" + "---|" * len(runs),
        line(
            "test accuracy, adapter (872 rows)",
            [f"**{r['test']['adapter']['accuracy']:.3f}**" for r in runs],
        ),
        line(
            "test accuracy, zero-shot base",
            [f"{r['test']['zero_shot']['accuracy']:.3f}" for r in runs],
        ),
        line("dev accuracy by step (300 rows)", [curve(r) for r in runs]),
        line(
            "train stage ÷ 300 steps, s (6 dev scorings included)",
            [f"{r['stage_s']['train'] / 300:.2f}" for r in runs],
        ),
        line("wall time, whole command", [wall(r) for r in runs]),
    ]


def lm_eval_agreement(rows: list[dict]) -> list[str]:
    """lm-evaluation-harness on the exported artefacts against `pipeline evaluate`."""
    lines = [
        f"Measured on {machine(rows[0])}; lm-eval {rows[0]['lm_eval']}, `--model hf`, float32, "
        "offline, over a local task YAML of each run's scored test rows "
        "(`python bench/lm_eval_agreement.py RUN_DIR...`).",
        "",
        "| run | method | lm-eval on | rows | lm-eval acc | `pipeline evaluate` acc | rows "
        "predicted differently |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {LABELS.get(r['method'], r['method'])} | "
            f"{r['engine'].removeprefix('lm-eval hf, ')} | {r['rows']} | {r['lm_eval_acc']:.4f} | "
            f"{r['pipeline_acc']:.4f} | {r['rows_predicted_differently']} |"
        )
    return lines


RENDERERS: dict[str, tuple[str, Callable[[list[dict]], list[str]]]] = {
    "cli_startup": ("cli_startup", cli_startup),
    "estimate_accuracy": ("estimate_accuracy", estimate_accuracy),
    "main_job": ("estimate_accuracy", main_job),
    "lm_eval_agreement": ("lm_eval_agreement", lm_eval_agreement),
    "study_costs": ("study_costs", study_costs),
    "tokenize_scale": ("tokenize_scale", tokenize_scale),
}


def render(name: str) -> str:
    source, renderer = RENDERERS[name]
    rows = json.loads((RESULTS / f"{source}.json").read_text())
    return "\n".join(renderer(rows)) + "\n"


def rendered_page(text: str) -> str:
    """``text`` with every marked block replaced by a fresh render of its results."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group(2)) + m.group(3), text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="rewrite the pages' marked blocks")
    args = parser.parse_args()
    if args.write:
        for page in PAGES:
            page.write_text(rendered_page(page.read_text()))
        return
    for name, (source, _) in RENDERERS.items():
        if (RESULTS / f"{source}.json").is_file():
            print(f"## {name}\n\n{render(name)}")


if __name__ == "__main__":
    main()
