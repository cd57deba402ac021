"""Categorical family, softmax link over c classes; every class has its own linear predictor."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pymc as pm
import torch
from scipy.special import softmax

from gmenn_formula.families.base import Family


class Categorical(Family):
    name = "categorical"
    link = "softmax"
    shift_invariant = True

    def num_outputs(self, num_classes):
        return int(num_classes)

    def pymc_distribution(self, eta, trials, dispersion):
        return pm.Categorical.dist(logit_p=eta)

    def torch_nll(self, eta, y, trials, dispersion):
        return torch.nn.functional.cross_entropy(eta, y.long(), reduction="none")

    def torch_fisher_diagonal(self, eta, trials, dispersion):
        p = torch.softmax(eta, dim=-1)
        return p * (1.0 - p)

    def jax_fisher(self, eta, trials, dispersion):
        p = jax.nn.softmax(eta, axis=-1)
        return jax.vmap(jnp.diag)(p) - p[:, :, None] * p[:, None, :]

    def mean(self, eta, trials=None):
        return softmax(np.asarray(eta), axis=1)
