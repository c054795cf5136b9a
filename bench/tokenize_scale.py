"""Tokenize at scale: memory and speed of the tokenize stage on N-row tasks built from the shared
SST-2 and BoolQ files, beside the raw batched tokenizer on the same texts.

    python bench/tokenize_scale.py --rows 1000000 10000000 --shapes sst2 boolq --save

Shapes: ``sst2`` — SST-2 sentences joined in pairs (the label of the first), a JSONL train file
of N rows and the real dev file as validation, the large protocol (1,000 shuffled rows held out
as dev: the train split is a permutation of the file, written through the ordering buckets);
``boolq`` — BoolQ passages with another row's question, the small protocol (train in file
order). Every run is ``pipeline run CONFIG --stages tokenize`` (``--stages tokenize,shard,train``
with ``--train-steps``) in its own output directory, with ``task.num_proc`` 1 and 2; the peak
memory is sampled every 0.2 s over the whole process tree (PSS: pages shared by the forked
workers counted once; RSS of the main process alone too). The raw tokenizer's rate is
``tokenizer(texts)`` in batches of 4,096 on one thread, on the first 200,000 contexts.
The synthetic files are kept in ``--work`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the raw rate: one thread, like one worker

import psutil
import yaml
from common import DATA_DIR, report

from pipeline.engine.models import GEMMA_PACKAGE_SOURCE, load_tokenizer
from pipeline.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "reports" / "bench" / "tokenize_scale.json"
SHAPES = {"sst2": ("glue/sst2/train.tsv", 128), "boolq": ("superglue/boolq/train.jsonl", 256)}
RAW_ROWS, RAW_BATCH, STEP = 200_000, 4096, 7919


def synthetic_rows(shape: str, n: int):
    """The N rows of a shape, deterministic: row i pairs source row i with row i·7919."""
    source = get_task(shape).files["train"].read(DATA_DIR)
    m = len(source)
    for i in range(n):
        a, b = source[i % m], source[(i * STEP + 1) % m]
        if shape == "sst2":
            yield {
                "sentence": f"{a['sentence'].strip()} {b['sentence'].strip()}",
                "label": a["label"],
            }
        else:
            label = b["label"] if "label" in b else b["answer"]
            yield {"passage": a["passage"], "question": b["question"], "label": label}


def task_file(work: Path, shape: str, n: int) -> Path:
    """The shape's N-row JSONL file (written once, then reused)."""
    path = work / f"{shape}_{n}.jsonl"
    if not path.is_file():
        partial = path.with_suffix(".partial")
        with partial.open("w") as f:
            for row in synthetic_rows(shape, n):
                f.write(json.dumps(row) + "\n")
        partial.rename(path)
    return path


def config_for(work: Path, shape: str, n: int, num_proc: int, train_steps: int) -> Path:
    spec = yaml.safe_load((REPO / "pipeline" / "tasks" / "builtin" / f"{shape}.yaml").read_text())
    validation = get_task(shape).files["validation"].location(DATA_DIR)
    spec.update(
        name=f"{shape}_{n}",
        files={
            "train": {"path": str(task_file(work, shape, n))},
            "validation": {"path": str(validation)},
        },
    )
    spec.pop("hub", None)
    out = work / f"run_{shape}_{n}_p{num_proc}_s{train_steps}"
    config = {
        "name": f"scale_{shape}_{n}",
        "output_dir": str(out),
        "task": {
            "name": spec["name"],
            "spec": spec,
            "max_length": SHAPES[shape][1],
            "num_proc": num_proc,
        },
        "train": {
            "steps": max(train_steps, 1),
            "batch_size": 8,
            "eval_every": 1000,
            "log_every": 1,
        },
    }
    if train_steps:
        config["task"]["dev_limit"] = 64  # the train stage scores dev at its end
    path = work / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_measured(command: list[str]) -> dict[str, float]:
    """Wall seconds and peak memory (MiB) of a command's process tree, sampled every 0.2 s."""
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    main = psutil.Process(proc.pid)
    peak = {"tree_pss_mib": 0.0, "tree_rss_mib": 0.0, "main_rss_mib": 0.0}
    while proc.poll() is None:
        try:
            tree = [main, *main.children(recursive=True)]
            infos = [p.memory_full_info() for p in tree]
        except psutil.Error:
            continue
        peak["tree_pss_mib"] = max(peak["tree_pss_mib"], sum(i.pss for i in infos) / 2**20)
        peak["tree_rss_mib"] = max(peak["tree_rss_mib"], sum(i.rss for i in infos) / 2**20)
        peak["main_rss_mib"] = max(peak["main_rss_mib"], infos[0].rss / 2**20)
        time.sleep(0.2)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr.read()[-3000:]}")
    return {
        "wall_seconds": round(time.perf_counter() - started, 1),
        **{k: round(v) for k, v in peak.items()},
    }


