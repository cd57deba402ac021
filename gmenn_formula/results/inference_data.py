"""``GmennResult.to_inference_data()``: the random-effect draws as an ArviZ InferenceData.

The posterior holds the kept E-step draws of the final phase (the epochs whose
draws are averaged into the reported effects), one chain, ``s`` draws, one
variable per random-effect term named after its grouping factor (the factor
and its terms, ``g|(Intercept)+x``, when a factor has several terms), with
dims ``{name}_level``, ``{name}_term`` and, for the categorical family,
``class``. These are draws of the effects GIVEN the fitted covariances and
fixed part (empirical Bayes), not a full posterior over the variances.
Sample stats per draw come from the E-step epoch that produced it (``FitState.draw_epochs``):
``acceptance_rate``, ``step_size`` and ``n_steps`` (mean leapfrog steps of the
epoch), ``epoch_divergences`` and ``epoch``.
"""

from __future__ import annotations

from collections import Counter

import arviz as az
import numpy as np

from gmenn_formula.errors import DataError
from gmenn_formula.results.tables import class_labels

STATS = {
    "acceptance_rate": "acceptance",
    "step_size": "step_size",
    "n_steps": "leapfrog_steps",
    "epoch_divergences": "divergences",
    "epoch": "epoch",
}
"""ArviZ sample-stat name -> EpochRecord field."""


def draw_epochs(result) -> np.ndarray:
    """(s,) position in ``state.history`` of the epoch each stored draw comes from."""
    state = result.state
    stored = state.draws[0].shape[0] if state.draws else 0
    epochs = np.asarray(state.draw_epochs, dtype=np.int64) - 1
    if len(epochs) != stored or (stored and not (0 <= epochs.min() and epochs.max() < len(state.history))):
        raise DataError(f"The fit stores {stored} draws but records epochs for {len(epochs)}; the history does not match the draws.")
    return epochs


def _variable_names(result) -> list[str]:
    counts = Counter(part.name for part in result.design.random)
    return [part.name if counts[part.name] == 1 else f"{part.name}|{'+'.join(part.term_names)}" for part in result.design.random]


def to_inference_data(result) -> az.InferenceData:
    """InferenceData with ``posterior`` (chain 1, draw s, level, term[, class]) and ``sample_stats`` (chain 1, draw s)."""
    state = result.state
    if not state.draws or state.draws[0].shape[0] == 0:
        raise DataError("The fit kept no draws of the random effects, so there is nothing to export; refit with average_epochs >= 1.")
    classes = class_labels(result.design)
    posterior, dims, coords = {}, {}, {}
    for name, part, draws in zip(_variable_names(result), result.design.random, state.draws):
        level_dim, term_dim = f"{name}_level", f"{name}_term"
        coords[level_dim] = part.factor.labels
        coords[term_dim] = list(part.term_names)
        values = draws[None].astype(np.float64)  # (1, s, q, p, c)
        if classes is None:
            posterior[name], dims[name] = values[..., 0], [level_dim, term_dim]
        else:
            posterior[name], dims[name] = values, [level_dim, term_dim, "class"]
    if classes is not None:
        coords["class"] = [str(label) for label in classes]
    epochs = draw_epochs(result)
    sample_stats = {stat: np.array([[getattr(state.history[i], field) for i in epochs]]) for stat, field in STATS.items()}
    attrs = {
        "inference_library": "gmenn-formula",
        "method": "Monte Carlo EM; E-step draws of the random effects given the fitted covariances",
    }
    return az.from_dict(posterior=posterior, sample_stats=sample_stats, coords=coords, dims=dims, attrs=attrs)
