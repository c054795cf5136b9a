"""Configuration dataclasses for the soft-prompt methods (PEFT style: fields carry help text)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

PromptInit = Literal["vocab", "text"]


@dataclass
class SoftPromptConfig:
    """Fields shared by every method: the prompt length and how the prompt is initialised."""

    method: ClassVar[str] = "base"

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
    seed: int = field(default=42, metadata={"help": "Seed for the prompt and offset init."})

    def __post_init__(self) -> None:
        if self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be >= 1, got {self.num_virtual_tokens}")
        if self.prompt_init not in ("vocab", "text"):
            raise ValueError(f"prompt_init must be 'vocab' or 'text', got {self.prompt_init!r}")
        if self.prompt_init == "text" and not self.prompt_init_text:
            raise ValueError("prompt_init='text' needs a non-empty prompt_init_text")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, **asdict(self)}


@dataclass
class PromptTuningConfig(SoftPromptConfig):
    """Vanilla prompt tuning (Lester et al.): L trainable vectors, no embedding offset."""

    method: ClassVar[str] = "prompt_tuning"


@dataclass
class DePTConfig(SoftPromptConfig):
    """DePT: m prompt vectors plus a position-indexed low-rank offset scale·(A B)_i on the input."""

    method: ClassVar[str] = "dept"

    num_virtual_tokens: int = field(default=60, metadata={"help": "m: prompt length."})
    max_length: int = field(
        default=256, metadata={"help": "s: the fixed input length the offset table covers."}
    )
    rank: int = field(default=30, metadata={"help": "r: rank of the A (s×r) B (r×d) offset."})
    alpha: float = field(default=8.0, metadata={"help": "Offset scale is alpha / sqrt(rank)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if self.max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {self.max_length}")


@dataclass
class ADePTConfig(SoftPromptConfig):
    """ADePT: m prompt vectors plus a token-shared FFN (d→r→d, residual) offsetting each token."""

    method: ClassVar[str] = "adept"

    num_virtual_tokens: int = field(default=60, metadata={"help": "m: prompt length."})
    rank: int = field(default=19, metadata={"help": "r: FFN bottleneck width."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout before the FFN's ReLU."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LoRAConfig(SoftPromptConfig):
    """LoRA (from HF PEFT) on the attention projections: the weight-space baseline. No prompt."""

    method: ClassVar[str] = "lora"

    num_virtual_tokens: int = field(default=0, metadata={"help": "Always 0: LoRA has no prompt."})
    rank: int = field(default=1, metadata={"help": "r of each B (out×r) A (r×in) update."})
    alpha: float = field(default=8.0, metadata={"help": "Update scale is alpha / rank."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    target_modules: tuple[str, ...] = field(
        default=("q_proj", "v_proj"), metadata={"help": "Projection names that get an update."}
    )
    params_per_rank: int | None = field(
        default=None,
        metadata={"help": "Σ (in + out) over the targeted layers; filled in from the model."},
    )

    def __post_init__(self) -> None:
        self.target_modules = tuple(self.target_modules)
        if self.num_virtual_tokens != 0:
            raise ValueError(
                f"LoRA has no prompt: num_virtual_tokens must be 0, got {self.num_virtual_tokens}"
            )
        if self.rank < 1:
            raise ValueError(f"rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one projection")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


METHOD_CONFIGS: dict[str, type[SoftPromptConfig]] = {
    cls.method: cls for cls in (PromptTuningConfig, DePTConfig, ADePTConfig, LoRAConfig)
}


def config_from_dict(data: dict[str, Any]) -> SoftPromptConfig:
    """Rebuild a method config from :meth:`SoftPromptConfig.to_dict` output."""
    data = dict(data)
    method = data.pop("method", None)
    if method not in METHOD_CONFIGS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHOD_CONFIGS)}")
    return METHOD_CONFIGS[method](**data)
