"""The formula language: ``parse`` and the term objects a formula is made of."""

from gmenn_formula.formula.parser import parse
from gmenn_formula.formula.terms import (
    ACTIVATIONS,
    NETWORK_OPTIONS,
    BinomialResponse,
    FixedTerm,
    Formula,
    NetworkTerm,
    Offset,
    RandomTerm,
    Response,
)

__all__ = [
    "ACTIVATIONS",
    "NETWORK_OPTIONS",
    "BinomialResponse",
    "FixedTerm",
    "Formula",
    "NetworkTerm",
    "Offset",
    "RandomTerm",
    "Response",
    "parse",
]
