"""No E-step call blocks forever: past its time bound the fit stops with EStepTimeoutError,
which carries the fit so far; a Ctrl-C reaches the fit at once, also while XLA compiles."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

import numpy as np
import pytest
from support.sleepstudy_like import sleepstudy_like

import gmenn_formula as gf
from gmenn_formula.cli import EXIT_ERROR, main
from gmenn_formula.errors import ControlError, ConvergenceWarning, EStepTimeoutError
from gmenn_formula.estep.gaussian import GaussianEStep
from gmenn_formula.training import watchdog
from gmenn_formula.training.watchdog import DaemonCall, WatchedSampler

GLMM = "Reaction ~ Days + (1 | Subject)"
NETWORK = "Reaction ~ nn(Days) + (1 | Subject)"
TINY = dict(epochs=8, patience=8, final_epochs=2, average_epochs=2, max_average_epochs=2, verbose=0)


@pytest.fixture(scope="module")
def data():
    return sleepstudy_like()


class _Sampler:
    """An E-step stand-in whose draw waits ``delays[call]`` seconds (or until ``release``)."""

    chunk = 1

    def __init__(self, delays: list[float]) -> None:
        self.delays = delays
        self.calls = 0
        self.release = threading.Event()

    def draw(self, F, covariances, dispersion, num_draws, burn_in, chains=1):
        delay = self.delays[min(self.calls, len(self.delays) - 1)]
        self.calls += 1
        self.release.wait(delay)
        return "draws"


def test_the_automatic_bound_is_generous_for_the_first_call_then_scales_with_the_slowest():
    watched = WatchedSampler(_Sampler([0.0]), timeout=None)
    assert watched.bound() == watchdog.FIRST_CALL_SECONDS
    watched.draw(None, [], 1.0, 1, 0)
    assert watched.bound() == watchdog.LATER_FLOOR_SECONDS
    watched.slowest = 100.0
    assert watched.bound() == watchdog.LATER_FACTOR * 100.0
    assert WatchedSampler(_Sampler([0.0]), timeout=5.0).bound() == 5.0


def test_a_call_past_the_bound_raises_and_names_the_bound():
    sampler = _Sampler([0.0, 60.0])
    watched = WatchedSampler(sampler, timeout=0.5)
    assert watched.draw(None, [], 1.0, 4, 1) == "draws"
    started = time.perf_counter()
    with pytest.raises(EStepTimeoutError, match=r"ran past 0 s; the slowest of the 1 calls before") as caught:
        watched.draw(None, [], 1.0, 4, 1)
    assert time.perf_counter() - started < 5 and caught.value.seconds == 0.5 and caught.value.result is None
    assert isinstance(caught.value, TimeoutError)
    sampler.release.set()


def test_errors_inside_the_call_reach_the_caller_unchanged():
    def fails():
        raise ValueError("inside the sampler")

    with pytest.raises(ValueError, match="inside the sampler"):
        DaemonCall(fails, "gmenn-test").result(timeout=10)


@pytest.mark.parametrize("value", [0, -1.0, "10", float("inf"), True])
def test_estep_timeout_must_be_a_positive_number(value):
    with pytest.raises(ControlError, match=r"estep_timeout=.* it must be a number > 0 \(or None"):
        gf.FitConfig.from_control(estep_timeout=value)


@pytest.fixture
def stuck_on_call(monkeypatch):
    """``stuck_on_call(n)``: the gaussian E-step's n-th draw (1-based) blocks until the test ends."""
    release = threading.Event()

    def arm(n: int) -> None:
        draw = GaussianEStep.draw
        calls = []

        def maybe_stuck(self, *args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                release.wait(120)
            return draw(self, *args, **kwargs)

        monkeypatch.setattr(GaussianEStep, "draw", maybe_stuck)

    yield arm
    release.set()


@pytest.mark.parametrize(("formula", "phase"), [(GLMM, "em"), (NETWORK, "train")])
def test_a_stuck_estep_stops_the_fit_with_the_fit_so_far(data, stuck_on_call, formula, phase):
    stuck_on_call(4)
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.raises(EStepTimeoutError, match="ran past 3 s") as caught:
            gf.gmenn(formula, data, closed_form=False, estep_timeout=3.0, **TINY)
    assert time.perf_counter() - started < 60
    fit = caught.value.result
    assert isinstance(fit, gf.GmennResult) and fit.interrupted and not fit.state.converged
    assert any("stopped by the E-step's time bound after epoch" in m and f"({phase} phase)" in m for m in fit.state.messages)
    assert len(fit.history) >= 2 and np.isfinite(fit.varcorr()["variance"]).all()
    assert np.isfinite(fit.predict(data)).all() and "time bound" in str(fit.summary())


def test_a_stuck_first_call_raises_without_a_fit(data, stuck_on_call):
    stuck_on_call(1)
    with pytest.raises(EStepTimeoutError) as caught:
        gf.gmenn(GLMM, data, closed_form=False, estep_timeout=2.0, **TINY)
    assert caught.value.result is None


def test_the_command_line_saves_the_fit_so_far_after_a_timeout(data, stuck_on_call, tmp_path):
    data.to_csv(tmp_path / "train.csv", index=False)
    model = tmp_path / "model.gmenn"
    stuck_on_call(4)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(["fit", GLMM, str(tmp_path / "train.csv"), "-o", str(model), "--epochs", "8", "--no-closed-form",
                       "--estep-timeout", "3", "--verbose", "0"])
    assert status == EXIT_ERROR
    assert f"the fit so far saved to {model}" in err.getvalue() and "error: An E-step call" in err.getvalue()
    assert gf.load(model).interrupted


BINOMIAL_FIT = """
import signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (a background job inherits SIG_IGN)
import numpy as np, pandas as pd, sys
from gmenn_formula.cli import main
rng = np.random.default_rng(0)
g = rng.integers(0, 40, 2000)
x = rng.normal(size=2000)
y = (rng.random(2000) < 1 / (1 + np.exp(-(0.5 * x + rng.normal(0, 1, 40)[g])))).astype(int)
pd.DataFrame({"y": y, "x": x, "g": g.astype(str)}).to_csv(sys.argv[1], index=False)
print("ready", flush=True)
sys.exit(main(["fit", "y ~ x + (1 | g)", sys.argv[1], "-o", sys.argv[2], "--family", "binomial", "--verbose", "0"]))
"""


@pytest.mark.parametrize("delay", [0.5, 3.0, 6.0])
def test_ctrl_c_at_any_moment_of_a_first_fit_exits_130_without_a_crash(tmp_path, delay):
    """Ctrl-C while the engine imports, builds the PyMC model or XLA compiles the sampler (in a
    fresh JAX cache and E-step store, so that tracing and compilation happen: with the structure
    stored by an earlier test the whole fit could end before the last delay): exit 130, never a signal."""
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    process = subprocess.Popen(
        [sys.executable, "-c", BINOMIAL_FIT, str(tmp_path / "train.csv"), str(tmp_path / "m.gmenn")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    assert process.stdout.readline().strip() == "ready"
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
