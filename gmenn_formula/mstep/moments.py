"""The variance M-step's statistic: each term's posterior second moments E[b b^T | y], from draws.

Draws of term l are (m, q, p, c) (m draws, q levels, p coefficients, c outputs), its covariances
(c, p, p); a statistic is (c, p, p), the mean over levels of a level's second moments
(q, c, p, p). Three estimators of the same expectation, each unbiased given the draws:

- the draws' own b b^T (:func:`level_second_moments`);
- for the softmax, the same with the classes' common shift integrated out exactly
  (:func:`softmax_level_moments`);
- the posterior score's form (:func:`score_controlled`): Stein's identity. A level's posterior
  is its prior N(0, Sigma_k) per output k times the likelihood, so integrating by parts,
  E[grad log p(b | y) b^T] = -I, and with grad log p = -Sigma^-1 b + g (g the log-likelihood's
  gradient in the level's effects, a sum over its rows), E[b b^T] = Sigma + Sigma E[g b^T]
  (symmetrised). Its Monte Carlo noise scales with the data's information about the level,
  where the draws' b b^T carries the posterior's whole spread: where the data say little (the
  directions in which EM crawls and a Newton step amplifies the noise by (I - J)^-1), it is
  the quiet one.

:func:`score_controlled` mixes the draws' form and the score form per level and entry with
the prior's share of the level's precision, w = 1 / (1 + Sigma_aa I_a) (I_a the Fisher
information of coefficient a at the fixed part's output F, summed over the level's rows: free of
the draws, so the mix stays unbiased). For a
gaussian likelihood this weight removes the quadratic noise exactly: with prior variance s,
likelihood precision t and posterior mean mu, (1 - w) b^2 + w (s + s g b) = w s + mu b, whose
variance is mu^2 v against 2 v^2 + 4 mu^2 v for b^2 (v the posterior variance).
"""

from __future__ import annotations

import torch

from gmenn_formula.families import Family
from gmenn_formula.mstep.step import Rows, random_part


def level_second_moments(effects: torch.Tensor) -> torch.Tensor:
    """Second moments (q, c, p, p) of each level: the mean over draws (m, q, p, c) of b b^T."""
    return torch.einsum("mqic,mqjc->qcij", effects, effects) / effects.shape[0]


def softmax_level_moments(effects: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Rao-Blackwellised second moments (q, c, p, p) of each level for the softmax (categorical).

    The softmax is unchanged when coefficient j of one level gains the same t_j in every
    class, so given the rest the likelihood says nothing about that shift t (p,) of a level's
    effects b (p, c): its conditional is the prior's, normal with precision
    T = sum_c Sigma_c^-1 and mean t* = -T^-1 sum_c Sigma_c^-1 b_c. Averaging
    m_c m_c^T + T^-1 over draws (m_c = b_c + t*) estimates the same E[b_c b_c^T | y]
    as the draws' b_c b_c^T without the Monte Carlo noise of the shift, which the data leave as
    wide as the prior: a 10-level factor's per-class variances needed ~170 averaged epochs to
    reach their precision target on the paper's base scenario without it.
    ``effects`` (m, q, p, c) draws; ``covariance`` (c, p, p) the one they were drawn with.
    """
    B = effects.double()
    precision = torch.linalg.inv(covariance.double())  # (c, p, p)
    shift_covariance = torch.linalg.inv(precision.sum(0))  # T^-1 (p, p)
    shift = -torch.einsum("ij,cjk,mqkc->mqi", shift_covariance, precision, B)  # t* (m, q, p)
    return level_second_moments(B + shift[..., None]) + shift_covariance


SCORE_CHUNK = 4096
"""Rows per pass of the score form's per-level sums: a pass's temporaries (draws x rows x outputs)
stay a few MB, where one pass over 20,000 rows at 100 classes and 4 draws made ~30 MB ones (the
same time: 272 -> 261 ms; the gathers without Z products and the softmax gradient without a one-hot
matrix took it to 154 ms)."""


def score_controlled(
    family: Family,
    effects: tuple[torch.Tensor, ...],
    per_level: list[torch.Tensor],
    covariances: list[torch.Tensor],
    F: torch.Tensor,
    rows: Rows,
    dispersion: float,
) -> list[torch.Tensor]:
    """Each term's statistic (c, p, p): the levels' second moments ``per_level`` (q, c, p, p, from
    the draws ``effects`` (m, q, p, c)) mixed with Stein's score form (module docstring), the
    draws having been drawn given F (n, c) on ``rows`` (every row weighing 1) and ``covariances``
    (c, p, p). The rows' sums pass through ``rows.total`` (every shard's rows)."""
    m = effects[0].shape[0]
    gradients, informations = _level_scores(family, effects, F, rows, dispersion)
    result = []
    for B, moments, Sigma, g, I in zip(effects, per_level, covariances, gradients, informations):
        g, I, Sigma = rows.total(g).double(), rows.total(I).double(), Sigma.double()
        prior_share = 1.0 / (1.0 + torch.diagonal(Sigma, dim1=1, dim2=2).T[None] * I)  # (q, p, c)
        w = torch.sqrt(torch.einsum("qic,qjc->qcij", prior_share, prior_share))  # (q, c, p, p)
        cross = torch.einsum("cik,qkjc->qcij", Sigma, torch.einsum("qmkc,mqjc->qkjc", g, B.double())) / m  # Sigma E[g b^T] per level
        score_form = Sigma + (cross + cross.transpose(2, 3)) / 2
        result.append(((1.0 - w) * moments + w * score_form).mean(0))
    return result


def _level_scores(
    family: Family, effects: tuple[torch.Tensor, ...], F: torch.Tensor, rows: Rows, dispersion: float
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per term, this shard's sums over each level's rows of the log-likelihood's gradient in the
    level's effects, (q, m, p, c) per draw, and of the Fisher information at F, (q, p, c) (free of
    the draws); float32 like F: Monte Carlo noise dwarfs its rounding."""
    m, c = effects[0].shape[0], F.shape[1]
    gradients = [torch.zeros(B.shape[1], m, B.shape[2], c, dtype=F.dtype, device=F.device) for B in effects]
    informations = [torch.zeros(B.shape[1], B.shape[2], c, dtype=F.dtype, device=F.device) for B in effects]
    for start in range(0, len(rows), SCORE_CHUNK):
        part = slice(start, start + SCORE_CHUNK)
        chunk = rows.take(part)
        eta = F[part].unsqueeze(0) + random_part(effects, chunk)  # (m, k, c)
        k = eta.shape[1]
        y, trials = chunk.per_draw(m)
        nll_gradient = family.torch_nll_gradient(eta.reshape(m * k, c), y, trials.to(F.dtype), dispersion).reshape(m, k, c).transpose(0, 1)
        information = family.torch_fisher_diagonal(F[part], chunk.trials.to(F.dtype), dispersion)  # (k, c)
        for g, I, level, z, intercept in zip(gradients, informations, chunk.codes, chunk.Z, rows.intercepts):
            if intercept:
                g[:, :, 0].index_add_(0, level, nll_gradient)
                I[:, 0].index_add_(0, level, information)
            else:
                g.index_add_(0, level, z[:, None, :, None] * nll_gradient[:, :, None, :])
                I.index_add_(0, level, z[:, :, None] ** 2 * information[:, None, :])
    return [g.neg_() for g in gradients], informations
