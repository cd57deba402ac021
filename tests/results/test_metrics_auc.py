"""numpy AUC against the pairwise definition (ties count one half)."""

from __future__ import annotations

import numpy as np
import pytest

from gmenn_formula.errors import DataError
from gmenn_formula.metrics import macro_auc, roc_auc


def _pairwise_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return (greater + 0.5 * ties) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_equals_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    positive = rng.random(200) < 0.3
    scores = np.round(rng.normal(size=200) + positive, 1)  # rounding makes ties
    assert roc_auc(positive, scores) == pytest.approx(_pairwise_auc(positive, scores), abs=1e-12)


def test_roc_auc_extremes() -> None:
    y = np.array([False, False, True, True])
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.zeros(4)) == 0.5
    with pytest.raises(DataError, match="one positive and one negative"):
        roc_auc(np.ones(3, bool), np.zeros(3))


def test_macro_auc_averages_one_vs_rest_and_skips_absent_classes() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    probabilities = rng.dirichlet(np.ones(4), 300)  # class 3 never occurs
    expected = np.mean([_pairwise_auc(y == k, probabilities[:, k]) for k in range(3)])
    assert macro_auc(y, probabilities) == pytest.approx(expected, abs=1e-12)
    with pytest.raises(DataError, match="two classes"):
        macro_auc(np.zeros(5, int), probabilities[:5])
