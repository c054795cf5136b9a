"""The ``pipeline`` command: run, validate, predict, sweep, submit, compare, rest.

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

from .launch.signals import Interrupted, Preempted, interrupting_on_stop_signals

# pydantic looks for plugins through every installed package's entry points (tens of ms at each
# start); this command uses none. A value the user set wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
from .util.ranks import dist_env, exit_process, is_distributed_launch

if TYPE_CHECKING:
    from .core.config import PipelineConfig

log = logging.getLogger("pipeline")
EXIT_USAGE = 2  # bad config / input: the message says what to fix
MAX_BODY_MIB = 32  # pipeline rest's default request cap (tracking/rest.py)
NO_PROBE_HELP = "skip the time estimate (it times a few steps of the model, once per machine)"
STAGE_ORDER = ("tokenize", "shard", "train", "evaluate", "export")  # stages/__init__.py's PIPELINE


KNOWN_ERRORS = (  # (module, class): they end a command with one `error:` line and exit 2
    ("pipeline.core.yaml_files", "ConfigError"),
    ("pipeline.tracking.tracker", "TrackingError"),
    ("pipeline.launch.slurm", "SlurmError"),
    ("pipeline.study.jobs", "StudyError"),
    ("pipeline.core.stage", "StageError"),
    ("pipeline.util.locks", "LockHeld"),
    ("pipeline.launch.commands", "LaunchError"),
    ("pipeline.tasks.readers", "DataError"),
    ("pipeline.tasks.parallel", "WorkerDied"),
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


QUIET_ENVIRONMENT = {  # unless --verbose (a variable the user set wins)
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",  # "Saving the dataset" bars
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # system-metrics start/stop and other INFO lines
    "TRANSFORMERS_VERBOSITY": "error",
}
NOISY_LOGGERS = ("mlflow", "alembic", "datasets", "transformers", "DeepSpeed", "urllib3")


def quiet_libraries() -> None:
    """A run prints its stage lines, progress bars for the long loops and warnings that need
    action; the libraries' INFO lines, their own progress bars and their warnings about the
    model card, licence or input example of a logged model show with ``--verbose``."""
    import warnings

    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=r"(mlflow|transformers)\b")


RANK_LOGGER = "pipeline.ranks"  # each rank's one line saying where it runs


def rank_zero_only(record: logging.LogRecord) -> bool:
    """The log filter of ranks other than 0: warnings and errors, and the rank's own line."""
    return record.levelno >= logging.WARNING or record.name == RANK_LOGGER


def _stages(arg: str | None) -> tuple[str, ...]:
    if not arg:
        return STAGE_ORDER
    return tuple(s.strip() for s in arg.split(",") if s.strip())


def cmd_run(args: argparse.Namespace) -> int:
    from .core.config import load_config
    from .util.files import ensure_writable

    config = load_config(args.config, args.set, args.variant)  # a mistake stops here, at once
    if not is_distributed_launch() or dist_env()[0] == 0:
        ensure_writable(config.run_dir, create=False)  # cheapest first: before any model
    from .engine.hardware import configure_threads
    from .runner import Runner
    from .tracking.tracker import check_reachable, tracking_uri
    from .validate import config_warnings, preflight

    if not is_distributed_launch() or dist_env()[0] == 0:
        check_reachable(tracking_uri(config))  # an unusable store fails before any model loads

    configure_threads()
    runner = Runner(config, config_file=Path(args.config))  # resolves model.dtype: auto
    preflight(runner.config)
    for warning in config_warnings(runner.config):
        log.warning(warning)
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
        if metrics.get("below_zero_shot_on_dev"):
            ((metric, adapter),) = metrics["dev_adapter"].items()
            base = metrics["dev_zero_shot"][metric]
            print(
                f"  warning: on dev the adapter ({metric} {adapter:.4f}) is below zero-shot "
                f"({base:.4f}): training made the model worse"
            )


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
    from .validate import validate_command

    return validate_command(args)


