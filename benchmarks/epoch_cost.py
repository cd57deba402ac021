"""Cost of one MC-GMENN training epoch against an epoch of the same network ignoring the factors.

The paper's base scenario (5 classes, 10 features, factors of 1,000, 10 and
1,000 levels, variances 1e-4, .5, .5) at ROWS rows (default 100,000): both
methods train the paper's MLP (100-50-25-12, dropout .25) with the same batch
size, on the same machine, in the same run. An MC-GMENN epoch is the wall time
between two epochs of a real fit (E-step, M-step, validation); an Ignore
epoch is one pass of minibatch Adam over the same rows. Prints a Markdown
table: seconds per epoch, the ratio (issue target: at most 1.2) and the
E-step share. Run: ``make bench`` or ``python benchmarks/epoch_cost.py [ROWS] [BATCH]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import gmenn_formula as gf
from gmenn_formula.families import get_family
from gmenn_formula.mstep.networks import DEFAULT_DROPOUT, DEFAULT_HIDDEN, FixedPart, mlp
from gmenn_formula.mstep.step import Rows, train_epoch
from gmenn_formula.simulation import simulate
from gmenn_formula.training.em import fit_design

EPOCHS = 8


def ignore_epoch_seconds(design, batch_size: int) -> float:
    """Mean seconds of an Adam epoch of the same MLP without random effects (first epoch dropped),
    on as many rows as the fit trains on (it holds out the validation fraction)."""
    n = int(round(design.num_rows * (1 - gf.FitConfig().validation_fraction)))
    X = torch.as_tensor(design.X_networks[0][:n], dtype=torch.float32)
    rows = Rows((X,), torch.zeros(n, 0), torch.zeros(n), torch.as_tensor(design.response.y[:n]), torch.ones(n), (), ())
    model = FixedPart([mlp(X.shape[1], 5, DEFAULT_HIDDEN, DEFAULT_DROPOUT, "relu")], 0, 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        train_epoch(model, optimizer, get_family("categorical"), rows, None, 1.0, batch_size, generator)
        times.append(time.perf_counter() - start)
    return float(np.mean(times[1:]))


def gmenn_epoch_seconds(design, batch_size: int) -> tuple[float, float]:
    """Mean wall seconds per training epoch of a real fit and the E-step's share of it."""
    stamps: list[float] = []
    config = gf.FitConfig(epochs=EPOCHS, patience=EPOCHS, final_epochs=1, average_epochs=1, batch_size=batch_size, verbose=0)
    state = fit_design(design, config, progress=lambda entry: stamps.append(time.perf_counter()))
    train = [h for h in state.history if h["phase"] == "train"]
    per_epoch = float(np.mean(np.diff(stamps[: len(train)])))
    estep = float(np.mean([h["estep_seconds"] for h in train[1:]]))
    return per_epoch, estep / per_epoch


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    batch_sizes = [int(sys.argv[2])] if len(sys.argv) > 2 else [100, 512]
    sim = simulate(rows=rows, seed=0)
    design = gf.design(sim.formula, sim.data, family="categorical")
    print(f"Base scenario, {rows:,} rows, {torch.get_num_threads()} torch threads")
    print("| batch | Ignore s/epoch | MC-GMENN s/epoch | ratio | E-step share |")
    print("|---|---|---|---|---|")
    for batch in batch_sizes:
        ignore = ignore_epoch_seconds(design, batch)
        gmenn, share = gmenn_epoch_seconds(design, batch)
        print(f"| {batch} | {ignore:.2f} | {gmenn:.2f} | {gmenn / ignore:.2f} | {share:.0%} |")


if __name__ == "__main__":
    main()
