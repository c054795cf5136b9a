"""One wrapper for every method around a frozen causal LM: training, scoring and inference share
this one path.

The model sees ``[P; offset(e_1) … offset(e_n)]``: a trainable prompt P (m×d) prepended to the
input-token embeddings after the method's embedding offset (none for PT, position low-rank for
DePT, token FFN for ADePT; LoRA has neither and changes the base's projections instead). The
prompt comes before everything the tokenizer produced, BOS included: ``[P][BOS] x`` (as HF PEFT
does it). Every batch runs in the layout of :mod:`.layout`. The LM head is applied only at the
scored positions, on a contiguous tensor (the full-vocabulary head dominates CPU time).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .adapter_files import read_adapter_meta, read_adapter_weights, write_adapter
from .base import MethodConfig
from .init import init_prompt, seeded
from .layout import right_align
from .lora_layers import has_lora
from .peft_format import peft_config
from .prefix import Prefix, run_prefix, run_text, shared_prefix_supported
from .registry import config_from_dict, get_method, method_names

log = logging.getLogger(__name__)


@dataclass
class SoftPromptOutput:
    """``loss``: mean NLL per target token; ``logprobs``: summed target log-prob per row."""

    loss: torch.Tensor | None
    logprobs: torch.Tensor
    num_tokens: torch.Tensor


class SoftPrompt(nn.Module):
    """The m×d trainable prompt. Its own module (forward returns a tensor) so engines that
    gather partitioned parameters around module calls (DeepSpeed ZeRO-3) see it."""

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(init)

    def forward(self, batch: int, dtype: torch.dtype) -> torch.Tensor:
        return self.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)


class SoftPromptModel(nn.Module):
    """A frozen causal LM plus a method's trainable part. Subclasses (one per method) set
    ``config_class`` (via registration) and may override :meth:`build_offset` and
    :meth:`parameter_groups`."""

    config_class: ClassVar[type[MethodConfig]] = MethodConfig

    def __init__(
        self,
        base: nn.Module,
        config: MethodConfig | None = None,
        *,
        tokenizer: Any = None,
        register_base: bool = True,
        shared_prefix: bool = True,
        _init_prompt: bool = True,
        **fields: Any,
    ) -> None:
        super().__init__()
        if has_lora(base):
            raise ValueError(
                "this base still holds the LoRA layers of another wrapper: call that "
                "wrapper's unload() first (wrapping never changes a base behind your back)"
            )
        text_config = base.config.get_text_config()
        if config is None:
            if self.config_class is MethodConfig:
                raise TypeError("pass a method config, or use PromptTuning / DePT / ADePT / LoRA")
            config = self.config_class(**fields)
        config = config.resolve(text_config)
        base.requires_grad_(False)
        if register_base:
            self.base = base
        else:  # the base stays outside this module's parameters (e.g. an int8 base under ZeRO)
            object.__setattr__(self, "base", base)
        self.config = config
        self.embedding_dim = d = text_config.hidden_size
        self.vocab_size = text_config.vocab_size
        self.final_logit_softcapping = getattr(text_config, "final_logit_softcapping", None)
        embedding = base.get_input_embeddings()
        device = embedding.weight.device
        self.soft_prompt: SoftPrompt | None = None
        with seeded(config.seed):  # the init draws from config.seed; the caller's RNG is kept
            if config.prompt_length > 0:
                if _init_prompt and device.type != "meta":  # meta: shapes only, for planning
                    prompt = init_prompt(config, embedding, self.vocab_size, tokenizer)
                else:
                    prompt = torch.empty(config.prompt_length, d)
                self.soft_prompt = SoftPrompt(prompt.to(device))
            offset = self.build_offset(config, d)
        self.offset = offset.to(device) if offset is not None else None
        self.folded_embeddings: torch.Tensor | None = None
        self.shared_prefix = shared_prefix
        self._prefix_memo: tuple[tuple, Prefix] | None = None

    def unload(self) -> nn.Module:
        """The base as it was before this wrapper (LoRA takes its layers out; the other methods
        never change it). The wrapper is unusable afterwards."""
        return self.base

    @classmethod
    def build_offset(cls, config: MethodConfig, d: int) -> nn.Module | None:
        """The module that offsets each input-token embedding (None: no offset)."""
        return None

    @property
    def shared_prefix(self) -> bool:
        """Whether the prompt's keys/values are computed once per batch (see prefix.py)."""
        return self._shared_prefix

    @shared_prefix.setter
    def shared_prefix(self, wanted: bool) -> None:
        has_prompt = self.num_virtual_tokens > 0  # without one (LoRA, zero-shot) nothing to say
        supported = shared_prefix_supported(self.base)
        self._shared_prefix = wanted and supported and has_prompt
        if wanted and has_prompt and not supported:
            log.info(
                "shared prompt prefix off (model type %r is not verified for it): every row "
                "computes the prompt",
                self.base.config.get_text_config().model_type,
            )
        self._prefix_memo = None

    def train(self, mode: bool = True) -> SoftPromptModel:
        self._prefix_memo = None  # an evaluation's prefix is stale once the prompt trains
        return super().train(mode)

    # ----------------------------------------------------------------- introspection
    @property
    def prompt(self) -> nn.Parameter | None:
        """The (m, d) prompt parameter; None for methods without one."""
        return None if self.soft_prompt is None else self.soft_prompt.weight

    @property
    def num_virtual_tokens(self) -> int:
        return 0 if self.soft_prompt is None else self.config.prompt_length

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def expected_trainable_parameters(self) -> int:
        return self.config.trainable_parameters(self.embedding_dim)

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the trainable tensors, never the base model."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group name (each group gets ``train.lr.<name>``)."""
        groups = {
            "prompt": [] if self.prompt is None else [self.prompt],
            "offset": list(self.offset.parameters()) if self.offset is not None else [],
        }
        return {name: params for name, params in groups.items() if params}

    # ----------------------------------------------------------------- forward path
    def embed_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Input-token embeddings after the method's offset, and each token's index among its
        row's real tokens (given, for tokens appended while decoding). Expects right-aligned
        rows (:func:`.layout.right_align`)."""
        if token_positions is None:
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

        Expects right-aligned rows: pads, if any, after each row's text. With the shared
        prefix, the prompt runs once and the text against its keys/values.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        attention_mask = attention_mask.to(input_ids.device)
        embeds, token_positions = self.embed_text(input_ids, attention_mask)
        body = self.base.get_decoder()
        m = self.num_virtual_tokens
        if m == 0:  # no prompt (zero-shot, LoRA): the base model's own path
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

    def fold(self) -> SoftPromptModel:
        """Methods whose offset folds into the embedding table override this (ADePT)."""
        folding = [s.label for s in map(get_method, method_names()) if s.config_class.can_fold]
        raise TypeError(f"only {', '.join(folding)} folds; this model is {self.config.method}")

    # ----------------------------------------------------------------- save / load
    def save_adapter(
        self,
        directory: str | os.PathLike,
        extra: dict[str, Any] | None = None,
        state: dict[str, torch.Tensor] | None = None,
    ) -> Path:
        """Write the adapter atomically, never the base (:mod:`.adapter_files`: PEFT's format
        for PT and LoRA). ``state``: the adapter tensors when they live elsewhere (gathered
        from ZeRO-3 shards)."""
        meta = {
            "method_config": self.config.to_dict(),
            "method_module": get_method(self.config.method).module,
            "embedding_dim": self.embedding_dim,
            "vocab_size": self.vocab_size,
            "base_model": getattr(self.base.config, "_name_or_path", None),
            "trainable_parameters": self.expected_trainable_parameters(),
            **(extra or {}),
        }
        state = self.adapter_state_dict() if state is None else state
        return write_adapter(Path(directory), meta, state, peft_config(self))

    @staticmethod
    def read_adapter_config(directory: str | os.PathLike) -> dict[str, Any]:
        """The adapter's metadata (any readable format); refuses one this code does not read."""
        return read_adapter_meta(Path(directory))

    @classmethod
    def from_pretrained(
        cls, base: nn.Module, directory: str | os.PathLike, shared_prefix: bool = True
    ) -> SoftPromptModel:
        """Load a saved adapter onto a freshly loaded base model."""
        meta = cls.read_adapter_config(directory)
        config = config_from_dict(meta["method_config"], meta.get("method_module"))
        d = base.config.get_text_config().hidden_size
        if meta["embedding_dim"] != d:
            raise ValueError(
                f"{directory}: adapter was trained for embedding width {meta['embedding_dim']}, "
                f"this base model has {d}"
            )
        model_class = get_method(config.method).model_class
        model = model_class(base, config, shared_prefix=shared_prefix, _init_prompt=False)
        weights = read_adapter_weights(Path(directory), meta)
        missing = set(model.adapter_state_dict()) ^ set(weights)
        if missing:
            raise ValueError(f"{directory}: adapter tensors do not match: {sorted(missing)}")
        model.load_state_dict(weights, strict=False)
        return model
