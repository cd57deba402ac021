"""The response: checked against the family and encoded as arrays.

Encodings (n rows):
- gaussian: ``y`` float64 (n,).
- binomial: ``y`` successes float64 (n,) and ``trials`` (n,): 0/1, booleans, a
  two-level factor (the second level, in R's order, is the "success") or
  ``cbind(successes, failures)``.
- poisson: ``y`` non-negative integer counts as float64 (n,).
- categorical: ``y`` int64 class codes (n,), ``classes`` the labels in order
  (a pandas Categorical's order, else sorted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from gmenn_formula.errors import ResponseError
from gmenn_formula.formula.terms import BinomialResponse, Response


@dataclass(frozen=True)
class ResponseData:
    """Encoded response: ``y`` (n,) float64 (int64 class codes for categorical), ``trials`` (n,)
    float64: the binomial trials, ones for every other family."""

    y: np.ndarray
    trials: np.ndarray


def _labels(values: pd.Series) -> tuple:
    if isinstance(values.dtype, pd.CategoricalDtype):
        return tuple(values.cat.categories)
    return tuple(sorted(pd.unique(values.dropna())))


def _numeric(values: pd.Series, name: str, family: str) -> np.ndarray:
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=np.float64)
    if not pd.api.types.is_numeric_dtype(values):
        example = values.dropna().iloc[0] if values.notna().any() else None
        raise ResponseError(
            f"The {family} family needs a numeric response, but {name!r} holds values like {example!r}. "
            + ("Use family='categorical' for class labels." if family != "categorical" else "")
        )
    return values.to_numpy(dtype=np.float64)


def _counts(values: np.ndarray, name: str, what: str) -> None:
    bad = (values < 0) | (values != np.round(values))
    if bad.any():
        raise ResponseError(
            f"{what} {name!r} must be non-negative whole numbers; row {int(np.argmax(bad))} has {values[bad][0]!r}."
        )


@dataclass(frozen=True)
class ResponseCoder:
    """How the response is encoded; ``classes`` are kept for binomial factors and categorical."""

    family: str
    name: str
    classes: tuple | None = None

    @classmethod
    def learn(cls, family: str, response: Response | BinomialResponse, values: pd.Series | tuple[np.ndarray, np.ndarray]) -> ResponseCoder:
        """Choose the encoding from the training values (a Series, or cbind's two arrays)."""
        name = str(response)
        if isinstance(response, BinomialResponse):
            if family != "binomial":
                raise ResponseError(f"cbind(successes, failures) is a binomial response; it cannot be used with family={family!r}.")
            return cls(family, name)
        if family in ("binomial", "categorical") and not pd.api.types.is_bool_dtype(values):
            labels = _labels(values)
            if family == "binomial":
                return cls._binary(name, values, labels)
            return cls._categorical(name, values, labels)
        return cls(family, name)

    @classmethod
    def _binary(cls, name: str, values: pd.Series, labels: tuple) -> ResponseCoder:
        numeric = pd.api.types.is_numeric_dtype(values) and not isinstance(values.dtype, pd.CategoricalDtype)
        if numeric:
            if set(labels) <= {0, 1}:
                return cls("binomial", name)
            raise ResponseError(
                f"The binomial family needs a 0/1, boolean or two-level response, but {name!r} holds "
                f"{len(labels)} distinct numbers (e.g. {labels[:3]}). For counts out of n trials write "
                "cbind(successes, n - successes); for several classes use family='categorical'."
            )
        if len(labels) != 2:
            raise ResponseError(
                f"The binomial family needs two classes, but {name!r} has {len(labels)}: {labels[:5]}. "
                "Use family='categorical' for more than two classes."
            )
        return cls("binomial", name, labels)

    @classmethod
    def _categorical(cls, name: str, values: pd.Series, labels: tuple) -> ResponseCoder:
        if pd.api.types.is_float_dtype(values) and not np.all(np.mod(values.dropna(), 1) == 0):
            raise ResponseError(
                f"The categorical family needs class labels, but {name!r} is continuous "
                f"(e.g. {values.dropna().iloc[0]!r}). Use family='gaussian' for a continuous response."
            )
        if len(labels) < 2:
            raise ResponseError(f"The categorical family needs at least two classes; {name!r} has {len(labels)}.")
        return cls("categorical", name, labels)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Response values (class labels where there are classes) from codes or successes (...,)."""
        return np.asarray(self.classes, dtype=object)[codes] if self.classes is not None else codes

    def encode(self, values: pd.Series | tuple[np.ndarray, np.ndarray]) -> ResponseData:
        """Encode response values (n,) the way training did; unknown classes are an error."""
        if isinstance(values, tuple):
            successes, failures = values
            _counts(successes, self.name, "The successes of")
            _counts(failures, self.name, "The failures of")
            return ResponseData(successes, successes + failures)
        if self.classes is None:
            y = _numeric(values, self.name, self.family)
            if self.family == "poisson":
                _counts(y, self.name, "The poisson response")
            return ResponseData(y, np.ones_like(y))
        codes = pd.Index(self.classes).get_indexer(values)
        if (codes < 0).any():
            unknown = values.iloc[int(np.argmax(codes < 0))]
            raise ResponseError(f"Response {self.name!r} has class {unknown!r}, which the training data did not have; known classes: {list(self.classes)}.")
        y = codes.astype(np.int64 if self.family == "categorical" else np.float64)
        return ResponseData(y, np.ones(len(y)))
