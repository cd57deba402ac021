"""EStep: row weights decide which rows the draws condition on; epochs of any K from one compiled
chunk; an epoch's chunks dealt to independent chains side by side."""

from __future__ import annotations

import time

import jax
import numpy as np
import pytest

from gmenn_formula.errors import ControlError
from gmenn_formula.estep.driver import EStep, chains_for, row_bucket
from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.estep.runtime import SetupClock
from gmenn_formula.estep.sampler import SamplerConfig
from gmenn_formula.families import get_family

PRIOR_VARIANCE, RESIDUAL_VARIANCE = 1.0, 1.0


def one_level_estep(y: np.ndarray, weights: np.ndarray, chunk: int = 2) -> EStep:
    n = len(y)
    terms = (TermArrays(codes=np.zeros(n, np.int32), Z=np.ones((n, 1), np.float32), num_levels=1),)
    config = SamplerConfig(num_draws=chunk, burn_in=0, max_tree_depth=3)
    return EStep(get_family("gaussian"), terms, y.astype(np.float32), np.ones(n, np.float32), weights, 1, config, seed=0)


def posterior_draws(estep: EStep, epochs: int, num_draws: int = 4, chains: int = 1) -> np.ndarray:
    F, covariances = np.zeros((estep.num_rows, 1), np.float32), [np.full((1, 1, 1), PRIOR_VARIANCE)]
    return np.concatenate([estep.draw(F, covariances, RESIDUAL_VARIANCE, num_draws, 1, chains).effects[0].ravel() for _ in range(epochs)])


def conjugate_mean(y: np.ndarray) -> float:
    return float(y.sum() / RESIDUAL_VARIANCE / (len(y) / RESIDUAL_VARIANCE + 1 / PRIOR_VARIANCE))


def test_rows_weighted_zero_do_not_inform_the_draws():
    """Ten rows near 1 weigh 1, ten rows at 50 weigh 0: the draws follow the first ten alone,
    and after set_weights(ones) all twenty."""
    y = np.concatenate([np.linspace(0.5, 1.5, 10), np.full(10, 50.0)])
    estep = one_level_estep(y, np.r_[np.ones(10), np.zeros(10)])
    draws = posterior_draws(estep, 150)
    assert draws.mean() == pytest.approx(conjugate_mean(y[:10]), abs=0.1)
    estep.set_weights(np.ones(20))
    posterior_draws(estep, 10)
    assert posterior_draws(estep, 150).mean() == pytest.approx(conjugate_mean(y), abs=0.2)


def test_epochs_of_any_multiple_of_the_chunk_share_one_compilation():
    estep = one_level_estep(np.ones(8), np.ones(8), chunk=2)
    F, covariances = np.zeros((8, 1), np.float32), [np.ones((1, 1, 1))]
    four = estep.draw(F, covariances, 1.0, 4, 1)
    assert four.effects[0].shape == (3, 1, 1, 1) and four.info.acceptance_rate.shape == (4,)
    assert estep.draw(F, covariances, 1.0, 2, 1).effects[0].shape == (1, 1, 1, 1)

    with pytest.raises(ControlError, match="chunks of 2 draws cannot make K=3"):
        estep.draw(F, covariances, 1.0, 3, 1)
    with pytest.raises(ControlError, match="burn_in=0"):
        EStep(estep.family, (), np.ones(2), np.ones(2), np.ones(2), 1, SamplerConfig(num_draws=2, burn_in=1), seed=0)


def test_rows_are_padded_to_a_bucket_that_shares_the_compiled_functions_and_adds_nothing():
    """999 rows are padded to their bucket, 1,000: the padded E-step shares the compiled model of
    1,000 rows, and draws exactly as one given the 1,000th row with weight 0 (the padding adds
    nothing to the log density, not even a constant), at the posterior of the 999 rows."""
    y = np.r_[50.0, np.ones(998)]
    padded = one_level_estep(y, np.ones(999))
    explicit = one_level_estep(np.r_[y, 50.0], np.r_[np.ones(999), 0.0])
    assert row_bucket(999) == 1000 and padded.padded_rows == 1000 and padded.num_rows == 999
    assert padded.kernels is explicit.kernels
    F, covariances = np.zeros((999, 1), np.float32), [np.full((1, 1, 1), PRIOR_VARIANCE)]
    ours, theirs = padded.draw(F, covariances, 1.0, 4, 1), explicit.draw(np.zeros((1000, 1), np.float32), covariances, 1.0, 4, 1)
    np.testing.assert_allclose(ours.info.logdensity, theirs.info.logdensity, rtol=1e-6)
    np.testing.assert_allclose(ours.effects[0], theirs.effects[0], rtol=1e-5)
    assert posterior_draws(padded, 80).mean() == pytest.approx(conjugate_mean(y), abs=0.015)


