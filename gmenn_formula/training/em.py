"""The Monte Carlo EM loop (paper section 2.2, design.md section 1).

Each epoch: F = f(X) once on the fitting rows (no gradient); the E-step draws
the random effects given F and the current covariances; the M-step updates the
fixed part against the draws and sets every covariance to the draws' second
moments (and the gaussian residual variance to their mean squared residual).

Variance components are not the last epoch's noisy value: once EM has
settled, the per-epoch estimates of ``average_epochs`` epochs are averaged
(Polyak averaging of the MCEM sequence) and their Monte Carlo standard error
is reported from batch means. With networks, early stopping chooses the
network on a validation split; the variance components and the random-effect
means are then re-estimated on all rows with the network frozen.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from gmenn_formula.design import Design
from gmenn_formula.errors import ModelSpecificationError
from gmenn_formula.estep.driver import EpochDraws, EStep
from gmenn_formula.estep.model import TermArrays
from gmenn_formula.estep.sampler import SamplerConfig
from gmenn_formula.families import Family, get_family
from gmenn_formula.mstep.networks import FixedPart, NetworkSpec, build_network
from gmenn_formula.mstep.step import (
    DrawOffsets,
    Rows,
    expand_effects,
    expand_second_moments,
    expansion_maps,
    expected_nll,
    gaussian_second_moments,
    newton_fixed_effects,
    random_part,
    residual_variance,
    softmax_second_moments,
    train_epoch,
    variance_statistics,
)
from gmenn_formula.training.averaging import Averager
from gmenn_formula.training.config import FitConfig


@dataclass
class FitState:
    """What the engine hands to the results stage.

    Per random-effect term l: ``covariances[l]`` (c, p, p) and their Monte Carlo
    standard errors ``covariance_se[l]``; ``effect_mean[l]``/``effect_sd[l]``
    (q, p, c) posterior means/sds of the effects; ``draws[l]`` (s, q, p, c) kept
    draws of the final phase. ``fixed_names``: columns of ``model.beta`` (k, c).
    """

    family: Family
    num_outputs: int
    model: FixedPart
    fixed_names: tuple[str, ...]
    covariances: list[np.ndarray]
    covariance_se: list[np.ndarray]
    dispersion: float | None
    dispersion_se: float | None
    effect_mean: list[np.ndarray]
    effect_sd: list[np.ndarray]
    draws: list[np.ndarray]
    history: list[dict]
    converged: bool
    messages: list[str] = field(default_factory=list)
    epochs: int = 0
    best_epoch: int | None = None
    best_validation_loss: float | None = None
    seconds: float = 0.0
    config: FitConfig = field(default_factory=FitConfig)


VALIDATION_SMOOTHING = 0.2
"""Weight of the newest epoch's draw mean in the effects the validation loss uses (an
exponential moving average, a window of ~5 epochs; the running mean over the first
epochs). One epoch's draws alone (K = 2, R = 1 keeps one) made the validation loss jump
by .005-.01 between epochs and early stopping fire at half the epochs Ignore needed.
"""

MAX_STORED_DRAW_BYTES = 200 * 2**20
"""Cap on the memory of stored final-phase draws (for ranef sds and InferenceData)."""


def resolve_device(device: str) -> torch.device:
    """"auto": CUDA when torch sees a GPU, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _rows(design: Design, index: np.ndarray, drop_intercept: bool, device: torch.device) -> Rows:
    def tensor(array: np.ndarray, dtype=torch.float32) -> torch.Tensor:
        return torch.tensor(array[index], dtype=dtype, device=device)

    X_fixed = design.X_fixed[:, 1:] if drop_intercept else design.X_fixed
    response = design.response
    trials = response.trials if response.trials is not None else np.ones(len(response.y))
    y_dtype = torch.long if design.spec.family == "categorical" else torch.float32
    return Rows(
        X_networks=tuple(tensor(X) for X in design.X_networks),
        X_fixed=tensor(X_fixed),
        offset=tensor(design.offset),
        y=tensor(response.y, y_dtype),
        trials=tensor(trials),
        codes=tuple(tensor(r.codes, torch.long) for r in design.random),
        Z=tuple(tensor(r.Z) for r in design.random),
    )


