"""Merge a PT or folded-ADePT adapter into a plain Hugging Face checkpoint (``export.merged``).

The adapter's model sees ``[P][BOS] x``: m trainable vectors P, then each input token's embedding
(ADePT: ``e + FFN(e)``, a function of the token id alone). Both fit an ordinary checkpoint:

- the input-embedding table becomes the folded table (ADePT) or stays (PT), untied from the LM
  head, which keeps the original table (Gemma ties the two);
- the m prompt vectors become the input rows of m *prompt tokens*: the tokenizer's reserved
  tokens where it has m of them (Gemma's ``<unusedN>``, Llama 3's
  ``<|reserved_special_token_N|>``), so the vocabulary and the head are unchanged and log-probs
  are exact over the whole vocabulary; otherwise m added special tokens ``<adept_prompt_i>``
  whose head rows are zero (logit 0 each: every log-prob shifts by log(1 + m/Z), Z the softmax
  sum over the real vocabulary, and predictions over real tokens are unchanged);
- rows are stored in the table's own space: a model that scales embeddings in its forward
  (Gemma: ×√d) gets them divided by that scale;
- the tokenizer's template becomes ``prefix tokens + its own specials + text``, so a plain
  ``tokenizer(text)`` reproduces the adapter's layout (checked after saving; where a tokenizer
  cannot carry the template, the prefix text must be put before the BOS by hand).

LoRA merges into the base's projections instead (PEFT's ``merge``: W + (alpha/r)·BA): no prefix,
vocabulary and tokenizer unchanged. DePT's offsets depend on each token's position, not its id:
it does not merge (``pipeline validate`` says so).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..methods import SoftPromptModel
from ..methods.lora_layers import merge_lora
from .models import base_provenance

RESERVED_TOKEN_PATTERNS = (
    re.compile(r"^<unused(\d+)>$"),
    re.compile(r"^<\|reserved_special_token_(\d+)\|>$"),
)
ADDED_TOKEN = "<adept_prompt_{}>"
MERGE_FILE = "merge.json"
MERGED_DIR = "merged"  # the export's subdirectory holding the merged model


@dataclass
class PromptTokens:
    """The m tokens whose input rows hold the prompt, and how the merged tokenizer uses them."""

    tokens: list[str]
    ids: list[int]
    reserved: bool  # reused tokens the vocabulary already had (head rows unchanged)
    tokenizer_adds_prefix: bool = False  # the saved tokenizer(text) puts them first by itself

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def reserved_tokens(tokenizer: Any, count: int, rows: int) -> list[str] | None:
    """``count`` reserved special tokens of the tokenizer inside the table's ``rows``, lowest
    numbers first; None when it has fewer."""
    found = []
    for token, index in tokenizer.get_added_vocab().items():
        for rank, pattern in enumerate(RESERVED_TOKEN_PATTERNS):
            match = pattern.match(token)
            if match and index < rows:
                found.append((rank, int(match.group(1)), token))
    found.sort()
    return [token for _, _, token in found[:count]] if len(found) >= count else None


def embedding_scale(embedding: nn.Module) -> torch.Tensor:
    """The factor the embedding's forward multiplies rows by (Gemma: √d, in the weight dtype);
    checked against the module so an unknown scaled embedding is refused, never mis-merged."""
    weight = embedding.weight
    scale = getattr(embedding, "embed_scale", None)
    scale = torch.ones((), dtype=weight.dtype) if scale is None else scale.to(weight.dtype)
    probe = torch.arange(min(8, weight.shape[0]), device=weight.device)
    if not torch.allclose(embedding(probe), weight[probe] * scale, rtol=1e-5, atol=1e-6):
        raise TypeError(
            f"{type(embedding).__name__} transforms rows beyond a known scale: cannot merge"
        )
    return scale


def install_prefix_template(tokenizer: Any, tokens: list[str]) -> None:
    """Make ``tokenizer(text)`` emit ``tokens`` before the specials it already adds (a slow
    tokenizer has no template to rewrite: :func:`save_merged` records whether it took)."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return
    from tokenizers import Tokenizer, processors

    with_specials = tokenizer("a")["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    start = next(i for i in range(len(with_specials)) if with_specials[i : i + len(plain)] == plain)
    lead = tokenizer.convert_ids_to_tokens(with_specials[:start])
    trail = tokenizer.convert_ids_to_tokens(with_specials[start + len(plain) :])
    specials = [*tokens, *lead, *trail]
    template = processors.TemplateProcessing(
        single=[*tokens, *lead, "$A", *trail],
        pair=[*tokens, *lead, "$A", *trail, "$B:1"],
        special_tokens=[(t, tokenizer.convert_tokens_to_ids(t)) for t in dict.fromkeys(specials)],
    )
    state = json.loads(backend.to_str())
    new = json.loads(template.__getstate__())
    current = state.get("post_processor")
    if current and current["type"] == "Sequence":  # e.g. ByteLevel + template (Llama 3)
        steps = [p for p in current["processors"] if p["type"] != "TemplateProcessing"]
        current["processors"] = [*steps, new]
    else:
        state["post_processor"] = new
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(state))


