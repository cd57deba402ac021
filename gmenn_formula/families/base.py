"""The family interface: one response distribution and its link, in every backend.

Each family gives the same log-likelihood three ways: a PyMC distribution
(the E-step model), a torch per-row negative log-likelihood (the M-step loss) with its Fisher diagonal
and a JAX per-row Fisher information (the E-step sampler's preconditioner).
Shapes: ``eta`` (n, c) linear predictor, ``y`` (n,), ``trials`` (n,).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
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
    over that direction exactly (:func:`~gmenn_formula.mstep.step.softmax_second_moments`)."""

    def num_outputs(self, num_classes: int | None) -> int:
        """Columns c of the linear predictor: the classes for categorical, else 1."""
        return 1

    @abstractmethod
    def pymc_distribution(self, eta, trials, dispersion):
        """The response distribution of the n rows given ``eta`` (n, c) pytensor, unregistered
        (``Dist.dist(...)``): the E-step model weights its per-row log-probabilities."""

    @abstractmethod
    def torch_nll(self, eta: torch.Tensor, y: torch.Tensor, trials: torch.Tensor, dispersion: float) -> torch.Tensor:
        """(n,) negative log-likelihood of each row, constants included."""

    @abstractmethod
    def torch_fisher_diagonal(self, eta: torch.Tensor, trials: torch.Tensor, dispersion: float) -> torch.Tensor:
        """(n, c) diagonal of each row's Fisher information in ``eta``; with these canonical
        links it equals the diagonal of the NLL's Hessian."""

    @abstractmethod
    def jax_fisher(self, eta, trials, dispersion):
        """(n, c, c) Fisher information of each row with respect to ``eta`` (JAX)."""

    @abstractmethod
    def mean(self, eta: np.ndarray, trials: np.ndarray | None = None) -> np.ndarray:
        """Response-scale prediction: (n,) for one output, (n, c) class probabilities for categorical."""

    def __repr__(self) -> str:
        return f"{self.name}({self.link})"
