"""Importing the package prepares JAX's environment: on-demand GPU memory beside torch, and the XLA CPU
scheduler flag without which large E-steps deadlock. Values the user set are left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import gmenn_formula as gf
from gmenn_formula.simulation import simulate

SHOW = "import os, gmenn_formula; print(os.environ['XLA_FLAGS']); print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])"


def _environment_after_import(**variables: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE")} | variables
    result = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
    return result.stdout.split("\n")[:2]


def test_import_sets_the_xla_flags_it_needs():
    """(PyMC's JAX module adds a flag of its own, --xla_force_host_platform_device_count=100.)"""
    flags, preallocate = _environment_after_import()
    assert gf.XLA_CPU_SCHEDULER_FLAG in flags.split() and preallocate == "false"
    flags, preallocate = _environment_after_import(XLA_FLAGS="--xla_dump_to=/tmp/x", XLA_PYTHON_CLIENT_PREALLOCATE="true")
    assert {"--xla_dump_to=/tmp/x", gf.XLA_CPU_SCHEDULER_FLAG} <= set(flags.split()) and preallocate == "true"
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    flags, _ = _environment_after_import(XLA_FLAGS=mine)
    assert mine in flags.split() and gf.XLA_CPU_SCHEDULER_FLAG not in flags.split()


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_factors_of_20000_levels_do_not_deadlock_the_e_step():
    """~300,000 random effects (3 x 20,000 levels x 5 classes): XLA's default CPU scheduler hung here."""
    sim = simulate(rows=20_000, levels=(20_000,) * 3, variances=(1e-4, 0.5, 0.5), seed=0)
    fit = gf.gmenn(sim.formula, sim.data, family="categorical", epochs=2, final_epochs=1, average_epochs=1,
                   max_average_epochs=1, verbose=0)
    assert fit.history["phase"].tolist() == ["train", "train", "em", "average"]
