"""Predictions and task metrics from choice scores (shared by train's dev evals and evaluate)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from ..methods import SoftPromptModel
from ..methods.generation import greedy_generate
from ..tasks import METRICS, Task
from ..tasks.text_metrics import TEXT_METRICS
from .scoring import score_choices


def predict_from_scores(task: Task, scores: Sequence[float]) -> tuple[int, float]:
    """(predicted choice index, predicted value); regression tasks use the expected value."""
    label = max(range(len(scores)), key=lambda i: scores[i])
    if task.choice_values is None:
        return label, float(label)
    top = max(scores)
    weights = [math.exp(s - top) for s in scores]
    value = sum(w * v for w, v in zip(weights, task.choice_values, strict=True)) / sum(weights)
    return label, value


def compute_metrics(
    task: Task, predicted: Sequence[float], gold: Sequence[float]
) -> dict[str, float]:
    return {name: METRICS[name](predicted, gold) for name in task.metrics}


def evaluate_dataset(
    model: SoftPromptModel,
    task: Task,
    dataset: Any,
    pad_id: int,
    batch_size: int,
    progress=None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Score every row of a tokenized split; returns (metrics, per-row predictions)."""
    was_training = model.training
    model.eval()
    scores = score_choices(
        model, dataset["context_ids"], dataset["choice_ids"], pad_id, batch_size, progress
    )
    model.train(was_training)
    rows = []
    values = task.label_values()
    written = dataset["source"] if "source" in dataset_columns(dataset) else None
    for i, row_scores in enumerate(scores):
        label, value = predict_from_scores(task, row_scores)
        row = {
            "index": i,
            "label": dataset["label"][i],
            "gold": dataset["gold"][i],
            "predicted": label,
            "value": value,
            "scores": row_scores,
        }
        if values:  # the task's own label values (the label map's), beside the indices
            row.update(gold_value=values[row["label"]], predicted_value=values[label])
        if written is not None:  # to join back: the row's line and its fields as written
            row.update(line=dataset["line"][i], fields=json.loads(written[i]))
        rows.append(row)
    predicted = [r["value"] if task.choice_values else r["predicted"] for r in rows]
    gold = [r["gold"] for r in rows]
    return compute_metrics(task, predicted, gold), rows


def dataset_columns(dataset: Any) -> list[str]:
    """Column names of a datasets.Dataset or of a dict of lists."""
    return list(getattr(dataset, "column_names", None) or dataset)


def stop_token_ids(tokenizer: Any, stops: Sequence[str]) -> set[int]:
    """EOS plus every stop string that is one token; longer stop strings are cut from the text."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for stop in stops:
        encoded = tokenizer(stop, add_special_tokens=False)["input_ids"]
        if len(encoded) == 1:
            ids.add(encoded[0])
    return ids


def answer_text(tokenizer: Any, ids: Sequence[int], stops: Sequence[str]) -> str:
    """Generated ids as the answer: decoded, cut at the first stop string, stripped."""
    text = tokenizer.decode(ids, skip_special_tokens=True)
    for stop in stops:
        text = text.split(stop)[0]
    return text.strip()


def generate_answers(
    model: SoftPromptModel,
    task: Task,
    context_ids: Sequence[Sequence[int]],
    tokenizer: Any,
    batch_size: int,
    progress=None,
) -> list[str]:
    """Greedy answers for tokenized contexts, batched (rows of similar length together)."""
    was_training = model.training
    model.eval()
    stops = stop_token_ids(tokenizer, task.stop)
    order = sorted(range(len(context_ids)), key=lambda i: len(context_ids[i]))
    answers: list[str] = [""] * len(context_ids)
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        width = max(len(context_ids[i]) for i in batch)
        ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, i in enumerate(batch):
            ids[row, : len(context_ids[i])] = torch.tensor(context_ids[i])
            mask[row, : len(context_ids[i])] = 1
        generated = greedy_generate(model, ids, mask, task.max_new_tokens, stops)
        for i, tokens in zip(batch, generated, strict=True):
            answers[i] = answer_text(tokenizer, tokens, task.stop)
        if progress is not None:
            progress.update(len(batch))
    model.train(was_training)
    return answers


def evaluate_split(
    model: SoftPromptModel,
    task: Task,
    dataset: Any,
    tokenizer: Any,
    batch_size: int,
    progress=None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics and per-row predictions of a tokenized split: choice scores (classification), or
    generated answers with EM / token F1 against each row's gold answers (generation)."""
    if task.type != "generation":
        return evaluate_dataset(model, task, dataset, tokenizer.pad_token_id, batch_size, progress)
    answers = generate_answers(model, task, dataset["context_ids"], tokenizer, batch_size, progress)
    golds = dataset["answers"]
    rows = [
        {"index": i, "generated": text, "answers": gold}
        for i, (text, gold) in enumerate(zip(answers, golds, strict=True))
    ]
    if "source" in dataset_columns(dataset):
        for row, line, written in zip(rows, dataset["line"], dataset["source"], strict=True):
            row.update(line=line, fields=json.loads(written))
    return {name: TEXT_METRICS[name](answers, golds) for name in task.metrics}, rows
