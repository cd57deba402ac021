"""Typed, frozen term objects: what a parsed formula is made of.

No pandas here. Expressions that formulae evaluates later (``x``, ``C(g)``,
``x1:x2``, ``scale(x)``, ``I(x ** 2)``) are kept as canonical text, written by
the parser with one spelling per construct, so ``parse(str(f)) == f``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

NETWORK_OPTIONS = ("hidden", "dropout", "net", "activation")
"""Keyword options ``nn()`` accepts."""

ACTIVATIONS = ("relu", "tanh", "gelu", "elu", "sigmoid")

_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def quote_string(value: str) -> str:
    """The canonical spelling of a string literal: double quotes, backslash escapes."""
    return json.dumps(value, ensure_ascii=False)


def quote_name(name: str) -> str:
    """A column name as the formula spells it: bare if it is a plain name, else in backquotes."""
    return name if _PLAIN_NAME.fullmatch(name) else f"`{name}`"


@dataclass(frozen=True)
class Response:
    """Left-hand side ``y`` or any expression formulae evaluates (``np.log(y)``)."""

    expr: str

    def __str__(self) -> str:
        return self.expr


@dataclass(frozen=True)
class BinomialResponse:
    """lme4's ``cbind(successes, failures)``; trials = successes + failures."""

    successes: str
    failures: str

    def __str__(self) -> str:
        return f"cbind({self.successes}, {self.failures})"


@dataclass(frozen=True)
class FixedTerm:
    """One parametric term of the linear fixed part, e.g. ``x``, ``C(g)``, ``x1:x2``, ``x1*x2``."""

    expr: str

    def __str__(self) -> str:
        return self.expr


@dataclass(frozen=True)
class Offset:
    """``offset(expr)``: added to the linear predictor with coefficient 1."""

    expr: str

    def __str__(self) -> str:
        return f"offset({self.expr})"


@dataclass(frozen=True)
class NetworkTerm:
    """An ``nn(...)`` term: a torch network of its inputs added to the linear predictor.

    ``inputs`` are parametric expressions (formulae syntax). ``rest`` is True for
    ``nn(.)``: every data column the formula does not use elsewhere is an input
    too (resolved against the data by the design stage). Options left as None
    take the engine's defaults (paper MLP 100-50-25-12, dropout 0.25, ReLU).
    """

    inputs: tuple[str, ...] = ()
    rest: bool = False
    hidden: tuple[int, ...] | None = None
    dropout: float | None = None
    net: str | None = None
    activation: str | None = None

    def __str__(self) -> str:
        args = list(self.inputs)
        if self.rest:
            args.insert(0, ".")
        text = " + ".join(args)
        options = []
        if self.hidden is not None:
            options.append(f"hidden=[{', '.join(str(h) for h in self.hidden)}]")
        if self.dropout is not None:
            options.append(f"dropout={self.dropout!r}")
        if self.net is not None:
            options.append(f"net={quote_string(self.net)}")
        if self.activation is not None:
            options.append(f"activation={quote_string(self.activation)}")
        return "nn(" + ", ".join([text, *options]) + ")"


@dataclass(frozen=True)
class RandomTerm:
    """A random-effect term ``(slopes | group)``.

    ``intercept``: whether a random intercept is included (``(x|g)`` implies one,
    ``(0 + x|g)`` removes it). ``slopes``: parametric expressions with a random
    slope. ``group``: the factors whose interaction defines the grouping
    (``(1|a:b)`` -> ``("a", "b")``). ``correlated``: False for ``||``, i.e. a
    diagonal covariance. Nesting ``(1|a/b)`` is expanded by the parser into
    ``(1|a) + (1|a:b)``.
    """

    group: tuple[str, ...]
    intercept: bool = True
    slopes: tuple[str, ...] = ()
    correlated: bool = True

    @property
    def term_names(self) -> tuple[str, ...]:
        """Names of the columns that get random coefficients, intercept first."""
        return (("(Intercept)",) if self.intercept else ()) + self.slopes

    def __str__(self) -> str:
        lhs = ["1" if self.intercept else "0", *self.slopes]
        bar = "|" if self.correlated else "||"
        group = ":".join(quote_name(name) for name in self.group)
        return f"({' + '.join(lhs)} {bar} {group})"


@dataclass(frozen=True)
class Formula:
    """A parsed formula: response, linear fixed part, networks, random effects."""

    response: Response | BinomialResponse
    fixed: tuple[FixedTerm, ...] = ()
    intercept: bool = True
    offsets: tuple[Offset, ...] = ()
    networks: tuple[NetworkTerm, ...] = ()
    random: tuple[RandomTerm, ...] = ()
    text: str = field(default="", compare=False)

    @property
    def grouping_factors(self) -> tuple[str, ...]:
        """Every data column used as (part of) a grouping factor, in order of appearance."""
        seen: dict[str, None] = {}
        for term in self.random:
            for name in term.group:
                seen.setdefault(name, None)
        return tuple(seen)

    def __str__(self) -> str:
        rhs: list[str] = ["1" if self.intercept else "0"]
        rhs += [str(t) for t in self.fixed]
        rhs += [str(o) for o in self.offsets]
        rhs += [str(n) for n in self.networks]
        rhs += [str(r) for r in self.random]
        return f"{self.response} ~ {' + '.join(rhs)}"
