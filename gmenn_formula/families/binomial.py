"""Binomial family, logit link: 0/1 responses (trials 1) or successes out of trials."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from scipy.special import expit, gammaln

from gmenn_formula.families.base import Family


def _sigmoid(x, xp: ModuleType):
    return expit(x) if xp is np else 1.0 / (1.0 + xp.exp(-x))


class Binomial(Family):
    name = "binomial"
    link = "logit"
    classifier = True

    def pymc_distribution(self, eta, trials, dispersion):
        import pymc as pm

        return pm.Binomial.dist(n=trials, logit_p=eta[:, 0])

    def pymc_loglik(self, eta, y, trials, dispersion):
        import pytensor.tensor as pt

        return y * eta[:, 0] - trials * pt.softplus(eta[:, 0])  # y log p + (n - y) log(1 - p), p = sigmoid(eta)

    def torch_nll(self, eta, y, trials, dispersion):
        import torch

        logit = eta[:, 0]
        nll = -(y * torch.nn.functional.logsigmoid(logit) + (trials - y) * torch.nn.functional.logsigmoid(-logit))
        if bool((trials == 1).all()):  # 0/1 responses: log C(1, y) = 0, and three lgammas were half the cost
            return nll
        return nll - (torch.lgamma(trials + 1) - torch.lgamma(y + 1) - torch.lgamma(trials - y + 1))

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        import torch

        p = torch.sigmoid(eta)
        return trials[:, None] * p * (1.0 - p)

    def torch_nll_derivatives(self, eta, y, trials, dispersion):
        import torch

        p = torch.sigmoid(eta)
        return trials[:, None] * p - y[:, None], (trials[:, None] * p * (1.0 - p))[:, :, None]

    def loglik(self, y, eta, trials, dispersion):
        logit = eta[..., 0]
        log_choose = gammaln(trials + 1) - gammaln(y + 1) - gammaln(trials - y + 1)
        return -y * np.logaddexp(0.0, -logit) - (trials - y) * np.logaddexp(0.0, logit) + log_choose

    def fisher(self, eta, trials, dispersion, xp: ModuleType = np):
        p = _sigmoid(eta[:, 0], xp)
        return (trials * p * (1.0 - p))[:, None, None]

    def mean(self, eta, xp: ModuleType = np):
        return _sigmoid(eta[..., 0], xp)

    def sample(self, rng, eta, trials, dispersion):
        return rng.binomial(trials.astype(np.int64), self.mean(eta))

    def variance(self, mean, trials, dispersion):
        return mean * (1.0 - mean) / trials

    def observed(self, y, trials):
        return y / trials

    def predict_class(self, mean):
        return (mean > 0.5).astype(np.int64)

    def class_probabilities(self, mean):
        return np.column_stack([1.0 - mean, mean])
