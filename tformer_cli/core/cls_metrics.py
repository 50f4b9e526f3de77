"""Classification metrics on a held-out split, each with a 95% interval.

- accuracy: the share of correct predictions, with the Wilson score interval of a binomial
  proportion (scipy.stats.binomtest(...).proportion_ci(method="wilson")), which stays inside
  [0, 1] and is honest for small test sets;
- macro-F1: the unweighted mean of the per-label F1 scores (a label never predicted and never
  present is left out), with a percentile bootstrap interval over test examples (1,000
  resamples, a fixed seed, so the interval is reproducible);
- the confusion matrix: rows are the true labels, columns the predicted ones.

Torch-free (numpy and scipy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


@dataclass
class Scores:
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    macro_f1: float
    macro_f1_ci: tuple[float, float]
    chance: float  # the accuracy of always predicting the most frequent test label
    confusion: list[list[int]]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        return cls(int(d["n"]), d["accuracy"], tuple(d["accuracy_ci"]), d["macro_f1"], tuple(d["macro_f1_ci"]),
                   d["chance"], [list(r) for r in d["confusion"]])


def confusion(y_true: list[int], y_pred: list[int], k: int) -> np.ndarray:
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return m


def macro_f1(m: np.ndarray) -> float:
    tp = np.diag(m).astype(float)
    support, predicted = m.sum(axis=1), m.sum(axis=0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def wilson(correct: int, n: int) -> tuple[float, float]:
    from scipy.stats import binomtest

    ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def bootstrap_f1(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> tuple[float, float]:
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    n = len(y_true)
    stats = np.empty(BOOTSTRAP)
    for b in range(BOOTSTRAP):
        i = rng.integers(0, n, size=n)
        stats[b] = macro_f1(confusion(y_true[i], y_pred[i], k))
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def score(y_true: list[int], y_pred: list[int], k: int) -> Scores:
    """Accuracy and macro-F1 of ``y_pred`` with their 95% intervals, and the confusion matrix."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    m = confusion(t, p, k)
    correct = int(np.trace(m))
    return Scores(
        n=len(t),
        accuracy=correct / len(t),
        accuracy_ci=wilson(correct, len(t)),
        macro_f1=macro_f1(m),
        macro_f1_ci=bootstrap_f1(t, p, k),
        chance=float(np.bincount(t, minlength=k).max() / len(t)),
        confusion=m.tolist(),
    )
