"""Tidy tables of a fit (pandas DataFrames), the source of every printed summary.

A ``class`` column appears only where the linear predictor has one column per
class (the categorical family): one block per class.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gmenn_formula.design import Design
from gmenn_formula.results.state import FitState


def class_labels(design: Design) -> list | None:
    """Labels of the outputs when there are several (one per class), else None."""
    spec = design.spec
    return list(spec.response.classes) if spec.num_outputs > 1 else None


def _with_class(rows: list[dict], classes: list | None) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if classes is None and "class" in frame:
        frame = frame.drop(columns="class")
    return frame


def varcorr(design: Design, state: FitState) -> pd.DataFrame:
    """Variance components: group, term, term2, class, variance, std, corr, mcse.

    One row per variance (term2 empty) and per covariance (variance holds the
    covariance, corr the correlation); a final ``Residual`` row for gaussian.
    ``mcse`` is the Monte Carlo standard error of the variance/covariance.
    """
    classes = class_labels(design)
    rows = []
    for r, S_all, se_all in zip(design.random, state.covariances, state.covariance_se):
        names = r.term_names
        for c, (S, se) in enumerate(zip(S_all, se_all)):
            label = classes[c] if classes else None
            sd = np.sqrt(np.clip(np.diag(S), 0.0, None))
            for i, name in enumerate(names):
                rows.append({"group": r.name, "term": name, "term2": None, "class": label, "variance": S[i, i], "std": sd[i], "corr": np.nan, "mcse": se[i, i]})
            if r.correlated:
                for i in range(len(names)):
                    for j in range(i + 1, len(names)):
                        corr = S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
                        rows.append({"group": r.name, "term": names[i], "term2": names[j], "class": label, "variance": S[i, j], "std": np.nan, "corr": corr, "mcse": se[i, j]})
    if design.family.has_dispersion:
        rows.append({"group": "Residual", "term": "", "term2": None, "class": None, "variance": state.dispersion, "std": np.sqrt(state.dispersion), "corr": np.nan, "mcse": state.dispersion_se})
    return _with_class(rows, classes)


def fixef(design: Design, state: FitState) -> pd.DataFrame:
    """Linear fixed effects: term, class, estimate (no rows when the formula has only networks)."""
    classes = class_labels(design)
    beta = state.model.beta.detach().cpu().numpy()
    rows = [
        {"term": name, "class": classes[c] if classes else None, "estimate": float(beta[k, c])}
        for c in range(beta.shape[1])
        for k, name in enumerate(state.fixed_names)
    ]
    return _with_class(rows, classes) if rows else pd.DataFrame(columns=["term", "estimate"])


def ranef(design: Design, state: FitState, cond_var: bool = True) -> dict[str, pd.DataFrame]:
    """Per grouping factor: level, term, class, mean (and sd, the posterior sd from the draws).

    Keyed by the factor's name, or by the term's text (``"(0 + x | g)"``) when several
    terms share the factor."""
    classes = class_labels(design)
    result = {}
    for r, mean, sd in zip(design.random, state.effect_mean, state.effect_sd):
        q, p, c = mean.shape
        frame = pd.DataFrame(
            {
                "level": np.repeat(r.factor.labels, p * c),
                "term": np.tile(np.repeat(list(r.term_names), c), q),
                "class": np.tile(classes if classes else [None] * c, q * p),
                "mean": mean.reshape(-1),
            }
        )
        if cond_var:
            frame["sd"] = sd.reshape(-1)
        # Two terms on one factor, e.g. (1 | g) + (0 + x | g), are keyed by their terms.
        shared = sum(other.name == r.name for other in design.random) > 1
        result[str(r.term) if shared else r.name] = frame if classes else frame.drop(columns="class")
    return result


def ngrps(design: Design) -> pd.Series:
    """Number of levels per grouping factor."""
    counts: dict[str, int] = {}
    for r in design.random:
        counts.setdefault(r.name, r.num_levels)
    return pd.Series(counts, name="levels")


def history(state: FitState, design: Design) -> pd.DataFrame:
    """The epoch log, one row per epoch: every field of
    :class:`~gmenn_formula.results.state.EpochRecord` (``dispersion`` for gaussian fits only;
    losses where a phase has them) and each variance as ``var[group:term|class]``."""
    classes = class_labels(design)
    records = []
    for entry in state.history:
        record = entry.scalars()
        if not design.family.has_dispersion:
            record.pop("dispersion")
        for r, S_all in zip(design.random, entry.covariances):
            for c, S in enumerate(S_all):
                suffix = f"|{classes[c]}" if classes else ""
                for i, name in enumerate(r.term_names):
                    record[f"var[{r.name}:{name}{suffix}]"] = S[i, i]
        records.append(record)
    frame = pd.DataFrame(records)
    if len(frame):  # the E-step's setup beside its seconds
        frame.insert(frame.columns.get_loc("estep_seconds") + 1, "setup_seconds", frame.pop("setup_seconds"))
    return frame.drop(columns=[name for name in ("loss", "validation_loss") if name in frame and frame[name].isna().all()])