@pytest.mark.parametrize(("rows", "bucket"), [(1, 1), (64, 64), (100, 100), (999, 1000), (1000, 1000), (1010, 1016), (16_040, 16_128), (10**6, 1_007_616)])
def test_a_bucket_adds_at_most_a_64th_of_the_rows(rows, bucket):
    assert row_bucket(rows) == bucket and bucket - rows <= rows / 64


COMPILE_REQUEST = "/jax/compilation_cache/compile_requests_use_cache"
"""JAX's event for each module handed to XLA (compiled, or read from the persistent cache)."""


def test_epochs_after_the_first_compile_nothing():
    """The first epoch's inputs are placed by the driver, later ones are the sampler's outputs:
    the compiled functions must see them alike (they lowered to a second module of the whitening
    and of the sampler, each compiled again)."""
    estep = one_level_estep(np.ones(8), np.ones(8), chunk=2)
    F, covariances = np.zeros((8, 1), np.float32), [np.ones((1, 1, 1))]
    estep.draw(F, covariances, 1.0, 4, 1)
    requests = []
    listener = lambda event, **_: requests.append(event) if event == COMPILE_REQUEST else None  # noqa: E731
    jax.monitoring.register_event_listener(listener)
    try:
        for _ in range(2):
            estep.draw(F, covariances, 1.0, 4, 1)
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert requests == []


def test_a_draw_reports_the_seconds_it_spent_making_compiled_code():
    """The first draw of a setting this process has not built reports the loading or tracing of its
    functions and their compilation (above 0, at most the call's wall time); the next draw, none."""
    estep = one_level_estep(np.ones(11), np.ones(11), chunk=3)  # a row count and chunk no other test uses
    F, covariances = np.zeros((11, 1), np.float32), [np.ones((1, 1, 1))]
    started = time.perf_counter()
    first = estep.draw(F, covariances, 1.0, 3, 1)
    assert 0.0 < first.setup_seconds <= time.perf_counter() - started
    assert estep.draw(F, covariances, 1.0, 3, 1).setup_seconds == 0.0


def test_the_setup_clock_counts_overlapping_intervals_once_and_only_within_the_window():
    clock = SetupClock()
    for start, end in [(1.0, 3.0), (2.0, 4.0), (10.0, 11.0)]:
        clock.add(start, end)
    assert clock.seconds(0.0, 5.0) == pytest.approx(3.0)
    assert clock.seconds(2.5, 10.5) == pytest.approx(2.0)
    assert clock.seconds(5.0, 9.0) == 0.0
    clock.on_event("/jax/core/compile/backend_compile_duration", 0.5)
    clock.on_event("/jax/some/other_duration", 100.0)
    assert clock.seconds(time.perf_counter() - 10.0, time.perf_counter()) == pytest.approx(0.5)


def _many_class_estep(num_coefs: int, kind: str = "whitened") -> EStep:
    """20 classes, one 30-level term with ``num_coefs`` coefficients, 400 rows."""
    rng = np.random.default_rng(0)
    n, classes = 400, 20
    Z = np.concatenate([np.ones((n, 1)), rng.normal(size=(n, num_coefs - 1))], axis=1).astype(np.float32)
    terms = (TermArrays(codes=rng.integers(0, 30, n).astype(np.int32), Z=Z, num_levels=30),)
    config = SamplerConfig(kind=kind, num_draws=2, burn_in=0, max_tree_depth=3)
    y = rng.integers(0, classes, n)
    return EStep(get_family("categorical"), terms, y, np.ones(n, np.float32), np.ones(n, np.float32), classes, config, seed=0)


def test_a_dense_whitening_larger_than_the_free_memory_is_refused_with_what_to_do(monkeypatch):
    """20 classes with a random slope need the dense whitening (400 rows x 40 x 40 blocks + the
    20 x 20 information: 2.9 MB); with 1 MB free it is refused, naming the sizes and the ways out,
    before any memory is taken. One coefficient per term (rank-one whitening) and the unwhitened
    'paper' sampler need no such memory."""
    import gmenn_formula.estep.driver as driver

    monkeypatch.setattr(driver, "available_memory", lambda: 2**20)
    with pytest.raises(ControlError) as error:
        _many_class_estep(num_coefs=2)
    message = str(error.value)
    for part in ("3 MiB", "1 MiB are free", "400 rows", "2 coefficients x 20 classes = 40 dimensions", "sampler='paper'", "one coefficient per term"):
        assert part in message
    _many_class_estep(num_coefs=1)
    _many_class_estep(num_coefs=2, kind="paper")


