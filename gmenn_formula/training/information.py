"""The observed information of a fit's parameters: by Louis' method (Louis 1982) from draws for the
covariance parameters and sigma, by the Laplace approximation for the linear fixed effects.

With b the random effects and l_c(phi; b) = log p(b | covariances) + log p(y | b, beta, sigma)
the complete-data log-likelihood, the observed information of the marginal likelihood is

    I(phi) = E[-d2 l_c / dphi2 | y] - Cov(d l_c / dphi | y),

both over the posterior of b at the estimate, estimated here from its draws. ``phi`` holds the
parameters on their working scales (log sd, atanh of a correlation, log sigma: see
:mod:`gmenn_formula.results.confint`); covariances not in ``phi`` (at the boundary), beta and the
networks stay as fitted. On sleepstudy's ``(Days | Subject)`` 400 draws give standard errors
within 3% of the exact likelihood's Hessian. For beta, whose random intercepts absorb most of
its complete-data information, Louis' difference of two near-equal terms needs ~10^5 draws;
instead :func:`fixed_effect_information` is lme4's: the Schur complement
X'WX - X'WZ (Z'WZ + G^-1)^-1 Z'WX at the effects' posterior means (exact, X'V^-1 X, for gaussian).
Shapes: n rows, c outputs, k linear fixed effects, m draws, per term l: q_l levels, p_l coefficients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu
from torch.func import grad, hessian

from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import random_part
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import predict_fixed, predict_held


def observed_information(problem: EMProblem, model: FixedPart, params: Sequence, phi: np.ndarray, effects: tuple[np.ndarray, ...]) -> np.ndarray:
    """(P, P) Louis information at ``phi`` (P,) of ``params`` (confint's Parameter of kind sd, cor
    or sigma: term, class k, coefficients a, b), from the draws ``effects`` (m, q_l, p_l, c) per term."""
    rows = problem.rows
    held = predict_held(model, rows).double()
    X, y, trials = rows.X_fixed.double(), rows.y, rows.trials.double()
    if problem.family.y_dtype != np.int64:
        y = y.double()
    family = problem.family
    dispersion = 1.0
    phi0 = torch.as_tensor(phi, dtype=torch.float64)

    def covariance(x: torch.Tensor, term: int, k: int, p: int) -> torch.Tensor:
        sd = torch.ones(p, dtype=torch.float64)
        R = torch.eye(p, dtype=torch.float64)
        for i, param in enumerate(params):
            if param.term == term and param.k == k:
                if param.kind == "sd":
                    sd = sd.index_put((torch.tensor(param.a),), torch.exp(x[i]))
                else:
                    value = torch.tanh(x[i])
                    R = R.index_put((torch.tensor(param.a), torch.tensor(param.b)), value)
                    R = R.index_put((torch.tensor(param.b), torch.tensor(param.a)), value)
        return sd[:, None] * R * sd[None, :]

    covered = sorted({(p.term, p.k) for p in params if p.kind in ("sd", "cor")})
    sigma_index = [i for i, p in enumerate(params) if p.kind == "sigma"]
    beta_fixed = model.beta.detach().double()

    def loglik(x: torch.Tensor, draw: tuple[torch.Tensor, ...], Zb: torch.Tensor) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float64)
        for term, k in covered:
            B = draw[term][:, :, k]  # (q, p)
            S = covariance(x, term, k, B.shape[1])
            L = torch.linalg.cholesky(S)
            solved = torch.cholesky_solve(B.T @ B, L)
            total = total - 0.5 * (B.shape[0] * 2 * torch.log(torch.diagonal(L)).sum() + torch.trace(solved))
        eta = held + X @ beta_fixed + Zb
        scale = torch.exp(2 * x[sigma_index[0]]) if sigma_index else dispersion
        return total - family.torch_nll(eta, y, trials, scale).sum()

    scores, curvature = [], torch.zeros((len(params), len(params)), dtype=torch.float64)
    m = effects[0].shape[0]
    slopes = dataclasses.replace(rows, Z=tuple(Z.double() for Z in rows.Z))  # the draws are float64
    for d in range(m):
        draw = tuple(torch.as_tensor(B[d], dtype=torch.float64) for B in effects)
        Zb = random_part(tuple(b[None] for b in draw), slopes)[0]
        scores.append(grad(loglik)(phi0, draw, Zb))
        curvature -= hessian(loglik)(phi0, draw, Zb)
    S = torch.stack(scores).numpy()
    information = curvature.numpy() / m - np.cov(S, rowvar=False).reshape(len(params), len(params))
    return 0.5 * (information + information.T)



def fixed_effect_information(problem: EMProblem, model: FixedPart, covariances: list[np.ndarray], dispersion: float,
                             effect_means: list[np.ndarray], held: set[tuple[int, int]]) -> np.ndarray:
    """(k c, k c) information of beta (k, c), flattened row by row: X'WX - X'WZ (Z'WZ + G^-1)^-1 Z'WX
    with W each row's Hessian of the NLL in eta (n, c, c) at eta = F + Z b-hat (``effect_means``
    (q, p, c) per term), G the effects' prior covariance; (term, class) pairs in ``held`` (at the
    boundary) have no effects."""
    rows, c = problem.rows, problem.num_outputs
    n = len(rows)
    with torch.no_grad():
        means = tuple(torch.as_tensor(b[None], dtype=torch.float32) for b in effect_means)
        eta = predict_fixed(model, rows) + random_part(means, rows)[0]
        _, W = problem.family.torch_nll_derivatives(eta.double(), rows.y, rows.trials.double(), dispersion)
    W = W.numpy()  # (n, c, c)
    weight = sparse.block_diag(list(W), format="csr") if c > 1 else sparse.diags(W[:, 0, 0])
    X = sparse.kron(sparse.csr_matrix(rows.X_fixed.double().numpy()), sparse.identity(c), format="csr")  # (n c, k c)
    blocks, precisions = [], []
    for term, (codes, Z, S) in enumerate(zip(rows.codes, rows.Z, covariances)):
        q, p = problem.shapes[term][0], Z.shape[1]
        for cls in range(c):
            if (term, cls) in held:
                continue
            cols = codes.numpy()[:, None] * p + np.arange(p)[None, :]  # (n, p) into (q p)
            entries = sparse.csr_matrix(
                (Z.double().numpy().ravel(), (np.repeat(np.arange(n) * c + cls, p), cols.ravel())), shape=(n * c, q * p)
            )
            blocks.append(entries)
            precisions.append(sparse.kron(sparse.identity(q), np.linalg.inv(S[cls])))
    if not blocks:
        return (X.T @ weight @ X).toarray()
    Zs = sparse.hstack(blocks, format="csc")
    A = (Zs.T @ weight @ Zs + sparse.block_diag(precisions)).tocsc()
    B = (Zs.T @ weight @ X).toarray()
    return (X.T @ weight @ X).toarray() - B.T @ splu(A).solve(B)
