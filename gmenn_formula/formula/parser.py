"""Parse formula text into the term objects of :mod:`gmenn_formula.formula.terms`.

Three steps. Lark parses the text with the LALR grammar ``grammar/gmenn.lark``,
which has one expression syntax for every position. :class:`_ToNodes` turns
Lark's tree into small expression nodes that remember where they start.
:class:`_Builder` checks what is allowed where (``nn()`` only as a term of its
own, ``|`` only inside parentheses, ...) and builds the :class:`Formula`.
Every mistake raises :class:`FormulaSyntaxError` with a caret under the
offending token; Lark's own errors are translated into words.

Canonical text, the one spelling the parser writes expressions back with:
single spaces around ``+ - * / **`` (and around ``~ |`` in ``str(Formula)``),
none around ``:``, unary minus glued to its operand (``-x``), ``f(a, b, k=v)``,
``[1, 2]``, strings in double quotes (JSON escapes), numbers and backquoted
names as written, and parentheses only where precedence needs them
(``(x1 + x2):x3``, ``I((x + z) * 2)``; ``((x))`` becomes ``x``).

Choices: outside a random-effect term, ``*``, ``/`` and ``**`` are formulae's
(``a/b`` nests as ``a + a:b``) and a term using them stays one FixedTerm with
its canonical text; a parenthesised sum standing alone, ``(x1 + x2)``, is
split into its terms; ``-`` only removes the intercept (``- 1``); ``.`` is only
an input of ``nn()``; ``y ~ 0`` (no terms at all) parses. Grouping factors are
stored without backquotes (they are column names); fixed terms keep them.
"""

from __future__ import annotations

import ast
import difflib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedToken, VisitError
from lark.lexer import PatternStr
from lark.tree import Meta

from gmenn_formula.errors import DataTypeError, FormulaSyntaxError
from gmenn_formula.formula.functions import CALLABLE, describe_known
from gmenn_formula.formula.grammar_file import grammar_text
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
    quote_string,
)

# --------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class _Atom:
    """A name (plain, dotted or backquoted), a number, or nn()'s ``.``; ``kind`` says which."""

    pos: int
    kind: str
    text: str

    @property
    def children(self) -> tuple[_Node, ...]:
        return ()


@dataclass(frozen=True)
class _String:
    """A string literal; ``value`` is decoded."""

    pos: int
    value: str

    @property
    def children(self) -> tuple[_Node, ...]:
        return ()


@dataclass(frozen=True)
class _BinOp:
    """``left op right``; ``pos`` is where ``left`` starts, ``op_pos`` where the operator is."""

    pos: int
    op: str
    op_pos: int
    left: _Node
    right: _Node

    @property
    def children(self) -> tuple[_Node, ...]:
        return (self.left, self.right)


@dataclass(frozen=True)
class _Neg:
    """Unary minus."""

    pos: int
    operand: _Node

    @property
    def children(self) -> tuple[_Node, ...]:
        return (self.operand,)


@dataclass(frozen=True)
class _Keyword:
    """A keyword argument ``name=value`` of a call."""

    pos: int
    name: str
    value: _Node

    @property
    def children(self) -> tuple[_Node, ...]:
        return (self.value,)


@dataclass(frozen=True)
class _Call:
    """``func(args)``, positional arguments before keyword ones."""

    pos: int
    func: str
    args: tuple[_Node, ...]

    @property
    def children(self) -> tuple[_Node, ...]:
        return self.args


@dataclass(frozen=True)
class _List:
    """``[item, ...]``."""

    pos: int
    items: tuple[_Node, ...]

    @property
    def children(self) -> tuple[_Node, ...]:
        return self.items


@dataclass(frozen=True)
class _Random:
    """A parenthesised ``(lhs | group)`` or ``(lhs || group)``: a random-effect term."""

    pos: int
    bar: _BinOp

    @property
    def children(self) -> tuple[_Node, ...]:
        return (self.bar,)


_Node = _Atom | _String | _BinOp | _Neg | _Keyword | _Call | _List | _Random

_BARS = ("|", "||")
# Binding strength for writing expressions back; unary minus sits between ':' and '**'.
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, ":": 3, "**": 5}
_UNARY = 4
_TIGHTEST = 6


