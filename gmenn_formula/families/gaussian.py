"""Gaussian family, identity link; the residual variance is the dispersion."""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from gmenn_formula.families.base import Family


class Gaussian(Family):
    name = "gaussian"
    link = "identity"
    has_dispersion = True

    def pymc_distribution(self, eta, trials, dispersion):
        import pymc as pm
        import pytensor.tensor as pt

        return pm.Normal.dist(mu=eta[:, 0], sigma=pt.sqrt(dispersion))

    def torch_nll(self, eta, y, trials, dispersion):
        import torch

        log_dispersion = torch.log(torch.as_tensor(dispersion, dtype=eta.dtype, device=eta.device))
        return 0.5 * (math.log(2 * math.pi) + log_dispersion + (y - eta[:, 0]) ** 2 / dispersion)

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        import torch

        return torch.full_like(eta, 1.0 / dispersion)

    def torch_nll_derivatives(self, eta, y, trials, dispersion):
        import torch

        return (eta - y[:, None]) / dispersion, torch.full_like(eta, 1.0 / dispersion)[:, :, None]

    def loglik(self, y, eta, trials, dispersion):
        return -0.5 * (math.log(2 * math.pi * dispersion) + (y - eta[..., 0]) ** 2 / dispersion)

    def fisher(self, eta, trials, dispersion, xp: ModuleType = np):
        return xp.full((eta.shape[0], 1, 1), 1.0 / dispersion, dtype=eta.dtype)

    def mean(self, eta, xp: ModuleType = np):
        return eta[..., 0]

    def sample(self, rng, eta, trials, dispersion):
        mean = self.mean(eta)
        return mean + rng.normal(scale=math.sqrt(dispersion), size=mean.shape)

    def variance(self, mean, trials, dispersion):
        return np.full_like(mean, dispersion)
