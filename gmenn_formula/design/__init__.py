"""Design stage: a parsed formula and a DataFrame become arrays for the engine.

Shape conventions, used throughout the package:
- n rows (after rows with missing values are dropped),
- q levels of a grouping factor, p coefficients per level of a random-effect
  term (1 for a random intercept), c classes (1 for gaussian/binomial/poisson),
- k linear fixed-effect columns, d_j inputs of the j-th ``nn()`` term.

Grouping factors are int32 codes (n,) into q sorted levels, slope columns a
dense (n, p) array: memory is O(n * p), never a dense (n, q) matrix.
"""

from gmenn_formula.design.grouping import NEW_LEVEL, GroupingFactor
from gmenn_formula.design.response import ResponseData
from gmenn_formula.design.spec import Design, DesignSpec, NetworkSpec, RandomEffectDesign, RandomSpec, describe, design
from gmenn_formula.families import FAMILIES

__all__ = [
    "FAMILIES",
    "NEW_LEVEL",
    "Design",
    "DesignSpec",
    "GroupingFactor",
    "NetworkSpec",
    "RandomEffectDesign",
    "RandomSpec",
    "ResponseData",
    "describe",
    "design",
]
