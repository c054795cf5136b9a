"""One wrapper for every soft-prompt method around a frozen causal LM.

The model sees ``[P; offset(e_1) … offset(e_n)]``: a trainable prompt P (m×d) prepended to the
input-token embeddings, after the method's embedding offset (none for PT, position low-rank for
DePT, token FFN for ADePT). Training, scoring and inference share this one path. The prompt comes
before everything the tokenizer produced, BOS included: ``[P][BOS] x`` (as HF PEFT does it).

Layout: no pad ever sits between the prompt and the text. Every batch is laid out ``[P; x; pads]``
(rows given left-padded are right-aligned first), so the prompt takes positions 0..m-1 and each
row's real tokens follow it at the same indices whatever the padding side or the row's
batch-mates. This matters for sliding-window attention (Gemma 3), which masks by index distance,
not position ids: with ``[P; pads; x]`` a short row beside a long one could lose sight of its
prompt. The LM head is applied only at the scored positions, on a contiguous tensor (the
full-vocabulary head dominates CPU time).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .adept import TokenFFNOffset
from .budget import lora_params_per_rank, lora_rank, solve_rank, trainable_params
from .config import (
    ADePTConfig,
    DePTConfig,
    LoRAConfig,
    PromptTuningConfig,
    SoftPromptConfig,
    config_from_dict,
)
from .dept import PositionLowRankOffset
from .init import init_prompt
from .lora import inject_lora, strip_lora
from .prefix import Prefix, run_prefix, run_text, shared_prefix_supported

log = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FORMAT_VERSION = 1


@dataclass
class SoftPromptOutput:
    """``loss``: mean NLL per target token; ``logprobs``: summed target log-prob per row."""

    loss: torch.Tensor | None
    logprobs: torch.Tensor
    num_tokens: torch.Tensor


def right_aligned_order(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """Per-row gather index that moves each row's real tokens to the front, in order, and its
    pads behind them; None when the batch is already laid out that way (right padding)."""
    mask = attention_mask.bool()
    if bool((mask[:, :-1] >= mask[:, 1:]).all()):
        return None
    return torch.sort((~mask).to(torch.uint8), dim=1, stable=True).indices


def right_align(
    attention_mask: torch.Tensor, *tensors: torch.Tensor
) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """``(order, tensors)``: every (B, n) tensor laid out ``[x; pads]`` (see module docstring)."""
    order = right_aligned_order(attention_mask)
    if order is None:
        return None, [attention_mask, *tensors]
    return order, [t.gather(1, order) for t in (attention_mask, *tensors)]


class SoftPrompt(nn.Module):
    """The m×d trainable prompt. Its own module (forward returns a tensor) so engines that
    gather partitioned parameters around module calls (DeepSpeed ZeRO-3) see it."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)


def build_offset(config: SoftPromptConfig, d: int) -> nn.Module | None:
    if isinstance(config, ADePTConfig):
        return TokenFFNOffset(config, d)
    if isinstance(config, DePTConfig):
        return PositionLowRankOffset(config, d)
    return None


