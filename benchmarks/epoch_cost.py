"""Cost of one MC-GMENN training epoch against an epoch of the same network ignoring the factors.

The paper's base scenario (5 classes, 10 features, factors of 1,000, 10 and
1,000 levels, variances 1e-4, .5, .5) at ROWS rows (default 100,000): both
methods train the paper's MLP (100-50-25-12, dropout .25) with the same batch
size, on the same machine, in the same run. An MC-GMENN epoch is the wall time
of a training epoch of a real fit (``history["seconds"]``: F, E-step, M-step,
validation), with the E-step beside the M-step (``overlap_estep``, the
default) and in strict alternation (the paper's schedule); an Ignore epoch is
what an epoch of an Ignore fit costs: one pass of minibatch Adam over the same
rows plus the loss on its validation rows. Prints a Markdown table: seconds per
epoch, the ratio (issue target: at most 1.2), the sampler's seconds and how
long the training waited for them. Run: ``make bench-engine`` or
``python benchmarks/epoch_cost.py [ROWS] [BATCH]``.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import gmenn_formula as gf
from gmenn_formula.families import get_family
from gmenn_formula.mstep.networks import DEFAULT_DROPOUT, DEFAULT_HIDDEN, FixedPart, mlp
from gmenn_formula.mstep.step import Rows, expected_nll, train_epoch
from gmenn_formula.simulation import paper_scenario
from gmenn_formula.training.fit import fit_design

EPOCHS = 8
SKIPPED = 2
"""Epochs left out of the means: the first compiles the E-step, the second is the first overlapped one."""


def _rows(design, index: np.ndarray) -> Rows:
    X = torch.as_tensor(design.X_networks[0][index], dtype=torch.float32)
    n = len(index)
    return Rows((X,), torch.zeros(n, 0), torch.zeros(n), torch.as_tensor(design.response.y[index]), torch.ones(n), (), ())


def ignore_epoch_seconds(design, batch_size: int) -> float:
    """Mean seconds of an epoch of the same MLP without random effects (Adam over the fit's
    training share of the rows, then the validation loss on the rest), first epoch dropped."""
    n = int(round(design.num_rows * (1 - gf.FitConfig().training.validation_fraction)))
    train, validation = _rows(design, np.arange(n)), _rows(design, np.arange(n, design.num_rows))
    family = get_family("categorical")
    model = FixedPart([mlp(train.X_networks[0].shape[1], 5, DEFAULT_HIDDEN, DEFAULT_DROPOUT, "relu")], 0, 5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    times = []
    for _ in range(EPOCHS):
        start = time.perf_counter()
        train_epoch(model, optimizer, family, train, None, 1.0, batch_size, generator)
        model.eval()
        with torch.no_grad():
            expected_nll(family, model(list(validation.X_networks), validation.X_fixed, validation.offset), 0, validation, 1.0)
        times.append(time.perf_counter() - start)
    return float(np.mean(times[1:]))


def gmenn_epoch_seconds(design, batch_size: int, overlap: bool) -> tuple[float, float, float]:
    """Mean wall seconds per training epoch of a real fit, the sampler's seconds and the seconds the epoch waited for it."""
    config = gf.FitConfig.from_control(
        epochs=EPOCHS, patience=EPOCHS, final_epochs=1, average_epochs=1, max_average_epochs=1, batch_size=batch_size,
        overlap_estep=overlap, verbose=0,
    )
    state = fit_design(design, config)
    train = [h for h in state.history if h.phase == "train"][SKIPPED:]
    seconds = float(np.mean([h.seconds for h in train]))
    estep = float(np.mean([h.estep_seconds for h in train]))
    waited = float(np.mean([h.seconds - h.mstep_seconds for h in train]))
    return seconds, estep, waited


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    batch_sizes = [int(sys.argv[2])] if len(sys.argv) > 2 else [100, 512]
    sim = paper_scenario(rows=rows, seed=0)
    design = gf.design(sim.formula, sim.data, family="categorical")
    print(f"Base scenario, {rows:,} rows, {torch.get_num_threads()} torch threads")
    print("| batch | E-step | Ignore s/epoch | MC-GMENN s/epoch | ratio | sampler s/epoch | waited for it s/epoch |")
    print("|---|---|---|---|---|---|---|")
    for batch in batch_sizes:
        for overlap in (True, False):
            ignore = ignore_epoch_seconds(design, batch)
            gmenn, estep, waited = gmenn_epoch_seconds(design, batch, overlap)
            schedule = "beside the M-step" if overlap else "alternating (paper)"
            print(f"| {batch} | {schedule} | {ignore:.3f} | {gmenn:.3f} | {gmenn / ignore:.2f} | {estep:.3f} | {waited:.3f} |")


if __name__ == "__main__":
    main()
