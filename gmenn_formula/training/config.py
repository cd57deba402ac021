"""Settings of a fit (the ``**control`` of ``gmenn()``), checked once."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, fields

from gmenn_formula.errors import ControlError


TRAINING_TREE_DEPTH = 2
GAUSSIAN_TREE_DEPTH = 3
VARIANCE_TREE_DEPTH = 5


@dataclass(frozen=True)
class FitConfig:
    """How the Monte Carlo EM runs.

    Networks (``nn()`` present): at most ``epochs`` EM epochs of Adam
    (``learning_rate``) over minibatches of ``batch_size`` rows, early stopping
    on a ``validation_fraction`` split with ``patience``, best weights restored;
    then, on all rows with the network frozen, ``final_epochs`` epochs of
    (parameter-expanded) EM for the variance components, starting from the best
    epoch's, then at least ``average_epochs`` epochs averaged into the reported
    variances. The final phase has no settle test: the variances went through EM
    during all of training, and on the paper's base scenario the parameter-expanded
    iterates of poorly identified components (a 10-level factor's per-class
    variances, variances near 0) wander by more than the Monte Carlo noise the test
    allows, so it never passed within 150 epochs, while 10 epochs gave the same
    estimates (variance MAE .104/.107 vs .105/.113 on two seeds at 20,000 rows) in
    two thirds of the time.

    Plain GLMM (no ``nn()``): all rows, exact M-step for the linear fixed
    effects, EM until the parameters move less than ``tolerance`` (relative,
    between means over windows of ``window`` epochs) or ``epochs`` is reached,
    then at least ``average_epochs`` more epochs averaged, until the Monte
    Carlo standard error of every variance component is below ``mcse_target``
    (relative) or a tenth of its sampling standard error (few levels), or
    ``max_average_epochs`` is reached (the same for the final
    phase of nn() fits).

    E-step: ``draws`` (K) draws per epoch of which ``burn_in`` (R) are
    dropped; while a network trains, ``training_draws`` (the paper's K = 2:
    the loss needs only an unbiased draw, and the variance components are
    estimated again in the final phase with ``draws``; measured on the base
    scenario at 100,000 rows this takes the E-step from 0.20 s to 0.08 s per
    epoch and the M-step from 2 + K - R to 2 NLL evaluations per row). With
    ``sampler`` "whitened" (default) or "paper"; NUTS builds at most
    ``max_tree_depth`` doublings (2**depth - 1 leapfrog steps) per draw.
    None: the paper's 10 for "paper"; for "whitened", 2 while a network trains
    (its draws only feed the loss), 3 for gaussian models (whose covariance
    statistics are exact given the other terms' draws), and 5 where draws set
    reported variances of other families (plain GLMMs, the final phase of
    network fits). Short trees give the most effective draws of B^2 per second
    on a fixed target (paper's base scenario at 20,000 rows: 19.9/s at depth 3
    vs 14.1 at depth 5) and cheap epochs (training depth 2: 1.16x/1.20x
    Ignore's epoch at batch 100/512 on 100,000 rows, against 1.20x/1.22x at
    depth 3, same AUC and variance MAE on the base scenario), but they leave
    slow directions of crossed factors unexplored, and EM fed by them settles
    low: three crossed factors of 10,000 levels, 100,000 binary rows, truth
    .5/.3/.2: .446/.284/.171 after 65 epochs at depth 3, .485/.301/.181 after
    40 at depth 5 (depth 6 the same; poisson .548/.316/.202 after 101 vs
    .489/.297/.192 after 53); the paper's base scenario: variance MAE
    .101/.108 vs .088/.085 (two seeds).
    ``overlap_estep``: while a network trains, the next epoch's E-step runs on a
    worker thread beside this epoch's M-step, given the network output at the
    start of this epoch (so the draws a minibatch step uses are one epoch old in
    F; the final phase, network frozen, is unaffected); on CPU torch then trains
    with one thread fewer. False: the paper's strict alternation.
    ``parameter_expansion``: while a network trains and before averaging
    starts, the covariance M-step is parameter-expanded (PX-EM, see
    :func:`~gmenn_formula.mstep.step.expansion_maps`): same fixed point, far
    fewer epochs where a variance is small or at 0. While training this matters
    for the network: with plain EM, the variances of factors that do not matter
    shrank only slowly, the draws fed noise into the loss and into the
    validation loss, and early stopping fired at epoch 16 (the paper's
    Irrelevant scenario at 20,000 rows: AUC .571 against Ignore's .590; with
    the expansion, epoch 47 and .596).
    ``penalty``: the paper's lambda (Eq. 6); None means 1 with networks and 0
    without (0 keeps the fixed point at the maximum likelihood estimate).
    """

    epochs: int | None = None
    batch_size: int = 512
    learning_rate: float = 1e-3
    draws: int = 4
    training_draws: int = 2
    burn_in: int = 1
    sampler: str = "whitened"
    max_tree_depth: int | None = None
    penalty: float | None = None
    patience: int = 10
    validation_fraction: float = 0.1
    tolerance: float = 2e-3
    window: int = 10
    average_epochs: int = 20
    max_average_epochs: int = 400
    mcse_target: float = 0.02
    parameter_expansion: bool = True
    overlap_estep: bool = True
    final_epochs: int = 10
    seed: int = 0
    device: str = "auto"
    verbose: int = 1

    def __post_init__(self) -> None:
        checks = {
            "batch_size": self.batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "draws": self.draws >= 1,
            "burn_in": 0 <= self.burn_in < min(self.draws, self.training_draws),
            "sampler": self.sampler in ("whitened", "paper"),
            "max_tree_depth": self.max_tree_depth is None or 1 <= self.max_tree_depth <= 12,
            "patience": self.patience >= 1,
            "validation_fraction": 0 < self.validation_fraction < 0.5,
            "tolerance": self.tolerance > 0,
            "window": self.window >= 2,
            "average_epochs": self.average_epochs >= 1,
            "max_average_epochs": self.max_average_epochs >= self.average_epochs,
            "mcse_target": self.mcse_target > 0,
            "final_epochs": self.final_epochs >= 1,
            "epochs": self.epochs is None or self.epochs >= 1,
            "penalty": self.penalty is None or self.penalty >= 0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            name = bad[0]
            raise ControlError(f"Invalid fit setting {name}={getattr(self, name)!r}; see help(gmenn_formula.FitConfig) for allowed values.")

    @classmethod
    def from_control(cls, **control) -> FitConfig:
        """Build from keyword arguments, with a clear error for an unknown name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(control) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ControlError(f"Unknown fit setting {unknown[0]!r}.{hint} Settings: {', '.join(sorted(known))}.")
        return cls(**control)

    def max_epochs(self, has_networks: bool) -> int:
        """``epochs`` or its default: 100 with networks, 2000 for a plain GLMM."""
        return self.epochs if self.epochs is not None else (100 if has_networks else 2000)

    def tree_depth(self, variances: bool, exact_moments: bool) -> int:
        """``max_tree_depth`` or the sampler's default for draws that set reported ``variances``
        (else they feed a network's loss) in a family with ``exact_moments`` (gaussian) or not."""
        if self.max_tree_depth is not None:
            return self.max_tree_depth
        if self.sampler == "paper":
            return 10
        if not variances:
            return TRAINING_TREE_DEPTH
        return GAUSSIAN_TREE_DEPTH if exact_moments else VARIANCE_TREE_DEPTH

    def penalty_for(self, has_networks: bool) -> float:
        return self.penalty if self.penalty is not None else (1.0 if has_networks else 0.0)
