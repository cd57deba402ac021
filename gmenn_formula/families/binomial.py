"""Binomial family, logit link: 0/1 responses (trials 1) or successes out of trials."""

from __future__ import annotations

import jax
import numpy as np
import pymc as pm
import torch
from scipy.special import expit

from gmenn_formula.families.base import Family


class Binomial(Family):
    name = "binomial"
    link = "logit"

    def pymc_distribution(self, eta, trials, dispersion):
        return pm.Binomial.dist(n=trials, logit_p=eta[:, 0])

    def torch_nll(self, eta, y, trials, dispersion):
        logit = eta[:, 0]
        log_choose = torch.lgamma(trials + 1) - torch.lgamma(y + 1) - torch.lgamma(trials - y + 1)
        return -(y * torch.nn.functional.logsigmoid(logit) + (trials - y) * torch.nn.functional.logsigmoid(-logit) + log_choose)

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        p = torch.sigmoid(eta)
        return trials[:, None] * p * (1.0 - p)

    def jax_fisher(self, eta, trials, dispersion):
        p = jax.nn.sigmoid(eta[:, 0])
        return (trials * p * (1.0 - p))[:, None, None]

    def mean(self, eta, trials=None):
        return expit(np.asarray(eta)[:, 0])
