"""Predictions and task metrics from choice scores (shared by train's dev evals and evaluate)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..methods import SoftPromptModel
from ..tasks import METRICS, Task
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
    for i, row_scores in enumerate(scores):
        label, value = predict_from_scores(task, row_scores)
        rows.append(
            {
                "index": i,
                "label": dataset["label"][i],
                "gold": dataset["gold"][i],
                "predicted": label,
                "value": value,
                "scores": row_scores,
            }
        )
    predicted = [r["value"] if task.choice_values else r["predicted"] for r in rows]
    gold = [r["gold"] for r in rows]
    return compute_metrics(task, predicted, gold), rows