def _terms(design: Design) -> tuple[TermArrays, ...]:
    return tuple(
        TermArrays(codes=r.codes.astype(np.int32), Z=r.Z.astype(np.float32), num_levels=r.num_levels) for r in design.random
    )


def _sampler(config: FitConfig, family: Family, chunk: int, variances: bool) -> SamplerConfig:
    """Sampler settings for chunks of ``chunk`` draws that set reported ``variances`` or feed a network's loss."""
    depth = config.tree_depth(variances, exact_moments=family.has_dispersion)
    return SamplerConfig(kind=config.sampler, num_draws=chunk, burn_in=0, max_tree_depth=depth)


def _estep(design: Design, family: Family, c: int, config: FitConfig, sampler: SamplerConfig, weights: np.ndarray) -> EStep:
    """The E-step on all rows of ``design``, ``weights`` (n,) 1 for the rows it conditions on."""
    response = design.response
    y = response.y.astype(np.int32) if family.name == "categorical" else response.y.astype(np.float32)
    trials = (response.trials if response.trials is not None else np.ones(len(y))).astype(np.float32)
    return EStep(family, _terms(design), y, trials, weights, c, sampler, config.seed)


def _predict_fixed(model: FixedPart, rows: Rows) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(list(rows.X_networks), rows.X_fixed, rows.offset)


def _initial_covariances(design: Design, c: int, scale: float) -> list[np.ndarray]:
    """Per term (c, p, p): diagonal, ``scale / (L + 1)`` for an intercept, divided by mean Z^2 for slopes."""
    result = []
    share = scale / (len(design.random) + 1)
    for r in design.random:
        second_moment = np.maximum((r.Z**2).mean(axis=0), 1e-8)
        result.append(np.tile(np.diag(share / second_moment), (c, 1, 1)))
    return result


def _m_step_covariances(statistics: list[torch.Tensor], design: Design) -> list[np.ndarray]:
    """Second moments (c, p, p) per term as covariances; diagonal for ``||`` terms."""
    result = []
    for statistic, r in zip(statistics, design.random):
        S = statistic.cpu().numpy().astype(np.float64)
        if not r.term.correlated:
            S = np.stack([np.diag(np.diag(s)) for s in S])
        result.append(S)
    return result


def _timed_draw(estep: EStep, F: torch.Tensor, covariances, dispersion: float | None, num_draws: int, burn_in: int) -> tuple[EpochDraws, float]:
    """One E-step of K = ``num_draws`` draws (R = ``burn_in`` dropped) given F (n, c), and the wall seconds it took."""
    started = time.perf_counter()
    draws = estep.draw(F.cpu().numpy(), covariances, dispersion if dispersion is not None else 1.0, num_draws, burn_in)
    return draws, time.perf_counter() - started


@dataclass(frozen=True)
class _EpochInputs:
    """What a training epoch needs from its E-step: the ``draws``, their loss ``offsets``, the
    (expanded) ``effects`` and the ``covariances`` and ``dispersion`` set from them, and the
    sampler's wall ``seconds``."""

    draws: EpochDraws
    offsets: DrawOffsets
    effects: tuple[torch.Tensor, ...]
    covariances: list[np.ndarray]
    dispersion: float | None
    seconds: float


@dataclass(frozen=True)
class _TrainingEStep:
    """The E-step of a training epoch and the variance M-step that follows it: F on all
    ``rows`` (the E-step is compiled for all of them and weights the held-out ones 0), K
    draws, ``update`` (the covariance and dispersion M-step on the training rows
    ``train_rows``; ``training`` (n_t,): their positions in ``rows``) and the draws' loss
    offsets. All of it can run on the worker thread beside the network's M-step."""

    estep: EStep
    rows: Rows
    train_rows: Rows
    training: torch.Tensor
    num_draws: int
    burn_in: int
    penalty: float
    update: Callable

    def __call__(self, model: FixedPart, covariances, dispersion) -> _EpochInputs:
        F = _predict_fixed(model, self.rows)
        draws, seconds = _timed_draw(self.estep, F, covariances, dispersion, self.num_draws, self.burn_in)
        effects = tuple(torch.as_tensor(B, device=F.device) for B in draws.effects)
        offsets = DrawOffsets.from_draws(effects, self.train_rows, self.penalty)
        expanded, new_covariances, new_dispersion = self.update(draws, F[self.training], self.train_rows, covariances, dispersion)
        return _EpochInputs(draws, offsets, expanded, new_covariances, new_dispersion, seconds)


