"""The family interface: one response distribution and its link, with all of its maths.

Each family gives its log-likelihood in every backend the package uses: a PyMC
distribution (the E-step model), a torch per-row negative log-likelihood (the
M-step loss), a numpy per-row log-likelihood (the marginal likelihood), the
Fisher information in numpy or JAX (``xp`` is the array module: the E-step's
preconditioner and the likelihood's proposals), and the mean, variance,
sampling and class prediction the results need. PyMC, JAX and torch are
imported only by the methods that use them: a loaded model predicts without
PyMC and JAX, and parsing and designing load none of them.

Shapes: ``eta`` (n, c) linear predictor, ``y`` (n,), ``trials`` (n,) (ones
unless binomial with trials), ``dispersion`` a float (the gaussian residual
variance; 1.0 for the other families).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from gmenn_formula.errors import DataError

if TYPE_CHECKING:
    import torch


class Family(ABC):
    """A response distribution with its link function."""

    name: str
    link: str
    has_dispersion: bool = False
    """True when the family has a residual variance estimated in the M-step (gaussian)."""
    shift_invariant: bool = False
    """True when adding one constant to every column of a row's eta leaves its likelihood
    unchanged (the softmax); the M-step then averages the random effects' second moments
    over that direction exactly (:func:`~gmenn_formula.mstep.moments.softmax_level_moments`)."""
    y_dtype: type = np.float64
    """dtype of the encoded response ``y``: class codes are integers, everything else floats."""
    classifier: bool = False
    """Whether the response is a class (binomial, categorical): predictions can be labels."""
    has_residuals: bool = True
    """Whether rows have a residual y - mean (not for class labels)."""

    def num_outputs(self, num_classes: int | None) -> int:
        """Columns c of the linear predictor: the classes for categorical, else 1."""
        return 1

    def output_names(self, classes: tuple | None) -> list:
        """Names of the c columns of eta: the class labels for categorical, else ``["eta"]``."""
        return ["eta"]

    # -- the distribution in each backend ---------------------------------------------------
    @abstractmethod
    def pymc_distribution(self, eta, trials, dispersion):
        """The response distribution of the n rows given ``eta`` (n, c) pytensor, unregistered
        (``Dist.dist(...)``): the E-step model weights its per-row log-probabilities."""

    def pymc_loglik(self, eta, y, trials, dispersion):
        """(n,) log-likelihood of each row given ``eta`` (n, c), pytensor, up to terms free of eta
        (what the E-step model weights and sums). By default the log-probability of
        :meth:`pymc_distribution`; families override it with the closed form of their canonical
        link, without the distribution's parameter checks and constants (``log C(n, y)``,
        ``log y!``) and without ``pm.Categorical``'s indexing, whose gradient is a scatter."""
        import pymc as pm

        return pm.logp(self.pymc_distribution(eta, trials, dispersion), y)

    @abstractmethod
    def torch_nll(self, eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, dispersion: float) -> torch.Tensor:
        """(n,) negative log-likelihood of each row, constants included; ``dispersion`` a float or a
        0-d tensor (to differentiate in it)."""

    @abstractmethod
    def torch_fisher_diagonal(self, eta: torch.Tensor, trials: torch.Tensor, dispersion: float) -> torch.Tensor:
        """(n, c) diagonal of each row's Fisher information in ``eta``; with these canonical
        links it equals the diagonal of the NLL's Hessian."""

    @abstractmethod
    def torch_nll_derivatives(
        self, eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, dispersion: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient (n, c) and Hessian (n, c, c) of each row's NLL in ``eta`` (n, c), in closed
        form (for these canonical links the Hessian is the Fisher information, free of y)."""

    def torch_nll_gradient(self, eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, dispersion: float) -> torch.Tensor:
        """Gradient (n, c) of each row's NLL in ``eta`` (n, c), in closed form, without the Hessian."""
        return self.torch_nll_derivatives(eta, y, trials, dispersion)[0]

    def torch_nll_hessian_sum(self, eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, dispersion: float) -> torch.Tensor:
        """(c, c) sum over the rows of each row's NLL Hessian in ``eta`` (n, c), in closed form."""
        return self.torch_nll_derivatives(eta, y, trials, dispersion)[1].sum(0)

    @abstractmethod
    def loglik(self, y: np.ndarray, eta: np.ndarray, trials: np.ndarray, dispersion: float) -> np.ndarray:
        """(..., n) log-likelihood of each row for eta (..., n, c), constants included (numpy)."""

    @abstractmethod
    def fisher(self, eta, trials, dispersion, xp: ModuleType = np):
        """(n, c, c) Fisher information of each row with respect to ``eta``, in array module
        ``xp`` (numpy, or ``jax.numpy`` inside the E-step)."""

    def fisher_rank_one(self, eta, trials, dispersion, xp: ModuleType = np):
        """(a, b), each (n, c), with each row's Fisher information ``diag(a_i) - b_i b_i^T``, or None
        where it has no such form. The E-step's whitening of many outputs uses it
        (:mod:`~gmenn_formula.estep.precondition`) instead of the (n, c, c) of :meth:`fisher`."""
        return None

    @abstractmethod
    def mean(self, eta, xp: ModuleType = np):
        """Response-scale prediction: (n,) for one output, (n, c) class probabilities for categorical."""

    # -- what the results need --------------------------------------------------------------
    @abstractmethod
    def sample(self, rng: np.random.Generator, eta: np.ndarray, trials: np.ndarray, dispersion: float) -> np.ndarray:
        """(..., n) responses drawn given eta (..., n, c): values, counts, successes or class codes."""

    @abstractmethod
    def variance(self, mean: np.ndarray, trials: np.ndarray, dispersion: float) -> np.ndarray:
        """(n,) variance of a row's response on the scale of :meth:`observed` (Pearson residuals);
        families without residuals (``has_residuals`` False) are never asked."""

    def observed(self, y: np.ndarray, trials: np.ndarray) -> np.ndarray:
        """(n,) the response on the scale of :meth:`mean` (proportions for binomial)."""
        return y

    def predict_class(self, mean: np.ndarray) -> np.ndarray:
        """(n,) most probable class codes from :meth:`mean`."""
        raise DataError(f"type='class' needs a categorical or binomial family, not {self.name}.")

    def class_probabilities(self, mean: np.ndarray) -> np.ndarray:
        """(n, classes) probabilities of the codes 0, 1, ... from :meth:`mean`."""
        raise DataError(f"Class probabilities need a binomial or categorical family, not {self.name}; use predict().")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{self.name}({self.link})"
