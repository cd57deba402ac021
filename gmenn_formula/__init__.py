"""gmenn-formula: lme4-style formulas with neural networks, fitted by Monte Carlo EM.

Stages: ``parse`` (formula text -> Formula), ``design`` (Formula + DataFrame ->
Design arrays), the engine (Monte Carlo EM), and the results. Importing the
package loads the formula and design stages only; the results (torch) load with
the first ``gmenn()``, ``load()`` or ``GMENN``, the engine (PyMC, PyTensor, JAX)
with the first fit, so that loading a model and predicting need neither PyMC nor JAX.
"""

import importlib
import warnings

# We run PyTensor through JAX: its C-backend BLAS notice does not apply to us.
warnings.filterwarnings("ignore", message="PyTensor could not link to a BLAS", category=UserWarning)

from gmenn_formula.errors import GmennError  # noqa: E402
from gmenn_formula.formula import parse  # noqa: E402

# The function shadows the subpackage of the same name on purpose: gmenn_formula.design(formula, data).
from gmenn_formula.design import Design, DesignSpec, design  # noqa: E402  isort: skip

from gmenn_formula.training.config import FitConfig  # noqa: E402  isort: skip
from gmenn_formula.training.interrupts import deferred_interrupts, raise_if_interrupted  # noqa: E402  isort: skip

_LAZY = {
    "gmenn": "gmenn_formula.api",
    "load": "gmenn_formula.results.result",
    "GmennResult": "gmenn_formula.results.result",
    "GMENN": "gmenn_formula.estimator",
    "anova": "gmenn_formula.results.anova",
    "fit_shards": "gmenn_formula.distributed.fit",
}


def __getattr__(name: str):
    if name in _LAZY:
        # Ctrl-C waits for the import: one raised inside a C++ callback of torch's import aborts the process
        with deferred_interrupts():
            module = importlib.import_module(_LAZY[name])
            raise_if_interrupted()
        return getattr(module, name)
    raise AttributeError(f"module 'gmenn_formula' has no attribute {name!r}")


__all__ = ["GMENN", "Design", "DesignSpec", "FitConfig", "GmennError", "GmennResult", "anova", "design", "fit_shards", "gmenn", "load", "parse"]
__version__ = "0.1.0"
