"""M-step: the fixed part against the E-step's draws, and the variance components from them.

Shapes: draws of term l are a torch tensor (m, q_l, p_l, c) (m kept draws);
a batch has b rows; ``codes[l]`` (b,) long, ``Z[l]`` (b, p_l).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from gmenn_formula.families import Family
from gmenn_formula.mstep.networks import FixedPart


@dataclass(frozen=True)
class Rows:
    """Torch arrays of a set of rows: inputs of the fixed part, response, random-effect columns."""

    X_networks: tuple[torch.Tensor, ...]
    X_fixed: torch.Tensor
    offset: torch.Tensor
    y: torch.Tensor
    trials: torch.Tensor
    codes: tuple[torch.Tensor, ...]
    Z: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return self.y.shape[0]

    def take(self, index: torch.Tensor) -> Rows:
        """The rows ``index`` (b,)."""
        return Rows(
            X_networks=tuple(X[index] for X in self.X_networks),
            X_fixed=self.X_fixed[index],
            offset=self.offset[index],
            y=self.y[index],
            trials=self.trials[index],
            codes=tuple(c[index] for c in self.codes),
            Z=tuple(z[index] for z in self.Z),
        )

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[Rows]:
        """Shuffled minibatches of at most ``batch_size`` rows."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), batch_size):
            yield self.take(order[start : start + batch_size])


def random_part(effects: tuple[torch.Tensor, ...], rows: Rows) -> torch.Tensor:
    """sum_l Z_l[i] @ effects_l[:, codes_l[i]] -> (m, b, c) for effects (m, q_l, p_l, c).

    A code of -1 (a level unseen in training) reads the last level: callers
    that predict new levels pass effects padded with a zero level at the end.
    """
    total = 0.0
    for B, codes, Z in zip(effects, rows.codes, rows.Z):
        total = total + torch.einsum("bp,mbpc->mbc", Z, B[:, codes])
    return total


def expected_nll(family: Family, eta_fixed: torch.Tensor, re: torch.Tensor, rows: Rows, dispersion: float) -> torch.Tensor:
    """Sum over rows of the mean over draws of the NLL; ``re`` (m, b, c) or 0."""
    eta = eta_fixed.unsqueeze(0) + re if torch.is_tensor(re) else eta_fixed.unsqueeze(0)
    m, b, c = eta.shape
    nll = family.torch_nll(eta.reshape(m * b, c), rows.y.repeat(m), rows.trials.repeat(m), dispersion)
    return nll.reshape(m, b).mean(0).sum()


