"""gmenn-formula: lme4-style formulas with neural networks, fitted by Monte Carlo EM.

Stages: ``parse`` (formula text -> Formula), ``design`` (Formula + DataFrame ->
Design arrays), the engine (Monte Carlo EM), and the results.
"""

import os
import warnings

# Both settings must be in place before anything starts JAX's backend; values the user set win.
# JAX takes 75% of a GPU's memory when its backend starts, and torch trains the network on the same GPU:
# allocate on demand instead.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# XLA's concurrency-optimized CPU scheduler deadlocks on the E-step of ~300,000 random effects (three
# factors of 20,000 levels and 5 classes: the first draw never returned, no CPU in use); without it the
# same fit runs, and smaller E-steps are as fast (0.078 s vs 0.080 s per draw at 100,000 rows).
XLA_CPU_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"
if "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_CPU_SCHEDULER_FLAG}".strip()

# We run PyTensor through JAX: its C-backend BLAS notice does not apply to us.
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)

from gmenn_formula.errors import GmennError  # noqa: E402
from gmenn_formula.formula import parse

# The function shadows the subpackage of the same name on purpose: gmenn_formula.design(formula, data).
from gmenn_formula.design import Design, DesignSpec, design  # noqa: E402  isort: skip

from gmenn_formula.api import gmenn  # noqa: E402  isort: skip
from gmenn_formula.results.result import GmennResult  # noqa: E402  isort: skip
from gmenn_formula.results.io import load  # noqa: E402  isort: skip
from gmenn_formula.training.config import FitConfig  # noqa: E402  isort: skip
from gmenn_formula.estimator import GMENN  # noqa: E402  isort: skip

__all__ = ["GMENN", "Design", "DesignSpec", "FitConfig", "GmennError", "GmennResult", "design", "gmenn", "load", "parse"]
__version__ = "0.1.0"