def stage_result(config: Path, stage: str) -> tuple[dict, Path]:
    """The stage's manifest and its directory."""
    out = Path(yaml.safe_load(config.read_text())["output_dir"])
    manifest = next(out.rglob(f"{stage}/manifest.json"))
    return json.loads(manifest.read_text()), manifest.parent


def raw_rate(work: Path, shape: str, n: int, tokenizer) -> float:
    """Rows per second of ``tokenizer(texts)`` (one thread) on the shape's first contexts."""
    task = get_task(shape)
    texts = []
    with task_file(work, shape, n).open() as f:
        for line, _ in zip(f, range(RAW_ROWS), strict=False):
            texts.append(task.context(json.loads(line)))
    started = time.perf_counter()
    for i in range(0, len(texts), RAW_BATCH):
        tokenizer(texts[i : i + RAW_BATCH])
    return len(texts) / (time.perf_counter() - started)


def parse_run(spec: str) -> tuple[str, int, list[int]]:
    shape, rows, procs = spec.split(":")
    if shape not in SHAPES:
        sys.exit(f"{spec}: shape is one of {sorted(SHAPES)}")
    return shape, int(rows), [int(p) for p in procs.split(",")]


def directory_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--run",
        nargs="+",
        default=["sst2:1000000:1,2", "sst2:10000000:2", "boolq:200000:1,2"],
        help="SHAPE:ROWS:NUM_PROC[,NUM_PROC...] (tokenize alone)",
    )
    parser.add_argument(
        "--whole-run",
        default="sst2:10000000:2",
        help="SHAPE:ROWS:NUM_PROC run through tokenize, shard and --train-steps steps ('' skips)",
    )
    parser.add_argument("--train-steps", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("/tmp/adept-tokenize-scale"))
    parser.add_argument("--save", action="store_true", help=f"append the result to {RESULTS}")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(GEMMA_PACKAGE_SOURCE)
    pipeline = str(Path(sys.executable).parent / "pipeline")
    runs, table = [], []
    for spec in args.run:
        shape, n, procs = parse_run(spec)
        raw = raw_rate(args.work, shape, n, tokenizer)
        input_mib = task_file(args.work, shape, n).stat().st_size / 2**20
        for num_proc in procs:
            config = config_for(args.work, shape, n, num_proc, 0)
            measured = run_measured(
                [pipeline, "run", str(config), "--stages", "tokenize", "--no-probe", "--force"]
            )
            manifest, stage_dir = stage_result(config, "tokenize")
            rows = sum(manifest["summary"].values())
            run = {
                "shape": shape,
                "rows": rows,
                "num_proc": num_proc,
                "input_mib": round(input_mib),
                "stage_seconds": manifest["seconds"],
                "rows_per_second": round(rows / manifest["seconds"]),
                "raw_tokenizer_rows_per_second": round(raw),
                "output_mib": round(directory_mib(stage_dir)),
                **measured,
            }
            runs.append(run)
            print(json.dumps(run), flush=True)
            shutil.rmtree(yaml.safe_load(config.read_text())["output_dir"])  # GBs at 10M rows
    result = {"bench": "tokenize_scale", "runs": runs}
    if args.whole_run:
        shape, largest, (num_proc,) = parse_run(args.whole_run)
        config = config_for(args.work, shape, largest, num_proc, args.train_steps)
        stages = "tokenize,shard,train"
        measured = run_measured([pipeline, "run", str(config), "--stages", stages, "--no-probe"])
        shard, shard_dir = stage_result(config, "shard")
        result["whole_run"] = {
            "shape": shape,
            "rows": largest,
            "stages": stages,
            "train_steps": args.train_steps,
            "shard_output_kib": round(directory_mib(shard_dir) * 1024),
            "shard_seconds": shard["seconds"],
            **measured,
        }
    for run in runs:
        table.append(
            (
                run["shape"],
                f"{run['rows']:,}",
                str(run["num_proc"]),
                f"{run['rows_per_second']:,}",
                f"{run['raw_tokenizer_rows_per_second']:,}",
                f"{run['tree_pss_mib']:,}",
                f"{run['main_rss_mib']:,}",
            )
        )
    report(
        result,
        table,
        ("shape", "rows", "num_proc", "rows/s", "raw rows/s", "peak PSS MiB", "main RSS MiB"),
    )
    if args.save:
        from common import describe_machine

        saved = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
        RESULTS.write_text(
            json.dumps([*saved, {**result, "machine": describe_machine()}], indent=1) + "\n"
        )


if __name__ == "__main__":
    main()