@pytest.mark.parametrize(
    "num_chunks, chunk, burn_in, most, expected",
    [
        (2, 2, 1, 2, 2),  # the final phase's K = 4 in chunks of 2: two chains of 2, each keeping 1 after burn-in
        (1, 2, 1, 2, 1),  # training's K = 2: one chunk, one chain
        (3, 2, 0, 2, 1),  # three chunks do not share evenly between two chains
        (2, 1, 1, 2, 1),  # two chains of one draw would keep nothing after burn-in
        (4, 1, 1, 4, 2),
        (32, 2, 1, 1, 1),
    ],
)
def test_chains_share_the_chunks_evenly_and_each_keeps_a_draw(num_chunks, chunk, burn_in, most, expected):
    assert chains_for(num_chunks, chunk, burn_in, most) == expected


def _binomial_estep() -> EStep:
    """Two crossed terms (30 and 20 levels), 600 binary rows."""
    rng = np.random.default_rng(1)
    n = 600
    terms = tuple(TermArrays(rng.integers(0, q, n).astype(np.int32), np.ones((n, 1), np.float32), q) for q in (30, 20))
    config = SamplerConfig(num_draws=2, burn_in=0, max_tree_depth=4)
    y = rng.integers(0, 2, n).astype(np.float32)
    return EStep(get_family("binomial"), terms, y, np.ones(n, np.float32), np.ones(n, np.float32), 1, config, seed=0)


def _epochs(estep: EStep, epochs: int, num_draws: int = 4, burn_in: int = 1, chains: int = 2) -> list:
    F, covariances = np.zeros((600, 1), np.float32), [np.full((1, 1, 1), 0.5), np.full((1, 1, 1), 0.3)]
    return [estep.draw(F, covariances, 1.0, num_draws, burn_in, chains) for _ in range(epochs)]


def test_two_chains_keep_their_draws_after_each_burn_in_and_do_not_depend_on_threads():
    """K = 4 in chunks of 2 on two chains: each drops its first draw (2 kept, 4 diagnosed); the
    second chain starts as a copy of the first (after one-chain epochs) and the two part; the
    draws are those of the same chains run one after the other, and of a second E-step with the seed."""
    side, other, sequential = _binomial_estep(), _binomial_estep(), _binomial_estep()
    sequential.side_by_side = False
    for estep in (side, other, sequential):
        _epochs(estep, 2, chains=1)
    first = side.states[0].position[0]
    runs = [_epochs(estep, 3) for estep in (side, other, sequential)]
    for epoch in runs[0]:
        assert [B.shape for B in epoch.effects] == [(2, 30, 1, 1), (2, 20, 1, 1)]
        assert epoch.info.acceptance_rate.shape == (4,)
        assert not np.allclose(epoch.effects[0][0], epoch.effects[0][1])
    for a, b, c in zip(*runs):
        for A, B, C in zip(a.effects, b.effects, c.effects):
            np.testing.assert_array_equal(A, B)
            np.testing.assert_array_equal(A, C)
    assert not np.allclose(side.states[0].position[0], side.states[1].position[0])
    assert not np.allclose(first, side.states[1].position[0])


def test_one_chain_is_the_chain_of_before():
    """chains=1 gives the single chain of K - R kept draws; K = 2 in chunks of 2 is one chunk,
    so with chains=2 it is drawn on the first chain alone, as with chains=1."""
    one, two = _binomial_estep(), _binomial_estep()
    for a, b in zip(_epochs(one, 2, 2, 1, chains=1), _epochs(two, 2, 2, 1, chains=2)):
        assert a.effects[0].shape == (1, 30, 1, 1)
        np.testing.assert_array_equal(a.effects[0], b.effects[0])
    assert len(two.states) == 1
    assert _epochs(one, 1, chains=1)[0].effects[0].shape == (3, 30, 1, 1)


def test_two_chains_draw_the_posterior():
    """The conjugate gaussian mean of one level from two chains, K = 4 per epoch."""
    y = np.linspace(0.5, 1.5, 10)
    estep = one_level_estep(y, np.ones(10))
    draws = posterior_draws(estep, 150, chains=2)
    assert len(draws) == 300
    assert draws.mean() == pytest.approx(conjugate_mean(y), abs=0.05)
    assert draws.var() == pytest.approx(1 / (10 / RESIDUAL_VARIANCE + 1 / PRIOR_VARIANCE), rel=0.25)