@torch.no_grad()
def merge_adapter(model: SoftPromptModel, tokenizer: Any) -> PromptTokens:
    """Rewrite ``model.base`` and ``tokenizer`` in place into a standalone model whose prompt
    is the token prefix; save both with ``save_pretrained`` afterwards."""
    if not model.config.can_merge:
        raise TypeError(f"method {model.config.method!r} does not merge into a checkpoint")
    if model.config.lives_in_base:  # LoRA: the updates go into the projections, no prefix
        merge_lora(model.base)
        return PromptTokens([], [], reserved=True)
    base = model.base
    embedding, head = base.get_input_embeddings(), base.get_output_embeddings()
    dtype = embedding.weight.dtype
    scale = embedding_scale(embedding)
    if model.offset is not None:  # ADePT: the FFN folds into the table
        model.fold()
        table = (model.folded_embeddings.float() / scale.float()).to(dtype)
        model.unfold()
    else:
        table = embedding.weight.detach().clone()
    head_rows = head.weight.detach().clone()
    prompt = (model.prompt.detach().float() / scale.float()).to(dtype)
    m = prompt.shape[0]
    tokens = reserved_tokens(tokenizer, m, table.shape[0])
    reserved = tokens is not None
    if not reserved:
        tokens = [ADDED_TOKEN.format(i) for i in range(m)]
        tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    grow = max(ids) + 1 - table.shape[0]
    if grow > 0:
        table = torch.cat([table, table.new_zeros(grow, table.shape[1])])
        head_rows = torch.cat([head_rows, head_rows.new_zeros(grow, head_rows.shape[1])])
    table[torch.tensor(ids)] = prompt
    embedding.weight = nn.Parameter(table, requires_grad=False)
    embedding.num_embeddings = table.shape[0]
    head.weight = nn.Parameter(head_rows, requires_grad=False)  # untied from the input table
    head.out_features = head_rows.shape[0]
    for config in {id(c): c for c in (base.config, base.config.get_text_config())}.values():
        config.vocab_size = table.shape[0]
        config.tie_word_embeddings = False
    install_prefix_template(tokenizer, tokens)
    return PromptTokens(tokens, ids, reserved)


def save_merged(
    model: SoftPromptModel, tokenizer: Any, prefix: PromptTokens, directory: Path
) -> PromptTokens:
    """Write the merged model, tokenizer and ``merge.json``; re-check that the saved tokenizer
    still adds the prefix by itself (recorded in the returned tokens)."""
    from transformers import AutoTokenizer

    model.base.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    reloaded = AutoTokenizer.from_pretrained(directory)
    adds = reloaded("a")["input_ids"][: len(prefix.ids)] == prefix.ids
    prefix = PromptTokens(prefix.tokens, prefix.ids, prefix.reserved, tokenizer_adds_prefix=adds)
    record = {**asdict(prefix), "prefix_text": prefix.text, "method": model.config.method}
    (directory / MERGE_FILE).write_text(json.dumps(record, indent=2))
    return prefix


KNOWN_LICENCES = (  # (substring of the base's name or type, card licence id, where to read it)
    ("gemma", "gemma", "the Gemma Terms of Use, https://ai.google.dev/gemma/terms"),
    ("llama-2", "llama2", "the Llama 2 Community License, https://ai.meta.com/llama/license/"),
    ("llama-3", "llama3", "the Llama 3 Community License, https://www.llama.com/llama3/license/"),
)


def base_licence(source: str, model_type: str) -> tuple[str, str]:
    """(licence id for the card's metadata, a sentence naming it): the base model's licence
    governs the merged weights."""
    name = f"{source} {model_type}".lower()
    for needle, licence, text in KNOWN_LICENCES:
        if needle in name:
            return licence, f"The merged weights are a derivative of the base model: {text}."
    return "other", f"The merged weights are a derivative of {source}: its licence applies."


def model_card(
    prefix: PromptTokens, description: dict[str, Any], method: str, model_type: str
) -> str:
    """README.md for the merged directory: how to call it, what it was made from, its scores."""
    source = description["model"]["source"]
    folded = ", and the token FFN folded into the input-embedding table" * (method == "adept")
    kind = "reserved tokens of the base vocabulary" if prefix.reserved else "added tokens"
    choices = ", ".join(repr(c) for c in description["choices"]) or "free text"
    template = description["template"]
    licence, licence_text = base_licence(source, model_type)
    metrics = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(description["metrics"].items()))
    how = (
        "The tokenizer adds the prefix by itself: `tokenizer(text)` gives the adapter's input."
        if prefix.tokenizer_adds_prefix
        else "Put the prefix text before everything the tokenizer adds (BOS included): "
        "`prefix_ids + tokenizer(text).input_ids`."
    )
    lives = (
        f"A standalone model: the {len(prefix.tokens)}-vector soft prompt lives in the input "
        f"rows of the prompt tokens below{folded}."
        if prefix.tokens
        else "A standalone model: the LoRA updates are added into the attention projections' "
        "weights (W + alpha/r · BA); the vocabulary and the tokenizer are the base's."
    )
    prefix_line = (
        f"- Prefix ({len(prefix.tokens)} {kind}, ids {prefix.ids[0]}…{prefix.ids[-1]}): "
        f"`{prefix.text}`\n- {how}\n"
        if prefix.tokens
        else "- No prefix: `tokenizer(text)` gives the model's input.\n"
    )
    return f"""---
base_model: {source}
license: {licence}
tags: [adept-pipeline, {method}, merged-prompt]
---
# {description["task"]}: {method} merged into {source}

Base model: {base_provenance(source)}.

{lives}
No adapter code is needed: any runtime that loads Hugging Face checkpoints runs it.

{prefix_line}- Task `{description["task"]}`, template (a `str.format` string): `{template!r}`
- Answers: {choices}
- Config hash: `{description["config_hash"]}`

| test metric | value |
|---|---|
{metrics}

## Licence
{licence_text}
"""
