"""Grouping factors as int32 level codes: never a dense rows-by-levels matrix.

A factor (or an interaction ``a:b`` of factors) becomes one int32 code per row
into a sorted table of level labels, as R's ``factor()`` sorts its levels.
Rows of new data whose level was not seen in training get :data:`NEW_LEVEL`,
which the engine reads as "no random effect" (lme4's ``allow.new.levels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gmenn_formula.errors import GroupingFactorError

NEW_LEVEL = -1
"""Code of a row whose grouping level was not seen in training."""


def _check_ids(values: pd.Series, name: str) -> None:
    """GroupingFactorError for a float column holding values that are not whole numbers: a measurement, not an id."""
    numbers = values.dropna().to_numpy(dtype=np.float64)
    bad = ~np.isfinite(numbers) | (numbers != np.round(numbers))
    if bad.any():
        raise GroupingFactorError(
            f"Grouping factor {name!r} holds numbers that are not whole (e.g. {float(numbers[bad][0])!r}), so every distinct "
            "value would be a level of its own. A grouping factor must be an id: use integer or string ids "
            f"(e.g. data[{name!r}].astype(int) if they are ids), or write a measurement as a fixed term or a random slope."
        )


def _factorize(values: pd.Series) -> tuple[np.ndarray, pd.Index]:
    """Sorted level codes of one column; labels keep the column's dtype."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.cat.remove_unused_categories()
        return values.cat.codes.to_numpy(np.int64), pd.Index(values.cat.categories)
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), pd.Index(uniques)


@dataclass(frozen=True)
class GroupingFactor:
    """The levels of one grouping factor, learned from training data.

    ``columns``: the data columns whose interaction defines the factor.
    ``levels``: (q,) labels, a MultiIndex for an interaction.
    """

    columns: tuple[str, ...]
    levels: pd.Index

    @property
    def name(self) -> str:
        return ":".join(self.columns)

    @property
    def num_levels(self) -> int:
        return len(self.levels)

    @property
    def labels(self) -> list[str]:
        """Level labels as text, ``a1:b2`` for interactions."""
        if isinstance(self.levels, pd.MultiIndex):
            return [":".join(str(v) for v in tup) for tup in self.levels]
        return [str(v) for v in self.levels]

    @classmethod
    def learn(cls, columns: tuple[str, ...], data: pd.DataFrame) -> tuple[GroupingFactor, np.ndarray]:
        """Levels and (n,) int32 codes of the factor on training data."""
        for c in columns:
            if pd.api.types.is_float_dtype(data[c]):
                _check_ids(data[c], c)
        parts = [_factorize(data[c]) for c in columns]
        if len(parts) == 1:
            codes, levels = parts[0]
        else:
            combined = np.zeros(len(data), dtype=np.int64)
            for part_codes, part_levels in parts:
                combined = combined * len(part_levels) + part_codes
            codes, used = pd.factorize(combined, sort=True)
            tuples = []
            for position in range(len(parts) - 1, -1, -1):
                part_levels = parts[position][1]
                tuples.insert(0, part_levels[used % len(part_levels)])
                used = used // len(part_levels)
            levels = pd.MultiIndex.from_arrays(tuples, names=list(columns))
        factor = cls(tuple(columns), levels)
        if factor.num_levels < 2:
            only = factor.labels[0] if factor.num_levels else "none"
            raise GroupingFactorError(
                f"Grouping factor {factor.name!r} has {factor.num_levels} level (only {only!r}) in the data "
                "used for fitting; a random effect needs at least two levels. Remove the term "
                f"'(... | {factor.name})' or check the data."
            )
        return factor, codes.astype(np.int32)

    def encode(self, data: pd.DataFrame) -> np.ndarray:
        """(n,) int32 codes of new data; unseen levels get NEW_LEVEL."""
        if isinstance(self.levels, pd.MultiIndex):
            keys = pd.MultiIndex.from_arrays([data[c] for c in self.columns])
        else:
            keys = pd.Index(data[self.columns[0]])
        return self.levels.get_indexer(keys).astype(np.int32)


def nesting(inner: np.ndarray, outer: np.ndarray, num_inner: int) -> np.ndarray | None:
    """(q_inner,) the outer level of each inner level, from the two factors' codes (n,) on the
    same rows; None when an inner level meets several outer levels (the factors are not nested)."""
    first = np.full(num_inner, -1)
    first[inner[::-1]] = outer[::-1]
    return first if np.array_equal(first[inner], outer) else None


def nested_units(codes: list[np.ndarray], num_levels: list[int]) -> tuple[int, list[np.ndarray]] | None:
    """The factor every other nests in (the one with the fewest levels that they all nest in), as
    (its index, per factor the (q_l,) unit of each level), or None when there is none."""
    for top in sorted(range(len(codes)), key=lambda l: num_levels[l]):
        maps = [nesting(c, codes[top], q) for c, q in zip(codes, num_levels)]
        if all(m is not None for m in maps):
            return top, maps
    return None
