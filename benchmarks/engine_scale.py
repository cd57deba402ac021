"""Engine memory at scale: a GLMM fit on 1,000,000 rows with three crossed factors of 100,000 levels.

Runs a few EM epochs of ``y ~ x0 + x1 + (1 | g0) + (1 | g1) + (1 | g2)``
(gaussian) and prints seconds per epoch, the process's peak resident memory
and the size of the data, to show memory stays O(rows): no rows-by-levels
matrix is ever built (that would be 2,235 GB here). Run:
``python benchmarks/engine_scale.py [ROWS] [LEVELS] [EPOCHS]``.
"""

from __future__ import annotations

import resource
import sys
import time

import numpy as np

import gmenn_formula as gf
from gmenn_formula.simulation import paper_scenario


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    levels = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    epochs = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    sim = paper_scenario(rows=rows, features=2, levels=(levels,) * 3, variances=(0.5, 0.3, 0.2), family="gaussian",
                   nonlinear=False, rows_per_level=rows / levels, seed=0)
    data_mb = sim.data.memory_usage(deep=True).sum() / 2**20
    start = time.perf_counter()
    fit = gf.gmenn(sim.formula, sim.data, epochs=epochs, window=2, average_epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    history = fit.history
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    estimates = fit.varcorr()["variance"].round(3).tolist()
    print("| rows | factors x levels | epochs | s/epoch (after the first) | E-step s/epoch | fit s | peak RSS MB | data MB | variances (truth .5 .3 .2 1) |")
    print("|---|---|---|---|---|---|---|---|---|")
    per_epoch = float(np.mean(history["estep_seconds"][1:] + history["mstep_seconds"][1:]))
    print(f"| {rows:,} | 3 x {levels:,} | {len(history)} | {per_epoch:.1f} | {history['estep_seconds'][1:].mean():.1f} | {seconds:.0f} | {peak_mb:,.0f} | {data_mb:.0f} | {estimates} |")


if __name__ == "__main__":
    main()
