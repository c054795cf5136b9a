"""What every method config shares (PEFT style: a dataclass whose fields carry help text).

A method is one module that defines a config class (this base or :class:`SoftPromptConfig`), a
model class (a :class:`~pipeline.methods.wrapper.SoftPromptModel` subclass) and registers both
(:func:`pipeline.methods.registry.register_method`). The config owns the method's defaults, its
parameter groups with their default learning rates, its trainable-parameter count and its rank
rule (:meth:`MethodConfig.resolve`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Literal

PromptInit = Literal["vocab", "text"]
DERIVED = {"derived": True}  # field metadata: filled by the pipeline or resolve(), not by YAML


class BudgetError(ValueError):
    """The requested sizes leave no room for the method's low-rank/FFN part."""


@dataclass
class MethodConfig:
    """Fields and hooks shared by every method."""

    method: ClassVar[str] = ""
    learning_rates: ClassVar[dict[str, float]] = {}
    """Parameter group name → default learning rate (``train.lr.<group>`` overrides it)."""
    can_fold: ClassVar[bool] = False
    """Whether the method folds into the input-embedding table (``export.fold``)."""
    can_merge: ClassVar[bool] = False
    """Whether ``export.merged`` can turn the adapter into a plain checkpoint (PT, ADePT, LoRA)."""
    why_not_mergeable: ClassVar[str] = "only PT, ADePT and LoRA merge into a plain checkpoint"
    lives_in_base: ClassVar[bool] = False
    """Whether the trainable weights sit inside the base model's modules (LoRA)."""
    renamed_options: ClassVar[dict[str, str]] = {}
    """Old option name → new one: a config using the old name gets an error naming the new."""

    seed: int = field(
        default=42, metadata={"help": "Seed for the adapter's init (train.seed).", **DERIVED}
    )

    @property
    def prompt_length(self) -> int:
        """m, the number of soft-prompt vectors (0: the method has no prompt)."""
        return 0

    def resolve(self, text_config: Any, max_length: int | None = None) -> MethodConfig:
        """This config with everything that depends on the model (ranks from the budget, layer
        widths) or on the input length filled in. ``text_config``: a transformers text config."""
        return self

    def trainable_parameters(self, d: int) -> int:
        """The trainable parameter count on a model of embedding width ``d`` (resolved)."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}

    @classmethod
    def option_names(cls) -> list[str]:
        """The fields a YAML ``method:`` section may set."""
        return [f.name for f in fields(cls) if not f.metadata.get("derived")]


def check_rank(rank: int | None) -> None:
    if rank is not None and rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")


def check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


@dataclass
class SoftPromptConfig(MethodConfig):
    """Methods that prepend m trainable vectors: the prompt length and its initialisation."""

    learning_rates: ClassVar[dict[str, float]] = {"prompt": 0.3}

    num_virtual_tokens: int = field(
        default=100, metadata={"help": "m: number of trainable soft-prompt vectors prepended."}
    )
    prompt_init: PromptInit = field(
        default="vocab",
        metadata={
            "help": "'vocab': embeddings of sampled vocabulary rows; 'text': embeddings of "
            "prompt_init_text repeated to m tokens. No zero init (NaN grads on Gemma 3)."
        },
    )
    prompt_init_text: str | None = field(
        default=None, metadata={"help": "Task text whose token embeddings seed the prompt."}
    )

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.prompt_init not in ("vocab", "text"):
            raise ValueError(f"prompt_init must be 'vocab' or 'text', got {self.prompt_init!r}")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ValueError("prompt_init='text' needs a non-empty prompt_init_text")

    @property
    def prompt_length(self) -> int:
        return self.num_virtual_tokens

    def trainable_parameters(self, d: int) -> int:
        return self.num_virtual_tokens * d


@dataclass
class DecomposedConfig(SoftPromptConfig):
    """A shorter prompt plus a rank-r part sized to fit the PT budget (DePT, ADePT)."""

    learning_rates: ClassVar[dict[str, float]] = {"prompt": 0.3, "offset": 1e-4}

    num_virtual_tokens: int = field(default=60, metadata={"help": "m: prompt length."})
    budget_tokens: int = field(
        default=100, metadata={"help": "L: the PT-L budget (L·d parameters) the rank fills."}
    )
    rank: int | None = field(
        default=None, metadata={"help": "r; null: the largest r that fits the budget."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_rank(self.rank)
        if self.num_virtual_tokens >= self.budget_tokens:
            raise ValueError(
                f"num_virtual_tokens={self.num_virtual_tokens} must be smaller than "
                f"budget_tokens={self.budget_tokens}"
            )