class _DrawAhead:
    """The next epoch's E-step on a worker thread, beside this epoch's M-step.

    While the network trains on epoch t's draws, the worker computes F_t from a copy of
    the network as it was at the start of epoch t, draws epoch t + 1's effects given F_t
    and the covariances set from epoch t's draws, sets the covariances from them (the
    parameter-expanded M-step) and computes their loss offsets (a :class:`_TrainingEStep`);
    the draws are thus one epoch old in F when a minibatch uses them. JAX and torch release
    the GIL while they compute, so the worker and the minibatch steps share the machine: on
    the base scenario at 100,000 rows (2 CPU cores, batch 512) a 0.14 s E-step, a 0.035 s
    F and a ~0.05 s expanded M-step disappear behind a 0.45 s epoch of minibatches (at
    20,000 rows the worker is busy for most of the epoch and slows the minibatches by
    ~25%). One E-step is in flight at a time, so the sampler's chain stays one chain.
    """

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmenn-estep")
        self.future: Future | None = None

    @property
    def pending(self) -> bool:
        return self.future is not None

    def submit(self, inputs: _TrainingEStep, model: FixedPart, covariances, dispersion) -> None:
        """Start the next epoch's inputs from a copy of ``model`` as it is now."""
        self.future = self.executor.submit(inputs, copy.deepcopy(model), covariances, dispersion)

    def take(self) -> tuple[_EpochInputs, float]:
        """The pending inputs and the seconds waited for them."""
        started = time.perf_counter()
        inputs = self.future.result()
        self.future = None
        return inputs, time.perf_counter() - started

    def close(self) -> None:
        """Wait for a pending E-step (it advances the chain the final phase continues) and stop the worker."""
        if self.future is not None:
            self.future.result()
            self.future = None
        self.executor.shutdown()


@contextmanager
def _torch_threads_beside(ahead: _DrawAhead | None, device: torch.device):
    """While the E-step runs beside a CPU M-step, torch uses one thread fewer: its OpenMP
    threads slow 10-50x when they find their core taken."""
    threads = torch.get_num_threads()
    reduce = ahead is not None and device.type == "cpu" and threads > 1
    if reduce:
        torch.set_num_threads(threads - 1)
    try:
        yield
    finally:
        if reduce:
            torch.set_num_threads(threads)


def _sampler_record(draws) -> dict:
    info = draws.info
    return {
        "acceptance": float(np.mean(info.acceptance_rate)),
        "step_size": float(info.step_size),
        "leapfrog_steps": float(np.mean(info.num_leapfrog_steps)),
        "divergences": int(np.sum(info.is_divergent)),
    }