def _is_bar(node: _Node) -> bool:
    return isinstance(node, _BinOp) and node.op in _BARS


def _is_dot(node: _Node) -> bool:
    """nn()'s ``.``: every column the formula does not use elsewhere."""
    return isinstance(node, _Atom) and node.kind == "dot"


def _walk(node: _Node) -> Iterator[_Node]:
    """The node and everything below it, outermost first."""
    yield node
    for child in node.children:
        yield from _walk(child)


def _text(node: _Node) -> str:
    """The canonical text of an expression (it holds no random-effect terms)."""
    return _render(node)[0]


def _render(node: _Node) -> tuple[str, int]:
    """Canonical text and binding strength of ``node``."""
    match node:
        case _BinOp(op=op, left=left, right=right):
            strength = _PRECEDENCE[op]
            right_associative = op == "**"
            spaced = op if op == ":" else f" {op} "
            return (
                _wrap(left, strength + right_associative)
                + spaced
                + _wrap(right, strength + (not right_associative)),
                strength,
            )
        case _Neg(operand=operand):
            return "-" + _wrap(operand, _UNARY), _UNARY
        case _Call(func=func, args=args):
            return f"{func}({', '.join(_text(arg) for arg in args)})", _TIGHTEST
        case _Keyword(name=name, value=value):
            return f"{name}={_text(value)}", _TIGHTEST
        case _List(items=items):
            return f"[{', '.join(_text(item) for item in items)}]", _TIGHTEST
        case _String(value=value):
            return quote_string(value), _TIGHTEST
        case _Atom(text=text):
            return text, _TIGHTEST
    raise TypeError(f"no canonical text for {node!r}")


def _wrap(node: _Node, minimum: int) -> str:
    """``node``'s text, in parentheses if it binds looser than ``minimum``."""
    text, strength = _render(node)
    return text if strength >= minimum else f"({text})"


def _terms(node: _Node, minus: int | None = None) -> Iterator[tuple[_Node, int | None]]:
    """The terms of a ``+``/``-`` sum, each with the position of the ``-`` removing it (None if added)."""
    match node:
        case _BinOp(op="+"):
            yield from _terms(node.left, minus)
            yield from _terms(node.right, minus)
        case _BinOp(op="-"):
            yield from _terms(node.left, minus)
            yield from _terms(node.right, None if minus is not None else node.op_pos)
        case _Neg():
            yield from _terms(node.operand, None if minus is not None else node.pos)
        case _:
            yield node, minus


# -------------------------------------------------------------------- tree -> nodes