class SoftPromptModel(nn.Module):
    """A frozen causal LM plus a trainable soft prompt and (optionally) an embedding offset."""

    config_class: ClassVar[type[SoftPromptConfig]] = SoftPromptConfig

    def __init__(
        self,
        base: nn.Module,
        config: SoftPromptConfig | None = None,
        *,
        tokenizer: Any = None,
        budget_tokens: int = 100,
        register_base: bool = True,
        shared_prefix: bool = True,
        _init_prompt: bool = True,
        **fields: Any,
    ) -> None:
        super().__init__()
        strip_lora(base)  # a base wrapped earlier by LoRA gets its pristine layers back
        text_config = base.config.get_text_config()
        d = text_config.hidden_size
        if config is None:
            if self.config_class is SoftPromptConfig:
                raise TypeError("pass a method config, or use PromptTuning / DePT / ADePT")
            if "rank" not in fields and self.config_class is not PromptTuningConfig:
                probe = self.config_class(**fields)
                fields["rank"] = solve_rank(
                    probe.method,
                    budget_tokens,
                    probe.num_virtual_tokens,
                    d,
                    getattr(probe, "max_length", None),
                )
            config = self.config_class(**fields)
        base.requires_grad_(False)
        if register_base:
            self.base = base
        else:  # the base stays outside this module's parameters (e.g. an int8 base under ZeRO)
            object.__setattr__(self, "base", base)
        self.config = config
        self.embedding_dim = d
        self.vocab_size = text_config.vocab_size
        self.final_logit_softcapping = getattr(text_config, "final_logit_softcapping", None)
        embedding = base.get_input_embeddings()
        device = embedding.weight.device
        torch.manual_seed(config.seed)
        self.soft_prompt: SoftPrompt | None = None
        if config.num_virtual_tokens > 0:
            if _init_prompt and device.type != "meta":  # meta: shapes only, for planning
                prompt = init_prompt(config, embedding, self.vocab_size, tokenizer)
            else:
                prompt = torch.empty(config.num_virtual_tokens, d)
            self.soft_prompt = SoftPrompt(prompt.to(device))
        offset = build_offset(config, d)
        self.offset = offset.to(device) if offset is not None else None
        self.folded_embeddings: torch.Tensor | None = None
        self.shared_prefix = shared_prefix
        self._prefix_memo: tuple[tuple, Prefix] | None = None

    @property
    def shared_prefix(self) -> bool:
        """Whether the prompt's keys/values are computed once per batch (see prefix.py)."""
        return self._shared_prefix

    @shared_prefix.setter
    def shared_prefix(self, wanted: bool) -> None:
        supported = shared_prefix_supported(self.base)
        self._shared_prefix = wanted and supported and self.num_virtual_tokens > 0
        if wanted and not self._shared_prefix:
            why = (
                "this method has no prompt"
                if self.num_virtual_tokens == 0
                else f"model type {self.base.config.get_text_config().model_type!r} is not "
                "verified for it"
            )
            log.info("shared prompt prefix off (%s): every row computes the prompt", why)
        self._prefix_memo = None

    def train(self, mode: bool = True) -> SoftPromptModel:
        self._prefix_memo = None  # an evaluation's prefix is stale once the prompt trains
        return super().train(mode)

    # ----------------------------------------------------------------- introspection
    @property
    def prompt(self) -> nn.Parameter | None:
        """The (m, d) prompt parameter; None for the zero-shot model."""
        return None if self.soft_prompt is None else self.soft_prompt.weight

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.soft_prompt is None else self.config.num_virtual_tokens

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def expected_trainable_parameters(self) -> int:
        return trainable_params(self.config, self.embedding_dim)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors (prompt + offset), never the base model."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def prompt_parameters(self) -> list[nn.Parameter]:
        return [] if self.prompt is None else [self.prompt]

    def offset_parameters(self) -> list[nn.Parameter]:
        return list(self.offset.parameters()) if self.offset is not None else []

    # ----------------------------------------------------------------- forward path
    def embed_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-token embeddings after the method's offset, and each token's index among its
        row's real tokens. Expects right-aligned rows (:func:`right_align`)."""
        token_positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.folded_embeddings is not None:
            if self.training:
                raise RuntimeError("a folded model is for inference: call unfold() to train")
            return nn.functional.embedding(input_ids, self.folded_embeddings), token_positions
        embeds = self.base.get_input_embeddings()(input_ids)
        if self.offset is not None:
            embeds = self.offset(embeds, token_positions)
        return embeds, token_positions

    def hidden_states(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Final hidden states (B, m + n, d) of the frozen decoder body over ``[P; e']``.

        Expects right-aligned rows (:func:`right_align`): pads, if any, after each row's text.
        With the shared prefix, the prompt runs once and the text against its keys/values.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device)
        embeds, token_positions = self.embed_text(input_ids, attention_mask)
        body = self.base.get_decoder()
        m = self.num_virtual_tokens
        if m == 0:  # zero-shot: the base model alone, through the same code path
            inputs_embeds, full_mask, position_ids = embeds, attention_mask, token_positions
        else:
            ones = attention_mask.new_ones(len(input_ids), m)
            full_mask = torch.cat([ones, attention_mask], dim=1)
            if self.shared_prefix:
                prefix = self._prefix(body, embeds.dtype)
                return run_text(body, prefix, embeds, full_mask, token_positions + m)
            prompt = self.soft_prompt(len(input_ids), embeds.dtype)
            inputs_embeds = torch.cat([prompt, embeds], dim=1)
            position_ids = (full_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = body(
            inputs_embeds=inputs_embeds,
            attention_mask=full_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return out.last_hidden_state

    def _prefix(self, body: nn.Module, dtype: torch.dtype) -> Prefix:
        """The prompt's keys/values; in evaluation (eval mode, no grad) computed once and kept
        until the model trains again or the prompt changes."""
        if self.training or torch.is_grad_enabled():
            return run_prefix(body, self.soft_prompt(1, dtype))
        key = (dtype, self.prompt._version, self.prompt.data_ptr())
        if self._prefix_memo is None or self._prefix_memo[0] != key:
            self._prefix_memo = (key, run_prefix(body, self.soft_prompt(1, dtype)))
        return self._prefix_memo[1]

    def lm_head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits for the given hidden rows (soft-capped where the model says so)."""
        logits = self.base.get_output_embeddings()(hidden.contiguous()).float()
        if self.final_logit_softcapping:
            cap = self.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        target_mask: torch.Tensor | None = None,
    ) -> SoftPromptOutput:
        """Log-probs of target tokens: ``labels`` (HF style, -100 = ignore) or ``target_mask``.

        Token t of row b is a target when ``labels[b, t] != -100`` (its value is the target id)
        or ``target_mask[b, t]`` (the target is ``input_ids[b, t]``). Only those positions reach
        the LM head.
        """
        if labels is None and target_mask is None:
            raise ValueError("pass labels or target_mask: nothing to score")
        if labels is not None:
            target_mask = labels != -100
            targets = labels.masked_fill(~target_mask, 0)
        else:
            targets = input_ids
        if attention_mask is not None:
            _, (attention_mask, input_ids, target_mask, targets) = right_align(
                attention_mask.to(input_ids.device), input_ids, target_mask, targets
            )
        hidden = self.hidden_states(input_ids, attention_mask)
        rows, cols = torch.nonzero(target_mask, as_tuple=True)
        # token t is predicted by the hidden state one to its left; t=0 by the last prompt vector
        if self.num_virtual_tokens == 0 and bool((cols == 0).any()):
            raise ValueError("without a prompt the first token cannot be a target")
        picked = hidden[rows, cols + self.num_virtual_tokens - 1]
        logprobs = self.lm_head(picked).log_softmax(-1)
        token_logprobs = logprobs.gather(-1, targets[rows, cols].unsqueeze(-1)).squeeze(-1)
        batch = input_ids.shape[0]
        per_row = token_logprobs.new_zeros(batch).index_add(0, rows, token_logprobs)
        counts = torch.bincount(rows, minlength=batch)
        loss = -token_logprobs.mean() if token_logprobs.numel() else None
        return SoftPromptOutput(loss=loss, logprobs=per_row, num_tokens=counts)

    def next_token_logprobs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, V) log-probs of the token after each row's last real token (any padding side)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        _, (attention_mask, input_ids) = right_align(attention_mask.to(input_ids.device), input_ids)
        hidden = self.hidden_states(input_ids, attention_mask)
        last = attention_mask.long().sum(1) - 1
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return self.lm_head(hidden[rows, last + self.num_virtual_tokens]).log_softmax(-1)

    def logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Full-vocabulary logits at every input position (B, n, V), in the input's own layout.
        For tests and debugging."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        order, (attention_mask, input_ids) = right_align(
            attention_mask.to(input_ids.device), input_ids
        )
        hidden = self.hidden_states(input_ids, attention_mask)
        logits = self.lm_head(hidden[:, self.num_virtual_tokens :])
        if order is None:
            return logits
        index = order.unsqueeze(-1).expand_as(logits)
        return torch.empty_like(logits).scatter_(1, index, logits)

    # ----------------------------------------------------------------- folding (ADePT)
    @torch.no_grad()
    def fold(self) -> SoftPromptModel:
        """Fold the token FFN into an input-side copy of the embedding table; eval mode.

        The LM head keeps the original table (it may be tied to the input embedding).
        """
        if not isinstance(self.offset, TokenFFNOffset):
            raise TypeError(f"only ADePT folds; this model is {self.config.method}")
        embedding = self.base.get_input_embeddings()
        folded = self.offset.fold(embedding, self.vocab_size)
        self.folded_embeddings = folded.to(embedding.weight.dtype)
        return self.eval()

    def unfold(self) -> SoftPromptModel:
        self.folded_embeddings = None
        return self

    # ----------------------------------------------------------------- save / load
    def save_adapter(
        self,
        directory: str | os.PathLike,
        extra: dict[str, Any] | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write adapter_config.json + adapter_model.safetensors atomically (never the base).

        ``state``: the adapter tensors when they live elsewhere (gathered from ZeRO-3 shards).
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            state = self.adapter_state_dict() if state is None else state
            tensors = {k: v.contiguous().cpu() for k, v in state.items()}
            save_file(tensors, tmp / ADAPTER_WEIGHTS_NAME, metadata={"format": "pt"})
            meta = {
                "format_version": ADAPTER_FORMAT_VERSION,
                "method_config": self.config.to_dict(),
                "embedding_dim": self.embedding_dim,
                "vocab_size": self.vocab_size,
                "base_model": getattr(self.base.config, "_name_or_path", None),
                "trainable_parameters": self.expected_trainable_parameters(),
                **(extra or {}),
            }
            (tmp / ADAPTER_CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
            if directory.exists():
                shutil.rmtree(directory)
            tmp.rename(directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    @staticmethod
    def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
        path = Path(directory) / ADAPTER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no adapter config (expected {ADAPTER_CONFIG_NAME})")
        return json.loads(path.read_text())

    @classmethod
    def from_pretrained(
        cls, base: nn.Module, directory: str | os.PathLike, shared_prefix: bool = True
    ) -> SoftPromptModel:
        """Load a saved adapter onto a freshly loaded base model."""
        meta = cls.read_adapter_config(directory)
        config = config_from_dict(meta["method_config"])
        d = base.config.get_text_config().hidden_size
        if meta["embedding_dim"] != d:
            raise ValueError(
                f"{directory}: adapter was trained for embedding width {meta['embedding_dim']}, "
                f"this base model has {d}"
            )
        model_class = METHOD_MODELS[config.method]
        model = model_class(base, config, shared_prefix=shared_prefix, _init_prompt=False)
        weights = load_file(Path(directory) / ADAPTER_WEIGHTS_NAME)
        missing = set(model.adapter_state_dict()) ^ set(weights)
        if missing:
            raise ValueError(f"{directory}: adapter tensors do not match: {sorted(missing)}")
        model.load_state_dict(weights, strict=False)
        return model


class ZeroShot(SoftPromptModel):
    """The frozen base model alone (no prompt, no offset): the zero-shot baseline."""

    def __init__(self, base: nn.Module) -> None:
        super().__init__(
            base, PromptTuningConfig(num_virtual_tokens=1), shared_prefix=False, _init_prompt=False
        )
        self.soft_prompt = None


class LoRA(SoftPromptModel):
    """LoRA from PEFT on the attention projections, rank closest to the PT budget unless given:
    ``LoRA(base)`` (Gemma 3 270M: r=1 on q_proj/v_proj, 46,080 vs PT-100's 64,000)."""

    config_class = LoRAConfig

    def __init__(
        self,
        base: nn.Module,
        config: LoRAConfig | None = None,
        *,
        tokenizer: Any = None,
        budget_tokens: int = 100,
        register_base: bool = True,
        shared_prefix: bool = True,
        _init_prompt: bool = True,
        **fields: Any,
    ) -> None:
        if not register_base:
            raise ValueError("LoRA lives inside the base model: it cannot stay unregistered")
        text_config = base.config.get_text_config()
        solve = config is None and "rank" not in fields
        config = config or LoRAConfig(**fields)
        per_rank = lora_params_per_rank(text_config, config.target_modules)
        if config.params_per_rank not in (None, per_rank):
            raise ValueError(
                f"LoRA config says {config.params_per_rank} parameters per rank, "
                f"this base has {per_rank}"
            )
        if solve:
            config = replace(
                config, rank=lora_rank(budget_tokens, text_config.hidden_size, per_rank)
            )
        config = replace(config, params_per_rank=per_rank)
        super().__init__(base, config, register_base=True, shared_prefix=shared_prefix)
        self._lora = inject_lora(base, config)
        injected = sum(p.numel() for p in self._lora)
        if injected != self.expected_trainable_parameters():
            raise ValueError(
                f"LoRA injected {injected} parameters, the budget formula says "
                f"{self.expected_trainable_parameters()} (projection names/shapes differ)"
            )

    def offset_parameters(self) -> list[nn.Parameter]:
        return list(self._lora)


class PromptTuning(SoftPromptModel):
    """Vanilla prompt tuning; ``PromptTuning(base, num_virtual_tokens=100)``."""

    config_class = PromptTuningConfig


class DePT(SoftPromptModel):
    """DePT; rank from the PT budget unless given: ``DePT(base, num_virtual_tokens=60)``."""

    config_class = DePTConfig


class ADePT(SoftPromptModel):
    """ADePT; rank from the PT budget unless given: ``ADePT(base, num_virtual_tokens=60)``."""

    config_class = ADePTConfig


METHOD_MODELS: dict[str, type[SoftPromptModel]] = {
    "prompt_tuning": PromptTuning,
    "dept": DePT,
    "adept": ADePT,
    "lora": LoRA,
}


def wrap(
    base: nn.Module,
    config: SoftPromptConfig,
    tokenizer: Any = None,
    register_base: bool = True,
    shared_prefix: bool = True,
) -> SoftPromptModel:
    """Wrap ``base`` with the method named by ``config``.

    ``register_base=False`` keeps the base out of ``parameters()``/``state_dict()``, so an engine
    wrapping this module (DeepSpeed with an 8-bit base) owns only the adapter.
    ``shared_prefix``: compute the prompt's keys/values once per batch where that is exact.
    """
    return METHOD_MODELS[config.method](
        base,
        config,
        tokenizer=tokenizer,
        register_base=register_base,
        shared_prefix=shared_prefix,
    )
