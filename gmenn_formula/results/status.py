"""The one-line convergence status of a fit (``fit.status``, the summary's "Status:" line).

In order of precedence: ``interrupted after epoch N`` (Ctrl-C or the E-step's time bound);
``not converged: <first reason>``; ``boundary (singular): ...`` when a random-effect term's
relative Cholesky factor has a diagonal entry below :data:`SINGULAR_TOLERANCE` (lme4's
``isSingular()``: the factor of the covariance divided by the residual standard deviation for
gaussian models, of the covariance itself otherwise); else ``converged``.
"""

from __future__ import annotations

import numpy as np

from gmenn_formula.design import Design
from gmenn_formula.results.state import FitState

SINGULAR_TOLERANCE = 1e-4
"""lme4's default ``tol`` of ``isSingular()``."""


def boundary_entries(design: Design, state: FitState) -> list[tuple[int, int, int]]:
    """(term, class, coefficient) of each variance at the boundary: a relative Cholesky diagonal
    entry below :data:`SINGULAR_TOLERANCE`."""
    scale = np.sqrt(state.dispersion) if design.family.has_dispersion else 1.0
    return [
        (l, c, a)
        for l, covariances in enumerate(state.covariances)
        for c, S in enumerate(covariances)
        for a, d in enumerate(np.diag(_cholesky(S)) / scale)
        if d < SINGULAR_TOLERANCE
    ]


def near_zero_terms(design: Design, state: FitState) -> list[str]:
    """"group term" (with the class for several outputs) of each variance at the boundary."""
    several = state.num_outputs > 1
    return [
        f"{design.random[l].name} {design.random[l].term_names[a]}" + (f" (class {c})" if several else "")
        for l, c, a in boundary_entries(design, state)
    ]


def _cholesky(S: np.ndarray) -> np.ndarray:
    """The lower Cholesky factor of a (p, p) covariance, pivot-free: a zero pivot gives a zero
    column (a singular covariance is what this looks for)."""
    p = S.shape[0]
    L = np.zeros_like(S, dtype=float)
    for j in range(p):
        pivot = S[j, j] - L[j, :j] @ L[j, :j]
        L[j, j] = np.sqrt(max(pivot, 0.0))
        if L[j, j] > 0:
            L[j + 1 :, j] = (S[j + 1 :, j] - L[j + 1 :, :j] @ L[j, :j]) / L[j, j]
    return L


def convergence_status(design: Design, state: FitState) -> str:
    """The fit's status in one line (see the module docstring)."""
    if state.interrupted:
        return f"interrupted after epoch {state.epochs}: estimates are that epoch's"
    if not state.converged:
        reason = state.messages[0] if state.messages else "the convergence rules were not met"
        return f"not converged: {reason.split('; ')[0].rstrip('.')}"
    boundary = near_zero_terms(design, state)
    if boundary:
        return f"boundary (singular): variance of {', '.join(boundary)} near 0"
    return f"converged in {state.epochs} epochs"