@v_args(meta=True, inline=True)
class _ToNodes(Transformer):
    """Lark's tree to nodes; rejects bad string escapes and misordered or repeated keywords."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self._text = text

    def start(self, meta: Meta, left: _Node, right: _Node) -> tuple[_Node, _Node]:
        return left, right

    def binop(self, meta: Meta, left: _Node, op: Token, right: _Node) -> _BinOp:
        return _BinOp(meta.start_pos, str(op), op.start_pos, left, right)

    def neg(self, meta: Meta, minus: Token, operand: _Node) -> _Neg:
        return _Neg(meta.start_pos, operand)

    def name(self, meta: Meta, token: Token) -> _Atom:
        return _Atom(meta.start_pos, "name", str(token))

    def number(self, meta: Meta, token: Token) -> _Atom:
        return _Atom(meta.start_pos, "number", str(token))

    def dot(self, meta: Meta, token: Token) -> _Atom:
        return _Atom(meta.start_pos, "dot", ".")

    def string(self, meta: Meta, token: Token) -> _String:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an invalid escape such as "\d" is an error, not a warning
            try:
                return _String(meta.start_pos, ast.literal_eval(token))
            except (SyntaxError, ValueError, Warning):
                raise FormulaSyntaxError(
                    "invalid escape in this string", self._text, meta.start_pos, 'an escape such as \\" or \\n'
                ) from None

    def paren(self, meta: Meta, inner: _Node) -> _Node:
        return _Random(meta.start_pos, inner) if _is_bar(inner) else inner

    def call(self, meta: Meta, func: Token, args: tuple[_Node, ...] | None) -> _Call:
        return _Call(meta.start_pos, str(func), args or ())

    def keyword(self, meta: Meta, name: Token, value: _Node) -> _Keyword:
        return _Keyword(name.start_pos, str(name), value)

    def arguments(self, meta: Meta, *args: _Node) -> tuple[_Node, ...]:
        keywords: set[str] = set()
        for arg in args:
            if isinstance(arg, _Keyword):
                if arg.name in keywords:
                    raise FormulaSyntaxError(f"keyword '{arg.name}' is given twice", self._text, arg.pos)
                keywords.add(arg.name)
            elif keywords:
                raise FormulaSyntaxError(
                    "a positional argument follows a keyword argument",
                    self._text,
                    arg.pos,
                    "positional arguments first, then keyword arguments",
                )
        return args

    def items(self, meta: Meta, *items: _Node) -> tuple[_Node, ...]:
        return items

    def brackets(self, meta: Meta, items: tuple[_Node, ...] | None) -> _List:
        return _List(meta.start_pos, items or ())


# ------------------------------------------------------------------ nodes -> terms


class _Place(NamedTuple):
    """Where an expression stands, for errors about what cannot stand there."""

    rule: str
    expected: str


_LEFT = _Place("cannot be on the left side of '~'", "a response such as 'y', 'np.log(y)' or 'cbind(k, n - k)'")
_IN_NN = _Place("cannot go inside nn()", "input columns or expressions such as 'x' or 'C(g)'")
_IN_RANDOM = _Place("cannot go inside a random-effect term", "slopes such as 'x' before '|'")
_IN_TERM = _Place("must be a term of its own, added with '+'", "")


def _did_you_mean(word: str, choices: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


class _Builder:
    """Checks the nodes of one formula and builds its :class:`Formula`."""

    def __init__(self, text: str) -> None:
        self.text = text

    def error(self, message: str, pos: int, expected: str = "") -> FormulaSyntaxError:
        return FormulaSyntaxError(message, self.text, pos, expected)

    def formula(self, left: _Node, right: _Node) -> Formula:
        fixed: list[FixedTerm] = []
        offsets: list[Offset] = []
        networks: list[NetworkTerm] = []
        random: list[RandomTerm] = []
        response = self._response(left)
        _, intercept, terms = self._split(right)
        for term in terms:
            match term:
                case _Random():
                    random += self._random(term.bar)
                case _Call(func="nn"):
                    networks.append(self._network(term))
                case _Call(func="offset"):
                    (expr,) = self._positional(term, 1, "one expression, as in offset(log(exposure))")
                    offsets.append(Offset(self._plain(expr, _IN_TERM)))
                case _BinOp(op="|" | "||"):
                    raise self.error(
                        "a random-effect term needs parentheses", term.op_pos, "parentheses around it, as in (1 | g)"
                    )
                case _:
                    fixed.append(FixedTerm(self._plain(term, _IN_TERM)))
        return Formula(
            response=response,
            fixed=tuple(fixed),
            intercept=intercept,
            offsets=tuple(offsets),
            networks=tuple(networks),
            random=tuple(random),
            text=self.text,
        )

    def _response(self, node: _Node) -> Response | BinomialResponse:
        if isinstance(node, _Call) and node.func == "cbind":
            successes, failures = self._positional(node, 2, "cbind(successes, failures)")
            return BinomialResponse(self._plain(successes, _LEFT), self._plain(failures, _LEFT))
        return Response(self._plain(node, _LEFT))

    def _plain(self, node: _Node, place: _Place) -> str:
        """Canonical text of an expression formulae evaluates; none of the formula's own constructs inside."""
        for sub in _walk(node):
            match sub:
                case _ if _is_dot(sub):
                    raise self.error(
                        "'.' (every column not used elsewhere) can only be an input of nn()", sub.pos, "nn(.)"
                    )
                case _Call(func="cbind"):
                    raise self.error(
                        "cbind() can only be the whole left side of '~'",
                        sub.pos,
                        "cbind(successes, failures) as the response",
                    )
                case _Call(func="nn" | "offset"):
                    raise self.error(f"{sub.func}() {place.rule}", sub.pos, place.expected)
                case _Random():
                    raise self.error(f"a random-effect term {place.rule}", sub.pos, place.expected)
                case _BinOp(op="|" | "||"):
                    raise self.error(f"a random-effect term {place.rule}", sub.op_pos, place.expected)
                case _Call(func=func) if func not in CALLABLE:
                    hint = _did_you_mean(func, tuple(CALLABLE))
                    raise self.error(f"unknown function '{func}'{hint}", sub.pos, describe_known())
        return _text(node)

    def _split(self, node: _Node) -> tuple[_Atom | None, bool, list[_Node]]:
        """A sum's last intercept literal (``1``, ``0``, ``- 1``), the intercept it sets, and its other terms."""
        literal, intercept, rest = None, True, []
        for term, minus in _terms(node):
            if isinstance(term, _Atom) and term.kind == "number":
                value = float(term.text)
                if value not in (0, 1):
                    raise self.error(
                        f"the number {term.text} cannot be a term", term.pos, "'1' (intercept) or '0' (no intercept)"
                    )
                literal, intercept = term, (value == 1) == (minus is None)
            elif minus is not None:
                raise self.error(
                    "'-' can only remove the intercept", minus, "'- 1' or '0 +'; leave out terms you do not want"
                )
            else:
                rest.append(term)
        return literal, intercept, rest

    def _positional(self, call: _Call, count: int, usage: str) -> tuple[_Node, ...]:
        """The arguments of ``cbind``/``offset``, which take exactly ``count`` positional ones."""
        for arg in call.args:
            if isinstance(arg, _Keyword):
                raise self.error(f"{call.func}() takes no keyword arguments", arg.pos, usage)
        if len(call.args) != count:
            where = call.args[count].pos if len(call.args) > count else call.pos
            plural = "s" if count > 1 else ""
            raise self.error(f"{call.func}() takes {count} argument{plural}, not {len(call.args)}", where, usage)
        return call.args

    def _random(self, bar: _BinOp) -> list[RandomTerm]:
        """``(lhs | a/b)``: one RandomTerm per grouping, with ``a/b`` nested into ``a`` and ``a:b``."""
        _, intercept, terms = self._split(bar.left)
        slopes = tuple(self._plain(term, _IN_RANDOM) for term in terms)
        if not intercept and not slopes:
            raise self.error(
                "this random-effect term has neither an intercept nor slopes",
                bar.left.pos,
                "an intercept or slopes, as in (1 | g) or (0 + x | g)",
            )
        return [RandomTerm(group, intercept, slopes, bar.op == "|") for group in self._groups(bar.right)]

    def _groups(self, node: _Node) -> list[tuple[str, ...]]:
        """The groupings right of ``|``: ``a:b`` is one, ``a/b`` is ``a`` then ``a:b``."""
        if isinstance(node, _BinOp) and node.op == "/":
            outer = self._groups(node.left)
            return [*outer, outer[-1] + self._factor(node.right)]
        return [self._factor(node)]

    def _factor(self, node: _Node) -> tuple[str, ...]:
        """The column names of a grouping factor ``a`` or interaction ``a:b``, backquotes removed."""
        if isinstance(node, _BinOp) and node.op == ":":
            return self._factor(node.left) + self._factor(node.right)
        if isinstance(node, _Atom) and node.kind == "name":
            return (node.text.strip("`"),)
        raise self.error(
            "a grouping factor must be a column name", node.pos, "a name, a:b (interaction) or a/b (nesting) after '|'"
        )

    def _network(self, call: _Call) -> NetworkTerm:
        usage = "inputs joined by '+', as in nn(x1 + x2) or nn(.), then options such as hidden=[64, 32]"
        inputs = [arg for arg in call.args if not isinstance(arg, _Keyword)]
        if not inputs:
            raise self.error("nn() has no inputs", call.pos, usage)
        if len(inputs) > 1:
            raise self.error("nn() takes its inputs as one expression", inputs[1].pos, usage)
        literal, _, terms = self._split(inputs[0])
        if literal is not None:
            raise self.error("nn() has no intercept to set", literal.pos, usage)
        rest = any(_is_dot(term) for term in terms)
        names = tuple(self._plain(term, _IN_NN) for term in terms if not _is_dot(term))
        keywords = [arg for arg in call.args if isinstance(arg, _Keyword)]
        return NetworkTerm(inputs=names, rest=rest, **self._options(keywords))

    def _options(self, keywords: list[_Keyword]) -> dict[str, object]:
        """nn()'s keyword options, checked: the NetworkTerm fields they set."""
        readers = {"hidden": self._hidden, "dropout": self._dropout, "net": self._net, "activation": self._activation}
        options = {}
        for keyword in keywords:
            if keyword.name not in NETWORK_OPTIONS:
                raise self.error(
                    f"nn() has no option '{keyword.name}'{_did_you_mean(keyword.name, NETWORK_OPTIONS)}",
                    keyword.pos,
                    "one of " + ", ".join(NETWORK_OPTIONS),
                )
            options[keyword.name] = readers[keyword.name](keyword.value)
        return options

    def _hidden(self, node: _Node) -> tuple[int, ...]:
        items = node.items if isinstance(node, _List) else ()
        bad = [item for item in items if not _is_positive_int(item)]
        if bad or not items:
            raise self.error(
                "hidden must be a non-empty list of positive integers",
                (bad[0] if bad else node).pos,
                "layer widths, as in hidden=[100, 50, 25, 12]",
            )
        return tuple(int(item.text) for item in items)

    def _dropout(self, node: _Node) -> float:
        match node:
            case _Atom(kind="number", text=text):
                value = float(text)
            case _Neg(operand=_Atom(kind="number", text=text)):
                value = -float(text)
            case _:
                value = None
        if value is None or not 0 <= value < 1:
            raise self.error("dropout must be a number in [0, 1)", node.pos, "a probability, as in dropout=0.25")
        return value

    def _net(self, node: _Node) -> str:
        if not isinstance(node, _String):
            raise self.error("net must be a string", node.pos, 'the name of a network, as in net="mynet"')
        return node.value

    def _activation(self, node: _Node) -> str:
        choices = "one of " + ", ".join(quote_string(name) for name in ACTIVATIONS)
        if not isinstance(node, _String):
            raise self.error("activation must be a string", node.pos, choices)
        if node.value not in ACTIVATIONS:
            hint = _did_you_mean(node.value, ACTIVATIONS)
            raise self.error(f"unknown activation {quote_string(node.value)}{hint}", node.pos, choices)
        return node.value


