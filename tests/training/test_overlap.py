"""The E-step beside the M-step: while training on a worker thread with the network output one epoch old;
in the Newton blocks the next epoch's draws beside this epoch's M-step, the same sampler calls as without; torch threads restored."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import gmenn_formula as gf
from gmenn_formula.simulation import paper_scenario
from gmenn_formula.training.watchdog import WatchedSampler

TINY = dict(epochs=4, patience=4, final_epochs=3, average_epochs=2, max_average_epochs=2, verbose=0, sampler="whitened")


@pytest.fixture(scope="module")
def data():
    return paper_scenario(rows=600, features=3, levels=(20,), variances=(0.5,), family="gaussian", seed=4).data


@pytest.fixture
def draw_calls(monkeypatch):
    """Per E-step call: the thread that asked for it (the watchdog then runs it on a thread of its
    own, tested in tests/errors/test_watchdog.py) and the F it was given."""
    calls: list[tuple[str, np.ndarray]] = []
    original = WatchedSampler.draw

    def recording(self, F, *args):
        calls.append((threading.current_thread().name, np.array(F)))
        return original(self, F, *args)

    monkeypatch.setattr(WatchedSampler, "draw", recording)
    return calls


def test_training_draws_run_beside_the_m_step_given_last_epochs_network(data, draw_calls):
    threads = torch.get_num_threads()
    fit = gf.gmenn("y ~ nn(x0 + x1 + x2) + (1 | g0)", data, **TINY)
    assert torch.get_num_threads() == threads
    train = fit.history[fit.history["phase"] == "train"]
    training_calls = draw_calls[: len(train) + 1]  # one draw ahead of the last epoch is made and dropped
    assert training_calls[0][0] == threading.main_thread().name
    assert all(name.startswith("gmenn-estep") for name, _ in training_calls[1:])
    # Epoch 1 draws given the initial network, and the draw for epoch 2 is made from the same network
    # (a copy taken before epoch 1's M-step); epoch 3's draw sees the network after epoch 1's M-step.
    np.testing.assert_array_equal(training_calls[0][1], training_calls[1][1])
    assert not np.array_equal(training_calls[1][1], training_calls[2][1])
    final_em = (fit.history["phase"] == "em").sum()
    assert all(name == threading.main_thread().name for name, _ in draw_calls[len(train) + 1 : len(train) + 1 + final_em])
    assert (train["seconds"] >= train["mstep_seconds"]).all()


@pytest.fixture(scope="module")
def binary_data():
    return paper_scenario(rows=2_000, features=2, levels=(40, 15), variances=(0.5, 0.3), family="binomial", seed=2).data


BLOCKS = dict(verbose=0, seed=3, average_epochs=20, max_average_epochs=60)


def test_block_draws_run_ahead_except_after_a_look(binary_data, draw_calls):
    fit = gf.gmenn("y ~ x0 + (1 | g0) + (1 | g1)", binary_data, family="binomial", **BLOCKS)
    phases = fit.history["phase"].to_numpy()
    assert len(draw_calls) == len(phases)  # no draw made ahead and dropped
    blocks = phases == "average"
    ahead = np.array([name == "gmenn-estep-ahead" for name, _ in draw_calls])
    assert ahead[blocks].sum() >= blocks.sum() // 2 and not ahead[~blocks].any()
    first = np.flatnonzero(blocks)[0]
    assert not ahead[first]  # a block's first epoch follows a change of the parameters
    window = gf.FitConfig().convergence.window
    assert not ahead[first + window]  # after a look the block may have ended: drawn on demand
    average = fit.history[blocks]
    assert (average["seconds"] >= average["mstep_seconds"]).all()


def test_blocks_draw_the_same_with_and_without_the_worker(binary_data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the M-step's sums in one order both ways
    try:
        fits = [gf.gmenn("y ~ x0 + (1 | g0) + (1 | g1)", binary_data, family="binomial", overlap_estep=o, **BLOCKS) for o in (True, False)]
    finally:
        torch.set_num_threads(threads)
    assert len(fits[0].history) == len(fits[1].history)
    np.testing.assert_array_equal(fits[0].varcorr()["variance"], fits[1].varcorr()["variance"])
    np.testing.assert_array_equal(fits[0].fixef()["estimate"], fits[1].fixef()["estimate"])


def test_strict_alternation_draws_on_the_main_thread(data, draw_calls):
    fit = gf.gmenn("y ~ nn(x0 + x1 + x2) + (1 | g0)", data, overlap_estep=False, **TINY)
    assert all(name == threading.main_thread().name for name, _ in draw_calls)
    train = fit.history[fit.history["phase"] == "train"]
    assert len(draw_calls) == len(fit.history)
    np.testing.assert_allclose(train["seconds"] - train["mstep_seconds"], train["estep_seconds"], atol=1e-9)


def test_one_e_step_compilation_serves_training_and_final_phase(data, monkeypatch):
    from gmenn_formula.estep import driver

    structures = []
    original = driver.model_kernels
    monkeypatch.setattr(driver, "model_kernels", lambda structure: structures.append(structure) or original(structure))
    fit = gf.gmenn("y ~ nn(x0 + x1 + x2) + (1 | g0)", data, **TINY)
    assert len(structures) == 1 and structures[0].n == len(data)  # all rows
    assert set(fit.history["phase"]) >= {"train", "em", "average"}
