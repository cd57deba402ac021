"""``confint()``: confidence intervals for the standard deviations and correlations of the random
effects, the residual standard deviation and the linear fixed effects.

Parameters, in lme4's order and with broom.mixed's names: per random-effect term (and class),
``sd_<term>|<group>`` for each coefficient and ``cor_<term1>.<term2>|<group>`` for each pair of a
correlated term; ``sigma`` (gaussian); then each linear fixed effect by its name. With several
outputs the class is appended in brackets.

``method="wald"``: intervals from the observed information by Louis' method, on the scales where
the likelihood is closest to quadratic (log sd, Fisher z = atanh of a correlation, log sigma, beta as
it is) and mapped back, so that an sd interval stays positive and a correlation's within (-1, 1).
The information is I = E[-H_c] - Cov(s_c) over posterior draws of the random effects at the estimate
(``draws`` of them, by the fit's own E-step), with s_c and H_c the score and Hessian of the
complete-data log-likelihood; Cov(s_c) carries their Monte Carlo error (more draws tighten it).
lme4's ``confint(method="Wald")`` gives no intervals for variance components; its default
profile intervals are close to these where the likelihood is near quadratic on these scales.

``method="boot"``: a parametric bootstrap (lme4's ``bootMer`` percentile intervals): ``nsim``
response vectors simulated from the fit (new random effects from the fitted covariances), each
refitted; the interval is the replicates' central quantiles. ``n_jobs`` worker processes share
the refits (-1: one per core; spawned processes, so a script that calls it needs the usual
``if __name__ == "__main__":`` guard); the intervals do not depend on ``n_jobs``. Ctrl-C keeps
the refits done so far (with a note) when there are at least two.

With ``nn()`` terms both methods hold the networks fixed at their fitted weights (their output is
a known offset): the intervals are conditional on the network and do not carry its uncertainty.
A variance estimated at 0 (the boundary, see ``fit.status``) gets no Wald interval.
"""

from __future__ import annotations

import html
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import norm

from gmenn_formula.design import Design
from gmenn_formula.errors import DataError, MonteCarloWarning
from gmenn_formula.results.arguments import check_count, check_seed
from gmenn_formula.results.state import FitState
from gmenn_formula.results.status import boundary_entries
from gmenn_formula.results.tables import class_labels

METHODS = ("wald", "boot")
DEFAULT_DRAWS = 200
"""Posterior draws for the Wald method's observed information."""
DEFAULT_NSIM = 200
"""Bootstrap replicates."""


@dataclass(frozen=True)
class Parameter:
    """One interval's parameter: ``kind`` "sd", "cor", "sigma" or "beta"; ``term`` the random
    term's index (sd, cor), ``k`` the class, ``a``/``b`` the coefficients (sd: a == b; beta: a the
    fixed effect's row)."""

    name: str
    kind: str
    term: int = -1
    k: int = 0
    a: int = 0
    b: int = 0


@dataclass(frozen=True)
class ConfInt:
    """The intervals (``table``: index the parameter; columns ``estimate`` and the lower and upper
    bounds named as R names them, e.g. "2.5 %" and "97.5 %"), the ``method`` that made them, the
    ``level`` and ``notes`` on reading them. Prints as R's ``confint()`` with the method said."""

    table: pd.DataFrame
    method: str
    level: float
    notes: tuple[str, ...]

    def __str__(self) -> str:
        how = {
            "wald": "Wald intervals (sds on the log scale, correlations on Fisher's z; information by Louis' method, fixed effects by Laplace)",
            "boot": "Parametric bootstrap percentile intervals",
        }[self.method]
        lines = [f"{how}, level {self.level:g}:", *self.table.to_string(float_format=lambda v: f"{v:.6g}").splitlines()]
        return "\n".join(lines + [f"Note: {note}" for note in self.notes])

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(str(self))}</pre>"


