"""The YAML schema (pydantic), ``--set`` overrides, and the stable config hash.

Unknown keys and wrong types are errors naming the key path, e.g.
``train.steps: expected int, got 'fast'``. The ``method:`` section is validated against the
chosen method's own config class (:mod:`pipeline.methods.registry`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from ..util.files import not_a_file
from ..util.secrets import scrub
from .section import Section
from .task_section import TaskSection, task_file_beside
from .tracking_section import TrackingSection
from .yaml_files import (
    ConfigError,
    apply_overrides,
    format_validation_error,
    read_yaml,
    sweep_variants,
)

if TYPE_CHECKING:
    from ..methods import MethodConfig

DEFAULT_METHOD = "adept"
OUTPUT_NEUTRAL_KEYS = ("task.num_proc",)  # how many processes tokenize: the same output
EIGHT_BIT_DEEPSPEED = (
    "model.load_in_8bit with distributed.deepspeed needs model.dtype bfloat16 or float16 (int8 "
    "matmuls compute in 16-bit); set model.dtype: bfloat16"
)


class ModelSection(Section):
    source: str = Field("gemma3-270m", description="Hub id, local directory, or 'gemma3-270m'.")
    hub_token: str | None = Field(
        None, description="Token for gated hub models (else HF_TOKEN); never logged or printed."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype of the frozen base. auto: bfloat16 where the hardware computes "
        "it natively (a CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), else float32 "
        "(engine/hardware.py); an explicit bfloat16 on a CPU without it runs 30-100x slower.",
    )
    dtype_resolved: Literal["float32", "bfloat16", "float16"] | None = Field(
        None,
        description="Filled in when a run starts: what dtype means on this machine (part of "
        "the stage keys and the MLflow params). Not for YAML: it is recomputed.",
    )
    attention: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    load_in_8bit: bool = Field(False, description="Frozen base in 8-bit via bitsandbytes.")
    shared_prefix: bool | None = Field(
        None,
        description="Compute the soft prompt's keys/values once per batch (once per evaluation) "
        "instead of once per row; exact, and applied where the model type is verified (Llama, "
        "Gemma 3, Qwen, Mistral), else a logged fallback. null = auto: on, except for training "
        "under ZeRO-3 mode (a) on several ranks, where the prefix's second decoder call gathers "
        "every partitioned layer again (measured slower: bench/scale.py --compare-prefix).",
    )

    @property
    def compute_dtype(self) -> str:
        """The dtype the base is loaded in: ``dtype`` with ``auto`` resolved."""
        if self.dtype != "auto":
            return self.dtype
        if self.dtype_resolved is None:
            raise RuntimeError("model.dtype auto is not resolved yet (engine/hardware.py)")
        return self.dtype_resolved

    @property
    def shared_prefix_in_evaluation(self) -> bool:
        """Evaluation and prediction run in one process: on unless turned off."""
        return self.shared_prefix is not False


class TrainSection(Section):
    steps: int = Field(300, gt=0)
    batch_size: int = Field(8, gt=0, description="Micro batch per rank.")
    grad_accum: int = Field(1, gt=0)
    lr: dict[str, float] = Field(
        default_factory=dict,
        description="Learning rate per parameter group of the method (prompt, offset, lora); "
        "a group left out takes the method's default.",
    )
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(100, gt=0)
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(50, gt=0)
    seed: int = 42
    group_by_length: bool = Field(
        False, description="Batch rows of similar length (less padding; shard stage)."
    )

    @field_validator("lr", mode="before")
    @classmethod
    def _numeric_rates(cls, value: Any) -> Any:
        for group, rate in (value or {}).items() if isinstance(value, dict) else ():
            if isinstance(rate, bool):
                raise ValueError(f"lr.{group}: expected a number, got {str(rate).lower()}")
        return value

    @field_validator("lr")
    @classmethod
    def _positive_rates(cls, value: dict[str, float]) -> dict[str, float]:
        for group, rate in value.items():
            if rate <= 0:
                raise ValueError(f"lr.{group}: must be > 0, got {rate}")
        return value


class EvalSection(Section):
    batch_size: int = Field(16, gt=0)
    zero_shot: bool = Field(True, description="Also score the base model without an adapter.")


class DistributedSection(Section):
    nproc_per_node: int = Field(1, gt=0)
    nnodes: int = Field(1, gt=0)
    deepspeed: bool = False
    zero_stage: Literal[0, 1, 2, 3] = 3
    ds_config: str | None = None

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


ALIAS_RULE = re.compile(r"^[\w\-]{1,255}$")  # MLflow's own rule for registered-model aliases


class ExportSection(Section):
    fold: bool = Field(False, description="Also write ADePT's folded input-embedding table.")
    merged: bool = Field(
        False,
        description="Also write a standalone Hugging Face model (PT, ADePT): the prompt as a "
        "prefix of m special tokens, ADePT's FFN folded into the input table.",
    )
    register_model: bool = Field(True, description="Register the adapter in the MLflow registry.")
    registered_model_name: str | None = Field(None, description="Default: the run name.")
    alias: str = Field("champion", description="Alias set on the new version.")

    @field_validator("alias")
    @classmethod
    def _mlflow_alias(cls, value: str) -> str:
        version_like = re.match(r"^[vV]\d+$", value)
        if not ALIAS_RULE.match(value) or value.lower() == "latest" or version_like:
            raise ValueError(
                f"{value!r} is not a registry alias: letters, digits, '_' and '-' only, not "
                "'latest' and not a version like 'v3'"
            )
        return value

    @field_validator("registered_model_name")
    @classmethod
    def _mlflow_model_name(cls, value: str | None) -> str | None:
        if value is not None and (
            not value.strip() or "/" in value or ":" in value or os.path.normpath(value) != value
        ):
            raise ValueError(f"{value!r} is not a registered model name (no '/', ':' or '..')")
        return value


def default_method_config() -> MethodConfig:
    """The config of ``DEFAULT_METHOD`` with its own defaults (nothing to validate)."""
    from ..methods import get_method

    return get_method(DEFAULT_METHOD).config_class()


class PipelineConfig(Section):
    plugins: list[str] = Field(
        default_factory=list,
        description="Python modules imported before the rest is validated, e.g. one that "
        "registers a method of your own (pipeline.methods.register_method).",
    )
    name: str = Field(
        ..., min_length=1, max_length=100, description="Run name: outputs go to output_dir/name."
    )
    output_dir: str = "runs"
    model: ModelSection = ModelSection()
    method: Any = Field(
        default_factory=default_method_config,
        description="name: the method; the other keys are that method's options.",
    )
    task: TaskSection = TaskSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    distributed: DistributedSection = DistributedSection()
    tracking: TrackingSection = TrackingSection()
    export: ExportSection = ExportSection()
    sweep: dict[str, list[Any]] | None = Field(
        None, description="Grid of KEY.PATH: [values]; `--variant i` runs the i-th combination."
    )
    variant: str | None = Field(None, description="Set by --variant; outputs go to variants/.")

    @field_validator("plugins")
    @classmethod
    def _import_plugins(cls, value: list[str]) -> list[str]:
        for module in value:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ValueError(f"cannot import {module!r}: {exc}") from None
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if "/" in value or value.startswith(".") or any(ord(c) < 32 for c in value):
            raise ValueError(
                "must be a plain directory name (no '/', no control characters such as a NUL "
                "byte, not starting with '.')"
            )
        return value

    @field_validator("method", mode="before")
    @classmethod
    def _method_section(cls, value: Any) -> MethodConfig:
        from ..methods import MethodConfig, config_from_section

        if isinstance(value, MethodConfig):
            return value
        if not isinstance(value, dict):
            raise ValueError("expected a mapping: name plus the method's options")
        return config_from_section(value)

    @field_serializer("method")
    def _dump_method(self, value: MethodConfig) -> dict[str, Any]:
        from ..methods import section_from_config

        return section_from_config(value)

    @model_validator(mode="after")
    def _supported_combination(self) -> PipelineConfig:
        method, dist = self.method, self.distributed
        groups = method.learning_rates
        unknown = sorted(set(self.train.lr) - set(groups))
        if unknown:
            raise ValueError(
                f"train.lr.{unknown[0]}: method {method.method!r} has no parameter group "
                f"{unknown[0]!r} (its groups: {', '.join(groups)})"
            )
        if set(self.train.lr) != set(groups):  # fill in the method's defaults, once
            self.train.lr = {**groups, **self.train.lr}
        if dist.world_size > 1 and not dist.deepspeed:
            raise ValueError(
                f"distributed: {dist.world_size} ranks need distributed.deepspeed: true "
                "(data parallelism runs through DeepSpeed)"
            )
        if self.export.fold and not method.can_fold:
            raise ValueError(
                f"export.fold: method {method.method!r} does not fold into the embedding table "
                "(ADePT does)"
            )
        if self.export.merged and not method.can_merge:
            raise ValueError(f"export.merged: method {method.method!r}: {method.why_not_mergeable}")
        if method.lives_in_base and self.model.load_in_8bit and dist.deepspeed:
            from ..methods import get_method

            raise ValueError(
                f"method.name {method.method} with model.load_in_8bit and distributed.deepspeed: "
                f"the {get_method(method.method).label} weights live inside the int8 base, which "
                "stays outside the engine; train it on a 16-bit base under ZeRO, or without "
                "DeepSpeed"
            )
        if self.model.load_in_8bit and self.model.dtype == "float32" and dist.deepspeed:
            raise ValueError(EIGHT_BIT_DEEPSPEED)
        return self

    # ------------------------------------------------------------------ derived values
    @property
    def sweep_dir(self) -> Path:
        """The run's root: holds the variants and the data they share."""
        return Path(self.output_dir) / self.name

    @property
    def run_dir(self) -> Path:
        if self.variant is None:
            return self.sweep_dir
        return self.sweep_dir / "variants" / self.variant

    def data_dir(self) -> Path | None:
        root = self.task.data_dir or os.environ.get("PIPELINE_DATA_DIR")
        return Path(root) if root else None

    @property
    def shared_prefix_in_training(self) -> bool:
        """``model.shared_prefix``, or when null: on unless ZeRO-3 partitions the base over
        several ranks (mode a), where two decoder calls double the parameter gathers."""
        if self.model.shared_prefix is not None:
            return self.model.shared_prefix
        dist = self.distributed
        partitioned = dist.deepspeed and dist.zero_stage == 3 and not self.model.load_in_8bit
        return not (partitioned and dist.world_size > 1)

    def method_config(self, text_config: Any) -> MethodConfig:
        """The method's config for this model and task: seeded from ``train.seed``, ranks
        solved from the budget, input length from ``task.max_length``."""
        from ..methods import BudgetError

        try:
            return replace(self.method, seed=self.train.seed).resolve(
                text_config, self.task.max_length
            )
        except BudgetError as exc:
            raise ConfigError(f"method: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def keyed_dict(self) -> dict[str, Any]:
        """``to_dict`` without the keys that change how a run works, not what it writes
        (``OUTPUT_NEUTRAL_KEYS``): what config hashes and stage keys are made of."""
        data = self.to_dict()
        for dotted in OUTPUT_NEUTRAL_KEYS:
            *parents, last = dotted.split(".")
            node = data
            for part in parents:
                node = node.get(part, {})
            node.pop(last, None)
        return data

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections (a stage's inputs); all sections when none given."""
        data = self.keyed_dict()
        picked = {k: data[k] for k in sections} if sections else data
        blob = json.dumps(picked, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def config_hash(self) -> str:
        return self.section_hash()


INTERNAL_KEYS = {  # filled in by the pipeline; a value from YAML or --set would be overwritten
    ("model", "dtype_resolved"): "what model.dtype means on this machine, worked out when a run "
    "starts; set model.dtype instead",
}


LAUNCH_CONFIG_ENV = "PIPELINE_LAUNCH_CONFIG"  # the resolved config a runner wrote for its ranks


def refuse_internal_keys(data: dict[str, Any], path: Path) -> None:
    """A user's YAML or ``--set`` may not set what the pipeline fills in; the config a runner
    wrote for its ranks (named by ``$PIPELINE_LAUNCH_CONFIG``) carries them on purpose."""
    if os.environ.get(LAUNCH_CONFIG_ENV) == str(path.resolve()):
        return
    for (section, key), what in INTERNAL_KEYS.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            raise ConfigError(f"{path}: {section}.{key}: not a config key ({what})")


def load_config(
    path: str | os.PathLike, overrides: list[str] | None = None, variant: int | None = None
) -> PipelineConfig:
    """Read YAML (safe loader), apply the sweep variant and ``--set`` overrides, validate."""
    path = Path(path)
    if problem := not_a_file(path, "config file"):
        raise ConfigError(problem)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    if variant is not None:
        variants = sweep_variants(data.get("sweep"))
        if not 0 <= variant < len(variants):
            raise ConfigError(
                f"--variant {variant}: {path} has {len(variants)} variant(s), "
                f"0..{len(variants) - 1}"
            )
        data = apply_overrides(data, variants[variant])
        data["variant"] = f"v{variant:03d}"
    data = task_file_beside(data, path.parent)
    data = apply_overrides(data, overrides or [])
    refuse_internal_keys(data, path)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:  # a secret's value never shows, whatever its type
        raise ConfigError(scrub(format_validation_error(exc, str(path)), data)) from None