def _is_positive_int(node: _Node) -> bool:
    return isinstance(node, _Atom) and node.kind == "number" and node.text.isdigit() and int(node.text) > 0


# ------------------------------------------------------------------ syntax errors

_OPENING = {"(": ")", "[": "]"}
_CLOSING = {")": "(", "]": "["}
_OPERATORS = frozenset({"~", "+", "-", "*", "/", "**", ":", "|", "||", ",", "="})
_BINARY = _OPERATORS - {"~", ",", "="}


def _spell(token: Token) -> str:
    """A token as an error message names it: ``name 'x'``, ``number 3``, ``'+'``."""
    match token.type:
        case "NAME":
            return f"name '{token.value}'"
        case "BACKQUOTED":
            return f"name {token.value}"
        case "NUMBER" | "STRING":
            return f"{token.type.lower()} {token.value}"
    return f"'{token.value}'"


def _character_error(text: str, pos: int) -> FormulaSyntaxError:
    """The lexer met a character no token starts with."""
    char = text[pos]
    if char in "\"'`":
        return FormulaSyntaxError(f"the quote {char} is never closed", text, pos, f"a closing {char}")
    return FormulaSyntaxError(
        f"unexpected character '{char}'", text, pos, "a name, number, string, bracket or operator"
    )


def _expected(lark: Lark, names: set[str]) -> set[str]:
    """The terminals the parser would have accepted, as their text (``'+'``) or name (``NAME``)."""
    spelled = set()
    for name in names:
        pattern = lark.get_terminal(name).pattern if name != "$END" else None
        spelled.add(pattern.value if isinstance(pattern, PatternStr) else name)
    return spelled


