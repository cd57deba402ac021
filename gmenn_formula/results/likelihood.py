"""Marginal log-likelihood of a fit, and AIC/BIC: ``GmennResult.loglik()``, ``.aic()``, ``.bic()``.

What is estimated: the log-likelihood of the fitting rows' responses given the
fitted fixed part and the estimated covariances, with the random effects
integrated out,

    log L = log integral p(y | F + sum_l Z_l B_l, s2) prod_l N(B_l; 0, Sigma_l) dB,

where F (n, c) is the fixed part (networks and linear fixed effects, offsets
included) held at its fitted value: the network output is frozen (eval mode,
no dropout), so with ``nn()`` this is the likelihood of the variance
components and the fixed part given the network, not a likelihood maximised
over the network's weights. Family constants are included (log binomial
coefficients, log y!, the gaussian 2 pi), so values compare with lme4's
``logLik`` for the same model.

Estimators (``method="auto"`` takes the first that applies):

- ``"exact"`` (gaussian): y ~ N(F, s2 I + Z G Z'), with G = L L' the block
  diagonal prior covariance of all D effects. log|V| and y'V^-1 y come from a
  blocked factorisation of the D x D matrix I + L'Z'Z L / s2 (matrix
  determinant lemma and Woodbury; ``design/sparse.py``: the largest term per
  level, a Cholesky of the others' Schur complement). With one grouping factor the matrix is
  block diagonal, one block per level, so this is exact at any size; with
  crossed factors it is used up to ``EXACT_MAX_EFFECTS`` effects in all.
- per-level importance sampling (every random term on ONE grouping factor, or
  on factors nested in one, such as (1 | a) + (1 | a:b) + (1 | obs); non-gaussian
  families): the likelihood is a product over that factor's levels, so each
  level's integral (over its own effects and those of the levels nested in it)
  is estimated on its own and the log-means add up. Accurate: the Monte Carlo
  standard error is usually far below 0.1. (Nested factors estimated jointly,
  as crossed ones, read a poisson model with 20 / 80 / 246 nested levels ~50
  lower than the quadrature's -466.1, with a reported error of ~1.)
- joint importance sampling (crossed factors, when the exact route does not
  apply): one importance sample of ALL effects at once. The weight is a
  product over thousands of levels, so its variance grows with the number of
  levels: with many levels a handful of draws carry all the weight, the
  estimate is biased low and its reported standard error (delta method) is
  itself unreliable. ``LogLik.ess`` (effective draws) shows how bad it is;
  treat such values as rough, and compare models with it only when the
  differences are large.

Proposal of the importance samplers: for each random term and level, a
multivariate t (``T_DF`` degrees of freedom) centred at the posterior mean of
the level's effects (``FitState.effect_mean``, the mean of the fit's draws),
scale ``PROPOSAL_SCALE`` times the level's Laplace covariance there (the
inverse of prior precision plus the Fisher information of the level's rows,
the other effects at their means), in whitened coordinates (B = R v with
Sigma = R R', so the prior of v is standard normal and a zero variance
component drops out), mixed with the prior itself (a share of
``DEFENSIVE``). The t's tails are heavier than the posterior's, and the prior
component bounds every weight by the likelihood / ``DEFENSIVE``, also where
the stored means are off. (The draws' own sds are not used: a few hundred
stored draws give noisy correlations, and the curvature needs none.)

Parameters counted (``df``), as lme4 counts: the linear fixed effects (per
class for categorical), the unique covariance parameters of every term (p for
``||`` terms, p(p+1)/2 for correlated ones, per class), the residual variance
for gaussian; plus, with ``nn()``, every weight of the networks (reported
apart in ``LogLik.network_parameters``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sparse
from scipy.special import gammaln, logsumexp

from gmenn_formula.design import Design
from gmenn_formula.design.grouping import nested_units
from gmenn_formula.design.sparse import PenalizedSystem, factored_design
from gmenn_formula.distributed.group import single_shard
from gmenn_formula.errors import DataError
from gmenn_formula.results.arguments import check_count
from gmenn_formula.results.state import FitState

METHODS = ("auto", "exact", "importance")
EXACT_MAX_EFFECTS = 5_000
"""Crossed gaussian models with at most this many effects in all are integrated exactly (sparse LU)."""
T_DF = 5.0
PROPOSAL_SCALE = 1.2
DEFENSIVE = 0.1
"""Share of proposal draws taken from the prior (defensive mixture: weights stay below likelihood / 0.1)."""
DEFAULT_DRAWS = {"per-level": 1_000, "joint": 500}
MIN_DRAWS = 100
WORK_BUDGET = 20_000_000
"""Default draws are cut so that draws x rows x classes stays below this (at least MIN_DRAWS)."""
UNRELIABLE_ESS = 10
"""Below this many effective draws the summary calls the estimate unreliable."""
_CHUNK = 2_000_000

DESCRIPTIONS = {
    "exact": "exact marginal likelihood (random effects integrated in closed form)",
    "per-level": "importance sampling per level",
    "joint": "joint importance sampling over all effects of the crossed factors",
}


class LogLik(float):
    """A log-likelihood (a float) with how it was made, like R's ``logLik`` object.

    Attributes: ``se`` Monte Carlo standard error (0 for "exact"); ``method``
    "exact", "per-level" or "joint" (see the module docstring); ``df``
    parameters counted, of which ``network_parameters`` are networks'
    weights; ``nobs`` rows; ``draws`` importance draws per estimate (0 for
    exact); ``ess`` effective draws (the smallest over levels for
    "per-level"; None for exact).
    """

    se: float
    method: str
    df: int
    network_parameters: int
    nobs: int
    draws: int
    ess: float | None

    def __new__(
        cls,
        value: float,
        *,
        method: str,
        df: int,
        nobs: int,
        se: float = 0.0,
        network_parameters: int = 0,
        draws: int = 0,
        ess: float | None = None,
    ) -> LogLik:
        self = super().__new__(cls, value)
        self.se, self.method, self.df, self.nobs = float(se), method, int(df), int(nobs)
        self.network_parameters, self.draws, self.ess = int(network_parameters), int(draws), ess
        return self

    @property
    def value(self) -> float:
        return float(self)

    @property
    def reliable(self) -> bool:
        """False when an importance-sampled estimate rests on fewer than UNRELIABLE_ESS effective draws."""
        return self.ess is None or self.ess >= UNRELIABLE_ESS

    @property
    def deviance(self) -> float:
        """-2 log L (lme4's ``deviance`` column of a GLMM summary)."""
        return -2.0 * float(self)

    @property
    def aic(self) -> float:
        """-2 log L + 2 df."""
        return -2.0 * float(self) + 2.0 * self.df

    @property
    def bic(self) -> float:
        """-2 log L + df log(nobs)."""
        return -2.0 * float(self) + self.df * math.log(self.nobs)

    def describe(self) -> list[str]:
        """Lines for a summary: the estimator, its Monte Carlo error and what df counts."""
        text = DESCRIPTIONS[self.method]
        if self.method != "exact":
            draws = f"{self.draws:,} draws" + (" per level" if self.method == "per-level" else "")
            ess = f", effective draws {self.ess:,.1f}" + (" (fewest over levels)" if self.method == "per-level" else "")
            text += f", {draws} (MC s.e. {_se_text(self.se)}{ess})"
            if not self.reliable:
                text += f"; unreliable (fewer than {UNRELIABLE_ESS} effective draws), so the criteria show NA; loglik() returns it"
            elif self.method == "joint":
                text += "; high variance with many levels"
        if self.network_parameters:
            return [text, f"df = {self.df:,} counts {self.network_parameters:,} network parameters; the network output is held fixed"]
        return [f"{text}; df = {self.df}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": float(self),
            "se": self.se,
            "method": self.method,
            "df": self.df,
            "nobs": self.nobs,
            "network_parameters": self.network_parameters,
            "draws": self.draws,
            "ess": self.ess,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LogLik:
        fields = dict(data)
        return cls(float(fields.pop("value")), **fields)

    def __repr__(self) -> str:
        se = "" if self.method == "exact" else f", MC s.e. {_se_text(self.se)}"
        return f"'log Lik.' {float(self):.6g} (df={self.df}, {self.method}{se})"

    def __reduce__(self):
        return (_rebuild, (self.to_dict(),))


def _se_text(se: float) -> str:
    return f"{se:.1f}" if se >= 10 else f"{se:#.2g}"


def _rebuild(data: dict[str, Any]) -> LogLik:
    return LogLik.from_dict(data)


# -- parameters ---------------------------------------------------------------------------------
def count_parameters(design: Design, state: FitState) -> tuple[int, int]:
    """(df, network parameters): what AIC and BIC count (see the module docstring)."""
    network = sum(p.numel() for p in state.model.networks.parameters())
    count = state.model.beta.numel() + network + (1 if design.family.has_dispersion else 0)
    for r, S in zip(design.random, state.covariances):
        c, p = S.shape[0], S.shape[1]
        count += c * (p * (p + 1) // 2 if r.correlated else p)
    return int(count), int(network)


# -- the estimators ----------------------------------------------------------------------------
def marginal_loglik(
    design: Design,
    state: FitState,
    F: np.ndarray,
    method: str = "auto",
    draws: int | None = None,
    seed: int = 0,
    over_shards: Callable[[np.ndarray], np.ndarray] | None = None,
) -> LogLik:
    """log L of the fitting rows of ``design`` (see the module docstring).

    ``F`` (n, c): the fixed part's linear predictor on those rows.
    ``method``: "auto", "exact" (gaussian only) or "importance"; ``draws``:
    importance draws per estimate (None: ``DEFAULT_DRAWS``, cut by
    ``WORK_BUDGET``); ``seed`` seeds them. ``over_shards``: ``design`` holds one process's
    shard of a data-parallel fit's rows and this sums an array over every process (an
    all-reduce; every process must call this alike): joint importance sampling over every
    shard's rows, the same draws in each process (the exact method and the per-level sampler
    need all rows, or their nesting, in one process).
    """
    if method not in METHODS:
        raise DataError(f"method must be one of {METHODS}, not {method!r}.")
    if draws is not None:
        check_count("draws", draws, 2)
    if design.response is None:
        raise DataError("The log-likelihood needs the response of the fitting rows.")
    family = design.family
    gaussian = family.has_dispersion
    one_factor = len({r.name for r in design.random}) == 1
    total_effects = sum(r.num_levels * len(r.term_names) * state.num_outputs for r in design.random)
    if method == "auto":
        method = "exact" if gaussian and (one_factor or total_effects <= EXACT_MAX_EFFECTS) and over_shards is None else "importance"
    if method == "exact" and not gaussian:
        raise DataError(f"The exact marginal likelihood is available for the gaussian family only, not {family.name}; use method='importance'.")
    if method == "exact" and over_shards is not None:
        raise DataError("The exact marginal likelihood needs every row in one process; use method='importance' in a data-parallel fit.")
    sharded = over_shards is not None
    over_shards = over_shards or single_shard
    num_rows = int(over_shards(np.array([float(design.num_rows)]))[0])
    df, network = count_parameters(design, state)
    info = {"df": df, "nobs": num_rows, "network_parameters": network}
    if method == "exact":
        return LogLik(_gaussian_exact(design, state, F), method="exact", **info)
    units = None if sharded else nested_units([r.codes.astype(np.int64) for r in design.random], [r.num_levels for r in design.random])
    kind = "per-level" if units is not None else "joint"
    if draws is None:
        budget = WORK_BUDGET // max(num_rows * state.num_outputs, 1)
        draws = int(max(MIN_DRAWS, min(DEFAULT_DRAWS[kind], budget)))
    value, se, ess = _importance(design, state, F, units, draws, np.random.default_rng(seed), over_shards, num_rows)
    return LogLik(value, method=kind, se=se, draws=draws, ess=ess, **info)


def _roots(S: np.ndarray) -> np.ndarray:
    """(c, p, p) R with S = R R' (eigen roots; zero columns for zero eigenvalues)."""
    values, vectors = np.linalg.eigh(S)
    return vectors * np.sqrt(np.clip(values, 0.0, None))[:, None, :]


def _gaussian_exact(design: Design, state: FitState, F: np.ndarray) -> float:
    n = design.num_rows
    residual = design.response.y - F[:, 0]
    s2 = float(state.dispersion)
    order = sorted(range(len(design.random)), key=lambda l: -design.random[l].num_levels * len(design.random[l].term_names))
    terms = [design.random[l] for l in order]
    roots = [_roots(state.covariances[l])[0] / math.sqrt(s2) for l in order]
    M = factored_design([r.codes for r in terms], [r.Z for r in terms], [r.num_levels for r in terms], roots)
    system = PenalizedSystem.of(sparse.identity(M.shape[1], format="csr") + M.T @ M, terms[0].num_levels, len(terms[0].term_names))
    Mr = M.T @ residual
    quadratic = (residual @ residual / s2) - Mr @ system.solve(Mr) / s2
    return float(-0.5 * (n * math.log(2 * math.pi * s2) + system.logdet + quadratic))


class _Proposal:
    """Multivariate t proposal of one term's effects, per level, in whitened coordinates,
    mixed with the prior (see the module docstring).

    Level block layout: (p, c) flattened, index k * c + class; B = v R_blk'.
    ``fisher`` (n, c, c): each row's Fisher information in eta at the posterior mean;
    ``over_shards`` sums the levels' information over every process's rows.
    """

    def __init__(self, r, S: np.ndarray, mean: np.ndarray, fisher: np.ndarray, over_shards: Callable[[np.ndarray], np.ndarray]) -> None:
        q, p, c = mean.shape
        self.q, self.p, self.c, self.D = q, p, c, p * c
        D = self.D
        roots = _roots(S)  # (c, p, p)
        self.R = _block(roots)
        P = _block(np.stack([np.linalg.pinv(R, rcond=1e-10) for R in roots]))
        self.mu = mean.reshape(q, D) @ P.T
        # Laplace precision of v per level: I + R' (sum over the level's rows of kron(z z', W)) R
        n = len(r.codes)
        per_row = np.einsum("nk,nl,nab->nkalb", r.Z, r.Z, fisher).reshape(n, D * D)
        to_level = sparse.csr_matrix((np.ones(n), (r.codes.astype(np.int64), np.arange(n))), shape=(q, n))
        information = over_shards(np.asarray(to_level @ per_row)).reshape(q, D, D)
        precision = np.eye(D) + np.einsum("ji,qjk,kl->qil", self.R, information, self.R)
        covariance = np.linalg.inv(0.5 * (precision + np.swapaxes(precision, 1, 2)))
        self.L = np.linalg.cholesky(PROPOSAL_SCALE**2 * 0.5 * (covariance + np.swapaxes(covariance, 1, 2)))
        self.L_inv = np.linalg.inv(self.L)
        self.log_det = np.log(np.diagonal(self.L, axis1=1, axis2=2)).sum(axis=1)  # (q,)
        self.Z = r.Z
        self.codes = r.codes.astype(np.int64)

    def sample(self, rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray]:
        """(S, n, c) contribution Z B to eta, and (S, q) log prior - log proposal per level."""
        D = self.D
        z = rng.standard_normal((S, self.q, D))
        u = rng.chisquare(T_DF, size=(S, self.q)) / T_DF
        v = self.mu + np.einsum("qij,sqj->sqi", self.L, z) / np.sqrt(u)[..., None]
        from_prior = rng.random((S, self.q)) < DEFENSIVE
        v[from_prior] = rng.standard_normal((int(from_prior.sum()), D))
        log_prior = -0.5 * D * math.log(2 * math.pi) - 0.5 * (v**2).sum(axis=-1)
        distance = (np.einsum("qij,sqj->sqi", self.L_inv, v - self.mu) ** 2).sum(axis=-1)
        log_t = (
            gammaln((T_DF + D) / 2)
            - gammaln(T_DF / 2)
            - 0.5 * D * math.log(T_DF * math.pi)
            - self.log_det
            - 0.5 * (T_DF + D) * np.log1p(distance / T_DF)
        )
        log_proposal = np.logaddexp(math.log1p(-DEFENSIVE) + log_t, math.log(DEFENSIVE) + log_prior)
        B = (v @ self.R.T).reshape(S, self.q, self.p, self.c)
        contribution = np.einsum("np,snpc->snc", self.Z, B[:, self.codes])
        return contribution, log_prior - log_proposal


def _block(per_class: np.ndarray) -> np.ndarray:
    """(c, p, p) per-class matrices -> (p c, p c) acting on the (p, c)-flattened layout."""
    c, p, _ = per_class.shape
    out = np.zeros((p, c, p, c))
    for k in range(c):
        out[:, k, :, k] = per_class[k]
    return out.reshape(p * c, p * c)


def _to_unit(units: np.ndarray, count: int) -> sparse.csr_matrix:
    """(len(units), count) 0/1 matrix: row i has its 1 in column ``units[i]``."""
    return sparse.csr_matrix((np.ones(len(units)), (np.arange(len(units)), units)), shape=(len(units), count))


def _importance(
    design: Design,
    state: FitState,
    F: np.ndarray,
    units: tuple[int, list[np.ndarray]] | None,
    draws: int,
    rng: np.random.Generator,
    over_shards: Callable[[np.ndarray], np.ndarray],
    num_rows: int,
):
    """(log L, MC s.e., effective draws) by importance sampling; see the module docstring.
    ``units``: the factor every term nests in and per term the unit (its level) of each level
    (:func:`~gmenn_formula.design.grouping.nested_units`): one estimate per unit; None: joint.
    ``over_shards`` sums over every process's rows, ``num_rows`` of them (the chunks of draws
    follow from it, so every process makes the same calls)."""
    response, family = design.response, design.family
    n, c = F.shape
    means = [mean.astype(np.float64) for mean in state.effect_mean]
    center = F.copy()
    for r, mean in zip(design.random, means):
        center += np.einsum("np,npc->nc", r.Z, mean[r.codes])
    fisher = family.fisher(center, response.trials, state.dispersion)
    proposals = [_Proposal(r, S, mean, fisher, over_shards) for r, S, mean in zip(design.random, state.covariances, means)]
    if units is None:  # joint: every row and level in one unit
        count, row_units, level_units = 1, np.zeros(n, np.int64), [np.zeros(r.num_levels, np.int64) for r in design.random]
    else:
        top, level_units = units
        count, row_units = design.random[top].num_levels, design.random[top].codes.astype(np.int64)
    rows_to_unit = _to_unit(row_units, count)
    levels_to_unit = [_to_unit(m, count) for m in level_units]
    lse1, lse2 = np.full(count, -np.inf), np.full(count, -np.inf)
    per_draw = num_rows * c + sum(pr.q * pr.D + num_rows * pr.D for pr in proposals)
    chunk = int(max(1, min(draws, _CHUNK // max(per_draw, 1))))
    done = 0
    while done < draws:
        S = min(chunk, draws - done)
        eta = np.broadcast_to(F, (S, n, c)).copy()
        log_ratio = np.zeros((S, count))
        for l, proposal in enumerate(proposals):
            contribution, ratio = proposal.sample(rng, S)
            eta += contribution
            log_ratio += (levels_to_unit[l].T @ ratio.T).T
        ll = family.loglik(response.y, eta, response.trials, state.dispersion)
        log_w = log_ratio + over_shards((rows_to_unit.T @ ll.T).T)
        lse1 = np.logaddexp(lse1, logsumexp(log_w, axis=0))
        lse2 = np.logaddexp(lse2, logsumexp(2 * log_w, axis=0))
        done += S
    log_mean = lse1 - math.log(draws)
    ess = np.exp(2 * lse1 - lse2)  # (sum w)^2 / sum w^2 per unit
    relative_variance = np.clip(draws / ess - 1.0, 0.0, None) / draws  # Var(w) / (draws E[w]^2)
    return float(log_mean.sum()), float(np.sqrt(relative_variance.sum())), float(ess.min())
