"""Helpers of the results tests: tiny real fits and hand-made fits with fixed numbers (no fitting)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

import gmenn_formula as gf
from gmenn_formula.mstep.networks import FixedPart, mlp
from gmenn_formula.results.result import GmennResult
from gmenn_formula.results.state import EpochRecord, FitState
from gmenn_formula.simulation import paper_scenario
from gmenn_formula.training.config import FitConfig

FAMILIES = ("gaussian", "binomial", "poisson", "categorical")
KINDS = ("glmm", "nn")
TINY_CONTROL = {"epochs": 3, "final_epochs": 3, "average_epochs": 2, "max_average_epochs": 2, "patience": 2, "verbose": 0}
"""A few epochs: enough to exercise every code path, far too few for good estimates."""


def tiny_data(family: str) -> pd.DataFrame:
    """300 rows of the package's simulation: features x0..x2, factors g0 (12 levels) and g1 (4)."""
    return paper_scenario(rows=300, features=3, classes=3, levels=(12, 4), variances=(0.5, 0.3), family=family, seed=3).data


def tiny_formula(kind: str) -> str:
    if kind == "nn":
        return "y ~ nn(x0 + x1 + x2, hidden=[8]) + (1 | g0) + (1 | g1)"
    return "y ~ x0 + x1 + (1 + x2 | g0) + (1 | g1)"


def new_rows(data: pd.DataFrame) -> pd.DataFrame:
    """20 rows of ``data`` on a fresh index; the first 5 have levels of g0 and g1 never seen in training."""
    new = data.iloc[:20].copy().reset_index(drop=True)
    new.index = new.index + 1000
    new.loc[new.index[:5], ["g0", "g1"]] = ["unseen_g0", "unseen_g1"]
    return new


# -- hand-made fits: deterministic numbers, no fitting ------------------------------------
def _history(covariances: list[np.ndarray], phases: list[str], dispersion: float, network: bool) -> list[EpochRecord]:
    records = []
    for epoch, phase in enumerate(phases, start=1):
        losses = {}
        if phase == "train":
            losses = {"loss": 1.5 - 0.1 * epoch, "validation_loss": 1.6 - 0.05 * epoch}
        elif not network:
            losses = {"loss": 4.75 - 0.01 * epoch}
        scale = 1.0 + 0.1 / epoch
        records.append(
            EpochRecord(
                epoch=epoch,
                phase=phase,
                seconds=0.375,
                estep_seconds=0.25,
                mstep_seconds=0.125,
                setup_seconds=0.125 if epoch == 1 else 0.0,
                covariances=tuple(S * scale for S in covariances),
                dispersion=dispersion,
                acceptance=0.8,
                step_size=0.5,
                leapfrog_steps=7.0,
                divergences=epoch % 2,
                **losses,
            )
        )
    return records


def _effects(q: int, p: int, c: int, draws: int, offset: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic (q, p, c) means and sds, and (draws, q, p, c) draws around the means."""
    grid = np.arange(q * p * c, dtype=np.float64).reshape(q, p, c)
    mean = offset * (grid - grid.mean()) / max(grid.size, 1)
    sd = 0.5 + 0.01 * grid
    spread = np.linspace(-1.0, 1.0, draws)[:, None, None, None]
    return mean, sd, (mean + spread * sd).astype(np.float32)


def handmade_glmm() -> GmennResult:
    """Gaussian GLMM ``y ~ days + (days | subject)`` on 20 rows with fixed numbers."""
    days = np.tile(np.arange(5.0), 4)
    subject = np.repeat(["s1", "s2", "s3", "s4"], 5)
    y = 250.0 + 10.0 * days + np.repeat([-20.0, 5.0, 10.0, 5.0], 5) + np.tile([3.0, -1.0, 0.0, -2.0, 1.0], 4)
    data = pd.DataFrame({"y": y, "days": days, "subject": subject})
    design = gf.design("y ~ days + (days | subject)", data)
    model = FixedPart([], 2, 1)
    with torch.no_grad():
        model.beta.copy_(torch.tensor([[250.0], [10.0]]))
    covariance = np.array([[[600.0, 12.0], [12.0, 35.0]]])
    mean, sd, draws = _effects(4, 2, 1, 6, 40.0)
    config = FitConfig.from_control(draws=4, burn_in=1, average_epochs=2, max_average_epochs=2, verbose=0)
    state = FitState(
        num_outputs=1,
        model=model.eval(),
        fixed_names=("(Intercept)", "days"),
        covariances=[covariance],
        covariance_se=[np.full((1, 2, 2), 1.5)],
        dispersion=650.0,
        dispersion_se=3.25,
        effect_mean=[mean],
        effect_sd=[sd],
        draws=[draws],
        history=_history([covariance], ["em", "em", "average", "average"], 650.0, network=False),
        converged=True,
        nobs=20,
        draw_epochs=np.repeat([3, 4], 3),
        epochs=4,
        seconds=1.5,
        config=config,
    )
    return GmennResult(design, state)


def handmade_categorical_nn() -> GmennResult:
    """Categorical ``cls ~ nn(x1 + x2, hidden=[2]) + (1 | g) + (1 | h)`` with constant network weights."""
    rng = np.random.default_rng(0)
    data = pd.DataFrame(
        {
            "x1": np.round(rng.uniform(-1, 1, 24), 2),
            "x2": np.round(rng.uniform(-1, 1, 24), 2),
            "g": np.tile(["a", "b", "c"], 8),
            "h": np.repeat(["u", "v"], 12),
            "cls": np.tile(["lo", "mid", "hi", "mid"], 6),
        }
    )
    design = gf.design('cls ~ nn(x1 + x2, hidden=[2], dropout=0) + (1 | g) + (1 | h)', data, family="categorical")
    network = mlp(2, 3, (2,), 0.0, "relu")
    with torch.no_grad():
        for index, parameter in enumerate(network.parameters()):
            parameter.copy_(torch.linspace(-0.5, 0.5, parameter.numel()).reshape(parameter.shape) * (index + 1))
    model = FixedPart([network], 0, 3)
    covariances = [np.array([[[0.25]], [[0.5]], [[0.125]]]), np.array([[[1e-4]], [[0.75]], [[0.0625]]])]
    means, sds, draws = zip(_effects(3, 1, 3, 6, 1.0), _effects(2, 1, 3, 6, 2.0))
    config = FitConfig.from_control(draws=4, burn_in=1, average_epochs=2, max_average_epochs=2, final_epochs=3, verbose=0)
    state = FitState(
        num_outputs=3,
        model=model.eval(),
        fixed_names=(),
        covariances=covariances,
        covariance_se=[np.full((3, 1, 1), 0.01), np.full((3, 1, 1), 0.02)],
        dispersion=1.0,
        dispersion_se=0.0,
        effect_mean=list(means),
        effect_sd=list(sds),
        draws=list(draws),
        history=_history(covariances, ["train", "train", "train", "em", "average", "average"], 1.0, network=True),
        converged=False,
        nobs=24,
        draw_epochs=np.repeat([5, 6], 3),
        messages=["Early stopping did not trigger within 3 epochs (patience 10); the best epoch's network is used."],
        epochs=6,
        best_epoch=2,
        best_validation_loss=1.5,
        seconds=2.25,
        config=config,
    )
    return GmennResult(design, state)
