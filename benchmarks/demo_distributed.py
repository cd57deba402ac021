"""A data-parallel fit on this machine: 2 processes (torchrun, gloo) against 1 on the same data.

Simulates the paper's base scenario (5 classes, 10 features through a network, factors of 1000,
10 and 1000 levels) into a partitioned Parquet data set (one file per part of the first factor's
levels' rows, FILES files), then runs ``torchrun --nproc-per-node P`` of this script's worker for
P = 2 and P = 1: each process reads only its share of the files and fits with
:func:`~gmenn_formula.distributed.fit.fit_shards`. Prints the 2-process fit's summary, and per P the
seconds, each process's rows and peak resident memory, the variance components and the held-out
AUC (rows the fits never saw).

    python benchmarks/demo_distributed.py --rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from torchrun_job import run_job  # benchmarks/, the script's folder

HERE = Path(__file__).resolve().parent
FILES = 4
TEST_FRACTION = 0.2
TRUE_VARIANCES = {"g0": 1e-4, "g1": 0.5, "g2": 0.5}
"""The simulation's variance of every class's effects, per factor (1000, 10 and 1000 levels)."""


def _write_data(rows: int, folder: Path) -> str:
    """The simulated training rows as FILES Parquet files in ``folder`` (the held-out rows in
    ``folder/test.parquet``); returns the formula."""
    from gmenn_formula.simulation import paper_scenario

    sim = paper_scenario(rows=rows, seed=0)
    data = sim.data.assign(p_true=list(sim.probabilities))
    test = np.random.default_rng(0).random(rows) < TEST_FRACTION
    (folder / "train").mkdir()
    for part, index in enumerate(np.array_split(np.flatnonzero(~test), FILES)):
        sim.data.iloc[index].to_parquet(folder / "train" / f"part{part}.parquet")
    data[test].to_parquet(folder / "test.parquet")
    return sim.formula


def _worker(formula: str, folder: Path, seed: int) -> None:
    """One process: fit the shards, write its seconds, rows and peak memory to ``folder``; rank 0
    also the summary, the variance components and the held-out AUC."""
    import pandas as pd

    from gmenn_formula.distributed.fit import fit_shards
    from gmenn_formula.distributed.group import ProcessGroup, stop
    from gmenn_formula.distributed.shards import shard_files
    from gmenn_formula.metrics import macro_auc

    group = ProcessGroup.from_environment()
    started = time.perf_counter()
    result = fit_shards(formula, folder / "train", family="categorical", seed=seed, verbose=0)
    seconds = time.perf_counter() - started
    rows = sum(len(pd.read_parquet(f, columns=["y"])) for f in shard_files(folder / "train", group))
    report = {"seconds": seconds, "rows": rows, "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if group.leader:
        test = pd.read_parquet(folder / "test.parquet")
        y = test["y"].to_numpy()
        report |= {
            "summary": str(result.summary()),
            "epochs": result.state.epochs,
            "best_epoch": result.state.best_epoch,
            "variances": result.varcorr()[["group", "term", "variance", "mcse"]].to_dict(orient="list"),
            "auc": macro_auc(y, result.predict(test).to_numpy()),
            "auc_ceiling": macro_auc(y, np.stack(test["p_true"].to_numpy())),
        }
    (folder / f"rank{group.rank}.json").write_text(json.dumps(report))
    stop()


def _launch(processes: int, formula: str, data: Path, seed: int) -> list[dict]:
    """Run the worker in ``processes`` processes under torchrun; each one's report."""
    out = data / f"p{processes}"
    out.mkdir()
    (out / "train").symlink_to(data / "train")
    (out / "test.parquet").symlink_to(data / "test.parquet")
    run_job(__file__, ["--worker", formula, str(out), "--seed", str(seed)], processes, threads=max(1, (os.cpu_count() or 2) // processes))
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000, help="simulated rows (a fifth held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("FORMULA", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker[0], Path(args.worker[1]), args.seed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        formula = _write_data(args.rows, data)
        print(f"Simulated the paper's base scenario ({args.rows} rows, {TEST_FRACTION:.0%} held out) into {FILES} Parquet files.\nFormula: {formula}\n")
        reports = {p: _launch(p, formula, data, args.seed) for p in (2, 1)}
    print("The 2-process fit (rank 0's result; each process held only its files' rows):\n")
    print(reports[2][0]["summary"])
    factors = sorted(set(reports[1][0]["variances"]["group"]))
    print("\nVariances: the mean over the 5 classes per factor.\n")
    print("| processes | seconds | epochs (best) | rows per process | peak GB per process | " + " | ".join(factors) + " | variance MAE | held-out AUC |")
    print("|---" * (7 + len(factors)) + "|")
    for p, ranks in sorted(reports.items()):
        lead = ranks[0]
        groups, variances = np.array(lead["variances"]["group"]), np.array(lead["variances"]["variance"])
        means = [f"{variances[groups == g].mean():.3f}" for g in factors]
        error = np.mean(np.abs(variances - np.array([TRUE_VARIANCES[g] for g in groups])))
        memory = ", ".join(f"{r['peak_gb']:.2f}" for r in ranks)
        rows = ", ".join(str(r["rows"]) for r in ranks)
        print(f"| {p} | {lead['seconds']:.0f} | {lead['epochs']} ({lead['best_epoch']}) | {rows} | {memory} | " + " | ".join(means) + f" | {error:.3f} | {lead['auc']:.3f} |")
    print(f"\nTrue variances: g0 1e-4 (1000 levels), g1 .5 (10 levels), g2 .5 (1000 levels); AUC of the true probabilities {reports[1][0]['auc_ceiling']:.3f}.")
    print("Both processes share this machine's cores, so 2 processes are not faster here (docs/distributed.md).")


if __name__ == "__main__":
    main()
