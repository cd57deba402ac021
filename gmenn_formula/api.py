"""The verbs a user calls: ``gmenn()`` fits a model and returns a :class:`GmennResult`;
``load()`` reads one back (:func:`gmenn_formula.results.result.load`)."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from gmenn_formula.design import design as build_design
from gmenn_formula.errors import DataTypeError, EStepTimeoutError
from gmenn_formula.formula import Formula
from gmenn_formula.results.result import GmennResult, load
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.progress import ProgressBar

__all__ = ["gmenn", "load"]


def gmenn(
    formula: str | Formula,
    data: pd.DataFrame,
    family: str | None = None,
    nets: Mapping | None = None,
    na_action: str = "omit",
    **control,
) -> GmennResult:
    """Fit a generalized mixed effects neural network by Monte Carlo EM.

    ``formula``: lme4 syntax with ``nn(...)`` terms, e.g.
    ``"y ~ nn(x1 + x2) + (1 | g)"``. ``family``: "gaussian" (default),
    "binomial" (default for ``cbind()``), "poisson" or "categorical".
    ``nets``: user torch modules (or factories ``(inputs, outputs) -> Module``)
    by the name used in ``nn(..., net="name")``. ``control``: the flat settings of
    :class:`~gmenn_formula.training.config.FitConfig` (epochs, batch_size,
    learning_rate, draws, burn_in, sampler, penalty, patience,
    validation_fraction, seed, device, verbose, ...), all checked before anything
    else is done. ``data`` is not modified. Ctrl-C during the fit returns the fit so far,
    flagged ``interrupted`` (its estimates are the last epoch's; see ``summary()``), once at
    least one epoch has finished; a second Ctrl-C aborts. An E-step call that runs past
    ``estep_timeout`` raises EStepTimeoutError with the fit so far in its ``result``.
    """
    if not isinstance(data, pd.DataFrame):
        raise DataTypeError(f"data must be a pandas DataFrame, not {type(data).__name__}; wrap it with pandas.DataFrame(...).")
    config = FitConfig.from_control(**control)
    fitted_design = build_design(formula, data, family=family, na_action=na_action)
    from gmenn_formula.training.fit import fit_design  # the engine (PyMC, PyTensor, JAX) loads on the first fit

    with ProgressBar(enabled=config.runtime.verbose > 0) as bar:
        try:
            state = fit_design(fitted_design, config, nets=nets, progress=bar.update)
        except EStepTimeoutError as error:
            if error.state is not None:
                error.result = GmennResult(fitted_design, error.state)
            raise
    return GmennResult(fitted_design, state)
