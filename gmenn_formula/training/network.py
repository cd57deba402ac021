"""The schedule of a fit with ``nn()`` terms.

Training (phase ``train``): every epoch draws the random effects given the
network as it stands (on a worker thread beside the previous epoch's minibatches
when ``overlap_estep``), updates the covariances from the draws on the training
rows, and trains the network for one pass of minibatches on the paper's loss;
early stopping on the validation rows' loss, with the effects the validation
loss uses a moving average of the epochs' draw means. Then the best epoch's
network is frozen and the variance components and effects are estimated on all
rows (:class:`~gmenn_formula.training.phases.VariancePhases`).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch

from gmenn_formula.errors import ConvergenceError
from gmenn_formula.estep.arrays import EffectSampler
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.mstep.step import Rows, expected_nll, intercept_shift, random_part
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.guard import RecoveringTrainer, check_output
from gmenn_formula.training.log import EpochLog
from gmenn_formula.training.overlap import DrawAhead, TrainingEStep, torch_threads_beside
from gmenn_formula.training.phases import VariancePhases
from gmenn_formula.training.problem import EMProblem
from gmenn_formula.training.variance import initial_dispersion, make_estep, predict_fixed, sampler_config

VALIDATION_SMOOTHING = 0.2
"""Weight of the newest epoch's draw mean in the effects the validation loss uses (an
exponential moving average, a window of ~5 epochs; the running mean over the first epochs)."""


@dataclass
class EarlyStopping:
    """The best epoch so far by validation loss (its network weights, covariances, dispersion and
    the effects ``center`` (1, q, p, c) per term the validation loss used), and the epochs waited since."""

    patience: int
    loss: float = math.inf
    epoch: int = 0
    weights: dict | None = None
    covariances: list[np.ndarray] = field(default_factory=list)
    dispersion: float = 1.0
    center: tuple[torch.Tensor, ...] = ()
    waited: int = 0

    def update(
        self, epoch: int, loss: float, model: FixedPart, covariances: list[np.ndarray], dispersion: float, center: tuple[torch.Tensor, ...]
    ) -> bool:
        """Record epoch ``epoch``; True when patience has run out."""
        if loss < self.loss:
            self.loss, self.epoch, self.waited = loss, epoch, 0
            self.weights = copy.deepcopy(model.state_dict())
            self.covariances, self.dispersion, self.center = [S.copy() for S in covariances], dispersion, center
            return False
        self.waited += 1
        return self.stopped

    @property
    def stopped(self) -> bool:
        return self.waited >= self.patience


def start_on_response_scale(problem: EMProblem, model: FixedPart, rows: Rows) -> None:
    """Put the networks on the response's scale on ``rows``: for gaussian, ``output_scale`` (c,)
    the response's sd, so that outputs of order 1 span it (a Linear(1, 1) net learnt a tenth of
    sleepstudy's slope in 2,000 Adam steps without it); then ``output_offset`` (c,) so that, with
    the networks at their initial weights and no random effects, the fixed part fits ``rows``
    best: the link of the mean response, near enough (the mean for gaussian, the logit of the
    share for binomial, the log mean for poisson, log class shares for categorical)."""
    with torch.no_grad():
        if problem.family.has_dispersion:
            n, y = rows.num_total, rows.y.double()
            mean = float(rows.total(y.sum())) / n
            sd = math.sqrt(float(rows.total(((y - mean) ** 2).sum())) / max(n - 1, 1))
            model.output_scale.fill_(max(sd, 1e-6))
    shift = intercept_shift(problem.family, predict_fixed(model, rows), rows)
    with torch.no_grad():
        model.output_offset += shift


def _centre_effects(model: FixedPart, center: tuple[torch.Tensor, ...], rows: Rows) -> None:
    """Move the mean over ``rows`` of the random part (the effects ``center`` (1, q, p, c) per term)
    into ``output_offset``: a network biased by a constant leaves that constant to the random
    effects, whose variance it inflates (a network left dead by learning_rate=10 gave a subject
    variance of 990 where the linear model gives 576), and with the network frozen EM cannot move it back."""
    if center:
        with torch.no_grad():
            model.output_offset += (rows.total(random_part(center, rows).mean(0).sum(0)) / rows.num_total).to(model.output_offset.dtype)


@dataclass(frozen=True)
class TrainingSplit:
    """The rows a network trains on and the validation rows early stopping watches: ``index``
    (n_t,) long positions of the training rows, ``train_rows`` and ``val_rows`` their Rows,
    ``weights`` (n,) 1 on training rows and 0 on validation rows (what the E-step conditions on)."""

    index: torch.Tensor
    train_rows: Rows
    val_rows: Rows
    weights: np.ndarray

    @classmethod
    def of(cls, problem: EMProblem, rng: np.random.Generator, fraction: float) -> TrainingSplit:
        order = rng.permutation(problem.num_rows)
        num_validation = max(1, int(round(fraction * len(order))))
        validation, train_index = np.sort(order[:num_validation]), np.sort(order[num_validation:])
        index = torch.as_tensor(train_index, device=problem.device)
        weights = np.zeros(problem.num_rows)
        weights[train_index] = 1.0
        val_rows = problem.rows.take(torch.as_tensor(validation, device=problem.device))
        return cls(index, problem.rows.take(index), val_rows, weights)


def fit_network(problem: EMProblem, model: FixedPart, config: FitConfig, log: EpochLog, rng: np.random.Generator, generator: torch.Generator) -> tuple[VariancePhases, EarlyStopping]:
    """Train the network with early stopping, then estimate the variances on all rows with it frozen.
    Returns the finished variance phases and the early-stopping record."""
    split = TrainingSplit.of(problem, rng, config.training.validation_fraction)
    check_output(model, problem.rows, "at the network's initial weights")
    start_on_response_scale(problem, model, split.train_rows)
    dispersion, scale = initial_dispersion(problem, model, split.train_rows)
    # One E-step for both phases: compiled on all rows, conditioned on the training rows while the network
    # trains (validation rows weigh 0), in chunks that make both phases' K.
    chunk = math.gcd(config.estep.training_draws, config.estep.draws)
    estep = make_estep(problem, config, sampler_config(problem, config, chunk, variances=False), split.weights)
    stopping = _train(problem, model, config, log, split, estep, problem.initial_covariances(scale), dispersion, generator)
    model.load_state_dict(stopping.weights)
    _centre_effects(model, stopping.center, problem.rows)
    estep.set_weights(np.ones(problem.num_rows))
    estep.use_sampler(sampler_config(problem, config, chunk, variances=True))
    phases = VariancePhases(problem, model, estep, config, log, stopping.covariances, stopping.dispersion, fit_beta=False)
    if not stopping.stopped:
        phases.messages.append(
            f"Early stopping did not trigger within {log.last_epoch} epochs (patience {config.training.patience}); "
            "the best epoch's network is used. Increase epochs= for a longer fit."
        )
    phases.run(config.convergence.final_epochs, settle=False)
    return phases, stopping


def _train(
    problem: EMProblem,
    model: FixedPart,
    config: FitConfig,
    log: EpochLog,
    split: TrainingSplit,
    estep: EffectSampler,
    covariances: list[np.ndarray],
    dispersion: float,
    generator: torch.Generator,
) -> EarlyStopping:
    """The training epochs (phase ``train``) until early stopping or ``epochs``; the model ends
    at its last epoch's weights (a Ctrl-C: at the best epoch's). ConvergenceError when no
    validation loss was finite."""
    training = config.training
    make_inputs = TrainingEStep(
        problem, estep, split.index, split.train_rows, config.estep.training_draws, config.estep.burn_in,
        training.penalty_for(True), config.convergence.parameter_expansion,
    )
    trainer = RecoveringTrainer(
        model, problem.family, split.train_rows, problem.rows, training.learning_rate, training.batch_size, generator, log.messages,
        problem.data_parallel,
    )
    stopping = EarlyStopping(training.patience)
    center: tuple[torch.Tensor, ...] = ()
    # Not in a data-parallel fit: the E-step's M-step sums rows with torch's collectives, which must not run on a second thread beside DDP's
    ahead = DrawAhead() if training.overlap_estep and not problem.data_parallel else None
    with torch_threads_beside(ahead, problem.device):
        try:
            for epoch in range(1, training.max_epochs(True) + 1):
                started = time.perf_counter()
                if ahead is not None and ahead.pending:
                    inputs, waited = ahead.take()
                else:
                    inputs = make_inputs(model, covariances, dispersion)
                    waited = inputs.seconds
                covariances = inputs.covariances
                if ahead is not None:
                    ahead.submit(partial(make_inputs, copy.deepcopy(model), covariances, inputs.dispersion))  # the network as it is now
                loss = trainer.epoch(epoch, inputs.offsets, dispersion)
                dispersion = inputs.dispersion
                means = tuple(B.mean(0, keepdim=True) for B in inputs.effects)
                weight = max(1.0 / epoch, VALIDATION_SMOOTHING)
                center = tuple((1 - weight) * old + weight * new for old, new in zip(center, means)) if center else means
                val_loss = _validation_loss(problem, model, split.val_rows, center, dispersion)
                seconds = time.perf_counter() - started
                stop = stopping.update(epoch, val_loss, model, covariances, dispersion, center)
                log.add("train", covariances, dispersion, inputs.draws, inputs.seconds, seconds - waited, seconds, loss, val_loss)
                if stop:
                    break
        except BaseException:  # an error or Ctrl-C: stop the worker; Ctrl-C goes on with the best weights
            if ahead is not None:
                ahead.cancel()
            if stopping.weights is not None:
                model.load_state_dict(stopping.weights)
            raise
        if ahead is not None:
            ahead.close()
    if stopping.weights is None:
        raise ConvergenceError(
            f"The validation loss was never finite in {log.last_epoch} epochs; the network diverged. "
            "Lower learning_rate= or check the network and the inputs."
        )
    return stopping


def _validation_loss(problem: EMProblem, model: FixedPart, rows: Rows, center: tuple[torch.Tensor, ...], dispersion: float) -> float:
    F = predict_fixed(model, rows)
    return float(rows.total(expected_nll(problem.family, F, random_part(center, rows), rows, dispersion))) / rows.num_total
