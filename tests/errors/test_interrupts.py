"""Ctrl-C (KeyboardInterrupt) during a fit returns the fit so far, flagged interrupted, which
predicts, prints and saves; the command line saves it and exits with 130."""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
from support.sleepstudy_like import sleepstudy_like

import gmenn_formula as gf
import gmenn_formula.training.fit
import gmenn_formula.training.guard
from gmenn_formula.cli import EXIT_INTERRUPTED, main
from gmenn_formula.errors import ConvergenceWarning
from gmenn_formula.training.progress import ProgressBar

NETWORK = "Reaction ~ nn(Days) + (1 | Subject)"
GLMM = "Reaction ~ Days + (1 | Subject)"
TINY = dict(epochs=6, patience=6, final_epochs=2, average_epochs=2, max_average_epochs=2, verbose=0)


@pytest.fixture(scope="module")
def data():
    return sleepstudy_like()


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A model file of a GLMM fit that ran to its end."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gf.gmenn(GLMM, data, **TINY).save(tmp_path_factory.mktemp("finished") / "finished.gmenn")


def _rewrite(source: Path, target: Path, change) -> Path:
    """Copy the model file ``source`` to ``target`` with ``change(members)`` applied to its {name: bytes}."""
    with zipfile.ZipFile(source) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    with zipfile.ZipFile(target, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return target


@pytest.fixture
def ctrl_c_at(monkeypatch):
    """``ctrl_c_at(epoch)``: a KeyboardInterrupt from the progress callback once that epoch is logged."""

    def arm(epoch: int) -> None:
        def update(self, record):
            if record.epoch == epoch:
                raise KeyboardInterrupt

        monkeypatch.setattr(ProgressBar, "update", update)

    return arm


def _check_interrupted(fit: gf.GmennResult, data, epoch: int, phase: str, tmp_path: Path) -> None:
    assert isinstance(fit, gf.GmennResult) and fit.interrupted and not fit.state.converged
    note = f"The fit was interrupted (Ctrl-C) after epoch {epoch} ({phase} phase)"
    assert any(note in m for m in fit.state.messages) and note in str(fit.summary())
    assert fit.state.epochs == epoch == len(fit.history)
    table = fit.varcorr()
    assert np.isfinite(table["variance"]).all() and table["mcse"].isna().any()
    predictions = fit.predict(data)
    assert predictions.shape == (len(data),) and np.isfinite(predictions).all()
    loaded = gf.load(fit.save(tmp_path / "interrupted.gmenn"))
    assert loaded.interrupted and loaded.state.messages == fit.state.messages
    np.testing.assert_allclose(loaded.predict(data), predictions, rtol=1e-6)
    assert not [t for t in threading.enumerate() if t.name.startswith("gmenn-estep")]


def test_ctrl_c_while_the_network_trains_returns_the_best_network(data, ctrl_c_at, tmp_path):
    ctrl_c_at(2)
    with pytest.warns(ConvergenceWarning, match="interrupted"):
        fit = gf.gmenn(NETWORK, data, **TINY)
    _check_interrupted(fit, data, 2, "train", tmp_path)
    assert fit.state.best_epoch in (1, 2) and np.isfinite(fit.state.best_validation_loss)


def test_ctrl_c_in_the_variance_phases_returns_the_last_epoch(data, ctrl_c_at, tmp_path):
    ctrl_c_at(3)
    with pytest.warns(ConvergenceWarning, match="interrupted"):
        fit = gf.gmenn(GLMM, data, closed_form=False, **TINY)  # Monte Carlo EM, not the gaussian closed form
    _check_interrupted(fit, data, 3, "em", tmp_path)
    assert fit.varcorr()["variance"].iloc[0] == pytest.approx(float(fit.state.history[-1].covariances[0][0, 0, 0]))


def test_ctrl_c_in_a_newton_block_stops_the_e_step_drawn_ahead(monkeypatch, tmp_path):
    """A binomial GLMM's blocks draw the next epoch on a worker thread: a Ctrl-C once a block's
    first epoch is logged (the next draw submitted) returns the fit with no E-step thread left."""
    from gmenn_formula.simulation import paper_scenario

    binary = paper_scenario(rows=800, features=2, levels=(20,), variances=(0.5,), family="binomial", seed=1).data
    stopped = []

    def update(self, record):
        if record.phase == "average" and not stopped:
            stopped.append(record.epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(ProgressBar, "update", update)
    with pytest.warns(ConvergenceWarning, match="interrupted"):
        fit = gf.gmenn("y ~ x0 + (1 | g0)", binary, family="binomial", verbose=0, seed=0)
    _check_interrupted(fit, binary, stopped[0], "average", tmp_path)


def test_ctrl_c_before_any_epoch_goes_on_to_the_caller(data, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gmenn_formula.training.guard, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        gf.gmenn(NETWORK, data, **TINY)
    assert not [t for t in threading.enumerate() if t.name.startswith("gmenn-estep")]


def test_second_ctrl_c_while_finishing_goes_on_to_the_caller(data, ctrl_c_at, monkeypatch):
    ctrl_c_at(2)

    def interrupted_again(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gmenn_formula.training.fit, "_interrupted", interrupted_again)
    with pytest.raises(KeyboardInterrupt):
        gf.gmenn(GLMM, data, **TINY)


def test_command_line_saves_the_interrupted_fit_and_exits_130(data, ctrl_c_at, tmp_path):
    data.to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "model.gmenn"
    ctrl_c_at(2)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(["fit", GLMM, str(tmp_path / "train.csv"), "-o", str(model), "--epochs", "6", "--verbose", "0"])
    assert status == EXIT_INTERRUPTED == 130
    assert f"saved to {model} (interrupted: the fit so far)" in out.getvalue()
    assert gf.load(model).interrupted


def test_files_without_the_flag_or_the_output_offset_still_load(data, finished, tmp_path):
    def as_before(members: dict[str, bytes]) -> None:
        meta = json.loads(members["model.json"])
        del meta["fit"]["interrupted"]
        members["model.json"] = json.dumps(meta).encode()
        weights = safetensors.torch.load(members["weights.safetensors"])
        del weights["output_offset"]
        members["weights.safetensors"] = safetensors.torch.save(weights)

    loaded = gf.load(_rewrite(finished, tmp_path / "old.gmenn", as_before))
    assert loaded.interrupted is False
    np.testing.assert_allclose(loaded.predict(data), gf.load(finished).predict(data))


def test_nan_errors_are_refused_in_files_of_fits_that_finished(finished, tmp_path):
    def unknown_errors(members: dict[str, bytes]) -> None:
        arrays = safetensors.numpy.load(members["arrays.safetensors"])
        arrays["covariance_se/0"] = np.full_like(arrays["covariance_se/0"], np.nan)
        members["arrays.safetensors"] = safetensors.numpy.save(arrays)

    with pytest.raises(gf.GmennError, match="covariance_se/0 holds non-finite values"):
        gf.load(_rewrite(finished, tmp_path / "nan.gmenn", unknown_errors))


def test_a_real_sigint_is_taken_once_the_epoch_is_logged(data, monkeypatch, tmp_path):
    """SIGINT itself (not a KeyboardInterrupt raised by hand): deferred to the end of the epoch it
    arrives in, wherever the main thread was, then the fit so far comes back."""

    def update(self, record):
        if record.epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # the handler runs here: it only sets the flag

    monkeypatch.setattr(ProgressBar, "update", update)
    with _sigint_handler(signal.default_int_handler):  # as in a terminal; a background job inherits SIG_IGN
        with pytest.warns(ConvergenceWarning, match="interrupted"):
            fit = gf.gmenn(NETWORK, data, **TINY)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _check_interrupted(fit, data, 2, "train", tmp_path)


def test_a_process_that_ignores_sigint_goes_on_ignoring_it(data, monkeypatch):
    """A background job (``nohup``, ``cmd &``) ignores SIGINT: a fit there runs to its end."""

    def update(self, record):
        if record.epoch == 2:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ProgressBar, "update", update)
    with _sigint_handler(signal.SIG_IGN):
        fit = gf.gmenn(NETWORK, data, **TINY)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    assert not fit.interrupted


@contextlib.contextmanager
def _sigint_handler(handler):
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_during_a_lazy_import_of_the_package_waits_for_it(tmp_path, monkeypatch):
    """torch's import runs C++ code that calls back into Python: a KeyboardInterrupt raised in such a
    callback aborted the process (``terminate called after throwing ... KeyboardInterrupt``, exit -6).
    ``gf.gmenn`` and the other lazy names import with Ctrl-C deferred, raising it once the import is done."""
    (tmp_path / "interrupted_import_probe.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.2)\ndone = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(gf._LAZY, "done", "interrupted_import_probe")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job's SIG_IGN would hide it
    try:
        with pytest.raises(KeyboardInterrupt):
            gf.done
    finally:
        signal.signal(signal.SIGINT, previous)
    assert getattr(sys.modules.get("interrupted_import_probe"), "done", False)  # the import ran to its end
