"""The fitted model: lme4's verbs on a Design and the engine's FitState.

One :class:`GmennResult` serves a fit and a model read back with :func:`load`. A loaded
model has no training rows (its design holds the encodings and no data): it predicts and
simulates on new data and gives every table, while verbs that need the fitting rows
(``fitted()``, ``residuals()``, verbs without ``newdata``) raise NoTrainingDataError; its
summary's scaled residuals and log-likelihood are the ones stored in the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from gmenn_formula.design import Design
from gmenn_formula.errors import DataError, NoTrainingDataError
from gmenn_formula.results import PREDICT_TYPES, io, tables
from gmenn_formula.results.likelihood import LogLik, marginal_loglik
from gmenn_formula.results.state import FitState
from gmenn_formula.results.status import convergence_status

PREDICT_CHUNK = 65_536
"""Rows per forward pass of the networks at prediction time."""

NO_ROWS = "This model keeps no training rows (it was loaded from a file, or fit by processes that each held a shard of them)"
DEFAULT_LOGLIK = ("auto", None, None)
"""The arguments of ``loglik()`` whose value a model file stores."""


class GmennResult:
    """A fitted generalized mixed effects neural network.

    Tables: :meth:`varcorr`, :meth:`fixef`, :meth:`ranef`, :meth:`coef`,
    :meth:`ngrps`, :attr:`history`; fit criteria: :meth:`loglik`,
    :meth:`aic`, :meth:`bic`; prediction: :meth:`predict`,
    :meth:`fitted`, :meth:`residuals`; printing: :meth:`summary`.
    ``scaled_residuals`` and ``logliks`` (keyed by loglik()'s arguments) are given
    for a model read from a file, which has no training rows to compute them on.
    """

    def __init__(
        self,
        design: Design,
        state: FitState,
        scaled_residuals: pd.DataFrame | None = None,
        logliks: dict[tuple, LogLik] | None = None,
    ) -> None:
        self.design = design
        self.state = state
        self.spec = design.spec
        self.formula = design.spec.formula
        self.family = design.family
        self._scaled_residuals = scaled_residuals
        self._logliks: dict[tuple, LogLik] = dict(logliks or {})

    @property
    def has_training_rows(self) -> bool:
        """False for a model read from a file or fit by several processes (each held a shard)."""
        return self.design.response is not None

    # -- tables -------------------------------------------------------------
    @property
    def interrupted(self) -> bool:
        """True when Ctrl-C ended the fit early: its estimates are those of the last epoch (see ``state.messages``)."""
        return self.state.interrupted

    @property
    def status(self) -> str:
        """The convergence status in one line: "converged in N epochs", "boundary (singular):
        variance of g (Intercept) near 0", "interrupted after epoch N: ...", "not converged: ..."."""
        return convergence_status(self.design, self.state)

    @property
    def nobs(self) -> int:
        """Rows used in the fit (after dropping missing values)."""
        return self.state.nobs

    def varcorr(self) -> pd.DataFrame:
        return tables.varcorr(self.design, self.state)

    def fixef(self) -> pd.DataFrame:
        return tables.fixef(self.design, self.state)

    def ranef(self, cond_var: bool = True) -> dict[str, pd.DataFrame]:
        return tables.ranef(self.design, self.state, cond_var)

    def ngrps(self) -> pd.Series:
        return tables.ngrps(self.design)

    @property
    def history(self) -> pd.DataFrame:
        return tables.history(self.state, self.design)

    def coef(self) -> dict[str, pd.DataFrame]:
        """Per grouping factor: random effect mean plus the matching linear fixed effect (0 if none)."""
        fixed = self.fixef()
        key = ["term", "class"] if "class" in fixed else ["term"]
        result = {}
        for name, frame in self.ranef(cond_var=False).items():
            merged = frame.merge(fixed, on=key, how="left")
            merged["estimate"] = merged["mean"] + merged["estimate"].fillna(0.0)
            result[name] = merged.drop(columns="mean")
        return result

    # -- fit criteria ---------------------------------------------------------
    def loglik(self, method: str = "auto", draws: int | None = None, seed: int | None = None) -> LogLik:
        """Marginal log-likelihood of the fitting rows: log p(y | fitted fixed part, covariances),
        the random effects integrated out, the network output F held fixed.

        Estimator (``method="auto"``): exact for gaussian (closed form; crossed
        factors up to a size limit); importance sampling per level when every
        random term shares one grouping factor (accurate); joint importance
        sampling over all effects for crossed factors (high variance with many
        levels: read ``.se`` and ``.ess``). Returns a :class:`LogLik`, a float
        carrying ``se`` (Monte Carlo standard error, 0 when exact), ``method``,
        ``df``, ``nobs``, ``ess``. ``draws``: importance draws per estimate;
        ``seed``: their seed (None: the fit's). Cached per argument set.
        Details: :mod:`gmenn_formula.results.likelihood`.
        """
        key = (method, draws, seed)
        if key not in self._logliks:
            if not self.has_training_rows:
                stored = DEFAULT_LOGLIK in self._logliks
                raise NoTrainingDataError(
                    f"{NO_ROWS}; the log-likelihood "
                    + ("is stored only for the default loglik() arguments." if stored else "was not stored in it (an older file).")
                )
            F = self._linear_predictor(self.design, include_random=False)
            seed = self.state.config.runtime.seed if seed is None else seed
            self._logliks[key] = marginal_loglik(self.design, self.state, F, method, draws, seed)
        return self._logliks[key]

    def confint(self, parm: str | list[str] | None = None, level: float = 0.95, method: str = "wald", **options):
        """Confidence intervals of the random effects' sds and correlations, sigma and the linear
        fixed effects, as lme4's ``confint()``: ``method`` "wald" (observed information by Louis'
        method from ``draws`` posterior draws) or "boot" (parametric bootstrap of ``nsim`` refits);
        ``parm`` None (all), "theta_", "beta_" or names; ``options``: draws, nsim, seed, data (the
        fitting rows, for a loaded model), progress, n_jobs (bootstrap worker processes; -1: one
        per core). Networks are held at their fitted weights.
        Returns a :class:`~gmenn_formula.results.confint.ConfInt` (``.table``, printed with its method)."""
        from gmenn_formula.results.confint import confint

        return confint(self, parm, level, method, **options)

    def aic(self, **kwargs) -> float:
        """-2 logLik + 2 df (df as lme4 counts, plus the networks' weights); ``kwargs`` go to :meth:`loglik`."""
        return self.loglik(**kwargs).aic

    def bic(self, **kwargs) -> float:
        """-2 logLik + df log(nobs); ``kwargs`` go to :meth:`loglik`."""
        return self.loglik(**kwargs).bic

    # -- prediction ---------------------------------------------------------
    def _design_for(
        self, newdata: pd.DataFrame | None, allow_new_levels: bool, with_random_effects: bool = True, predicting: bool = False
    ) -> Design:
        """The fitting design, or ``newdata``'s; ``with_random_effects=False``: unseen levels do not matter;
        ``predicting``: the response is not read and rows with missing values are marked, not dropped
        (``Design.kept``)."""
        if newdata is not None:
            return self.spec.apply(
                newdata,
                response=False if predicting else None,
                allow_new_levels=allow_new_levels,
                na_action="pass" if predicting else "omit",
                with_random_effects=with_random_effects,
            )
        if not self.has_training_rows:
            raise NoTrainingDataError(
                f"{NO_ROWS}, so fitted values, "
                "residuals and predictions without newdata are unavailable; pass newdata= (e.g. the training data frame)."
            )
        return self.design

    def _linear_predictor(self, design: Design, include_random: bool) -> np.ndarray:
        """(n, c) eta on a design; levels unseen in training get 0."""
        model = self.state.model.eval()
        parts = []
        with torch.no_grad():
            for start in range(0, design.num_rows, PREDICT_CHUNK):
                rows = slice(start, start + PREDICT_CHUNK)
                X_networks = [torch.as_tensor(X[rows], dtype=torch.float32) for X in design.X_networks]
                X_fixed = torch.as_tensor(design.X_fixed[rows], dtype=torch.float32)
                offset = torch.as_tensor(design.offset[rows], dtype=torch.float32)
                parts.append(model(X_networks, X_fixed, offset).numpy().astype(np.float64))
        eta = np.concatenate(parts) if parts else np.zeros((0, self.state.num_outputs))
        if include_random:
            for r, mean in zip(design.random, self.state.effect_mean):
                padded = np.concatenate([mean, np.zeros((1, *mean.shape[1:]))])  # code -1 -> zero row
                eta += np.einsum("np,npc->nc", r.Z, padded[r.codes])
        return eta

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        type: str = "response",
        re_form: str | None = None,
        allow_new_levels: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """Predictions for ``newdata`` (None: the fitting rows): (n,) array, or an (n, c) DataFrame
        indexed like ``newdata`` for several outputs.

        ``type``: "link" (eta), "response" (mean, or class probabilities as a
        DataFrame for categorical), "class" (most probable class label; categorical
        and binomial). ``re_form``: None includes the random effects, "~0" or
        "NA" the population level only. Unseen levels get effect 0 (lme4's
        ``allow.new.levels``); with ``allow_new_levels=False`` they raise NewLevelError.
        With ``re_form="~0"`` no random effect is used, so unseen levels are
        neither warned about nor refused. Every row of ``newdata`` gets a prediction,
        NaN for rows with a missing predictor (lme4's ``na.pass``; a MissingValueWarning
        counts them); the response columns are not read.
        """
        if type not in PREDICT_TYPES:
            raise DataError(f"type must be one of {PREDICT_TYPES}, not {type!r}.")
        if re_form not in (None, "~0", "~ 0", "NA"):
            raise DataError(f"re_form must be None (all random effects) or '~0' (none), not {re_form!r}.")
        design = self._design_for(newdata, allow_new_levels, with_random_effects=re_form is None, predicting=True)
        eta = self._linear_predictor(design, include_random=re_form is None)
        if type == "link":
            values = eta if eta.shape[1] > 1 else eta[:, 0]
        else:
            mean = self.family.mean(eta)
            values = self.spec.response.decode(self.family.predict_class(mean)) if type == "class" else mean
        if newdata is not None:
            values = _every_row(values, design.kept)
        if values.ndim == 1:
            return values
        names = self.family.output_names(self.spec.response.classes)
        return pd.DataFrame(values, index=design.rows if newdata is None else newdata.index, columns=names)

    def refit_effects(self, newdata: pd.DataFrame, draws: int = 200, seed: int | None = None) -> GmennResult:
        """A result that also knows the grouping levels first seen in ``newdata`` (which needs the
        response): their effects from an E-step on those rows with the networks, fixed effects,
        covariances and the known levels' effects held as fitted; no retraining. ``predict()`` on
        the result uses them. Details: :mod:`gmenn_formula.results.refit`."""
        from gmenn_formula.results.refit import refit_effects

        return refit_effects(self, newdata, draws, seed)

    def fitted(self) -> np.ndarray | pd.DataFrame:
        """Fitted means on the fitting rows (random effects included)."""
        return self.predict()

    def residuals(self, type: str = "pearson") -> np.ndarray:
        """Residuals of the fitting rows: "response" (y - mean) or "pearson" (scaled by the family's sd).

        Binomial residuals are on the proportion scale; categorical fits have none.
        """
        if type not in ("pearson", "response"):
            raise DataError(f"type must be 'pearson' or 'response', not {type!r}.")
        family = self.family
        if not family.has_residuals:
            raise DataError(f"Residuals are not defined for the {family.name} family; use predict(type='response').")
        response = self._design_for(None, True).response
        mean = self.fitted()
        raw = family.observed(response.y, response.trials) - mean
        if type == "response":
            return raw
        return raw / np.sqrt(np.maximum(family.variance(mean, response.trials, self.state.dispersion), 1e-12))

    def scaled_residuals(self) -> pd.DataFrame | None:
        """Quantiles (Min, 1Q, Median, 3Q, Max) of the Pearson residuals as the summary prints them;
        None for a family without residuals."""
        if self._scaled_residuals is not None or not self.family.has_residuals or not self.has_training_rows:
            return self._scaled_residuals
        quantiles = np.quantile(self.residuals("pearson"), [0, 0.25, 0.5, 0.75, 1.0])
        return pd.DataFrame([[f"{q:.4f}" for q in quantiles]], columns=["Min", "1Q", "Median", "3Q", "Max"])

    # -- printing -----------------------------------------------------------
    def summary(self):
        """An lme4-style summary; ``print()`` it, or let a notebook render it."""
        from gmenn_formula.results.summary import Summary

        return Summary(self)

    def __repr__(self) -> str:
        return str(self.summary())

    # -- simulation, export, plots ------------------------------------------------
    def simulate(
        self,
        nsim: int = 1,
        seed: int | None = None,
        newdata: pd.DataFrame | None = None,
        re_form: str | None = "~0",
    ) -> pd.DataFrame:
        """Responses drawn from the fitted model, as lme4's ``simulate()``: columns sim_1..sim_nsim.

        ``re_form="~0"`` (or "NA"; lme4's default): new random effects for every
        level drawn from the fitted covariances. ``re_form=None``: conditional
        on the fitted effects (posterior means); levels unseen in training get
        a new draw. See :func:`gmenn_formula.results.simulate.simulate`.
        """
        from gmenn_formula.results.simulate import simulate

        return simulate(self, nsim, seed, newdata, re_form)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model to one file (``.gmenn``); read it back with :func:`load`.

        Raises UnsupportedSaveError, before writing anything, when the model holds an
        encoding the format cannot represent (e.g. a ``cr()`` spline)."""
        loglik = self.summary().loglik()
        return io.write_model(Path(path), self.design, self.state, self.scaled_residuals(), loglik)

    def to_inference_data(self):
        """An ArviZ InferenceData of the final phase's random-effect draws and sampler statistics."""
        from gmenn_formula.results.inference_data import to_inference_data

        return to_inference_data(self)

    def partial_dependence(self, features, data: pd.DataFrame, groups=None, grid_points: int = 20, seed: int = 0) -> pd.DataFrame:
        """Tidy partial dependence of the prediction on each of ``features`` over the rows of ``data``:
        population level and, for ``groups`` ({factor: [levels]}), with those levels' effects.
        Details: :func:`gmenn_formula.results.explain.partial_dependence`."""
        from gmenn_formula.results.explain import partial_dependence

        return partial_dependence(self, features, data, groups, grid_points, seed)

    def permutation_importance(self, data: pd.DataFrame, features=None, n_repeats: int = 5, seed: int = 0) -> pd.DataFrame:
        """Rise of the NLL per row of ``data`` (with its response; held-out rows) when each of
        ``features`` (default: the nn() inputs) is shuffled, most important first.
        Details: :func:`gmenn_formula.results.explain.permutation_importance`."""
        from gmenn_formula.results.explain import permutation_importance

        return permutation_importance(self, data, features, n_repeats, seed)

    def plot_effects(self, feature: str, data: pd.DataFrame, groups=None, **kwargs):
        """Line plot of :meth:`partial_dependence` on ``feature`` (one line per curve and class); returns the Axes."""
        from gmenn_formula.results.plots import plot_partial_dependence

        return plot_partial_dependence(self.partial_dependence(feature, data, groups), **kwargs)

    def plot_ranef(self, group: str | None = None, **kwargs):
        """Caterpillar plot of the random effects (mean +- 1.96 sd); see :func:`gmenn_formula.results.plots.plot_ranef`."""
        from gmenn_formula.results.plots import plot_ranef

        return plot_ranef(self, group, **kwargs)

    def plot_history(self, **kwargs):
        """Training and validation loss per epoch; see :func:`gmenn_formula.results.plots.plot_history`."""
        from gmenn_formula.results.plots import plot_history

        return plot_history(self, **kwargs)

    def plot_variances(self, **kwargs):
        """Variance-component trajectories per epoch; see :func:`gmenn_formula.results.plots.plot_variances`."""
        from gmenn_formula.results.plots import plot_variances

        return plot_variances(self, **kwargs)


def _every_row(values: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """(N, ...) values for every row of the data from the (n, ...) values of its ``kept`` (N,)
    rows; NaN for the other rows (object arrays keep their labels, numbers become floats)."""
    if kept.all():
        return values
    full = np.full((len(kept), *values.shape[1:]), np.nan, dtype=object if values.dtype == object else np.float64)
    full[kept] = values
    return full


def load(path: str | os.PathLike, nets: Mapping | None = None) -> GmennResult:
    """Read a model written by :meth:`GmennResult.save` (see :mod:`gmenn_formula.results.io`).

    ``nets``: the user networks the formula names (``nn(..., net="name")``), as given to
    ``gmenn()``; modules are copied, never modified. Raises ModelFileError (missing,
    corrupt or foreign file, or one that does not hold together), ModelVersionError
    (format version not readable here), MissingNetworkError.
    """
    saved = io.read_model(Path(path), nets)
    logliks = {} if saved.loglik is None else {DEFAULT_LOGLIK: saved.loglik}
    return GmennResult(saved.design, saved.state, saved.scaled_residuals, logliks)
