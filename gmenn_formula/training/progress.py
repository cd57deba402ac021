"""A tqdm progress bar per fit: epoch, losses, E-step acceptance (``verbose=0`` silences it)."""

from __future__ import annotations

from tqdm.auto import tqdm


class ProgressBar:
    """Context manager; ``update(entry)`` takes one history entry of the EM loop."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            # disable=None: tqdm shows the bar on a terminal or notebook, not in a log or pipe.
            self.bar = tqdm(total=None, desc="MCEM", unit="epoch", leave=False, disable=None)
        return self

    def update(self, entry: dict) -> None:
        if self.bar is None:
            return
        self.bar.update(entry["epoch"] - self.bar.n)
        shown = {"phase": entry["phase"], "acc": f"{entry['acceptance']:.2f}"}
        for key, label in (("loss", "loss"), ("validation_loss", "val")):
            if entry.get(key) is not None:
                shown[label] = f"{entry[key]:.4f}"
        self.bar.set_postfix(shown, refresh=False)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
