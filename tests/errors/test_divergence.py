"""Divergence: a non-finite network output or loss is found at once; the learning rate is halved
from the epoch's starting state, noted and warned about; beyond recovery, ConvergenceError says why;
absurd variance components are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support.sleepstudy_like import sleepstudy_like

import gmenn_formula as gf
import gmenn_formula.training.guard
from gmenn_formula.errors import ConvergenceError, ConvergenceWarning
from gmenn_formula.families import get_family
from gmenn_formula.training.guard import MAX_HALVINGS, VarianceGuard

FORMULA = "Reaction ~ nn(Days) + (1 | Subject)"
TINY = dict(epochs=4, patience=4, final_epochs=2, average_epochs=2, max_average_epochs=2, verbose=0)


@pytest.fixture(scope="module")
def data():
    return sleepstudy_like()


class NaNAbove(torch.nn.Module):
    """A linear network whose output is NaN where the input exceeds ``limit``."""

    def __init__(self, limit: float) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        return torch.where(x > self.limit, torch.full_like(out, math.nan), out)


@pytest.mark.parametrize(("limit", "rows"), [(-1.0, "rows 0, 1, 2, 3, 4, ... (180 of 180"), (8.5, "rows 9, 19, 29, 39, 49, ... (18 of 180")])
def test_network_with_nan_output_is_refused_before_training(data, monkeypatch, limit, rows):
    monkeypatch.setattr(gmenn_formula.training.guard, "train_epoch", lambda *a, **k: pytest.fail("trained a NaN network"))
    with pytest.raises(ConvergenceError) as info:
        gf.gmenn("Reaction ~ nn(Days, net='nan') + (1 | Subject)", data, nets={"nan": NaNAbove(limit)}, **TINY)
    assert "The network's output is NaN/inf for " + rows in str(info.value)
    assert "at the network's initial weights" in str(info.value)


def test_huge_learning_rate_is_halved_then_refused(data):
    with pytest.raises(ConvergenceError) as info:
        gf.gmenn(FORMULA, data, learning_rate=1e6, **TINY)
    message = str(info.value)
    assert f"loss diverged at learning_rate={1e6 / 2**MAX_HALVINGS:g}" in message
    assert f"after {MAX_HALVINGS} halvings from learning_rate=1e+06" in message and "Lower learning_rate=" in message


def test_diverging_epoch_is_retrained_at_half_the_rate_and_reported(data):
    with pytest.warns(ConvergenceWarning, match="diverged at learning_rate=10 in epoch 1"):
        fit = gf.gmenn(FORMULA, data, learning_rate=10.0, **TINY)
    note = "The network's loss diverged at learning_rate=10 in epoch 1; the epoch was trained again from its start with learning_rate=5."
    assert note in fit.state.messages and note in str(fit.summary())
    variances = fit.varcorr()["variance"]
    assert np.isfinite(variances).all() and variances.max() < 10 * data["Reaction"].var()


def test_halving_restores_the_weights_and_adam_state_of_the_epoch_start(data, monkeypatch):
    """The first attempt of epoch 1 spoils the weights and reports NaN; the retry starts from the
    weights of the epoch's start."""
    calls, seen = [], []
    original = gmenn_formula.training.guard.train_epoch

    def flaky(model, optimizer, *args):
        calls.append(optimizer.param_groups[0]["lr"])
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        if len(calls) == 1:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1e3)
            return math.nan
        return original(model, optimizer, *args)

    monkeypatch.setattr(gmenn_formula.training.guard, "train_epoch", flaky)
    with pytest.warns(ConvergenceWarning):
        fit = gf.gmenn(FORMULA, data, learning_rate=1e-3, **TINY)
    assert calls[:2] == [1e-3, 5e-4] and all(rate == 5e-4 for rate in calls[2:])
    assert all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])
    assert any("learning_rate=0.0005" in m for m in fit.state.messages)


def test_variance_guard_names_the_term_and_says_what_to_do():
    guard = VarianceGuard.of(("(1 | Subject)",), get_family("gaussian"), np.array([0.0, 50.0]))  # variance 625
    guard.check([np.array([[[625.0 * 1e7]]])], 600.0, "epoch 3 (em phase)")
    with pytest.raises(ConvergenceError, match=r"The variance of the random effects of \(1 \| Subject\) reached 1e\+15 at epoch 3"):
        guard.check([np.array([[[1e15]]])], 600.0, "epoch 3 (em phase)")
    with pytest.raises(ConvergenceError, match=r"residual variance is not finite at the final estimate.*Lower learning_rate="):
        guard.check([np.array([[[625.0]]])], math.nan, "the final estimate")
    binomial = VarianceGuard.of(("(1 | g)",), get_family("binomial"), np.array([0.0, 1.0]))
    with pytest.raises(ConvergenceError, match=r"more than 1e\+08 times the response's variance \(1\)"):
        binomial.check([np.array([[[2e8]]])], 1.0, "epoch 1 (train phase)")


def test_fit_whose_variance_explodes_is_refused(data, monkeypatch):
    """Every epoch's record passes the guard, in every phase."""
    from gmenn_formula.training import log

    original = log.EpochLog.add

    def exploding(self, phase, covariances, *args, **kwargs):
        return original(self, phase, [S * 1e12 for S in covariances], *args, **kwargs)

    monkeypatch.setattr(log.EpochLog, "add", exploding)
    with pytest.raises(ConvergenceError, match=r"\(1 \| Subject\) reached .* at epoch 1 \(em phase\)"):
        gf.gmenn("Reaction ~ Days + (1 | Subject)", data, verbose=0, epochs=5, average_epochs=2, max_average_epochs=2, closed_form=False)
