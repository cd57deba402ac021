"""``fit.refit_effects(newdata)``: random effects for grouping levels first seen in new data,
with everything fitted held as it is.

The levels of ``newdata`` unseen in the fit are added to their factors (after the fitted ones,
sorted); their effects get the posterior of an E-step on the rows of ``newdata`` that have such a
level: the networks, the linear fixed effects, the covariances and the residual variance as
fitted, and the effects of levels the fit already knows held at their fitted means (a known part
of eta). Nothing is retrained. The new levels' reported means and sds are those of ``draws``
posterior draws. The returned result predicts, simulates and saves as any other; its fitted
parameters and the fitted levels' effects are the original fit's.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd

from gmenn_formula.design import NEW_LEVEL, Design
from gmenn_formula.design.grouping import GroupingFactor
from gmenn_formula.design.response import ResponseData
from gmenn_formula.errors import DataError, DataTypeError, NewLevelWarning
from gmenn_formula.results.arguments import check_count, check_seed


def refit_effects(result, newdata: pd.DataFrame, draws: int = 200, seed: int | None = None):
    """A GmennResult with the effects of ``newdata``'s new levels (see the module docstring).
    ``newdata`` needs the response; ``seed`` (None: the fit's) seeds the E-step."""
    from gmenn_formula.results.result import GmennResult

    if not isinstance(newdata, pd.DataFrame):
        raise DataTypeError(f"newdata must be a pandas DataFrame, not {type(newdata).__name__}.")
    check_count("draws", draws, 2)
    check_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        first = result.spec.apply(newdata, response=True)
    factors = _extended_factors(first, newdata)
    old_levels = {part.name: part.num_levels for part in first.random}
    if all(factor.num_levels == old_levels[name] for name, factor in factors.items()):
        raise DataError(
            "newdata has no grouping level unseen in the fit, so there are no new effects to estimate; "
            "predict(newdata) already uses the fitted effects of its levels."
        )
    spec = dataclasses.replace(
        result.spec, random=tuple(dataclasses.replace(part, factor=factors[part.factor.name]) for part in result.spec.random)
    )
    extended = spec.apply(newdata, response=True, allow_new_levels=False)
    state = result.state
    sub, known = _new_level_design(extended, old_levels, state.effect_mean)
    new_draws = _posterior(sub, state, known, draws, state.config.runtime.seed if seed is None else int(seed))
    state = dataclasses.replace(
        state,
        effect_mean=[np.concatenate([m, b[:, :-1].mean(0)]) for m, b in zip(state.effect_mean, new_draws)],
        effect_sd=[np.concatenate([s, b[:, :-1].std(0)]) for s, b in zip(state.effect_sd, new_draws)],
        draws=[_stored(d, b[:, :-1]) for d, b in zip(state.draws, new_draws)],
    )
    design = dataclasses.replace(
        result.design, spec=spec, random=tuple(dataclasses.replace(r, factor=factors[r.name]) for r in result.design.random)
    )
    return GmennResult(design, state, scaled_residuals=result._scaled_residuals, logliks=result._logliks)


def _extended_factors(design: Design, newdata: pd.DataFrame) -> dict[str, GroupingFactor]:
    """Each grouping factor with the levels of ``design``'s rows unseen in training appended (sorted)."""
    factors = {}
    for part in design.random:
        if part.name in factors:
            continue
        columns = list(part.factor.columns)
        keys = newdata.loc[design.rows[part.codes == NEW_LEVEL], columns]
        if isinstance(part.factor.levels, pd.MultiIndex):
            new = pd.MultiIndex.from_frame(keys).unique().sort_values()
        else:
            new = pd.Index(keys[columns[0]].unique()).sort_values()
        factors[part.name] = GroupingFactor(part.factor.columns, part.factor.levels.append(new))
    return factors


def _new_level_design(extended: Design, old_levels: dict[str, int], means: list[np.ndarray]) -> tuple[Design, np.ndarray]:
    """The rows of ``extended`` with a new level in some term, each term's codes into its new levels
    followed by one placeholder level (with zero slopes) for rows whose level is known; and (n_sub, c)
    the known levels' part of eta on those rows."""
    fresh = [r.codes >= old_levels[r.name] for r in extended.random]
    rows = np.logical_or.reduce(fresh)
    c = means[0].shape[2]
    known = np.zeros((int(rows.sum()), c))
    random = []
    for r, new, mean in zip(extended.random, fresh, means):
        q_old = old_levels[r.name]
        num_new = r.num_levels - q_old
        codes, Z, new = r.codes[rows], r.Z[rows], new[rows]
        known += np.einsum("np,npc->nc", np.where(new[:, None], 0.0, Z), mean[np.where(new, 0, codes)])
        factor = GroupingFactor(r.factor.columns, pd.RangeIndex(num_new + 1))
        random.append(
            dataclasses.replace(r, factor=factor, codes=np.where(new, codes - q_old, num_new).astype(np.int32), Z=np.where(new[:, None], Z, 0.0))
        )
    response = ResponseData(extended.response.y[rows], extended.response.trials[rows])
    sub = dataclasses.replace(
        extended,
        response=response,
        X_fixed=extended.X_fixed[rows],
        offset=extended.offset[rows],
        X_networks=tuple(X[rows] for X in extended.X_networks),
        random=tuple(random),
        rows=extended.rows[rows],
        kept=None,
        new_levels={},
    )
    return sub, known


def _posterior(sub: Design, state, known: np.ndarray, draws: int, seed: int) -> tuple[np.ndarray, ...]:
    """(m, q_new + 1, p, c) posterior draws per term of the sub-design (the last level the placeholder)."""
    from gmenn_formula.training.frozen import frozen, posterior_draws

    problem, model = frozen(sub, state, known)
    return tuple(np.asarray(b, dtype=np.float64) for b in posterior_draws(problem, model, state, draws, seed).effects)


def _stored(stored: np.ndarray, new: np.ndarray) -> np.ndarray:
    """The fit's stored draws (s, q, p, c) with ``new`` (m, q_new, p, c) appended along the levels, thinned to s."""
    if stored.shape[0] == 0:
        return np.zeros((0, stored.shape[1] + new.shape[1], *stored.shape[2:]), stored.dtype)
    picks = np.linspace(0, new.shape[0] - 1, stored.shape[0]).round().astype(int)
    return np.concatenate([stored, new[picks].astype(stored.dtype)], axis=1)
