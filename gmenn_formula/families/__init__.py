"""Response families, one module each: gaussian, binomial, poisson, categorical."""

from __future__ import annotations

from gmenn_formula.errors import FamilyError
from gmenn_formula.families.base import Family
from gmenn_formula.families.binomial import Binomial
from gmenn_formula.families.categorical import Categorical
from gmenn_formula.families.gaussian import Gaussian
from gmenn_formula.families.poisson import Poisson

_FAMILIES: dict[str, type[Family]] = {f.name: f for f in (Gaussian, Binomial, Poisson, Categorical)}
FAMILIES = tuple(_FAMILIES)
"""The family names, in the order error messages list them."""


def get_family(family: str | Family) -> Family:
    """The family object for a name ("gaussian", "binomial", "poisson", "categorical")."""
    if isinstance(family, Family):
        return family
    try:
        return _FAMILIES[family]()
    except (KeyError, TypeError):
        raise FamilyError(f"Unknown family {family!r}; choose one of {', '.join(_FAMILIES)}.") from None


__all__ = ["FAMILIES", "Binomial", "Categorical", "Family", "Gaussian", "Poisson", "get_family"]
