"""A tqdm progress bar per fit: epoch, losses, E-step acceptance (``verbose=0`` silences it)."""

from __future__ import annotations

from tqdm.auto import tqdm

from gmenn_formula.results.state import EpochRecord


class ProgressBar:
    """Context manager; ``update(record)`` takes each epoch's record of the EM loop."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            # disable=None: tqdm shows the bar on a terminal or notebook, not in a log or pipe.
            self.bar = tqdm(total=None, desc="MCEM", unit="epoch", leave=False, disable=None)
        return self

    def update(self, record: EpochRecord) -> None:
        if self.bar is None:
            return
        self.bar.update(record.epoch - self.bar.n)
        shown = {"phase": record.phase, "acc": f"{record.acceptance:.2f}"}
        for value, label in ((record.loss, "loss"), (record.validation_loss, "val")):
            if value is not None:
                shown[label] = f"{value:.4f}"
        self.bar.set_postfix(shown, refresh=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
