"""Task metrics (scikit-learn / scipy, imported when a metric is computed: a task declaration
names its metrics without loading either), all returned as plain floats."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from statistics import pstdev


def accuracy(pred: Sequence[float], gold: Sequence[float]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(gold, pred))


def f1(pred: Sequence[float], gold: Sequence[float]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, zero_division=0))


def macro_f1(pred: Sequence[float], gold: Sequence[float]) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(gold, pred, average="macro", zero_division=0))


def mcc(pred: Sequence[float], gold: Sequence[float]) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(gold, pred))


def _correlation(name: str, pred: Sequence[float], gold: Sequence[float]) -> float:
    if pstdev(pred) == 0 or pstdev(gold) == 0:
        return 0.0  # undefined for a constant prediction; report no correlation
    from scipy import stats

    return float(getattr(stats, name)(pred, gold)[0])


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation("pearsonr", pred, gold)


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    return _correlation("spearmanr", pred, gold)


METRICS: dict[str, Callable[[Sequence[float], Sequence[float]], float]] = {
    "accuracy": accuracy,
    "f1": f1,
    "macro_f1": macro_f1,
    "mcc": mcc,
    "pearson": pearson,
    "spearman": spearman,
}
