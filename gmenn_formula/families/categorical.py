"""Categorical family, softmax link over c classes; every class has its own linear predictor."""

from __future__ import annotations

from types import ModuleType

import numpy as np
from scipy.special import logsumexp

from gmenn_formula.families.base import Family

FUSED_CLASSES = 16
"""Classes from which torch's softmax and cross-entropy kernels are used. With fewer, torch's CPU
kernels run 3-5x slower than the same formulas in elementwise steps (28,800 rows x 5 classes,
one thread: softmax 2.8 -> 0.9 ms, cross-entropy 2.0 -> 0.6 ms, forward and backward 3.6 -> 1.4 ms;
10 classes 4.5 -> 0.9 ms); from 20 classes the kernels are as fast or faster."""


def _softmax(eta):
    """Row-wise softmax of eta (n, c)."""
    import torch

    if eta.shape[-1] >= FUSED_CLASSES:
        return torch.softmax(eta, dim=-1)
    exp = (eta - eta.amax(dim=-1, keepdim=True)).exp()
    return exp / exp.sum(dim=-1, keepdim=True)


def _less_one_hot(p, y):
    """p (n, c) less the one-hot rows of the classes y (n,), in place (the softmax NLL's gradient)."""
    import torch

    return p.scatter_add_(1, y.long()[:, None], torch.full_like(p[:, :1], -1.0))


class Categorical(Family):
    name = "categorical"
    link = "softmax"
    classifier = True
    shift_invariant = True
    y_dtype = np.int64
    has_residuals = False

    def num_outputs(self, num_classes):
        return int(num_classes)

    def output_names(self, classes):
        return list(classes)

    def pymc_distribution(self, eta, trials, dispersion):
        import pymc as pm

        return pm.Categorical.dist(logit_p=eta)

    def pymc_loglik(self, eta, y, trials, dispersion):
        import pytensor.tensor as pt

        one_hot = pt.eq(y[:, None], pt.arange(eta.shape[1])[None, :])  # elementwise in the gradient, not a scatter
        return pt.sum(pt.switch(one_hot, eta, 0.0), axis=1) - pt.logsumexp(eta, axis=1)

    def torch_nll(self, eta, y, trials, dispersion):
        import torch

        if eta.shape[-1] >= FUSED_CLASSES:
            return torch.nn.functional.cross_entropy(eta, y.long(), reduction="none")
        return torch.logsumexp(eta, dim=-1) - eta.gather(-1, y.long()[:, None])[:, 0]

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        p = _softmax(eta)
        return p * (1.0 - p)

    def torch_nll_gradient(self, eta, y, trials, dispersion):
        return _less_one_hot(_softmax(eta), y)

    def torch_nll_derivatives(self, eta, y, trials, dispersion):
        import torch

        p = _softmax(eta)
        hessian = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        return _less_one_hot(p, y), hessian

    def torch_nll_hessian_sum(self, eta, y, trials, dispersion):
        import torch

        p = _softmax(eta)  # sum_i diag(p_i) - p_i p_i', without the rows' (n, c, c) Hessians (1.6 GB at 20,000 x 100)
        return torch.diag(p.sum(0)) - p.T @ p

    def loglik(self, y, eta, trials, dispersion):
        codes = np.broadcast_to(np.asarray(y, np.int64)[:, None], eta.shape[:-1] + (1,))
        return np.take_along_axis(eta, codes, axis=-1)[..., 0] - logsumexp(eta, axis=-1)

    def fisher(self, eta, trials, dispersion, xp: ModuleType = np):
        p = self.mean(eta, xp)
        return p[:, :, None] * xp.eye(eta.shape[1], dtype=p.dtype) - p[:, :, None] * p[:, None, :]

    def fisher_rank_one(self, eta, trials, dispersion, xp: ModuleType = np):
        p = self.mean(eta, xp)
        return p, p

    def mean(self, eta, xp: ModuleType = np):
        e = xp.exp(eta - eta.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    def sample(self, rng, eta, trials, dispersion):
        probabilities = self.mean(eta)
        drawn = (rng.random(eta.shape[:-1] + (1,)) > probabilities.cumsum(axis=-1)).sum(axis=-1)
        return np.minimum(drawn, eta.shape[-1] - 1)

    def variance(self, mean, trials, dispersion):
        return mean * (1.0 - mean)

    def predict_class(self, mean):
        return mean.argmax(axis=1)

    def class_probabilities(self, mean):
        return mean