def parameters(design: Design, state: FitState) -> list[Parameter]:
    """The parameters with intervals, in the module docstring's order."""
    classes = class_labels(design)
    out = []
    for l, (r, covariances) in enumerate(zip(design.random, state.covariances)):
        names = r.term_names
        for k in range(covariances.shape[0]):
            suffix = f" [{classes[k]}]" if classes else ""
            out += [Parameter(f"sd_{n}|{r.name}{suffix}", "sd", l, k, a, a) for a, n in enumerate(names)]
            if r.correlated:
                out += [
                    Parameter(f"cor_{names[a]}.{names[b]}|{r.name}{suffix}", "cor", l, k, a, b)
                    for a in range(len(names)) for b in range(a + 1, len(names))
                ]
    if design.family.has_dispersion:
        out.append(Parameter("sigma", "sigma"))
    for a, name in enumerate(state.fixed_names):
        for k in range(state.num_outputs):
            out.append(Parameter(f"{name} [{classes[k]}]" if classes else name, "beta", -1, k, a, a))
    return out


def natural_values(params: list[Parameter], covariances: list[np.ndarray], dispersion: float, beta: np.ndarray) -> np.ndarray:
    """(P,) each parameter's value: sd, correlation, sigma or beta."""
    values = []
    for p in params:
        if p.kind == "beta":
            values.append(beta[p.a, p.k])
        elif p.kind == "sigma":
            values.append(math.sqrt(dispersion))
        else:
            S = covariances[p.term][p.k]
            if p.kind == "sd":
                values.append(math.sqrt(max(S[p.a, p.a], 0.0)))
            else:
                scale = math.sqrt(max(S[p.a, p.a] * S[p.b, p.b], 0.0))
                values.append(S[p.a, p.b] / scale if scale > 0 else math.nan)
    return np.asarray(values, dtype=float)


def confint(
    result,
    parm: str | list[str] | None = None,
    level: float = 0.95,
    method: str = "wald",
    draws: int = DEFAULT_DRAWS,
    nsim: int = DEFAULT_NSIM,
    seed: int | None = None,
    data: pd.DataFrame | None = None,
    progress: bool = True,
    n_jobs: int = 1,
) -> ConfInt:
    """Intervals of ``result``'s parameters (see the module docstring); ``data``: the fitting rows,
    needed for a model read from a file."""
    _check_arguments(level, method, draws, nsim, seed)
    workers = _workers(n_jobs)
    if data is not None:
        design = result.spec.apply(data, allow_new_levels=False)
    else:
        design = result._design_for(None, allow_new_levels=False)
    state = result.state
    params = parameters(design, state)
    chosen = _chosen(params, parm)
    seed = state.config.runtime.seed if seed is None else int(seed)
    beta = state.model.beta.detach().cpu().numpy().astype(float)
    estimate = natural_values(params, state.covariances, state.dispersion, beta)
    if method == "wald":
        lower, upper, notes = _wald(design, state, params, estimate, level, draws, seed)
    else:
        lower, upper, notes = _boot(design, state, params, level, nsim, seed, progress, workers)
    if design.spec.networks:
        notes.insert(0, "The networks are held at their fitted weights: the intervals are conditional on them.")
    if state.interrupted:
        notes.insert(0, "The fit was interrupted: these intervals are about its last epoch's estimates, not a maximum.")
    alpha = (1 - level) / 2
    columns = {"estimate": estimate, _percent(alpha): lower, _percent(1 - alpha): upper}
    table = pd.DataFrame(columns, index=pd.Index([p.name for p in params], name="parameter")).iloc[chosen]
    return ConfInt(table, method, float(level), tuple(notes))


def _percent(q: float) -> str:
    return f"{100 * q:.4g} %"


