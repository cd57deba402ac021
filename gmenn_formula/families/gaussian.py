"""Gaussian family, identity link; the residual variance is the dispersion."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import torch

from gmenn_formula.families.base import Family


class Gaussian(Family):
    name = "gaussian"
    link = "identity"
    has_dispersion = True

    def pymc_distribution(self, eta, trials, dispersion):
        return pm.Normal.dist(mu=eta[:, 0], sigma=pt.sqrt(dispersion))

    def torch_nll(self, eta, y, trials, dispersion):
        return 0.5 * (math.log(2 * math.pi * dispersion) + (y - eta[:, 0]) ** 2 / dispersion)

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        return torch.full_like(eta, 1.0 / dispersion)

    def jax_fisher(self, eta, trials, dispersion):
        return jnp.full((eta.shape[0], 1, 1), 1.0 / dispersion, dtype=eta.dtype)

    def mean(self, eta, trials=None):
        return np.asarray(eta)[:, 0]
