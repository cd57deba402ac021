"""Each family's likelihood, written four times (numpy for the results, torch for the M-step, the
PyMC closed form and PyMC's own distribution for the E-step), is one function: equal where constants
are included, equal in every difference between two linear predictors where they are not."""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest
import pymc as pm
import torch

from gmenn_formula.families import get_family

N = 40


def _case(name: str, rng: np.random.Generator):
    c = 3 if name == "categorical" else 1
    eta = rng.normal(0, 1, (2, N, c))
    trials = rng.integers(1, 6, N).astype(float) if name == "binomial" else np.ones(N)
    if name == "categorical":
        y = rng.integers(0, c, N)
    elif name == "binomial":
        y = rng.binomial(trials.astype(int), 0.4).astype(float)
    elif name == "poisson":
        y = rng.poisson(2.0, N).astype(float)
    else:
        y = rng.normal(0, 1.5, N)
    return eta, y, trials


def _pymc(expression) -> np.ndarray:
    return np.asarray(expression.eval(), dtype=float)


@pytest.mark.parametrize("name", ["gaussian", "binomial", "poisson", "categorical"])
def test_numpy_torch_and_pymc_likelihoods_agree(name):
    family, rng, dispersion = get_family(name), np.random.default_rng(0), 1.7
    eta, y, trials = _case(name, rng)
    numpy_ll = family.loglik(y, eta, trials, dispersion)  # (2, N)
    y_t = torch.as_tensor(y, dtype=torch.long if name == "categorical" else torch.float64)
    torch_ll = np.stack([-family.torch_nll(torch.as_tensor(e), y_t, torch.as_tensor(trials), dispersion).numpy() for e in eta])
    np.testing.assert_allclose(torch_ll, numpy_ll, rtol=1e-6, atol=1e-8)
    y_p = pt.as_tensor(y.astype("int64") if name == "categorical" else y)
    distribution = np.stack([_pymc(pm.logp(family.pymc_distribution(pt.as_tensor(e), pt.as_tensor(trials), dispersion), y_p)) for e in eta])
    np.testing.assert_allclose(distribution, numpy_ll, rtol=1e-6, atol=1e-8)
    closed = np.stack([_pymc(family.pymc_loglik(pt.as_tensor(e), y_p, pt.as_tensor(trials), dispersion)) for e in eta])
    np.testing.assert_allclose(closed[0] - closed[1], numpy_ll[0] - numpy_ll[1], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["gaussian", "binomial", "poisson", "categorical"])
def test_closed_form_nll_derivatives_are_autograds(name):
    """The M-step's Newton steps use each family's closed-form gradient and Hessian in eta; they
    must be the derivatives of the torch NLL (autograd as the oracle)."""
    family, rng, dispersion = get_family(name), np.random.default_rng(1), 1.7
    eta, y, trials = _case(name, rng)
    e = torch.as_tensor(eta[0]).requires_grad_(True)
    y_t = torch.as_tensor(y, dtype=torch.long if name == "categorical" else torch.float64)
    trials_t = torch.as_tensor(trials)
    gradient = torch.autograd.grad(family.torch_nll(e, y_t, trials_t, dispersion).sum(), e, create_graph=True)[0]
    hessian = torch.stack([torch.autograd.grad(gradient[:, k].sum(), e, retain_graph=True)[0] for k in range(e.shape[1])], dim=2)
    closed_gradient, closed_hessian = family.torch_nll_derivatives(e.detach(), y_t, trials_t, dispersion)
    assert closed_gradient.shape == gradient.shape and closed_hessian.shape == hessian.shape
    torch.testing.assert_close(closed_gradient, gradient.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(closed_hessian, hessian.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "binomial", "poisson", "categorical"])
def test_summed_hessian_and_fisher_diagonal_are_the_rows(name):
    """The summed Hessian (intercept_shift's Newton steps) and the Fisher diagonal (PX-EM, the
    score form) are those of the rows' closed-form Hessians."""
    family, rng, dispersion = get_family(name), np.random.default_rng(2), 1.7
    eta, y, trials = _case(name, rng)
    e, trials_t = torch.as_tensor(eta[0]), torch.as_tensor(trials)
    y_t = torch.as_tensor(y, dtype=torch.long if name == "categorical" else torch.float64)
    _, hessian = family.torch_nll_derivatives(e, y_t, trials_t, dispersion)
    torch.testing.assert_close(family.torch_nll_hessian_sum(e, y_t, trials_t, dispersion), hessian.sum(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(family.torch_fisher_diagonal(e, trials_t, dispersion), torch.diagonal(hessian, dim1=1, dim2=2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 5, 15, 16, 40])
def test_categorical_torch_functions_on_both_sides_of_the_fused_kernels(classes):
    """Below FUSED_CLASSES the categorical family computes softmax and cross-entropy in elementwise
    steps, from it with torch's kernels: both give numpy's log-likelihood and autograd's derivatives,
    also at large |eta| (the max is subtracted before exp)."""
    from gmenn_formula.families.categorical import FUSED_CLASSES

    assert 5 < FUSED_CLASSES <= 40
    family, rng = get_family("categorical"), np.random.default_rng(classes)
    eta = rng.normal(0, 1, (N, classes)) * 30.0
    y = rng.integers(0, classes, N)
    e, y_t, trials = torch.as_tensor(eta).requires_grad_(True), torch.as_tensor(y), torch.ones(N, dtype=torch.float64)
    nll = family.torch_nll(e, y_t, trials, 1.0)
    np.testing.assert_allclose(-nll.detach().numpy(), family.loglik(y, eta, np.ones(N), 1.0), rtol=1e-10, atol=1e-10)
    gradient = torch.autograd.grad(nll.sum(), e)[0]
    torch.testing.assert_close(family.torch_nll_gradient(e.detach(), y_t, trials, 1.0), gradient, rtol=1e-10, atol=1e-12)
    p = np.exp(eta - eta.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(family.torch_fisher_diagonal(e.detach(), trials, 1.0).numpy(), p * (1 - p), rtol=1e-10, atol=1e-12)
