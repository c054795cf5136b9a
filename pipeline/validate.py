"""`pipeline validate`, and the checks `pipeline run` makes before any stage: everything that
can be known about a config without training, each mistake one line naming its key or file.

Printed: the resolved config and hash, the parameter budget, the data (every split read, its
declared fields present, the first rows through the templates and the label map), the stage
plan, the precision (``model.dtype`` on this machine), the time estimate, the DeepSpeed plan and
the memory plan.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml

from .core.config import ConfigError, PipelineConfig, load_config

LARGEST_USEFUL_LR = 1.0  # above it the loss freezes or explodes; a warning, not an error


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


def config_warnings(config: PipelineConfig) -> list[str]:
    """What is allowed but almost surely a mistake (often an override that left the rest of the
    recipe behind, e.g. ``--set train.steps=40`` on a 300-step recipe)."""
    train = config.train
    warnings = [
        f"train.lr.{group} = {rate:g} is far above any useful rate (≤ {LARGEST_USEFUL_LR:g}): "
        "the loss will freeze or explode"
        for group, rate in train.lr.items()
        if rate > LARGEST_USEFUL_LR
    ]
    if train.warmup_steps * 2 >= train.steps:
        warnings.append(
            f"train.warmup_steps = {train.warmup_steps} is at least half of train.steps = "
            f"{train.steps}: the learning rate is still rising for most of the run (about a "
            f"tenth of the steps is usual: --set train.warmup_steps={max(train.steps // 10, 1)})"
        )
    if train.eval_every > train.steps:
        warnings.append(
            f"train.eval_every = {train.eval_every} exceeds train.steps = {train.steps}: dev is "
            "scored once, at the end, so the best-on-dev choice has a single point (set "
            f"train.eval_every ≤ {train.steps})"
        )
    return warnings


def check_data(config: PipelineConfig) -> list[str]:
    """The ``# data`` lines (tasks/data.py check_task_data; DataError on a mistake)."""
    from .tasks import check_task_data

    t = config.task
    limits = {"train": t.train_limit, "dev": t.dev_limit, "test": t.test_limit}
    plan = check_task_data(t.definition(), config.data_dir(), limits)
    if plan is None:
        return ["not read: no data directory (the hub is read when tokenize runs)"]
    from .tasks.splits import CHECKED_ROWS

    lines = [
        f"{split:<5} {n:>9,} rows  {absolute(plan.source(split))}"
        + (one_file_classes(plan.cut, split) if plan.cut else "")
        for split, n in plan.sizes.items()
    ]
    if plan.cut:
        cut = plan.cut
        by = f"stratified by {cut['stratified_by']}" if cut["stratified_by"] else "not stratified"
        lines.append(
            f"one file cut {1 - cut['dev'] - cut['test']:.0%} / {cut['dev']:.0%} / "
            f"{cut['test']:.0%} (seed {cut['seed']}, {by}); task.*_limit applied after"
        )
    return [*lines, f"fields present; the first {CHECKED_ROWS} rows of each split render"]


def one_file_classes(cut: dict[str, Any], split: str) -> str:
    """A one-file split's rows per label value: ``  (billing 80, tech 80, shipping 80)``."""
    classes = cut.get("classes", {}).get(split)
    return f"  ({', '.join(f'{k} {n}' for k, n in classes.items())})" if classes else ""


def absolute(source: str) -> str:
    """A local file's absolute path; a hub source (``hub:…``) as it is."""
    return source if source.startswith("hub:") else str(Path(source).resolve())


def path_lines(config: PipelineConfig, tracking: str) -> list[str]:
    """Where the run reads and writes, resolved to absolute paths (docs/pipeline.md#paths:
    ``output_dir`` and ``task.data_dir`` start at the working directory, ``task.file`` at the
    config file's directory)."""
    lines = [f"run directory  {config.run_dir.resolve()}  (output_dir: from the working directory)"]
    data = config.data_dir()
    where = "task.data_dir" if config.task.data_dir else "PIPELINE_DATA_DIR"
    lines.append(
        f"data directory {data.resolve()}  ({where}: from the working directory)"
        if data is not None
        else "data directory none: files as the task names them, else the hub"
    )
    lines.append(f"tracking       {tracking}")
    return lines


def deepspeed_lines(config: PipelineConfig) -> list[str]:
    from .engine.deepspeed_config import ds_config_path, fill_ds_config

    ds = fill_ds_config(config, config.distributed.world_size)
    mode = (
        "b: int8 base replicated outside ZeRO, engine owns the adapter only"
        if config.model.load_in_8bit
        else "a: whole model under ZeRO"
    )
    return [
        f"# deepspeed ({ds_config_path(config)}; mode {mode})",
        f"zero stage {ds['zero_optimization']['stage']}, global batch "
        f"{ds['train_batch_size']} = {ds['train_micro_batch_size_per_gpu']} micro × "
        f"{ds['gradient_accumulation_steps']} accumulation × {config.distributed.world_size}"
        f" ranks, bf16={ds.get('bf16', {}).get('enabled')}",
    ]


def budget_lines(planned: dict[str, Any]) -> list[str]:
    b, m = planned["budget"], planned["model"]
    return [
        f"# budget ({m['source']}, d={m['hidden_size']}, {m['parameters']:,} params, dims from "
        f"{m['spec_from']})",
        f"method={b['method']} m={b['m']} r={b['r']} trainable={b['trainable']:,} "
        f"PT budget={b['pt_budget']:,} ({b['fraction_of_pt_budget']:.2%})",
    ]


def memory_lines(planned: dict[str, Any]) -> list[str]:
    mem = planned["memory"]
    return [
        f"# memory plan (world size {mem['world_size']})",
        f"frozen weights per rank:  {mem['frozen_weight_bytes_per_rank'] / 2**30:.2f} GiB",
        f"trainable parameters:     {mem['trainable_parameters']:,}",
        f"optimizer state per rank: {mem['optimizer_state_bytes_per_rank'] / 2**20:.2f} MiB",
    ]


def validate_command(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.set)  # a config with a mistake stops here, at once
    from .tracking.tracker import check_local_store, tracking_uri

    store = tracking_uri(config)
    check_local_store(store)
    data = ["not read (--no-data)"] if args.no_data else check_data(config)
    from .engine.hardware import configure_threads
    from .engine.planning import plan
    from .runner import Runner
    from .util.secrets import redact

    configure_threads()  # as the run will: the estimate times these threads
    check_local_model(config.model.source)
    runner = Runner(config)  # resolves model.dtype: auto for this machine
    config = runner.config
    planned = plan(config)
    stages = runner.plan()
    sections = [
        [
            "# resolved config",
            yaml.safe_dump(redact(config.to_dict()), sort_keys=False).rstrip(),
            f"# config hash: {config.config_hash}",
        ],
        ["# paths", *path_lines(config, redact(store))],
        budget_lines(planned),
        ["# data", *data],
        ["# stage plan", *(f"{stage:<9} {status}" for stage, status in stages.items())],
        ["# precision", f"model.dtype {config.model.dtype} → {config.model.compute_dtype}"],
    ]
    if warnings := config_warnings(config):
        sections.append(["# warnings", *warnings])
    if not args.no_probe:
        from .engine.estimate import estimate_stages

        estimate = estimate_stages(runner.context, stages)
        said = estimate if isinstance(estimate, str) else estimate.line()
        sections.append(["# time estimate", said])
    if config.distributed.deepspeed:
        sections.append(deepspeed_lines(config))
    sections.append(memory_lines(planned))
    print("\n\n".join("\n".join(lines) for lines in sections))
    return 0