def train_epoch(
    model: FixedPart,
    optimizer: torch.optim.Optimizer,
    family: Family,
    rows: Rows,
    effects: tuple[torch.Tensor, ...],
    dispersion: float,
    penalty: float,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass of minibatch steps on the paper's loss (Eq. 6), per row:
    mean over draws of NLL(y | F + ZB) + ``penalty`` * NLL(y | F). Returns the mean loss per row."""
    model.train()
    total = 0.0
    for batch in rows.batches(batch_size, generator):
        eta = model(list(batch.X_networks), batch.X_fixed, batch.offset)
        loss = expected_nll(family, eta, random_part(effects, batch), batch, dispersion)
        if penalty:
            loss = loss + penalty * expected_nll(family, eta, 0.0, batch, dispersion)
        optimizer.zero_grad()
        (loss / len(batch)).backward()
        optimizer.step()
        total += float(loss.detach())
    return total / len(rows)


def row_derivatives(family: Family, eta: torch.Tensor, rows: Rows, dispersion: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient (n, c) and Hessian (n, c, c) of each row's NLL with respect to its eta (n, c).

    Rows are independent, so c + 1 backward passes of the summed NLL give them all.
    """
    eta = eta.detach().requires_grad_(True)
    gradient = torch.autograd.grad(family.torch_nll(eta, rows.y, rows.trials, dispersion).sum(), eta, create_graph=True)[0]
    columns = [torch.autograd.grad(gradient[:, k].sum(), eta, retain_graph=True)[0] for k in range(eta.shape[1])]
    return gradient.detach(), torch.stack(columns, dim=2).detach()


def newton_fixed_effects(
    model: FixedPart, family: Family, rows: Rows, effects: tuple[torch.Tensor, ...], dispersion: float, steps: int = 3
) -> float:
    """Exact M-step for the linear fixed effects (no networks): damped Newton on the
    expected NLL over the draws, full data, in float64 (the softmax's shift invariance
    makes the Hessian singular up to a small ridge, too small for float32).

    The Hessian in beta (k c, k c) is sum_i kron(x_i x_i^T, H_i) with H_i the
    row Hessian in eta averaged over the draws. Returns the expected NLL per row.
    """
    beta = model.beta
    re = random_part(effects, rows).double()
    X, offset = rows.X_fixed.double(), rows.offset.double()
    k, c = beta.shape
    m = re.shape[0]
    stacked = rows.take(torch.arange(len(rows)).repeat(m))

    def linear(flat: torch.Tensor) -> torch.Tensor:
        return ((X @ flat.reshape(k, c) + offset[:, None]).unsqueeze(0) + re).reshape(-1, c)

    def objective(flat: torch.Tensor) -> float:
        return float(family.torch_nll(linear(flat), stacked.y, stacked.trials, dispersion).sum()) / m

    current = beta.detach().double().reshape(-1).clone()
    value = objective(current)
    for _ in range(steps):
        g_eta, h_eta = row_derivatives(family, linear(current), stacked, dispersion)
        g_eta = g_eta.reshape(m, -1, c).mean(0)
        h_eta = h_eta.reshape(m, -1, c, c).mean(0)
        gradient = (X.T @ g_eta).reshape(-1)
        hessian = torch.einsum("ni,nab,nj->iajb", X, h_eta, X).reshape(k * c, k * c)
        ridge = 1e-8 * (1.0 + hessian.diagonal().abs().mean()) * torch.eye(k * c, dtype=hessian.dtype)
        direction = torch.linalg.solve(hessian + ridge, gradient)
        step = 1.0
        while step > 1e-4:
            candidate = current - step * direction
            new_value = objective(candidate)
            if np.isfinite(new_value) and new_value <= value:
                current, value = candidate, new_value
                break
            step /= 2
        else:
            break
    with torch.no_grad():
        beta.copy_(current.reshape(k, c).to(beta.dtype))
    return value / len(rows)


def variance_statistics(effects: torch.Tensor) -> torch.Tensor:
    """Second moments (c, p, p) of draws (m, q, p, c): mean over draws and levels of b b^T."""
    m, q, p, c = effects.shape
    return torch.einsum("mqic,mqjc->cij", effects, effects) / (m * q)


def residual_variance(eta_fixed: torch.Tensor, re: torch.Tensor, rows: Rows) -> float:
    """Gaussian M-step: mean over draws and rows of (y - eta)^2."""
    residual = rows.y.unsqueeze(0) - (eta_fixed.unsqueeze(0) + re)[..., 0]
    return float((residual**2).mean())


def gaussian_second_moments(
    effects: tuple[torch.Tensor, ...],
    rows: Rows,
    eta_fixed: torch.Tensor,
    covariances: list[torch.Tensor],
    dispersion: float,
) -> list[torch.Tensor]:
    """Rao-Blackwellised second moments (1, p, p) per term for the gaussian family.

    Given the draws of the other terms, a gaussian level's effects are exactly
    normal: precision H = Sigma^-1 + Z'Z / s2, mean H^-1 Z'r / s2 with r the
    residual of the rest. Averaging V + m m^T over the draws estimates the same
    E[b b^T | y] as the draws' b b^T, with far less Monte Carlo noise (exact for
    a single term). ``covariances[l]`` (1, p, p) are those the draws came from.
    """
    total = random_part(effects, rows)
    result = []
    rest = (rows.y.unsqueeze(0) - eta_fixed[:, 0].unsqueeze(0) - total[..., 0]).double()
    for B, codes, Z, Sigma in zip(effects, rows.codes, rows.Z, covariances):
        m, q, p, _ = B.shape
        Z = Z.double()
        residual = rest + torch.einsum("bp,mbp->mb", Z, B[:, codes, :, 0].double())
        ZtZ = torch.zeros(q, p, p, dtype=Z.dtype, device=Z.device).index_add_(0, codes, Z[:, :, None] * Z[:, None, :])
        Ztr = torch.zeros(m, q, p, dtype=Z.dtype, device=Z.device).index_add_(1, codes, residual[:, :, None] * Z[None])
        precision = torch.linalg.inv(Sigma[0].double()) + ZtZ / dispersion
        V = torch.linalg.inv(precision)
        mean = torch.einsum("qij,mqj->mqi", V, Ztr) / dispersion
        result.append(((V.sum(0) + torch.einsum("mqi,mqj->ij", mean, mean) / m) / q)[None])
    return result
