"""Poisson family, log link (use ``offset(log(exposure))`` for rates)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from scipy.special import gammaln

from gmenn_formula.families.base import Family


class Poisson(Family):
    name = "poisson"
    link = "log"

    def pymc_distribution(self, eta, trials, dispersion):
        import pymc as pm
        import pytensor.tensor as pt

        return pm.Poisson.dist(mu=pt.exp(eta[:, 0]))

    def pymc_loglik(self, eta, y, trials, dispersion):
        import pytensor.tensor as pt

        return y * eta[:, 0] - pt.exp(eta[:, 0])  # y log mu - mu, log mu = eta

    def torch_nll(self, eta, y, trials, dispersion):
        import torch

        log_mu = eta[:, 0]
        return torch.exp(log_mu) - y * log_mu + torch.lgamma(y + 1)

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        import torch

        return torch.exp(eta)

    def torch_nll_derivatives(self, eta, y, trials, dispersion):
        import torch

        mu = torch.exp(eta)
        return mu - y[:, None], mu[:, :, None]

    def loglik(self, y, eta, trials, dispersion):
        log_mu = eta[..., 0]
        return y * log_mu - np.exp(log_mu) - gammaln(y + 1)

    def fisher(self, eta, trials, dispersion, xp: ModuleType = np):
        return xp.exp(eta[:, 0])[:, None, None]

    def mean(self, eta, xp: ModuleType = np):
        return xp.exp(eta[..., 0])

    def sample(self, rng, eta, trials, dispersion):
        return rng.poisson(self.mean(eta))

    def variance(self, mean, trials, dispersion):
        return mean
