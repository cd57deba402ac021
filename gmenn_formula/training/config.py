"""Settings of a fit (the ``**control`` of ``gmenn()``), grouped by concern and checked once.

A user sets them by flat keywords (``gmenn(..., epochs=50, seed=1)``);
:meth:`FitConfig.from_control` checks every one (type and range, with the allowed
values in the message) and sorts them into four groups:

- :class:`TrainingSettings`: the network's M-step and early stopping;
- :class:`EStepSettings`: the sampler and its draws per epoch;
- :class:`ConvergenceSettings`: when EM stops and how the variances are averaged;
- :class:`RuntimeSettings`: seed, device, progress output.

What each default was measured against is in ``docs/engine.md``.
"""

from __future__ import annotations

import difflib
import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from gmenn_formula.errors import ControlError

TRAINING_TREE_DEPTH = 2
GAUSSIAN_TREE_DEPTH = 3
VARIANCE_TREE_DEPTH = 5
PAPER_TREE_DEPTH = 10
SAMPLERS = ("auto", "exact", "whitened", "paper")
DEVICE_PATTERN = r"auto|cpu|cuda(:[0-9]+)?"


@dataclass(frozen=True)
class _Rule:
    """What a setting accepts: ``kind`` int, float, bool or str; a range ``low``..``high``
    (``open_low``/``open_high``: strict); ``choices`` for strings, or a regular expression
    ``pattern`` they must match in full, described by ``described``; ``optional``: None allowed.
    Integers include numpy's (stored as int); numbers must be finite."""

    kind: type
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    pattern: str = ""
    described: str = ""
    optional: bool = False

    def allowed(self) -> str:
        if self.described:
            text = self.described
        elif self.choices:
            text = " or ".join(repr(c) for c in self.choices)
        else:
            text = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}[self.kind]
            if self.low is not None:
                text += f" {'>' if self.open_low else '>='} {self.low:g}"
            if self.high is not None:
                text += f"{' and' if self.low is not None else ''} {'<' if self.open_high else '<='} {self.high:g}"
        return text + (" (or None for the default)" if self.optional else "")

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.optional
        if self.kind is float:
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        elif self.kind is int:
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        else:
            ok = isinstance(value, self.kind)
        if not ok:
            return False
        if self.choices:
            return value in self.choices
        if self.pattern:
            return re.fullmatch(self.pattern, value) is not None
        low_ok = self.low is None or (value > self.low if self.open_low else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.open_high else value <= self.high)
        return low_ok and high_ok


def _setting(default: Any, rule: _Rule, doc: str) -> Any:
    """A settings field with its rule and a one-line description."""
    return field(default=default, metadata={"rule": rule, "doc": doc})


@dataclass(frozen=True)
class TrainingSettings:
    """The network's M-step (``nn()`` fits): Adam over minibatches, early stopping on a
    validation split with the best weights restored, the paper's lambda."""

    epochs: int | None = _setting(None, _Rule(int, 1, optional=True), "most EM epochs: 100 with nn(), 2000 for a plain GLMM")
    batch_size: int = _setting(512, _Rule(int, 1), "rows per minibatch")
    learning_rate: float = _setting(1e-3, _Rule(float, 0, open_low=True), "Adam's learning rate")
    patience: int = _setting(10, _Rule(int, 1), "epochs without a better validation loss before stopping")
    validation_fraction: float = _setting(0.1, _Rule(float, 0, 0.5, open_low=True, open_high=True), "share of rows held out")
    penalty: float | None = _setting(
        None, _Rule(float, 0, optional=True), "the paper's lambda (Eq. 6); None: 1 with nn(), 0 without (maximum likelihood)"
    )
    overlap_estep: bool = _setting(
        True, _Rule(bool),
        "the next E-step on a worker thread beside this epoch's M-step (the minibatches while a network trains; "
        "in the Newton blocks, their Louis information and beta's Newton step)",
    )

    def max_epochs(self, has_networks: bool) -> int:
        """``epochs`` or its default: 100 with networks, 2000 for a plain GLMM."""
        return self.epochs if self.epochs is not None else (100 if has_networks else 2000)

    def penalty_for(self, has_networks: bool) -> float:
        return self.penalty if self.penalty is not None else (1.0 if has_networks else 0.0)


