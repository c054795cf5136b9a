"""The ``pipeline`` command: run, validate, predict, sweep, submit, compare.

Parsing arguments and checking a config import neither torch nor the other heavy libraries
(transformers, datasets, mlflow, deepspeed): ``--help`` and a config with a mistake answer at
once; each command imports what it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .core.ranks import dist_env, exit_process, is_distributed_launch
from .launch.signals import Interrupted, Preempted, interrupting_on_stop_signals

if TYPE_CHECKING:
    from .core.config import PipelineConfig

log = logging.getLogger("pipeline")
EXIT_USAGE = 2  # bad config / input: the message says what to fix
NO_PROBE_HELP = "skip the time estimate (it times a few steps of the model, once per machine)"
STAGE_ORDER = ("tokenize", "shard", "train", "evaluate", "export")  # stages/__init__.py's PIPELINE


KNOWN_ERRORS = (  # (module, class): they end a command with one `error:` line and exit 2
    ("pipeline.core.yaml_files", "ConfigError"),
    ("pipeline.tracking.tracker", "TrackingError"),
    ("pipeline.launch.slurm", "SlurmError"),
    ("pipeline.study.jobs", "StudyError"),
    ("pipeline.core.stage", "StageError"),
    ("pipeline.core.locks", "LockHeld"),
    ("pipeline.launch.commands", "LaunchError"),
    ("pipeline.tasks.readers", "DataError"),
    ("pipeline.engine.models", "ModelLoadError"),
    ("pipeline.methods.base", "BudgetError"),
)


def _known_errors() -> tuple[type[BaseException], ...]:
    """The errors that end a command with one line. An error class whose module was never
    imported cannot have been raised, so its module is not imported just to name it (that
    would load torch and more for a config with a typo)."""
    loaded = (getattr(sys.modules[m], name) for m, name in KNOWN_ERRORS if m in sys.modules)
    return (
        *loaded,
        FloatingPointError,
        OSError,  # missing files, permissions, disk full, read-only file system: the OS's words
        ValueError,
    )


def _stages(arg: str | None) -> tuple[str, ...]:
    if not arg:
        return STAGE_ORDER
    return tuple(s.strip() for s in arg.split(",") if s.strip())


def check_local_model(source: str) -> None:
    """A local model directory's files, and its tokenizer against its vocabulary (seconds)."""
    from .engine.model_checks import check_model_dir, check_vocabulary
    from .engine.models import GEMMA_PACKAGE_SOURCE, load_tokenizer

    path = Path(source).expanduser()
    if source == GEMMA_PACKAGE_SOURCE or not path.is_dir():
        return
    config = check_model_dir(path)
    vocab_size = config.get("vocab_size") or config.get("text_config", {}).get("vocab_size")
    if vocab_size:
        check_vocabulary(source, len(load_tokenizer(source)), int(vocab_size))


def preflight(config: PipelineConfig) -> None:
    """Budget and DeepSpeed checks before any stage runs (skipped when the model's dims are
    not available offline yet; loading reports that case itself)."""
    from .core.config import ConfigError
    from .engine.planning import model_spec
    from .methods import BudgetError

    check_local_model(config.model.source)
    try:
        spec, _ = model_spec(config.model.source)
    except FileNotFoundError:
        return
    try:
        config.method_config(spec.get_text_config())
    except BudgetError as exc:
        raise ConfigError(f"method: {exc}") from None
    if config.distributed.deepspeed:
        from .engine.deepspeed_config import fill_ds_config

        fill_ds_config(config, config.distributed.world_size)


def cmd_run(args: argparse.Namespace) -> int:
    from .core.config import load_config
    from .core.files import ensure_writable

    config = load_config(args.config, args.set, args.variant)  # a mistake stops here, at once
    if not is_distributed_launch() or dist_env()[0] == 0:
        ensure_writable(config.run_dir)  # cheapest check first: fail before reading any model
    from .engine.hardware import configure_threads
    from .runner import Runner

    configure_threads()
    runner = Runner(config, config_file=Path(args.config))  # resolves model.dtype: auto
    preflight(runner.config)
    if not args.no_probe:
        log_estimate(runner, _stages(args.stages))
    results = runner.run(_stages(args.stages), force=args.force)
    print_summary(runner.config, results)
    return 0


