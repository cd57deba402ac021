"""Fit settings (``**control``) a user gets wrong: a ControlError that names the setting and what it
accepts, raised before any fitting starts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support.sleepstudy_like import sleepstudy_like

import gmenn_formula as gf
import gmenn_formula.api
import gmenn_formula.training.fit
from gmenn_formula.errors import ControlError
from gmenn_formula.training.config import FitConfig

FORMULA = "Reaction ~ Days + (1 | Subject)"


@pytest.fixture(scope="module")
def data():
    return sleepstudy_like()


@pytest.fixture
def no_design(monkeypatch):
    """Building the design fails the test: the settings must be refused before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the design was built before the settings were checked")

    monkeypatch.setattr(gmenn_formula.api, "build_design", refuse)


@pytest.fixture
def no_fitting(monkeypatch):
    """Starting either schedule fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("fitting started before the settings were checked")

    monkeypatch.setattr(gmenn_formula.training.fit, "fit_glmm", refuse)
    monkeypatch.setattr(gmenn_formula.training.fit, "fit_network", refuse)


@pytest.mark.parametrize(
    ("control", "fragments"),
    [
        ({"epochs": "10"}, ["epochs='10'", "an integer >= 1"]),
        ({"epochs": 2.5}, ["epochs=2.5", "an integer >= 1"]),
        ({"epochs": 0}, ["epochs=0", "an integer >= 1", "or None for the default"]),
        ({"epochs": True}, ["epochs=True", "an integer >= 1"]),
        ({"batch_size": "64"}, ["batch_size='64'", "an integer >= 1"]),
        ({"batch_size": 0}, ["batch_size=0", "an integer >= 1"]),
        ({"seed": "abc"}, ["seed='abc'", "an integer >= 0"]),
        ({"seed": -1}, ["seed=-1", "an integer >= 0"]),
        ({"seed": 2**32}, ["seed=4294967296", "<= 4.29497e+09"]),
        ({"device": "tpu"}, ["device='tpu'", "'auto', 'cpu', 'cuda' or 'cuda:N'"]),
        ({"device": "cuda:x"}, ["device='cuda:x'", "'auto', 'cpu', 'cuda' or 'cuda:N'"]),
        ({"device": 0}, ["device=0", "'auto', 'cpu', 'cuda' or 'cuda:N'"]),
        ({"verbose": "yes"}, ["verbose='yes'", "an integer >= 0 and <= 2"]),
        ({"verbose": 3}, ["verbose=3", "an integer >= 0 and <= 2"]),
        ({"learning_rate": -1}, ["learning_rate=-1", "a number > 0"]),
        ({"learning_rate": 0.0}, ["learning_rate=0.0", "a number > 0"]),
        ({"learning_rate": float("nan")}, ["learning_rate=nan", "a number > 0"]),
        ({"learning_rate": float("inf")}, ["learning_rate=inf", "a number > 0"]),
        ({"learning_rate": "0.01"}, ["learning_rate='0.01'", "a number > 0"]),
        ({"draws": 0}, ["draws=0", "an integer >= 1"]),
        ({"burn_in": -1}, ["burn_in=-1", "an integer >= 0"]),
        ({"chains": 0}, ["chains=0", "an integer >= 1 and <= 64"]),
        ({"chains": 65}, ["chains=65", "an integer >= 1 and <= 64"]),
        ({"chains": 2.0}, ["chains=2.0", "an integer >= 1 and <= 64"]),
        ({"patience": 0}, ["patience=0", "an integer >= 1"]),
        ({"validation_fraction": 0.5}, ["validation_fraction=0.5", "a number > 0 and < 0.5"]),
        ({"penalty": -0.5}, ["penalty=-0.5", "a number >= 0"]),
        ({"overlap_estep": "no"}, ["overlap_estep='no'", "True or False"]),
        ({"closed_form": "yes"}, ["closed_form='yes'", "True or False"]),
        ({"closed_form": 1}, ["closed_form=1", "True or False"]),
        ({"laplace_start": "no"}, ["laplace_start='no'", "True or False"]),
        ({"laplace_start": None}, ["laplace_start=None", "True or False"]),
        ({"sampler": "nuts"}, ["sampler='nuts'", "'auto' or 'exact' or 'whitened' or 'paper'"]),
        ({"max_tree_depth": 13}, ["max_tree_depth=13", "an integer >= 1 and <= 12"]),
        ({"tolerance": 0}, ["tolerance=0", "a number > 0"]),
        ({"window": 1}, ["window=1", "an integer >= 2"]),
        ({"mcse_target": -0.1}, ["mcse_target=-0.1", "a number > 0"]),
        ({"epoch": 3}, ["Unknown fit setting 'epoch'", "Did you mean 'epochs'?", "Settings: ", "learning_rate"]),
        ({"lr": 0.1}, ["Unknown fit setting 'lr'", "Settings: ", "learning_rate"]),
        ({"burn_in": 4, "draws": 4}, ["burn_in=4", "draws=4", "burn_in must be smaller than both draws settings"]),
        ({"average_epochs": 50, "max_average_epochs": 10}, ["max_average_epochs=10", "average_epochs=50", "at least the minimum"]),
    ],
)
def test_invalid_setting_is_refused_before_the_design(control, fragments, data, no_design):
    with pytest.raises(ControlError) as info:
        gf.gmenn(FORMULA, data, **control)
    assert isinstance(info.value, ValueError)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present, so device='cuda' is valid")
def test_missing_gpu_is_refused_before_fitting(data, no_fitting):
    with pytest.raises(ControlError, match=r"device='cuda' asks for a GPU that torch does not see here; use device='auto' or 'cpu'"):
        gf.gmenn(FORMULA, data, device="cuda")


def test_exact_sampler_off_gaussian_is_refused_before_fitting(data, no_fitting):
    binary = data.assign(Reaction=(data["Reaction"] > data["Reaction"].median()).astype(int))
    with pytest.raises(ControlError, match=r"sampler='exact' draws gaussian random effects exactly; other families need 'whitened' or 'paper'"):
        gf.gmenn(FORMULA, binary, family="binomial", sampler="exact")


def test_numpy_numbers_are_accepted_as_python_numbers():
    config = FitConfig.from_control(epochs=np.int64(3), learning_rate=np.float32(0.5), batch_size=np.int32(64))
    assert config.training.epochs == 3 and type(config.training.epochs) is int
    assert config.training.learning_rate == 0.5 and type(config.training.learning_rate) is float
    assert type(config.training.batch_size) is int
    assert FitConfig.from_control(**config.to_control()) == config


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1"])
def test_device_names_of_the_right_form_pass_the_settings_check(device):
    assert FitConfig.from_control(device=device).runtime.device == device