def _check_arguments(level, method, draws, nsim, seed) -> None:
    if method not in METHODS:
        raise DataError(f"method must be one of {METHODS}, not {method!r}.")
    if isinstance(level, bool) or not isinstance(level, (int, float, np.floating)) or not 0 < level < 1:
        raise DataError(f"level must be a probability strictly between 0 and 1 (e.g. 0.95), not {level!r}.")
    check_count("draws", draws, 20)
    check_count("nsim", nsim, 2)
    check_seed(seed)


def _workers(n_jobs) -> int:
    """Worker processes for ``n_jobs`` (a positive integer, or -1 for one per core)."""
    from gmenn_formula.training.refits import available_cores

    if not isinstance(n_jobs, bool) and isinstance(n_jobs, (int, np.integer)) and n_jobs == -1:
        return available_cores()
    try:
        check_count("n_jobs", n_jobs, 1)
    except DataError as error:
        raise DataError(f"{error} Use -1 for one worker per core.") from None
    return int(n_jobs)


def _chosen(params: list[Parameter], parm) -> list[int]:
    """Positions of the parameters ``parm`` asks for (all for None)."""
    names = [p.name for p in params]
    if parm is None:
        return list(range(len(params)))
    if parm == "theta_":
        return [i for i, p in enumerate(params) if p.kind != "beta"]
    if parm == "beta_":
        return [i for i, p in enumerate(params) if p.kind == "beta"]
    wanted = [parm] if isinstance(parm, str) else parm
    if not isinstance(wanted, (list, tuple)) or not all(isinstance(w, str) for w in wanted):
        raise DataError(f"parm must be None, 'theta_', 'beta_' or a list of parameter names, not {parm!r}.")
    unknown = [w for w in wanted if w not in names]
    if unknown:
        raise DataError(f"Unknown parameter {unknown[0]!r} in parm; this model's parameters: {', '.join(names)}.")
    return [names.index(w) for w in wanted]


# -- Wald ---------------------------------------------------------------------------------------
def _wald(design: Design, state: FitState, params: list[Parameter], estimate: np.ndarray, level: float, draws: int, seed: int):
    from gmenn_formula.training.frozen import frozen, posterior_draws
    from gmenn_formula.training.information import fixed_effect_information, observed_information

    notes = []
    held = {(l, k) for l, k, _ in boundary_entries(design, state)}  # as fit.status reports them
    variance = [i for i, p in enumerate(params) if p.kind != "beta" and (p.term, p.k) not in held]
    fixed = [i for i, p in enumerate(params) if p.kind == "beta"]
    problem, model = frozen(design, state)
    working = _to_working(params, estimate)
    se = np.full(len(params), np.nan)
    if variance:
        sample = posterior_draws(problem, model, state, draws, seed)
        information = observed_information(problem, model, [params[i] for i in variance], working[variance], sample.effects)
        se[variance] = _standard_errors(information)
        notes.append(
            f"Variance parameters: from {sample.effects[0].shape[0]} posterior draws of the random effects at the "
            "estimate (their Monte Carlo error shrinks with more draws=)" + ("; fixed effects: lme4's Laplace information." if fixed else ".")
        )
    if fixed:
        information = fixed_effect_information(problem, model, state.covariances, state.dispersion, state.effect_mean, held)
        se[fixed] = _standard_errors(information)
    if np.isnan(se[variance + fixed]).any():
        notes.append(
            "The observed information is not positive definite in some direction (a flat likelihood, or too few "
            f"draws: {draws}): those parameters have no Wald interval. Try more draws=, or method='boot'."
        )
    if held:
        names = ", ".join(design.random[l].name + (f" [class {k}]" if state.num_outputs > 1 else "") for l, k in sorted(held))
        notes.append(f"The variance of {names} is at the boundary (0): no Wald interval for its parameters; use method='boot'.")
    z = norm.ppf(0.5 + level / 2)
    return _from_working(params, working - z * se), _from_working(params, working + z * se), notes


