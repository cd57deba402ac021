"""The E-step prepares JAX's environment when it is built: on-demand GPU memory beside torch, the XLA
CPU scheduler flag without which large E-steps deadlock, and no PyMC device count. Values the user set
are left alone; importing the package changes nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import gmenn_formula as gf
from gmenn_formula.estep.runtime import XLA_CPU_SCHEDULER_FLAG, XLA_DEFAULT_FLAGS
from gmenn_formula.simulation import paper_scenario

IMPORT_ONLY = "import os, gmenn_formula; print(os.environ.get('XLA_FLAGS', '')); print(os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE', ''))"
CONFIGURED = (
    "import os, gmenn_formula.estep.model; from gmenn_formula.estep.runtime import configure_jax; configure_jax(); "
    "print(os.environ['XLA_FLAGS']); print(os.environ['XLA_PYTHON_CLIENT_PREALLOCATE'])"
)


def _environment(code: str, **variables: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "XLA_PYTHON_CLIENT_PREALLOCATE")} | variables
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return result.stdout.split("\n")[:2]


def test_importing_the_package_leaves_the_environment_alone():
    assert _environment(IMPORT_ONLY) == ["", ""]


def test_importing_the_e_step_does_not_start_jax():
    """XLA reads its flags when JAX's backend starts: an import that started it (blackjax's does) left
    the E-step on XLA's defaults, whose NUTS leapfrog step cost 2x (1.2 against 0.55 ms, base scenario)."""
    code = (
        "import gmenn_formula.estep.driver, gmenn_formula.estep.sampler, gmenn_formula.estep.model, "
        "gmenn_formula.estep.precondition; from jax._src import xla_bridge; print(len(xla_bridge._backends))"
    )
    assert _environment(code)[0] == "0"


def test_the_e_step_sets_the_xla_flags_it_needs():
    """PyMC's JAX module adds --xla_force_host_platform_device_count=100 on import; the E-step drops it."""
    flags, preallocate = _environment(CONFIGURED)
    assert flags.split() == list(XLA_DEFAULT_FLAGS) and preallocate == "false"
    flags, preallocate = _environment(CONFIGURED, XLA_FLAGS="--xla_dump_to=/tmp/x", XLA_PYTHON_CLIENT_PREALLOCATE="true")
    assert flags.split() == ["--xla_dump_to=/tmp/x", *XLA_DEFAULT_FLAGS] and preallocate == "true"
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_force_host_platform_device_count=2"
    flags, _ = _environment(CONFIGURED, XLA_FLAGS=mine)
    assert set(flags.split()) == set(mine.split()) | set(XLA_DEFAULT_FLAGS[1:]) and XLA_CPU_SCHEDULER_FLAG not in flags


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_three_factors_of_20000_levels_do_not_deadlock_the_e_step():
    """~300,000 random effects (3 x 20,000 levels x 5 classes): XLA's default CPU scheduler hung here."""
    sim = paper_scenario(rows=20_000, levels=(20_000,) * 3, variances=(1e-4, 0.5, 0.5), seed=0)
    fit = gf.gmenn(sim.formula, sim.data, family="categorical", epochs=2, final_epochs=1, average_epochs=1,
                   max_average_epochs=1, verbose=0)
    assert fit.history["phase"].tolist() == ["train", "train", "em", "average"]


def test_a_cache_written_by_an_earlier_version_takes_new_entries_without_warnings(tmp_path):
    """Entries of JAX's persistent cache written without the time-stamp files that its size-limited
    (LRU) mode keeps beside each one made every later write fail with a UserWarning."""
    fit = (
        "import sys, warnings, numpy as np, pandas as pd, gmenn_formula as gf; warnings.simplefilter('ignore', gf.errors.ConvergenceWarning); "
        "n = int(sys.argv[1]); rng = np.random.default_rng(0); g = rng.integers(0, 8, n); "
        "gf.gmenn('y ~ 1 + (1 | g)', pd.DataFrame({'y': rng.poisson(2.0, n), 'g': g}), family='poisson', verbose=0, epochs=3, max_average_epochs=20)"
    )
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"XDG_CACHE_HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-c", fit, "200"], env=env, capture_output=True, text=True, check=True)
    for stamp in (tmp_path / "gmenn_formula" / "jax").glob("*-atime"):
        stamp.unlink()
    again = subprocess.run([sys.executable, "-c", fit, "300"], env=env, capture_output=True, text=True, check=True)
    assert "Error writing persistent compilation cache" not in again.stderr
