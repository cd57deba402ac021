"""The functions a formula may call, and nothing else.

A formula is data: its expressions are evaluated by formulae on the user's
columns, so a call to anything outside this vocabulary (``np.savetxt(...)``,
``pd.read_pickle(...)``) is refused by the parser, whether the text comes from
the user or from a model file. The design stage evaluates expressions in an
environment holding exactly these functions (see
:mod:`gmenn_formula.design.columns`).

- ``TRANSFORMS``: formulae's encodings and stateful transforms.
- ``CONTRASTS``: contrast objects passed to ``C()``, e.g. ``C(g, Treatment("b"))``.
- ``MATH``: element-wise numpy functions, callable as ``np.<name>`` or, as in
  R, by the bare name (``log(t)``).

The formula language's own constructs (``nn()``, ``offset()``, ``cbind()``)
are read by the parser and never evaluated.
"""

from __future__ import annotations

TRANSFORMS = ("C", "I", "center", "scale", "standardize", "poly", "bs", "cr", "cc", "tp", "binary", "B", "S", "T")
CONTRASTS = ("Treatment", "Sum")
MATH = (
    "log",
    "log1p",
    "log2",
    "log10",
    "exp",
    "expm1",
    "sqrt",
    "square",
    "abs",
    "sign",
    "sin",
    "cos",
    "tanh",
    "arcsinh",
    "floor",
    "ceil",
    "round",
)

CALLABLE = frozenset((*TRANSFORMS, *CONTRASTS, *MATH, *(f"np.{name}" for name in MATH)))
"""Every name an expression may call."""


def describe_known() -> str:
    """The vocabulary in words, for error messages."""
    return f"a transform ({', '.join(TRANSFORMS)}), a contrast ({', '.join(CONTRASTS)}) or {', '.join(MATH)} (also as np.log ...)"
