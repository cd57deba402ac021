"""Stress test of the E-step (``make bench-stress``): consecutive long fits of the scenarios that
once hung in XLA, in one process, each E-step call under the watchdog.

The scenarios (issue 13): 100 classes with ``nn()`` (20,000 rows, the paper's base factors) and
a binomial GLMM with three crossed factors of 20,000 levels each (60,000 rows). They alternate,
``--fits`` in all (default 20), each capped in epochs so that one takes a minute or two on
2 cores. A hang would show as an EStepTimeoutError (the watchdog's bound, ``--timeout`` seconds
per call) or as a call far slower than the fit's median; the table gives, per fit, its seconds,
epochs, its first E-step call (it compiles the sampler), the median and slowest of the later
calls and the ratio of the two.

Writes ``benchmarks/results/stress_estep.md`` with machine, date and commit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from speed import write_result  # noqa: E402

import gmenn_formula as gf  # noqa: E402
from gmenn_formula.errors import ConvergenceWarning, EStepTimeoutError  # noqa: E402
from gmenn_formula.simulation import paper_scenario  # noqa: E402

SCENARIOS = {
    "100 classes, nn(), 20,000 rows": dict(
        simulate=dict(rows=20_000, classes=100), family="categorical",
        control=dict(epochs=6, patience=6, final_epochs=2, average_epochs=2, max_average_epochs=4),
    ),
    "binomial GLMM, 3 x 20,000 levels": dict(
        simulate=dict(rows=60_000, levels=(20_000, 20_000, 20_000), variances=(0.5, 0.3, 0.2), family="binomial",
                      rows_per_level=3.0, nonlinear=False),
        family="binomial",
        control=dict(epochs=30, average_epochs=4, max_average_epochs=8),
    ),
}


def one_fit(name: str, seed: int, timeout: float | None) -> dict:
    scenario = SCENARIOS[name]
    simulated = paper_scenario(**scenario["simulate"], seed=seed)
    started = time.perf_counter()
    status = "ok"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            fit = gf.gmenn(simulated.formula, simulated.data, family=scenario["family"], seed=seed, verbose=0,
                           estep_timeout=timeout, **scenario["control"])
            history = fit.state.history
        except EStepTimeoutError as error:
            status = f"TIMEOUT: {error}"
            history = error.result.state.history if error.result is not None else []
    seconds = time.perf_counter() - started
    first, later = (history[0].estep_seconds, [r.estep_seconds for r in history[1:]]) if len(history) > 1 else (float("nan"), [float("nan")])
    median, slowest = statistics.median(later), max(later)
    return {"fit": 0, "scenario": name, "seed": seed, "status": status, "seconds": f"{seconds:.1f}", "epochs": len(history),
            "first E-step s": f"{first:.2f}", "median later s": f"{median:.2f}", "slowest later s": f"{slowest:.2f}",
            "slowest / median": f"{slowest / median:.1f}"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=20, help="fits in all, the scenarios alternating (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=None, help="estep_timeout= seconds (default: the automatic bound)")
    args = parser.parse_args(argv)
    table = []
    names = list(SCENARIOS)
    for index in range(args.fits):
        row = one_fit(names[index % len(names)], seed=index // len(names), timeout=args.timeout)
        row["fit"] = index + 1
        table.append(row)
        print(row, flush=True)
    hangs = sum(row["status"] != "ok" for row in table)
    lead = f"{len(table)} consecutive fits in one process, {hangs} stopped by the watchdog."
    write_result("stress_estep.md", "E-step stress test (`make bench-stress`)", table, lead)

if __name__ == "__main__":
    main()
