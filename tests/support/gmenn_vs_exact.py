"""gmenn's fits of the two hard scenarios against their exact maximum likelihood (a report, not a test).

Run: ``PYTHONPATH=. python tests/support/gmenn_vs_exact.py [seeds...]`` (default seeds 0 1 2;
about 5-30 s per fit on 2 cores). For every scenario and seed it prints each
variance/covariance and fixed effect with gmenn's mcse next to the exact MLE,
the seed-to-seed sd, and ``fit.loglik()`` against the exact log-likelihood at
gmenn's estimate and at the MLE.
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gmenn_formula as gf  # noqa: E402
from support.quadrature import RECORDED_MLE, Params, Scenario, agq_loglik, hard_binomial_slope, hard_poisson_nested  # noqa: E402


def gmenn_params(fit, scenario: Scenario, column: str = "variance") -> Params:
    """Params of a gmenn fit, in the order of ``scenario.model`` (factors outermost first);
    ``column="mcse"``: the Monte Carlo standard errors in place of the covariances, NaN for beta."""
    vc = fit.varcorr()
    covariances = []
    for group in scenario.groups:
        rows = vc[vc["group"] == group]
        terms = list(rows.loc[rows["term2"].isna(), "term"])
        S = np.diag(rows.loc[rows["term2"].isna(), column].to_numpy(float))
        for _, row in rows[rows["term2"].notna()].iterrows():
            i, j = terms.index(row["term"]), terms.index(row["term2"])
            S[i, j] = S[j, i] = row[column]
        covariances.append(S)
    beta = fit.fixef()["estimate"].to_numpy(float)
    return Params(beta if column == "variance" else np.full(len(beta), np.nan), tuple(covariances))


def components(params: Params, scenario: Scenario) -> dict[str, float]:
    """Labelled variances, covariances and fixed effects of ``params``."""
    model, out = scenario.model, {}
    for l, (S, group) in enumerate(zip(params.covariances, scenario.groups)):
        names = model.effect_names if l == len(scenario.groups) - 1 else ("(Intercept)",)
        for i in range(len(S)):
            out[f"var {group} {names[i]}"] = S[i, i]
            for j in range(i + 1, len(S)):
                out[f"cov {group} {names[i]},{names[j]}"] = S[i, j]
    out.update({f"beta {name}": b for name, b in zip(model.fixed_names, params.beta)})
    return out


def report(scenario: Scenario, name: str, seeds: list[int]) -> None:
    exact, exact_loglik = RECORDED_MLE[name]
    table = pd.DataFrame({"exact": components(exact, scenario)})
    logliks = []
    for seed in seeds:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = gf.gmenn(scenario.formula, scenario.data, family=scenario.family, seed=seed, verbose=0)
        seconds = time.perf_counter() - start
        params = gmenn_params(fit, scenario)
        table[f"seed {seed}"] = pd.Series(components(params, scenario))
        table[f"mcse {seed}"] = pd.Series(components(gmenn_params(fit, scenario, "mcse"), scenario))
        loglik = fit.loglik()
        logliks.append(
            {
                "seed": seed,
                "seconds": round(seconds, 1),
                "fit.loglik()": float(loglik),
                "loglik MC se": loglik.se,
                "loglik method": loglik.method,
                "exact at gmenn's estimate": agq_loglik(params, scenario.model),
                "exact at MLE": exact_loglik,
            }
        )
    estimates = table[[f"seed {seed}" for seed in seeds]]
    table["seed sd"] = estimates.std(axis=1, ddof=1)
    table["mean - exact"] = estimates.mean(axis=1) - table["exact"]
    print(f"\n== {name}: {scenario.formula} ({scenario.family}, {len(scenario.data)} rows)")
    print(table.round(4).to_string())
    print(pd.DataFrame(logliks).round(3).to_string(index=False))


if __name__ == "__main__":
    seeds = [int(s) for s in sys.argv[1:]] or [0, 1, 2]
    pd.set_option("display.width", 200)
    report(hard_binomial_slope(), "hard_binomial_slope", seeds)
    report(hard_poisson_nested(), "hard_poisson_nested", seeds)