def _standard_errors(information: np.ndarray) -> np.ndarray:
    """sqrt(diag(information^-1)), NaN for all when it is not positive definite."""
    values, vectors = np.linalg.eigh(0.5 * (information + information.T))
    if values.min() <= 1e-12 * max(abs(values.max()), 1e-300):
        return np.full(len(values), np.nan)
    return np.sqrt(np.einsum("ij,j,ij->i", vectors, 1 / values, vectors))


def _to_working(params: list[Parameter], values: np.ndarray) -> np.ndarray:
    """Natural values -> the Wald scales: log sd, atanh cor, log sigma, beta."""
    out = values.astype(float).copy()
    for i, p in enumerate(params):
        if p.kind in ("sd", "sigma"):
            out[i] = math.log(values[i]) if values[i] > 0 else -math.inf
        elif p.kind == "cor":
            out[i] = math.atanh(float(np.clip(values[i], -1 + 1e-12, 1 - 1e-12)))
    return out


def _from_working(params: list[Parameter], values: np.ndarray) -> np.ndarray:
    out = values.astype(float).copy()
    for i, p in enumerate(params):
        if p.kind in ("sd", "sigma"):
            out[i] = math.exp(values[i])
        elif p.kind == "cor":
            out[i] = math.tanh(values[i])
    return out


# -- parametric bootstrap -----------------------------------------------------------------------
def _boot(design: Design, state: FitState, params: list[Parameter], level: float, nsim: int, seed: int, progress: bool, n_jobs: int):
    from tqdm.auto import tqdm

    from gmenn_formula.results.simulate import simulated_random_part
    from gmenn_formula.training.config import FitConfig
    from gmenn_formula.training.frozen import frozen
    from gmenn_formula.training.refits import refit_responses
    from gmenn_formula.training.variance import predict_fixed

    problem, model = frozen(design, state)
    F = predict_fixed(model, problem.rows).numpy().astype(float)
    trials = problem.trials.astype(float)
    rng = np.random.default_rng(seed)
    control = {**state.config.to_control(), "verbose": 0}

    def jobs():
        """Per replicate a simulated response and the refit's settings, drawn in order from ``rng``."""
        for index in range(nsim):
            eta = F + simulated_random_part(state, design, None, 1, False, rng)[0]
            yield design.family.sample(rng, eta, trials, state.dispersion), FitConfig.from_control(**{**control, "seed": seed + index + 1})

    replicates: dict[int, np.ndarray] = {}
    failed = unsettled = 0
    notes = []
    bar = tqdm(total=nsim, desc="bootstrap", unit="fit", leave=False, disable=None if progress else True)
    try:
        for index, fit in refit_responses(problem, model, jobs(), min(n_jobs, nsim)):
            bar.update()
            if fit is None:
                failed += 1
                continue
            unsettled += not fit.converged
            replicates[index] = natural_values(params, fit.covariances, fit.dispersion, fit.beta)
    except KeyboardInterrupt:
        if len(replicates) < 2:
            raise
        notes.append(f"Interrupted: the percentiles use the {len(replicates)} refits done before Ctrl-C.")
        warnings.warn(notes[-1], MonteCarloWarning, stacklevel=3)
    finally:
        bar.close()
    notes.insert(0, f"{len(replicates)} of {nsim} bootstrap refits returned.")
    if failed or unsettled:
        message = f"{failed} refits failed and {unsettled} did not converge; " if failed else f"{unsettled} refits did not converge; "
        notes.append(message + "the percentiles use the refits that returned.")
        warnings.warn(notes[-1], MonteCarloWarning, stacklevel=3)
    if len(replicates) < 2:
        nan = np.full(len(params), np.nan)
        return nan, nan.copy(), notes
    values = np.asarray([replicates[index] for index in sorted(replicates)])
    alpha = (1 - level) / 2
    return np.nanquantile(values, alpha, axis=0), np.nanquantile(values, 1 - alpha, axis=0), notes