def _after_operand(expected: set[str]) -> str:
    """What may follow a complete operand, in words (operand starters are left out: only a call's '(' fits)."""
    parts = ["an operator such as '+'"] if expected & _BINARY else []
    parts += [f"a closing '{close}'" for close in (")", "]") if close in expected]
    parts += [f"'{mark}'" for mark in (",", "~") if mark in expected]
    parts += ["the end of the formula"] if "$END" in expected else []
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else "".join(parts)


def _token_error(text: str, tokens: list[Token], error: UnexpectedToken, lark: Lark) -> FormulaSyntaxError:
    """Translate Lark's UnexpectedToken into words about the formula."""
    at_end = error.token.type == "$END"
    pos = len(text.rstrip()) if at_end else error.token.start_pos
    before = [token for token in tokens if token.start_pos < pos]
    previous = before[-1].value if before else None
    open_brackets = _open_brackets(before)
    expected = _expected(lark, error.interactive_parser.accepts())
    found = "the formula ends" if at_end else f"unexpected {_spell(error.token)}"
    value = None if at_end else error.token.value

    def fail(message: str, expected_words: str, where: int = pos) -> FormulaSyntaxError:
        return FormulaSyntaxError(message, text, where, expected_words)

    if not tokens:
        return fail("the formula is empty", "a formula such as 'y ~ x'")
    if "~" in expected and not any(token.value == "~" for token in tokens):
        return fail("the formula has no '~'", "'~' between the response and the terms, as in 'y ~ x'")
    if value == "~":
        if previous is None:
            return fail("the formula has no response before '~'", "a response, as in 'y ~ x'")
        if "~" in (token.value for token in before):
            return fail("a formula has only one '~'", _after_operand(expected))
    if previous is None or previous in _OPERATORS or previous in _OPENING:
        after = f"after '{previous}'" if previous else "at the start"
        if at_end and previous == "~":
            return fail("the right side of '~' is empty", "at least one term, as in 'y ~ x' or 'y ~ 1'")
        if value in ("|", "||") and previous == "(":
            return fail(
                f"nothing before '{value}' in this random-effect term",
                "an intercept or slopes, as in (1 | g) or (0 + x | g)",
            )
        if previous in ("|", "||"):
            return fail(f"{found} {after}", f"a grouping factor {after}, as in (1 | g)")
        return fail(f"{found} {after}", f"a term {after}")
    if value in _CLOSING and not open_brackets:
        return fail(f"'{value}' closes nothing", _after_operand(expected))
    if open_brackets and (at_end or value in _CLOSING):
        opener = open_brackets[-1]
        closing = f"a closing '{_OPENING[opener.value]}'"
        if at_end:
            return fail(f"'{opener.value}' is never closed", closing, opener.start_pos)
        return fail(f"{found} before '{opener.value}' is closed", closing)
    return fail(found, _after_operand(expected))


