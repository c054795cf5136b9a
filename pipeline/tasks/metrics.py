"""Task metrics (scikit-learn / scipy), all returned as plain floats."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(pred: Sequence[float], gold: Sequence[float]) -> float:
    return float(skm.accuracy_score(gold, pred))


def f1(pred: Sequence[float], gold: Sequence[float]) -> float:
    return float(skm.f1_score(gold, pred, zero_division=0))


def macro_f1(pred: Sequence[float], gold: Sequence[float]) -> float:
    return float(skm.f1_score(gold, pred, average="macro", zero_division=0))


def mcc(pred: Sequence[float], gold: Sequence[float]) -> float:
    return float(skm.matthews_corrcoef(gold, pred))


def _correlation(fn, pred: Sequence[float], gold: Sequence[float]) -> float:
    if np.std(pred) == 0 or np.std(gold) == 0:
        return 0.0  # undefined for a constant prediction; report no correlation
    return float(fn(pred, gold)[0])


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation(stats.pearsonr, pred, gold)


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation(stats.spearmanr, pred, gold)


METRICS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}