def log_estimate(runner, stages: tuple[str, ...]) -> None:
    """The run's time estimate, one log line before any stage (engine/estimate.py)."""
    from .engine.estimate import estimate_stages

    plan = {s: status for s, status in runner.plan().items() if s in stages}
    estimate = estimate_stages(runner.context, plan)
    log.info("%s", estimate if isinstance(estimate, str) else estimate.line())


def print_summary(config: PipelineConfig, results) -> None:
    print(f"\n== {config.name}  (config {config.config_hash})  {config.run_dir}")
    for r in results:
        print(f"  {r.stage:<9} {r.status:<6} {r.seconds:8.1f}s  {r.path}")
    metrics_file = config.run_dir / "evaluate" / "metrics.json"
    if metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        for name in ("adapter", "zero_shot"):
            if name in metrics:
                shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics[name].items())
                print(f"  test {name:<9} {shown}  ({metrics['rows']} rows)")


def cmd_sweep(args: argparse.Namespace) -> int:
    from .launch.slurm import variant_table

    rows = variant_table(args.config, args.set)
    for index, overrides, run_dir in rows:
        print(f"{index:>4}  {run_dir}  {' '.join(overrides) or '(base config)'}")
    print(f"\n--array=0-{len(rows) - 1}")
    # Slurm opens --output=logs/… before the script runs: without logs/ the job fails silently
    print(
        f"mkdir -p logs && sbatch --array=0-{len(rows) - 1} --output='logs/%x_%A_%a.out' "
        f"slurm/train_llama.sh {args.config}"
    )
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .launch.slurm import submit

    jobs = submit(args.config, args.set, args.sbatch_arg, args.max_parallel)
    for stage, job_id in jobs.items():
        print(f"{stage:<9} job {job_id}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .study.jobs import compare

    command = " ".join(["pipeline", *args.argv])
    report = compare(args.study, args.dry_run, args.parallel, command, args.report_only)
    if not args.dry_run:
        print(f"report: {report / 'report.md'}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .core.config import load_config

    config = load_config(args.config, args.set)  # a config with a mistake stops here, at once
    from .engine.hardware import configure_threads
    from .engine.planning import plan
    from .runner import Runner
    from .tracking.tracker import redact

    configure_threads()  # as the run will: the estimate times these threads
    check_local_model(config.model.source)
    runner = Runner(config)  # resolves model.dtype: auto for this machine
    config = runner.config
    planned = plan(config)
    print("# resolved config")
    print(yaml.safe_dump(redact(config.to_dict()), sort_keys=False).rstrip())
    print(f"# config hash: {config.config_hash}")
    b = planned["budget"]
    print(
        f"\n# budget ({planned['model']['source']}, d={planned['model']['hidden_size']}, "
        f"{planned['model']['parameters']:,} params, dims from {planned['model']['spec_from']})"
    )
    print(
        f"method={b['method']} m={b['m']} r={b['r']} trainable={b['trainable']:,} "
        f"PT budget={b['pt_budget']:,} ({b['fraction_of_pt_budget']:.2%})"
    )
    print("\n# stage plan")
    plan = runner.plan()
    for stage, status in plan.items():
        print(f"{stage:<9} {status}")
    print(f"\n# precision\nmodel.dtype {config.model.dtype} → {config.model.compute_dtype}")
    if not args.no_probe:
        from .engine.estimate import estimate_stages

        estimate = estimate_stages(runner.context, plan)
        print("\n# time estimate")
        print(estimate if isinstance(estimate, str) else estimate.line())
    if config.distributed.deepspeed:
        from .engine.deepspeed_config import ds_config_path, fill_ds_config

        ds = fill_ds_config(config, config.distributed.world_size)
        mode = (
            "b: int8 base replicated outside ZeRO, engine owns the adapter only"
            if config.model.load_in_8bit
            else "a: whole model under ZeRO"
        )
        print(f"\n# deepspeed ({ds_config_path(config)}; mode {mode})")
        print(
            f"zero stage {ds['zero_optimization']['stage']}, global batch "
            f"{ds['train_batch_size']} = {ds['train_micro_batch_size_per_gpu']} micro × "
            f"{ds['gradient_accumulation_steps']} accumulation × {config.distributed.world_size}"
            f" ranks, bf16={ds.get('bf16', {}).get('enabled')}"
        )
    mem = planned["memory"]
    print(f"\n# memory plan (world size {mem['world_size']})")
    print(f"frozen weights per rank:  {mem['frozen_weight_bytes_per_rank'] / 2**30:.2f} GiB")
    print(f"trainable parameters:     {mem['trainable_parameters']:,}")
    print(f"optimizer state per rank: {mem['optimizer_state_bytes_per_rank'] / 2**20:.2f} MiB")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .core.config import ConfigError
    from .core.files import write_text_atomic
    from .engine.predict import Predictor
    from .tasks.readers import read_jsonl

    batch_size = {"batch_size": args.batch_size} if args.batch_size else {}
    output = Path(args.output) if args.output else None
    if output is not None and not output.parent.is_dir():
        raise ConfigError(f"--output {output}: {output.parent} is not a directory")
    rows = [{k: v for k, v in r.items() if k != "_line"} for r in read_jsonl(Path(args.input))]
    if not rows:
        raise ConfigError(f"--input {args.input}: no rows to predict")
    results = Predictor(args.run).predict(rows, **batch_size)
    lines = "".join(json.dumps(result) + "\n" for result in results)
    if output is not None:
        write_text_atomic(output, lines)
    else:
        sys.stdout.write(lines)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description="ADePT fine-tuning pipeline")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("config", help="YAML config file")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a config value (repeatable)",
        )

    run = sub.add_parser("run", help="run the stages (cached stages are skipped)")
    with_config(run)
    run.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGE_ORDER)}")
    run.add_argument("--force", action="store_true", help="re-run stages even when cached")
    run.add_argument("--variant", type=int, help="run the i-th combination of the sweep: grid")
    run.add_argument("--no-probe", action="store_true", help=NO_PROBE_HELP)
    run.set_defaults(func=cmd_run)

    sweep = sub.add_parser("sweep", help="list the sweep's variants and the --array range")
    with_config(sweep)
    sweep.set_defaults(func=cmd_sweep)

    submit = sub.add_parser("submit", help="submit tokenize, the training array, then evaluate")
    with_config(submit)
    submit.add_argument(
        "--sbatch-arg",
        action="append",
        default=[],
        help="extra sbatch option for every job, e.g. --sbatch-arg=--partition=gpu",
    )
    submit.add_argument("--max-parallel", type=int, help="array throttle (%%N)")
    submit.set_defaults(func=cmd_submit)

    compare = sub.add_parser(
        "compare", help="method comparison study: lr grid on dev, seeds, test, report"
    )
    compare.add_argument("study", help="study YAML, e.g. configs/studies/gemma3_270m.yaml")
    compare.add_argument("--dry-run", action="store_true", help="print the grid jobs only")
    compare.add_argument("--parallel", type=int, help="jobs at a time (overrides the file)")
    compare.add_argument(
        "--report-only", action="store_true", help="render the report from finished jobs only"
    )
    compare.set_defaults(func=cmd_compare)

    validate = sub.add_parser(
        "validate", help="check config, print budget, stage plan, time estimate and memory plan"
    )
    with_config(validate)
    validate.add_argument("--no-probe", action="store_true", help=NO_PROBE_HELP)
    validate.set_defaults(func=cmd_validate)

    predict = sub.add_parser("predict", help="score JSONL rows with a trained adapter")
    predict.add_argument("run", help="run directory or export directory")
    predict.add_argument("--input", required=True, help="JSONL rows with the task's fields")
    predict.add_argument("--output", help="write JSONL here instead of stdout")
    predict.add_argument("--batch-size", type=int, help="rows per forward pass (default 16)")
    predict.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, for reports
    quiet = dist_env()[0] != 0  # only rank 0 logs progress; other ranks say only what is wrong
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        with interrupting_on_stop_signals():
            return args.func(args)
    except Preempted as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        return Preempted.exit_code
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return Interrupted.exit_code
    except _known_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    exit_process(main())  # ranks leave their process group before exiting