@dataclass(frozen=True)
class EStepSettings:
    """The E-step: K draws per epoch of which R are dropped, NUTS with at most
    2**depth - 1 leapfrog steps per draw."""

    draws: int = _setting(4, _Rule(int, 1), "draws K per epoch where draws set the reported variances")
    training_draws: int = _setting(2, _Rule(int, 1), "draws K per epoch while a network trains (the paper's K = 2)")
    burn_in: int = _setting(1, _Rule(int, 0), "draws R dropped per epoch and chain (fewer than draws and training_draws)")
    chains: int = _setting(
        2, _Rule(int, 1, 64),
        "independent NUTS chains, side by side on threads, that the draws of an epoch at fixed parameters (the Newton "
        "blocks, posterior draws for intervals) are dealt to: min(chains, K / c) for K draws compiled in chunks of c; "
        "EM epochs, whose parameters move every epoch, training, and models of fewer than 20,000 rows x outputs draw on one chain",
    )
    sampler: str = _setting(
        "auto", _Rule(str, choices=SAMPLERS),
        "'exact' block Gibbs (gaussian only), NUTS on per-level 'whitened' effects or the 'paper''s NUTS; 'auto': exact for gaussian, else whitened",
    )
    max_tree_depth: int | None = _setting(
        None, _Rule(int, 1, 12, optional=True), "most NUTS doublings; None: 2 while training, 3 gaussian, 5 otherwise"
    )

    def kind(self, gaussian: bool) -> str:
        """The sampler a family gets: ``sampler``, with "auto" resolved (exact for gaussian, else whitened)."""
        if self.sampler == "exact" and not gaussian:
            raise ControlError("sampler='exact' draws gaussian random effects exactly; other families need 'whitened' or 'paper'.")
        return ("exact" if gaussian else "whitened") if self.sampler == "auto" else self.sampler

    def tree_depth(self, variances: bool, exact_moments: bool) -> int:
        """``max_tree_depth`` or the default for draws that set reported ``variances`` (else they
        feed a network's loss) in a family with ``exact_moments`` (gaussian) or not."""
        if self.max_tree_depth is not None:
            return self.max_tree_depth
        if self.sampler == "paper":
            return PAPER_TREE_DEPTH
        if not variances:
            return TRAINING_TREE_DEPTH
        return GAUSSIAN_TREE_DEPTH if exact_moments else VARIANCE_TREE_DEPTH


@dataclass(frozen=True)
class ConvergenceSettings:
    """When EM stops and how the reported variances are averaged (see
    :mod:`~gmenn_formula.training.averaging`)."""

    tolerance: float = _setting(2e-3, _Rule(float, 0, open_low=True), "relative change between windows that counts as settled")
    window: int = _setting(10, _Rule(int, 2), "epochs per window of the settle test")
    average_epochs: int = _setting(20, _Rule(int, 1), "fewest epochs of the last Newton block where its step has a part along directions of EM rate above 0.9 that J's gain error could make count (elsewhere the first look, window epochs, may end it)")
    max_average_epochs: int = _setting(400, _Rule(int, 1), "most epochs of the Newton blocks that average the variances, all blocks together (at least average_epochs)")
    mcse_target: float = _setting(0.02, _Rule(float, 0, open_low=True), "Monte Carlo error sought, relative to each variance")
    parameter_expansion: bool = _setting(True, _Rule(bool), "parameter-expanded EM until averaging starts")
    final_epochs: int = _setting(
        3, _Rule(int, 1), "EM epochs before the Newton blocks where EM starts near its fixed point: with the network frozen, or after a Laplace start where the blocks can take it from there (nested terms, or crossed ones the data determine)"
    )
    laplace_start: bool = _setting(
        True, _Rule(bool), "non-gaussian plain GLMMs: start EM from a Laplace-approximate EM (no sampling) instead of running EM until it settles"
    )
    closed_form: bool = _setting(
        True, _Rule(bool), "gaussian models with the exact E-step: maximise the likelihood in closed form (as lme4) instead of EM"
    )


