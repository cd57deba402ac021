"""Plots of a fit (matplotlib): random-effect caterpillars, loss history, variance trajectories.

Each function draws on new axes (or on ``ax`` where it takes one) and returns
the Axes, as seaborn and ArviZ do, so a notebook shows the figure once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gmenn_formula.errors import DataError

Z_95 = 1.96
"""Half-width of the plotted intervals in posterior sds (95% under normality)."""

MAX_LABELED_LEVELS = 40
"""Caterpillar panels with more levels hide the level labels."""


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _panels(result, group: str | None) -> list[tuple[str, str, object, pd.DataFrame]]:
    """(group, term, class or None, rows of ranef) per caterpillar panel."""
    tables = result.ranef(cond_var=True)
    if group is not None and group not in tables:
        raise DataError(f"No grouping factor {group!r} in the model; choose one of {', '.join(tables)}.")
    panels = []
    for name, table in tables.items():
        if group is not None and name != group:
            continue
        classes = list(dict.fromkeys(table["class"])) if "class" in table else [None]
        for term in dict.fromkeys(table["term"]):
            for label in classes:
                rows = table[(table["term"] == term) & ((table["class"] == label) if label is not None else True)]
                panels.append((name, term, label, rows))
    return panels


def plot_ranef(result, group: str | None = None, figsize: tuple[float, float] | None = None) -> np.ndarray:
    """Caterpillar plot: per level, the effect's posterior mean +- 1.96 sd, sorted by the mean.

    One panel per grouping factor and term (rows) and class (columns; one
    column unless categorical). ``group``: one grouping factor (default all).
    Returns the (rows, columns) array of Axes.
    """
    plt = _pyplot()
    panels = _panels(result, group)
    classes = list(dict.fromkeys(label for *_, label, _ in panels))
    rows = len(panels) // len(classes)
    size = figsize or (3.2 * len(classes) + 1, 3.2 * rows)
    _, axes = plt.subplots(rows, len(classes), squeeze=False, figsize=size, constrained_layout=True)
    for ax, (name, term, label, table) in zip(axes.flat, panels):
        ordered = table.sort_values("mean")
        position = np.arange(len(ordered))
        mean, sd = ordered["mean"].to_numpy(float), ordered["sd"].to_numpy(float)
        ax.errorbar(mean, position, xerr=Z_95 * sd, fmt="o", markersize=2, elinewidth=0.6, color="C0", ecolor="0.6")
        ax.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--")
        title = f"{name}: {term}" + (f" (class {label})" if label is not None else "")
        ax.set_title(title, fontsize=9)
        if len(ordered) <= MAX_LABELED_LEVELS:
            ax.set_yticks(position, list(ordered["level"]), fontsize=7)
        else:
            ax.set_yticks([])
            ax.set_ylabel(f"{len(ordered)} levels, sorted")
        ax.set_xlabel("effect (mean +- 1.96 sd)")
    return axes


def plot_history(result, ax=None):
    """Training loss (mean NLL per row) and, with networks, validation loss per EM epoch.

    Marks the best epoch (the restored network) when there is one. Returns the Axes.
    """
    history = result.history
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 3.5), constrained_layout=True)
    for column, label in (("loss", "training"), ("validation_loss", "validation")):
        if column in history and history[column].notna().any():
            ax.plot(history["epoch"], history[column], marker=".", label=label)
    if result.state.best_epoch is not None:
        ax.axvline(result.state.best_epoch, color="0.4", linestyle=":", label=f"best epoch ({result.state.best_epoch})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (mean NLL per row)")
    ax.legend()
    return ax


def plot_variances(result, ax=None, log: bool = True):
    """Each variance component (and the residual variance) per epoch; the averaged epochs are shaded.

    ``log``: logarithmic y axis (variances of different factors differ by orders
    of magnitude). Returns the Axes.
    """
    history = result.history
    columns = [c for c in history.columns if c.startswith("var[")]
    if "dispersion" in history:
        columns.append("dispersion")
    if not columns:
        raise DataError("The history holds no variance components to plot.")
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(7, 4), constrained_layout=True)
    for column in columns:
        label = "residual" if column == "dispersion" else column[4:-1]
        ax.plot(history["epoch"], history[column], label=label, linewidth=1.2)
    averaged = history.loc[history["phase"] == "average", "epoch"]
    if len(averaged):
        ax.axvspan(averaged.min(), averaged.max(), color="0.9", zorder=0, label="averaged epochs")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("variance")
    ax.legend(fontsize=7, ncol=2 if len(columns) > 6 else 1)
    return ax


def plot_partial_dependence(table: pd.DataFrame, ax=None):
    """Partial dependence curves of one feature (a :func:`~gmenn_formula.results.explain.partial_dependence`
    table): prediction against value, one line per level (and class). Returns the Axes."""
    if table["feature"].nunique() != 1:
        raise DataError("plot_partial_dependence draws one feature; select one with table[table.feature == name].")
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 3.5), constrained_layout=True)
    keys = ["level", "class"] if "class" in table else ["level"]
    numeric = pd.api.types.is_numeric_dtype(table["value"])
    for key, curve in table.groupby(keys, sort=False):
        label = " ".join(str(k) for k in (key if isinstance(key, tuple) else (key,)) if k is not None)
        group = curve["group"].iloc[0]
        label = f"{group} = {label}" if isinstance(group, str) else label
        positions = curve["value"] if numeric else np.arange(len(curve))
        ax.plot(positions, curve["prediction"], marker="" if numeric else "o", label=label)
    if not numeric:
        first = table.drop_duplicates("value")["value"]
        ax.set_xticks(np.arange(len(first)), [str(v) for v in first])
    ax.set_xlabel(table["feature"].iloc[0])
    ax.set_ylabel("mean prediction")
    ax.legend(fontsize="small")
    return ax