def _open_brackets(tokens: list[Token]) -> list[Token]:
    """The brackets opened and not yet closed by ``tokens``, innermost last."""
    stack: list[Token] = []
    for token in tokens:
        if token.value in _OPENING:
            stack.append(token)
        elif token.value in _CLOSING and stack:
            stack.pop()
    return stack


# ---------------------------------------------------------------------------- parse


@cache
def _lark() -> Lark:
    """The LALR parser, built once from the grammar file."""
    return Lark(grammar_text(), parser="lalr", lexer="basic", propagate_positions=True)


def parse(text: str) -> Formula:
    """Parse ``response ~ terms`` into a :class:`Formula`; raise :class:`FormulaSyntaxError` on mistakes."""
    if not isinstance(text, str):
        raise DataTypeError(f"a formula must be a string, not {type(text).__name__}")
    lark = _lark()
    try:
        tokens = list(lark.lex(text))
    except UnexpectedCharacters as error:
        raise _character_error(text, error.pos_in_stream) from None
    try:
        tree = lark.parse(text)
    except UnexpectedToken as error:
        raise _token_error(text, tokens, error, lark) from None
    try:
        left, right = _ToNodes(text).transform(tree)
    except VisitError as error:
        raise error.orig_exc from None
    return _Builder(text).formula(left, right)