@dataclass(frozen=True)
class RuntimeSettings:
    """Where and how the fit runs."""

    seed: int = _setting(0, _Rule(int, 0, 2**32 - 1), "seed of numpy, torch and JAX")
    device: str = _setting(
        "auto", _Rule(str, pattern=DEVICE_PATTERN, described="'auto', 'cpu', 'cuda' or 'cuda:N'"),
        "torch and JAX device: 'auto' (a GPU when one is seen), 'cpu', 'cuda', 'cuda:N'",
    )
    verbose: int = _setting(1, _Rule(int, 0, 2), "1: a progress bar, 0: silent")
    estep_timeout: float | None = _setting(
        None, _Rule(float, 0, open_low=True, optional=True),
        "seconds one E-step call may run before the fit stops with EStepTimeoutError (the fit so far in .result); "
        "None: 1 h for the first call (it compiles), then max(10 min, 50x the slowest call)",
    )


_GROUPS = {"training": TrainingSettings, "estep": EStepSettings, "convergence": ConvergenceSettings, "runtime": RuntimeSettings}


@dataclass(frozen=True)
class FitConfig:
    """All settings of a fit, in four groups; build it with :meth:`from_control` (flat keywords)."""

    training: TrainingSettings = TrainingSettings()
    estep: EStepSettings = EStepSettings()
    convergence: ConvergenceSettings = ConvergenceSettings()
    runtime: RuntimeSettings = RuntimeSettings()

    @classmethod
    def from_control(cls, **control: Any) -> FitConfig:
        """Build from flat keyword settings; ControlError names an unknown or invalid one and
        says what it accepts."""
        owners = {f.name: (group, f) for group, settings in _GROUPS.items() for f in fields(settings)}
        unknown = sorted(set(control) - set(owners))
        if unknown:
            close = difflib.get_close_matches(unknown[0], owners, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ControlError(f"Unknown fit setting {unknown[0]!r}.{hint} Settings: {', '.join(sorted(owners))}.")
        for name, value in control.items():
            rule = owners[name][1].metadata["rule"]
            if not rule.accepts(value):
                raise ControlError(f"Invalid fit setting {name}={value!r}: it must be {rule.allowed()}.")
        grouped: dict[str, dict[str, Any]] = {group: {} for group in _GROUPS}
        for name, value in control.items():
            rule = owners[name][1].metadata["rule"]
            grouped[owners[name][0]][name] = rule.kind(value) if value is not None and rule.kind in (int, float) else value
        config = cls(**{group: settings(**grouped[group]) for group, settings in _GROUPS.items()})
        config._check_together()
        return config

    def _check_together(self) -> None:
        estep, convergence = self.estep, self.convergence
        if estep.burn_in >= min(estep.draws, estep.training_draws):
            raise ControlError(
                f"Invalid fit settings burn_in={estep.burn_in}, draws={estep.draws}, training_draws={estep.training_draws}: "
                "burn_in must be smaller than both draws settings, so that every epoch keeps a draw."
            )
        if convergence.max_average_epochs < convergence.average_epochs:
            raise ControlError(
                f"Invalid fit settings max_average_epochs={convergence.max_average_epochs} < average_epochs="
                f"{convergence.average_epochs}: the cap must be at least the minimum."
            )

    def to_control(self) -> dict[str, Any]:
        """The flat keyword settings (what :meth:`from_control` takes; what a model file stores)."""
        return {name: value for group in _GROUPS for name, value in asdict(getattr(self, group)).items()}

    @staticmethod
    def describe() -> dict[str, str]:
        """Every setting's name -> what it does and what it accepts (for help texts)."""
        return {
            f.name: f"{f.metadata['doc']} ({f.metadata['rule'].allowed()}; default {f.default!r})"
            for settings in _GROUPS.values()
            for f in fields(settings)
        }