def cmd_predict(args: argparse.Namespace) -> int:
    from .core.config import ConfigError
    from .engine.predict import Predictor, exported_task, find_export_dir
    from .engine.predict_files import is_csv, joined, read_input, render
    from .util.files import ensure_writable, write_text_atomic

    batch_size = {"batch_size": args.batch_size} if args.batch_size else {}
    output = Path(args.output) if args.output else None
    if output is not None:  # before any row is predicted
        if output.is_dir():
            raise ConfigError(f"--output {output} is a directory: name the file to write")
        if not output.parent.is_dir():
            raise ConfigError(f"--output {output}: {output.parent} is not a directory")
        ensure_writable(output.parent, create=False, what="--output directory")
    _, task = exported_task(find_export_dir(args.run))
    rows = read_input(Path(args.input), task)  # JSONL, CSV, TSV or Parquet; its column names too
    if not rows:
        raise ConfigError(f"--input {args.input}: no rows to predict")
    task.check_rows(rows, args.input)  # before the model loads: file and line named
    results = Predictor(args.run).predict(rows, source=args.input, **batch_size)
    text = render(joined(task, rows, results), csv_output=is_csv(output))
    if output is not None:
        write_text_atomic(output, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_rest(args: argparse.Namespace) -> int:
    from .tracking.rest import serve

    serve(args.model_uri, args.host, args.port, args.max_body_mib)
    return 0


def count(least: int):
    """An argparse type: a whole number ≥ ``least`` (checked when the command line is read,
    not minutes later; argparse names the flag)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be ≥ {least}, got {value}")
        return value

    return parse


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
    run.add_argument("--variant", type=count(0), help="run the i-th combination of the sweep: grid")
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
    submit.add_argument("--max-parallel", type=count(1), help="array throttle (%%N)")
    submit.set_defaults(func=cmd_submit)

    compare = sub.add_parser(
        "compare", help="method comparison study: lr grid on dev, seeds, test, report"
    )
    compare.add_argument("study", help="study YAML, e.g. configs/studies/gemma3_270m.yaml")
    compare.add_argument("--dry-run", action="store_true", help="print the grid jobs only")
    compare.add_argument("--parallel", type=count(1), help="jobs at a time (overrides the file)")
    compare.add_argument(
        "--report-only", action="store_true", help="render the report from finished jobs only"
    )
    compare.set_defaults(func=cmd_compare)

    validate = sub.add_parser(
        "validate", help="check config, print budget, stage plan, time estimate and memory plan"
    )
    with_config(validate)
    validate.add_argument("--no-probe", action="store_true", help=NO_PROBE_HELP)
    validate.add_argument(
        "--no-data", action="store_true", help="skip reading the task's data files"
    )
    validate.set_defaults(func=cmd_validate)

    predict = sub.add_parser("predict", help="score rows of a file with a trained adapter")
    predict.add_argument("run", help="run directory or export directory")
    predict.add_argument(
        "--input", required=True, help="rows with the task's fields: .jsonl, .csv, .tsv, .parquet"
    )
    predict.add_argument(
        "--output", help="write here instead of stdout (CSV if it ends in .csv, else JSONL)"
    )
    predict.add_argument("--batch-size", type=count(1), help="rows per forward pass (default 16)")
    predict.set_defaults(func=cmd_predict)

    add_rest_parser(sub)
    return parser


def add_rest_parser(sub) -> None:
    """``pipeline rest MODEL_URI``: the registered model over HTTP (tracking/rest.py)."""
    rest = sub.add_parser(
        "rest", help="serve a registered model over REST (MLflow's scoring server, guarded)"
    )
    rest.add_argument(
        "model_uri", help="e.g. models:/NAME@champion (MLFLOW_TRACKING_URI: its store)"
    )
    rest.add_argument("--host", default="127.0.0.1", help="address to listen on")
    rest.add_argument("--port", type=count(1), default=5001, help="port (default 5001)")
    rest.add_argument(
        "--max-body-mib",
        type=count(1),
        default=MAX_BODY_MIB,
        help=f"larger request bodies get HTTP 413 (default {MAX_BODY_MIB})",
    )
    rest.set_defaults(func=cmd_rest)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the exact command, for reports
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if dist_env()[0] != 0 and not args.verbose:  # progress from rank 0 only
        for handler in logging.getLogger().handlers:
            handler.addFilter(rank_zero_only)
    if not args.verbose:
        quiet_libraries()
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
