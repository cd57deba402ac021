"""The epoch log: one :class:`~gmenn_formula.results.state.EpochRecord` per EM epoch,
passed on to a progress callback as it is written; the notes of events along the way
(``messages``); the last epoch's draws (what a fit stopped between epochs reports).
Writing a record ends the epoch: the heap's free memory goes back to the system there
(:mod:`~gmenn_formula.training.heap`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gmenn_formula.estep.arrays import EpochDraws
from gmenn_formula.results.state import EpochRecord
from gmenn_formula.training.heap import release_free_heap
from gmenn_formula.training.interrupts import raise_if_interrupted


class EpochLog:
    """The records of one fit, in order; ``progress`` (if given) sees each one."""

    def __init__(self, progress: Callable[[EpochRecord], None] | None = None) -> None:
        self.records: list[EpochRecord] = []
        self.progress = progress
        self.messages: list[str] = []
        self.last_draws: EpochDraws | None = None

    @property
    def last_epoch(self) -> int:
        return self.records[-1].epoch if self.records else 0

    def add(
        self,
        phase: str,
        covariances: list[np.ndarray],
        dispersion: float,
        draws: EpochDraws,
        estep_seconds: float,
        mstep_seconds: float,
        seconds: float | None = None,
        loss: float | None = None,
        validation_loss: float | None = None,
    ) -> EpochRecord:
        """Write the next epoch's record; ``seconds`` defaults to the sum of the two parts. The
        heap's free memory is released, and a deferred Ctrl-C raised, once the epoch is logged."""
        info = draws.info
        record = EpochRecord(
            epoch=self.last_epoch + 1,
            phase=phase,
            seconds=estep_seconds + mstep_seconds if seconds is None else seconds,
            estep_seconds=estep_seconds,
            mstep_seconds=mstep_seconds,
            covariances=tuple(S.copy() for S in covariances),
            dispersion=float(dispersion),
            acceptance=float(info.mean_acceptance),
            step_size=float(info.step_size),
            leapfrog_steps=float(info.mean_leapfrog_steps),
            divergences=int(info.num_divergences),
            loss=None if loss is None else float(loss),
            validation_loss=None if validation_loss is None else float(validation_loss),
            setup_seconds=float(draws.setup_seconds),
        )
        self.records.append(record)
        self.last_draws = draws
        if self.progress is not None:
            self.progress(record)
        release_free_heap()
        raise_if_interrupted()
        return record
