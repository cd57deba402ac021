"""``GmennResult.simulate()``: responses drawn from the fitted model, with lme4's semantics.

lme4's ``simulate(re.form=NA)`` (its default, same as ``re.form=~0`` or
``use.u=FALSE``) draws NEW random effects for every level from the fitted
covariances: a parametric bootstrap of the whole model. ``re.form=NULL``
(``use.u=TRUE``) conditions on the fitted effects. Here ``re_form="~0"``
(the default; "NA" too) is lme4's ``re.form=NA`` and ``re_form=None`` its
``re.form=NULL``. Conditional
simulation uses the posterior means of the effects (lme4: the conditional
modes); levels unseen in training get one new draw from the fitted covariance
per level and simulation, shared by the rows of that level.

Responses: gaussian ``mean + N(0, residual variance)``; binomial successes
out of the rows' trials (1 when the data has no response; the class labels for
a two-level factor response); poisson counts; categorical class labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gmenn_formula.design import NEW_LEVEL, Design, RandomEffectDesign
from gmenn_formula.errors import DataError
from gmenn_formula.results.arguments import check_count
from gmenn_formula.results.state import FitState

UNCONDITIONAL = ("~0", "~ 0", "NA")
"""Spellings of lme4's re.form=NA: new random effects for every level."""


def _level_codes(part: RandomEffectDesign, frame: pd.DataFrame | None, rows: pd.Index) -> tuple[np.ndarray, int]:
    """(n,) codes into the training levels followed by the distinct unseen levels, and how many unseen there are."""
    codes = part.codes.astype(np.int64)
    unseen = codes == NEW_LEVEL
    if not unseen.any():
        return codes, 0
    keys = pd.MultiIndex.from_frame(frame.loc[rows[unseen], list(part.factor.columns)])
    new_codes, uniques = keys.factorize()
    codes[unseen] = part.num_levels + new_codes
    return codes, len(uniques)


def _draw_effects(rng: np.random.Generator, covariances: np.ndarray, nsim: int, levels: int) -> np.ndarray:
    """(nsim, levels, p, c) draws from N(0, covariances[c]) for covariances (c, p, p), semidefinite allowed."""
    values, vectors = np.linalg.eigh(covariances)
    roots = vectors * np.sqrt(np.clip(values, 0.0, None))[:, None, :]  # (c, p, p): S = R R^T
    c, p = covariances.shape[0], covariances.shape[1]
    z = rng.standard_normal((nsim, levels, c, p))
    return np.einsum("cij,nlcj->nlic", roots, z)


def simulated_random_part(
    state: FitState, design: Design, frame: pd.DataFrame | None, nsim: int, conditional: bool, rng: np.random.Generator
) -> np.ndarray:
    """(nsim, n, c) sum over terms of Z_l b_l with the simulation's effects: new draws from the
    fitted covariances for every level, or (``conditional``) the fitted means for the levels the fit
    knows and new draws for the levels of ``frame``'s rows it does not."""
    total = np.zeros((nsim, design.num_rows, state.num_outputs))
    for part, mean, covariances in zip(design.random, state.effect_mean, state.covariances):
        codes, num_new = _level_codes(part, frame, design.rows)
        if conditional:
            new = _draw_effects(rng, covariances, nsim, num_new)
            effects = np.concatenate([np.broadcast_to(mean, (nsim, *mean.shape)), new], axis=1)
        else:
            effects = _draw_effects(rng, covariances, nsim, part.num_levels + num_new)
        total += np.einsum("np,snpc->snc", part.Z, effects[:, codes])
    return total


def _draw_responses(result, design: Design, eta: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(nsim, n) responses (class labels where the response has classes) for linear predictors eta (nsim, n, c)."""
    trials = design.response.trials if design.response is not None else np.ones(design.num_rows)
    drawn = result.family.sample(rng, eta, trials, result.state.dispersion)
    return result.spec.response.decode(drawn)


def simulate(
    result, nsim: int = 1, seed: int | None = None, newdata: pd.DataFrame | None = None, re_form: str | None = "~0"
) -> pd.DataFrame:
    """``nsim`` simulated responses for the rows of ``newdata`` (None: the fitting rows).

    Returns an (n, nsim) DataFrame with columns sim_1..sim_nsim, indexed like
    the rows used (rows with missing values are dropped). ``seed`` seeds a
    numpy Generator; ``re_form`` as in the module docstring.
    """
    check_count("nsim", nsim, 1)
    if re_form is not None and re_form not in UNCONDITIONAL:
        raise DataError(f"re_form must be '~0' (new random effects, lme4's default) or None (the fitted effects), not {re_form!r}.")
    frame = None if newdata is None else newdata.reset_index(drop=True)  # positions make rows of duplicated labels distinct
    # Unconditional simulation draws new effects for every level: unseen levels need no warning.
    design = result._design_for(frame, allow_new_levels=True, with_random_effects=re_form is None)
    rng = np.random.default_rng(seed)
    fixed = result._linear_predictor(design, include_random=False)
    eta = fixed[None] + simulated_random_part(result.state, design, frame, nsim, re_form is None, rng)
    index = design.rows if newdata is None else newdata.index[design.rows]
    return pd.DataFrame(_draw_responses(result, design, eta, rng).T, index=index, columns=[f"sim_{i}" for i in range(1, nsim + 1)])
