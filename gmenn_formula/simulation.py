"""Simulated clustered data with known truth, as in the MC-GMENN paper (section 3).

The generator follows the paper's extension of LMMNN's simulation to several
classes and clustering factors: features X ~ U(-1, 1)^D, class weights
beta ~ U(0, 1)^(D x C), a nonlinear fixed part
``f(X) = Xb * cos(Xb) + 2 * x0 * x1 * u`` with ``Xb = intercept + X beta`` and
``u ~ U(0, 1)^C``, per-class random intercepts ``b[l][q, c] ~ N(0, var[l][c])``
for every factor l, and cluster sizes ~ Poisson(rows_per_level) + 1 (unequal).
The response is drawn from the family on ``eta = f(X) + sum_l b[l][level]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import expit, softmax

from gmenn_formula.errors import DataError


@dataclass(frozen=True)
class Simulated:
    """A simulated data set and its truth.

    ``data``: columns x0..x{D-1}, g0..g{L-1} (string level labels), y.
    ``variances``: (L, C) true per-class variances. ``effects``: L arrays (q_l, C).
    ``fixed_eta``: (n, C) f(X). ``probabilities``: (n, C) true class
    probabilities (categorical/binomial) or None. ``formula``: the model to fit.
    ``beta``: (D, C) true feature weights in ``Xb = intercept + X beta`` (with
    ``nonlinear=False``, the true fixed-effect slopes).
    """

    data: pd.DataFrame
    variances: np.ndarray
    effects: tuple[np.ndarray, ...]
    fixed_eta: np.ndarray
    probabilities: np.ndarray | None
    formula: str
    beta: np.ndarray | None = None


def paper_scenario(
    rows: int = 20_000,
    features: int = 10,
    classes: int = 5,
    levels: tuple[int, ...] = (1000, 10, 1000),
    variances: tuple[float | tuple[float, ...], ...] = (1e-4, 0.5, 0.5),
    family: str = "categorical",
    rows_per_level: float = 30.0,
    intercept: float = 0.0,
    noise_variance: float = 1.0,
    nonlinear: bool = True,
    seed: int = 0,
) -> Simulated:
    """Simulate the paper's scenario (defaults: its base scenario at 20,000 rows).

    ``variances[l]`` is one variance for every class or a tuple of C per-class
    variances. ``family``: "categorical" (C classes), "binomial" (C forced to 1,
    logit link), "gaussian" (C = 1, residual variance ``noise_variance``) or
    "poisson" (C = 1, log link, f scaled by 0.5 to keep counts moderate).
    ``nonlinear=False`` makes the fixed part linear, ``f(X) = Xb``, and the
    formula a plain GLMM (``y ~ x0 + ... + (1 | g0) + ...``).
    """
    rng = np.random.default_rng(seed)
    num_classes = classes if family == "categorical" else 1
    X = rng.uniform(-1.0, 1.0, size=(rows, features))
    beta = rng.uniform(size=(features, num_classes))
    u = rng.uniform(size=(1, num_classes))
    xb = intercept + X @ beta
    fixed_eta = xb * np.cos(xb) + 2.0 * (X[:, :1] * X[:, 1:2]) @ u if nonlinear else xb
    if family == "poisson":
        fixed_eta = 0.5 * fixed_eta
    eta = fixed_eta.copy()
    true_vars = np.array([np.broadcast_to(np.asarray(v, dtype=float), (num_classes,)) for v in variances])
    columns: dict[str, np.ndarray] = {f"x{j}": X[:, j] for j in range(features)}
    effects = []
    for index, (q, var) in enumerate(zip(levels, true_vars)):
        sizes = rng.poisson(rows_per_level, q) + 1
        codes = rng.choice(q, size=rows, p=sizes / sizes.sum())
        b = rng.normal(size=(q, num_classes)) * np.sqrt(var)
        eta += b[codes]
        effects.append(b)
        columns[f"g{index}"] = np.char.add(f"g{index}_", codes.astype(str))
    probabilities = None
    if family == "categorical":
        probabilities = softmax(eta, axis=1)
        cumulative = probabilities.cumsum(axis=1)
        y = (rng.uniform(size=(rows, 1)) > cumulative).sum(axis=1).clip(max=num_classes - 1)
    elif family == "binomial":
        probabilities = expit(eta)
        y = (rng.uniform(size=(rows, 1)) < probabilities).astype(int)[:, 0]
    elif family == "gaussian":
        y = eta[:, 0] + rng.normal(scale=np.sqrt(noise_variance), size=rows)
    elif family == "poisson":
        y = rng.poisson(np.exp(eta[:, 0]))
    else:
        raise DataError(f"Unknown family {family!r}; choose categorical, binomial, gaussian or poisson.")
    columns["y"] = y
    inputs = " + ".join(f"x{j}" for j in range(features))
    groups = " + ".join(f"(1 | g{index})" for index in range(len(levels)))
    return Simulated(
        data=pd.DataFrame(columns),
        variances=true_vars,
        effects=tuple(effects),
        fixed_eta=fixed_eta,
        probabilities=probabilities,
        formula=f"y ~ {f'nn({inputs})' if nonlinear else inputs} + {groups}",
        beta=beta,
    )
