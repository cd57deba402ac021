"""Design-stage scale check: 1,000,000 rows, three crossed factors of 100,000 levels.

Prints build time and peak memory of ``gmenn_formula.design`` (the issue's
target: seconds and under 1 GB), next to the size of the input DataFrame and
of the dense rows-by-levels Z that we never build. Run: ``make bench-design``.
"""

from __future__ import annotations

import resource
import time
import tracemalloc

import numpy as np
import pandas as pd

import gmenn_formula as gf

ROWS, LEVELS, FACTORS, FEATURES = 1_000_000, 100_000, 3, 10


def simulate(rng: np.random.Generator) -> pd.DataFrame:
    """Gaussian response, FEATURES numeric columns, FACTORS string-labelled factors."""
    columns = {f"x{j}": rng.normal(size=ROWS) for j in range(FEATURES)}
    for f in range(FACTORS):
        codes = rng.integers(0, LEVELS, size=ROWS)
        columns[f"g{f}"] = pd.Categorical.from_codes(codes % LEVELS, [f"L{i}" for i in range(LEVELS)])
    columns["y"] = rng.normal(size=ROWS)
    return pd.DataFrame(columns)


def main() -> None:
    data = simulate(np.random.default_rng(0))
    inputs = " + ".join(f"x{j}" for j in range(FEATURES))
    groups = " + ".join(f"(1 | g{f})" for f in range(FACTORS))
    formula = f"y ~ nn({inputs}) + x0 + {groups}"
    data_mb = data.memory_usage(deep=True).sum() / 2**20
    tracemalloc.start()
    start = time.perf_counter()
    result = gf.design(formula, data)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    arrays_mb = sum(a.nbytes for a in (result.X_fixed, result.offset, *result.X_networks)) / 2**20
    arrays_mb += sum(r.codes.nbytes + r.Z.nbytes for r in result.random) / 2**20
    dense_z_gb = ROWS * LEVELS * FACTORS * 8 / 2**30
    print("| rows | factors x levels | build s | peak traced MB | design arrays MB | input frame MB | process max RSS MB | dense Z would be GB |")
    print("|---|---|---|---|---|---|---|---|")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {ROWS:,} | {FACTORS} x {LEVELS:,} | {seconds:.1f} | {peak / 2**20:.0f} | {arrays_mb:.0f} | {data_mb:.0f} | {rss_mb:.0f} | {dense_z_gb:,.0f} |")
    print([r.num_levels for r in result.random])


if __name__ == "__main__":
    main()
