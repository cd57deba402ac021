"""Classification metrics in numpy (no scikit-learn at run time)."""

from __future__ import annotations

import numpy as np

from gmenn_formula.errors import DataError


def _average_ranks(scores: np.ndarray) -> np.ndarray:
    """(n,) 1-based ranks of ``scores``, ties sharing their mean rank."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def roc_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (n,) for the boolean labels ``positive`` (n,).

    The Mann-Whitney statistic: the probability that a random positive scores
    above a random negative, ties counting one half.
    """
    positive = np.asarray(positive, dtype=bool)
    num_positive = int(positive.sum())
    num_negative = len(positive) - num_positive
    if num_positive == 0 or num_negative == 0:
        raise DataError("AUC needs at least one positive and one negative row.")
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - num_positive * (num_positive + 1) / 2.0) / (num_positive * num_negative))


def macro_auc(y: np.ndarray, probabilities: np.ndarray) -> float:
    """Macro one-vs-rest AUC: the mean over classes k of ``roc_auc(y == k, probabilities[:, k])``.

    ``y`` (n,) integer class codes 0..c-1, ``probabilities`` (n, c). Classes
    absent from ``y`` (or present in every row) are skipped.
    """
    y = np.asarray(y)
    probabilities = np.asarray(probabilities)
    aucs = [roc_auc(y == k, probabilities[:, k]) for k in range(probabilities.shape[1]) if 0 < np.sum(y == k) < len(y)]
    if not aucs:
        raise DataError("AUC needs at least two classes present in y.")
    return float(np.mean(aucs))
