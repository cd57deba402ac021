"""One exception hierarchy for everything a user can get wrong.

Every error raised for a user mistake derives from :class:`GmennError`. Each
subclass also inherits the builtin a caller would catch by habit
(``ValueError``, ``TypeError``, ``KeyError``), so ``except ValueError`` keeps
working. Messages name the offending token, column or level and say what to do.
"""

from __future__ import annotations


class GmennError(Exception):
    """Root of every gmenn-formula error."""


class FormulaSyntaxError(GmennError, ValueError):
    """The formula text is not valid in the formula language.

    Attributes: ``formula`` (the text), ``position`` (0-based character offset
    of the offending token), ``expected`` (what would have been accepted).
    The message shows the formula with a caret under the offending token.
    """

    def __init__(self, message: str, formula: str, position: int, expected: str = "") -> None:
        self.formula = formula
        self.position = position
        self.expected = expected
        self.reason = message
        super().__init__(self._render())

    def _render(self) -> str:
        caret = " " * max(self.position, 0) + "^"
        text = f"{self.reason}\n  {self.formula}\n  {caret}"
        if self.expected:
            text += f"\nExpected {self.expected}."
        return text


class FamilyError(GmennError, ValueError):
    """The family is not one of gaussian, binomial, poisson, categorical."""


class NetworkError(GmennError, ValueError):
    """A user network for ``nn(..., net=...)`` is missing or does not fit its inputs/outputs."""


class ModelSpecificationError(GmennError, ValueError):
    """The formula cannot be fitted as written (e.g. it has no random-effect term)."""


class ControlError(GmennError, ValueError):
    """A fit setting (``**control``) is unknown or out of range."""


class DataError(GmennError, ValueError):
    """The data does not fit the formula (base for data mistakes)."""


class DataTypeError(GmennError, TypeError):
    """``data`` is not a pandas DataFrame (or another argument has the wrong type)."""


class EmptyDataError(DataError):
    """The data frame has no rows (before or after dropping missing values)."""


class ColumnNotFoundError(DataError, KeyError):
    """A column named in the formula is not in the data frame."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class GroupingFactorError(DataError):
    """A grouping factor cannot carry a random effect (e.g. it has one level)."""


class ResponseError(DataError):
    """The response does not suit the family (e.g. continuous values for a categorical family)."""


class MissingValueError(DataError):
    """Rows with missing values where ``na_action="raise"`` was asked for."""


class NewLevelError(DataError):
    """New data holds grouping levels unseen in training and ``allow_new_levels=False``."""


class ConvergenceError(GmennError, RuntimeError):
    """A fit diverged (non-finite losses or parameters) and could not recover; the message says why."""


class GmennWarning(UserWarning):
    """Root of the warnings gmenn-formula gives."""


class ConvergenceWarning(GmennWarning):
    """A fit ended without meeting its convergence rules (lme4's convergence warnings); the
    reasons are in ``summary()`` and ``fit.state.messages``."""


class MonteCarloWarning(GmennWarning):
    """A result that rests on a Monte Carlo estimate is uncertain enough to matter (e.g. a
    likelihood-ratio p-value on either side of 0.05 within two Monte Carlo standard errors)."""


class MissingValueWarning(UserWarning):
    """Rows with missing values were dropped (lme4's ``na.omit``), or predicted as NaN (``na.pass``)."""


class ScaleWarning(GmennWarning):
    """A column of the fixed part, the ``nn()`` inputs or the random slopes is on an extreme scale
    (values beyond 1e8): the engine computes in float32; ``scale()`` the column."""


class NewLevelWarning(UserWarning):
    """New data holds grouping levels unseen in training; they get no random effect."""


class ModelFileError(GmennError, ValueError):
    """A saved model file is missing, corrupt, or not a gmenn-formula model."""


class ModelVersionError(ModelFileError):
    """A saved model file has a format version this version of gmenn-formula cannot read."""


class UnsupportedSaveError(GmennError, ValueError):
    """A fitted model holds something the model file format cannot represent (e.g. a cr() spline)."""


class MissingNetworkError(NetworkError):
    """A saved model uses ``nn(..., net="name")`` and ``load()`` was not given that network."""


class NoTrainingDataError(GmennError, ValueError):
    """A verb needs the training rows, which a model loaded from a file (or fit by several processes) does not keep."""


class NotFittedError(GmennError, ValueError, AttributeError):
    """A ``GMENN`` estimator was asked to predict before ``fit`` (as scikit-learn's NotFittedError)."""


class EStepTimeoutError(GmennError, TimeoutError):
    """An E-step call ran past its time bound (``estep_timeout``): the sampler is stuck, or far
    slower than the bound allows. ``result``: the fit so far as a GmennResult flagged
    interrupted (None when no epoch had finished), built from ``state`` (its FitState);
    ``seconds``: the bound that was passed."""

    def __init__(self, message: str, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds
        self.state = None
        self.result = None


class DistributedError(GmennError, RuntimeError):
    """A data-parallel fit cannot start or its processes disagree (launch, shards, levels)."""


class ModelComparisonError(GmennError, ValueError):
    """Fits given to ``anova()`` cannot be compared (other rows, response or family)."""
