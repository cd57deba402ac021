"""nn() on the response's scale: the fixed part starts at the link of the mean response (and, for
gaussian, scaled by its sd), small data get enough Adam steps per epoch, and a sleepstudy-sized fit
recovers the subject variance with the network at the response's level."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from support.sleepstudy_like import INTERCEPT, SLOPE, sleepstudy_like

import gmenn_formula as gf
from gmenn_formula.errors import ConvergenceWarning
from gmenn_formula.families import get_family
from gmenn_formula.mstep.step import MIN_STEPS_PER_EPOCH, Rows, intercept_shift

TRUE_VARIANCE = 625.0
MEAN_LEVEL = INTERCEPT + SLOPE * 4.5  # the fixed part's mean over days 0..9
NEW_DAYS = pd.DataFrame({"Days": np.arange(10.0), "Subject": "s00"})


def _fit(formula: str, nets=None) -> gf.GmennResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gf.gmenn(formula, sleepstudy_like(seed=0), nets=nets, verbose=0)


@pytest.mark.parametrize(
    ("formula", "nets"),
    [
        ("Reaction ~ nn(Days) + (1 | Subject)", None),
        ("Reaction ~ nn(Days, net='linear') + (1 | Subject)", {"linear": lambda inputs, outputs: torch.nn.Linear(inputs, outputs)}),  # built after the fit's seed
    ],
    ids=["default-mlp", "user-module"],
)
def test_sleepstudy_scale_recovers_the_subject_variance(formula, nets):
    fit = _fit(formula, nets)
    variance = fit.varcorr()["variance"].iloc[0]
    assert TRUE_VARIANCE / 2 < variance < TRUE_VARIANCE * 2
    population = fit.predict(NEW_DAYS, re_form="~0")
    assert abs(population.mean() - MEAN_LEVEL) < 15
    assert SLOPE * 9 / 2 < population[-1] - population[0] < SLOPE * 9 * 1.5


def _rows(y: np.ndarray, trials: np.ndarray | None = None) -> Rows:
    n = len(y)
    return Rows(
        X_networks=(), X_fixed=torch.zeros(n, 0), offset=torch.zeros(n),
        y=torch.as_tensor(y), trials=torch.as_tensor(np.ones(n) if trials is None else trials, dtype=torch.float32),
        codes=(), Z=(),
    )


@pytest.mark.parametrize(
    ("family", "y", "expected"),
    [
        ("gaussian", np.array([240.0, 250.0, 290.0]), [260.0]),
        ("binomial", np.array([1.0, 0.0, 0.0, 0.0]), [np.log(0.25 / 0.75)]),
        ("poisson", np.array([2.0, 5.0, 8.0]), [np.log(5.0)]),
    ],
)
def test_intercept_shift_is_the_link_of_the_mean(family, y, expected):
    rows = _rows(y.astype(np.float32))
    shift = intercept_shift(get_family(family), torch.zeros(len(y), 1), rows)
    np.testing.assert_allclose(shift.numpy(), expected, rtol=1e-4)


def test_intercept_shift_of_the_softmax_is_the_log_class_shares():
    y = np.array([0, 0, 0, 1, 2, 2], dtype=np.int64)
    shift = intercept_shift(get_family("categorical"), torch.zeros(6, 3), _rows(y)).numpy()
    shares = np.exp(shift) / np.exp(shift).sum()
    np.testing.assert_allclose(shares, [0.5, 1 / 6, 1 / 3], rtol=1e-3)


def test_small_data_get_the_fewest_steps_per_epoch():
    from gmenn_formula.mstep.networks import FixedPart, mlp
    from gmenn_formula.mstep.step import train_epoch

    rows = Rows(
        X_networks=(torch.randn(30, 1),), X_fixed=torch.zeros(30, 0), offset=torch.zeros(30),
        y=torch.randn(30), trials=torch.ones(30), codes=(), Z=(),
    )
    model = FixedPart([mlp(1, 1, (4,), 0.0, "relu")], 0, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_epoch(model, optimizer, get_family("gaussian"), rows, None, 1.0, 512, torch.Generator().manual_seed(0))
    assert optimizer.state[next(model.parameters())]["step"] == MIN_STEPS_PER_EPOCH