class _EffectMoments:
    """Running mean and sd of the draws (q, p, c) per term, and a store of at most
    ``max_draws`` draws thinned evenly across the whole phase: every ``stride``-th
    draw is kept, and when the store fills up every other stored draw is dropped
    and the stride doubles."""

    def __init__(self, shapes: list[tuple[int, ...]], max_draws: int) -> None:
        self.count = 0
        self.sum = [np.zeros(s) for s in shapes]
        self.sum_sq = [np.zeros(s) for s in shapes]
        self.stored: list[list[np.ndarray]] = [[] for _ in shapes]
        self.max_draws = max(2, max_draws)
        self.stride = 1

    def add(self, effects: tuple[np.ndarray, ...]) -> None:
        for index, B in enumerate(effects):
            self.sum[index] += B.sum(0)
            self.sum_sq[index] += (B.astype(np.float64) ** 2).sum(0)
        for offset in range(effects[0].shape[0] if effects else 0):
            if (self.count + offset) % self.stride == 0:
                for index, B in enumerate(effects):
                    self.stored[index].append(B[offset])
                if len(self.stored[0]) >= self.max_draws:
                    self.stored = [kept[::2] for kept in self.stored]
                    self.stride *= 2
        self.count += effects[0].shape[0] if effects else 0

    def mean(self) -> list[np.ndarray]:
        return [s / max(self.count, 1) for s in self.sum]

    def sd(self) -> list[np.ndarray]:
        return [np.sqrt(np.maximum(q / max(self.count, 1) - m**2, 0.0)) for q, m in zip(self.sum_sq, self.mean())]

    def draws(self, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        return [np.stack(d) if d else np.zeros((0, *s)) for d, s in zip(self.stored, shapes)]


def fit_design(
    design: Design,
    config: FitConfig,
    nets: dict | None = None,
    progress: Callable[[dict], None] | None = None,
) -> FitState:
    """Fit the model of ``design`` (response required) by Monte Carlo EM."""
    if not design.random:
        raise ModelSpecificationError(
            f"The formula {design.spec.formula} has no random-effect term; add one such as (1 | group). "
            "(A model without random effects is a plain network or GLM: fit it with torch or statsmodels.)"
        )
    if design.response is None:
        raise ModelSpecificationError("The data has no response column; a fit needs the response of the formula.")
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    device = resolve_device(config.device)
    family = get_family(design.spec.family)
    classes = design.spec.response.classes
    c = family.num_outputs(len(classes) if classes else None)
    has_networks = bool(design.X_networks)
    # With networks their output bias is the intercept: the linear part drops its own.
    drop_intercept = has_networks and design.fixed_names[:1] == ("(Intercept)",)
    keep_fixed = design.fixed_names[1:] if drop_intercept else design.fixed_names
    networks = [
        build_network(NetworkSpec.from_term(t), X.shape[1], c, nets)
        for t, X in zip(design.spec.formula.networks, design.X_networks)
    ]
    model = FixedPart(networks, len(keep_fixed), c).to(device)
    runner = _NetworkFit if has_networks else _GlmmFit
    fit = runner(design, config, family, c, model, device, rng, generator, drop_intercept, keep_fixed, progress)
    state = fit.run(np.arange(design.num_rows))
    state.seconds = time.perf_counter() - started
    return state


class _Fit:
    """Shared machinery of the two EM schedules."""

    def __init__(self, design, config, family, c, model, device, rng, generator, drop_intercept, fixed_names, progress):
        self.design, self.config, self.family, self.c = design, config, family, c
        self.model, self.device, self.rng, self.generator = model, device, rng, generator
        self.drop_intercept, self.fixed_names, self.progress = drop_intercept, fixed_names, progress
        self.history: list[dict] = []
        self.messages: list[str] = []
        self.shapes = [(r.num_levels, len(r.term_names), c) for r in design.random]

    def rows(self, index: np.ndarray) -> Rows:
        return _rows(self.design, index, self.drop_intercept, self.device)

    def sampler(self, chunk: int, variances: bool) -> SamplerConfig:
        return _sampler(self.config, self.family, chunk, variances)

    def estep(self, sampler: SamplerConfig, weights: np.ndarray) -> EStep:
        return _estep(self.design, self.family, self.c, self.config, sampler, weights)

    def torch_effects(self, effects: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor(B, device=self.device) for B in effects)

    def variance_step(self, estep: EStep, rows: Rows, covariances, dispersion, expand: bool = False):
        """E-step draws and the covariance/dispersion M-step given the current fixed part;
        ``expand``: parameter-expanded M-step (the returned effects are then the rescaled draws)."""
        F = _predict_fixed(self.model, rows)
        draws, seconds = _timed_draw(estep, F, covariances, dispersion, self.config.draws, self.config.burn_in)
        return (draws, *self.variance_update(draws, F, rows, covariances, dispersion, expand), seconds)

    def variance_update(self, draws: EpochDraws, F: torch.Tensor, rows: Rows, covariances, dispersion, expand: bool = False):
        """The covariance/dispersion M-step from ``draws`` drawn given F (n, c), ``covariances``
        and ``dispersion``. Returns the effects (rescaled if ``expand``), covariances, dispersion."""
        effects = self.torch_effects(draws.effects)
        current = [torch.as_tensor(S, device=self.device) for S in covariances]
        re = None
        if self.family.has_dispersion:
            re = random_part(effects, rows)
            statistics = gaussian_second_moments(effects, rows, F, current, dispersion, re)
        elif self.family.shift_invariant:
            statistics = softmax_second_moments(effects, current)
        else:
            statistics = [variance_statistics(B) for B in effects]
        if expand:
            maps = expansion_maps(self.family, F, effects, rows, dispersion or 1.0)
            effects = expand_effects(effects, maps)
            statistics = expand_second_moments(statistics, maps)
            re = None if re is None else random_part(effects, rows)
        new_covariances = _m_step_covariances(statistics, self.design)
        new_dispersion = residual_variance(F, re, rows) if self.family.has_dispersion else None
        return effects, new_covariances, new_dispersion

    def set_beta(self, beta: np.ndarray) -> None:
        """Linear fixed effects (k, c) into the model."""
        with torch.no_grad():
            self.model.beta.copy_(torch.as_tensor(beta, device=self.model.beta.device))

    def record(self, epoch: int, phase: str, covariances, dispersion, draws, estep_seconds, mstep_seconds, seconds=None, **extra) -> None:
        """One history row; ``estep_seconds``: the sampler's draw call (on the worker thread when it
        overlapped the M-step), ``mstep_seconds``: the rest of the epoch on the main thread (F,
        variance statistics, parameter expansion, training or Newton, validation), ``seconds``: the
        epoch's wall time (default: the sum of the two)."""
        entry = {
            "epoch": epoch,
            "phase": phase,
            **extra,
            "seconds": estep_seconds + mstep_seconds if seconds is None else seconds,
            "dispersion": dispersion,
            "covariances": [S.copy() for S in covariances],
            **_sampler_record(draws),
            "estep_seconds": estep_seconds,
            "mstep_seconds": mstep_seconds,
        }
        self.history.append(entry)
        if self.progress is not None:
            self.progress(entry)

    def initial_dispersion_and_scale(self, rows: Rows) -> tuple[float | None, float]:
        F = _predict_fixed(self.model, rows)
        if self.family.has_dispersion:
            residual = float(((rows.y - F[:, 0]) ** 2).mean())
            return residual / 2, residual
        return None, 1.0

    def finish(self, averager: Averager, moments: _EffectMoments, converged: bool, epochs: int, **extra) -> FitState:
        covariances, covariance_se, dispersion, dispersion_se = averager.result()
        beta = averager.reported()[2]
        if beta is not None:
            self.set_beta(beta)
        self.model.eval()
        return FitState(
            family=self.family,
            num_outputs=self.c,
            model=self.model.cpu(),
            fixed_names=self.fixed_names,
            covariances=covariances,
            covariance_se=covariance_se,
            dispersion=dispersion,
            dispersion_se=dispersion_se,
            effect_mean=moments.mean(),
            effect_sd=moments.sd(),
            draws=moments.draws(self.shapes),
            history=self.history,
            converged=converged,
            messages=self.messages,
            epochs=epochs,
            config=self.config,
            **extra,
        )

    def settle_then_average(self, estep, rows, covariances, dispersion, max_em_epochs, first_epoch, fit_beta, settle=True):
        """EM epochs until the parameters settle (or ``max_em_epochs``; with ``settle`` False,
        exactly ``max_em_epochs``), then at least ``average_epochs`` epochs of stochastic
        approximation (the SA iterate is fed back; see :mod:`~gmenn_formula.training.averaging`)
        until the Monte Carlo error is small. ``fit_beta``: exact M-step for the linear fixed
        effects too. Returns the averager, the effect moments, whether EM settled, the last epoch."""
        config = self.config
        averager = Averager(config.window, config.tolerance)
        moments = _EffectMoments(self.shapes, self.max_draws())
        settled = True
        epoch = first_epoch
        for epoch in range(first_epoch + 1, first_epoch + max_em_epochs + config.max_average_epochs + 1):
            expand = config.parameter_expansion and not averager.averaging
            t0 = time.perf_counter()
            draws, effects, covariances, new_dispersion, estep_seconds = self.variance_step(
                estep, rows, covariances, dispersion, expand
            )
            extra = {}
            beta = None
            if fit_beta:
                extra["loss"] = newton_fixed_effects(self.model, self.family, rows, effects, dispersion or 1.0)
                beta = self.model.beta.detach().cpu().numpy().copy()
            dispersion = new_dispersion
            averager.add(covariances, dispersion, beta)
            phase = "average" if averager.averaging else "em"
            if averager.averaging:
                moments.add(draws.effects)
                covariances, dispersion, beta = averager.current()
                if fit_beta:
                    self.set_beta(beta)
            mstep_seconds = time.perf_counter() - t0 - estep_seconds
            self.record(epoch, phase, covariances, dispersion, draws, estep_seconds, mstep_seconds, **extra)
            if averager.averaging and averager.averaged_epochs >= config.average_epochs:
                at_cap = averager.averaged_epochs >= config.max_average_epochs
                levels = [r.num_levels for r in self.design.random]
                if (at_cap or averager.averaged_epochs % config.window == 0) and averager.precise(config.mcse_target, levels):
                    break
                if at_cap:
                    self.messages.append(
                        f"Monte Carlo error of the variance components is above {config.mcse_target:.0%} (or a tenth of "
                        f"their sampling error, if larger) after {config.max_average_epochs} averaged epochs; "
                        "see varcorr()['mcse']. Increase max_average_epochs= for tighter estimates."
                    )
                    break
            if not averager.averaging:
                em_epochs_left = epoch - first_epoch < max_em_epochs
                if settle:
                    settled = averager.settled()
                if em_epochs_left and not (settle and settled):
                    continue
                if not settled:
                    self.messages.append(
                        f"EM did not settle within {max_em_epochs} epochs (changes above Monte Carlo noise and "
                        f"tolerance {config.tolerance}); estimates are averages of the following epochs. "
                        "Increase epochs= or check the model."
                    )
                averager.start_averaging()
        return averager, moments, settled, epoch

    def max_draws(self) -> int:
        size = sum(int(np.prod(s)) for s in self.shapes) * 4
        return max(1, min(200, MAX_STORED_DRAW_BYTES // max(size, 1)))


class _GlmmFit(_Fit):
    """No networks: all rows, exact M-step for beta, EM until settled, then averaging."""

    def run(self, index: np.ndarray) -> FitState:
        rows = self.rows(index)
        no_effects = tuple(torch.zeros((1, *s), device=self.device) for s in self.shapes)
        newton_fixed_effects(self.model, self.family, rows, no_effects, 1.0, steps=25)
        dispersion, scale = self.initial_dispersion_and_scale(rows)
        covariances = _initial_covariances(self.design, self.c, scale if self.family.has_dispersion else 1.0)
        estep = self.estep(self.sampler(self.config.draws, variances=True), np.ones(len(index)))
        averager, moments, settled, epoch = self.settle_then_average(
            estep, rows, covariances, dispersion, self.config.max_epochs(False), 0, fit_beta=True
        )
        return self.finish(averager, moments, settled, epoch)


class _NetworkFit(_Fit):
    """Networks: early stopping on a validation split, then variances on all rows, network frozen."""

    def run(self, index: np.ndarray) -> FitState:
        config = self.config
        order = self.rng.permutation(index)
        num_validation = max(1, int(round(config.validation_fraction * len(order))))
        validation, training = np.sort(order[:num_validation]), np.sort(order[num_validation:])
        rows, train_rows, val_rows = self.rows(index), self.rows(training), self.rows(validation)
        dispersion, scale = self.initial_dispersion_and_scale(train_rows)
        covariances = _initial_covariances(self.design, self.c, scale if self.family.has_dispersion else 1.0)
        # One E-step model for both phases: compiled on all rows, conditioned on the training rows while the
        # network trains (validation rows weigh 0), in chunks that make both phases' K; the sampler compiles
        # again only where the final phase draws with a deeper tree (see FitConfig.tree_depth).
        weights = np.zeros(len(index))
        weights[training] = 1.0
        estep = self.estep(self.sampler(math.gcd(config.training_draws, config.draws), variances=False), weights)
        make_inputs = _TrainingEStep(
            estep, rows, train_rows, torch.as_tensor(training, device=self.device), config.training_draws, config.burn_in,
            config.penalty_for(True), partial(self.variance_update, expand=config.parameter_expansion),
        )
        optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)
        best = (np.inf, None, 0)
        waited = 0
        epoch = 0
        center: tuple[torch.Tensor, ...] = ()
        ahead = _DrawAhead() if config.overlap_estep else None
        with _torch_threads_beside(ahead, self.device):
            for epoch in range(1, config.max_epochs(True) + 1):
                t0 = time.perf_counter()
                if ahead is not None and ahead.pending:
                    inputs, wait_seconds = ahead.take()
                else:
                    inputs = make_inputs(self.model, covariances, dispersion)
                    wait_seconds = inputs.seconds
                covariances, new_dispersion = inputs.covariances, inputs.dispersion
                if ahead is not None:
                    ahead.submit(make_inputs, self.model, covariances, new_dispersion)
                loss = train_epoch(
                    self.model, optimizer, self.family, train_rows, inputs.offsets, dispersion or 1.0, config.batch_size,
                    self.generator,
                )
                dispersion = new_dispersion
                means = tuple(B.mean(0, keepdim=True) for B in inputs.effects)
                weight = max(1.0 / epoch, VALIDATION_SMOOTHING)
                center = tuple((1 - weight) * old + weight * new for old, new in zip(center, means)) if center else means
                val_loss = self.validation_loss(val_rows, center, dispersion)
                seconds = time.perf_counter() - t0
                self.record(
                    epoch, "train", covariances, dispersion, inputs.draws, inputs.seconds, seconds - wait_seconds,
                    seconds=seconds, loss=loss, validation_loss=val_loss,
                )
                if val_loss < best[0]:
                    best = (val_loss, copy.deepcopy(self.model.state_dict()), epoch, [S.copy() for S in covariances], dispersion)
                    waited = 0
                else:
                    waited += 1
                    if waited >= config.patience:
                        break
            if ahead is not None:
                ahead.close()
        converged = waited >= config.patience
        if not converged:
            self.messages.append(
                f"Early stopping did not trigger within {epoch} epochs (patience {config.patience}); "
                "the best epoch's network is used. Increase epochs= for a longer fit."
            )
        best_loss, state, best_epoch, covariances, dispersion = best
        self.model.load_state_dict(state)
        return self.final_phase(rows, estep, covariances, dispersion, converged, epoch, best_epoch, best_loss)

    def validation_loss(self, rows: Rows, center: tuple[torch.Tensor, ...], dispersion: float | None) -> float:
        F = _predict_fixed(self.model, rows)
        return float(expected_nll(self.family, F, random_part(center, rows), rows, dispersion or 1.0)) / len(rows)

    def final_phase(self, rows, estep, covariances, dispersion, converged, epochs, best_epoch, best_loss) -> FitState:
        """Variance components and effects on all ``rows`` with the network frozen, the training
        E-step's chain continuing on all rows: ``final_epochs`` parameter-expanded EM epochs from
        the best epoch's covariances, then averaging (no settle test: see FitConfig). A chain
        started afresh at zero effects accepted almost nothing at first and collapsed the variances."""
        estep.set_weights(np.ones(len(rows)))
        estep.use_sampler(self.sampler(estep.config.num_draws, variances=True))
        averager, moments, _, epoch = self.settle_then_average(
            estep, rows, covariances, dispersion, self.config.final_epochs, epochs, fit_beta=False, settle=False
        )
        return self.finish(averager, moments, converged, epoch, best_epoch=best_epoch, best_validation_loss=best_loss)
