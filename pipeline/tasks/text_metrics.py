"""Metrics of generated text against one or more gold answers: exact match and token F1 with the
SQuAD v1.1 answer normalisation (lower case, no punctuation, no articles, single spaces), each the
maximum over a row's gold answers, averaged over rows (0-1, not percent)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

PUNCTUATION = frozenset(string.punctuation)
ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower, drop punctuation, drop articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in PUNCTUATION)
    return " ".join(ARTICLES.sub(" ", text).split())


def exact_match_one(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def token_f1_one(prediction: str, gold: str) -> float:
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if not predicted or not expected:
        return float(predicted == expected)  # both empty: 1; one empty: 0
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def _best_over_golds(score: Callable[[str, str], float]):
    def metric(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> float:
        if len(predictions) != len(golds):
            raise ValueError(f"{len(predictions)} predictions for {len(golds)} gold lists")
        if not predictions:
            return 0.0
        pairs = zip(predictions, golds, strict=True)
        per_row = [max(score(p, g) for g in answers) for p, answers in pairs]
        return sum(per_row) / len(per_row)

    return metric


TEXT_METRICS: dict[str, Callable[[Sequence[str], Sequence[Sequence[str]]], float]] = {
    "exact_match": _best_over_golds(exact_match_one),
    "token_f1": _best_over_golds(token_f1_one),
}
