"""Poisson family, log link (use ``offset(log(exposure))`` for rates)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pymc as pm
import pytensor.tensor as pt
import torch

from gmenn_formula.families.base import Family


class Poisson(Family):
    name = "poisson"
    link = "log"

    def pymc_distribution(self, eta, trials, dispersion):
        return pm.Poisson.dist(mu=pt.exp(eta[:, 0]))

    def torch_nll(self, eta, y, trials, dispersion):
        log_mu = eta[:, 0]
        return torch.exp(log_mu) - y * log_mu + torch.lgamma(y + 1)

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        return torch.exp(eta)

    def jax_fisher(self, eta, trials, dispersion):
        return jnp.exp(eta[:, 0])[:, None, None]

    def mean(self, eta, trials=None):
        return np.exp(np.asarray(eta)[:, 0])
