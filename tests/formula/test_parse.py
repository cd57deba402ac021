"""parse(): formula text to the typed terms, one test per construct, and round trips."""

from collections.abc import Iterator
from pathlib import Path

import pytest

import gmenn_formula
from gmenn_formula.formula import (
    BinomialResponse,
    FixedTerm,
    Formula,
    NetworkTerm,
    Offset,
    RandomTerm,
    Response,
    parse,
)
from gmenn_formula.formula import grammar_file
from gmenn_formula.formula.grammar_file import grammar_text

Y = Response("y")


def fixed(*exprs: str, intercept: bool = True) -> Formula:
    """``y ~`` the given fixed terms."""
    return Formula(Y, tuple(FixedTerm(e) for e in exprs), intercept=intercept)


def random(*terms: RandomTerm) -> Formula:
    """``y ~ 1 +`` the given random terms."""
    return Formula(Y, random=terms)


def networks(*terms: NetworkTerm) -> Formula:
    """``y ~ 1 +`` the given nn() terms."""
    return Formula(Y, networks=terms)


def test_package_exports_parse() -> None:
    assert gmenn_formula.parse is parse
    assert "parse" in gmenn_formula.__all__


REPOSITORY_GRAMMAR = Path(__file__).resolve().parents[2] / "grammar" / "gmenn.lark"


@pytest.fixture
def package_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Pretend ``gmenn_formula`` is installed in ``tmp_path``; the grammar cache is cleared around the test."""
    monkeypatch.setattr(grammar_file, "files", lambda package: tmp_path)
    grammar_text.cache_clear()
    yield tmp_path
    grammar_text.cache_clear()


def test_grammar_from_the_installed_package_first(package_dir: Path) -> None:
    (package_dir / "grammar").mkdir()
    (package_dir / "grammar" / "gmenn.lark").write_text("installed", encoding="utf-8")
    assert grammar_text() == "installed"


def test_grammar_from_the_repository_when_the_package_has_none(package_dir: Path) -> None:
    assert grammar_text() == REPOSITORY_GRAMMAR.read_text(encoding="utf-8")


def test_text_keeps_the_original_spelling() -> None:
    original = "y~x1*x2 +  (1|g)"
    assert parse(original).text == original


@pytest.mark.parametrize(
    ("text", "response"),
    [
        ("y ~ x", Response("y")),
        ("np.log(y) ~ x", Response("np.log(y)")),
        ("I(y*2) ~ x", Response("I(y * 2)")),
        ("cbind(k, n - k) ~ x", BinomialResponse("k", "n - k")),
        ("cbind(k,n-k) ~ x", BinomialResponse("k", "n - k")),
    ],
)
def test_response(text: str, response: Response | BinomialResponse) -> None:
    assert parse(text).response == response


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("y ~ x", fixed("x")),
        ("y ~ C(x)", fixed("C(x)")),
        ('y ~ C(x, Treatment("b"))', fixed('C(x, Treatment("b"))')),
        ("y ~ C(x, Treatment('b'))", fixed('C(x, Treatment("b"))')),
        ("y ~ x1:x2", fixed("x1:x2")),
        ("y ~ x1 : x2", fixed("x1:x2")),
        ("y ~ x1*x2", fixed("x1 * x2")),
        ("y ~ x1/x2", fixed("x1 / x2")),
        ("y ~ (a + b)**2", fixed("(a + b) ** 2")),
        ("y ~ scale(x)", fixed("scale(x)")),
        ("y ~ np.log(x)", fixed("np.log(x)")),
        ("y ~ center(x)", fixed("center(x)")),
        ("y ~ bs(x, df = 4)", fixed("bs(x, df=4)")),
        ("y ~ bs(x, [1,2], k=poly(z, w='a'))", fixed('bs(x, [1, 2], k=poly(z, w="a"))')),
        ("y ~ I(x**2)", fixed("I(x ** 2)")),
        ("y ~ I(x ** 2 + z)", fixed("I(x ** 2 + z)")),
        ("y ~ I(-x ** 2)", fixed("I(-x ** 2)")),
        ("y ~ I((-x) ** 2)", fixed("I((-x) ** 2)")),
        ("y ~ I(2 ** -x)", fixed("I(2 ** (-x))")),
        ("y ~ I(a ** b ** c)", fixed("I(a ** b ** c)")),
        ("y ~ I((a ** b) ** c)", fixed("I((a ** b) ** c)")),
        ("y ~ I((x + z) * 2 / (1 - w))", fixed("I((x + z) * 2 / (1 - w))")),
        ("y ~ I(a - (b - c))", fixed("I(a - (b - c))")),
        ("y ~ I(((a)))", fixed("I(a)")),
        ("y ~ I(1e-3 * x + .5)", fixed("I(1e-3 * x + .5)")),
        ("y ~ (x1 + x2):x3", fixed("(x1 + x2):x3")),
        ("y ~ (x1+x2) : x3", fixed("(x1 + x2):x3")),
        ("y ~ a:(b:c)", fixed("a:(b:c)")),
        ("y ~ `my col`", fixed("`my col`")),
        ("y ~ `my col`:x", fixed("`my col`:x")),
        ("y ~ (x1 + x2)", fixed("x1", "x2")),
        ("y ~ x1 + x2 + C(g)", fixed("x1", "x2", "C(g)")),
    ],
)
def test_fixed_terms(text: str, expected: Formula) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("y ~ 1 + x", fixed("x")),
        ("y ~ 1", fixed()),
        ("y ~ 0 + x", fixed("x", intercept=False)),
        ("y ~ x + 0", fixed("x", intercept=False)),
        ("y ~ x - 1", fixed("x", intercept=False)),
        ("y ~ -1 + x", fixed("x", intercept=False)),
        ("y ~ 0", fixed(intercept=False)),
        ("y ~ 0 + x + 1", fixed("x")),
    ],
)
def test_intercept(text: str, expected: Formula) -> None:
    assert parse(text) == expected


def test_offset() -> None:
    assert parse("y ~ x + offset(log(t))") == Formula(Y, (FixedTerm("x"),), offsets=(Offset("log(t)"),))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("y ~ nn(x1 + x2 + C(region))", networks(NetworkTerm(inputs=("x1", "x2", "C(region)")))),
        (
            "y ~ nn(x1 + x2, hidden=[100, 50, 25, 12], dropout=0.25)",
            networks(NetworkTerm(inputs=("x1", "x2"), hidden=(100, 50, 25, 12), dropout=0.25)),
        ),
        ('y ~ nn(x, net="mynet")', networks(NetworkTerm(inputs=("x",), net="mynet"))),
        ("y ~ nn(x, activation='tanh')", networks(NetworkTerm(inputs=("x",), activation="tanh"))),
        ("y ~ nn(x, dropout=0)", networks(NetworkTerm(inputs=("x",), dropout=0.0))),
        ("y ~ nn(.)", networks(NetworkTerm(rest=True))),
        ("y ~ nn(. + C(region))", networks(NetworkTerm(inputs=("C(region)",), rest=True))),
        ("y ~ nn(x1:x2 + I(z**2))", networks(NetworkTerm(inputs=("x1:x2", "I(z ** 2)")))),
        (
            "y ~ nn(a, hidden=[8]) + nn(b + c)",
            networks(NetworkTerm(inputs=("a",), hidden=(8,)), NetworkTerm(inputs=("b", "c"))),
        ),
    ],
)
def test_network_terms(text: str, expected: Formula) -> None:
    assert parse(text) == expected


def test_network_option_types() -> None:
    network = parse("y ~ nn(x, hidden=[4, 2], dropout=0)").networks[0]
    assert all(type(width) is int for width in network.hidden)
    assert type(network.dropout) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("y ~ (1|g)", random(RandomTerm(("g",)))),
        ("y ~ (1 + x|g)", random(RandomTerm(("g",), slopes=("x",)))),
        ("y ~ (x|g)", random(RandomTerm(("g",), slopes=("x",)))),
        ("y ~ (0 + x|g)", random(RandomTerm(("g",), intercept=False, slopes=("x",)))),
        ("y ~ (-1 + x|g)", random(RandomTerm(("g",), intercept=False, slopes=("x",)))),
        ("y ~ (x - 1|g)", random(RandomTerm(("g",), intercept=False, slopes=("x",)))),
        ("y ~ (x||g)", random(RandomTerm(("g",), slopes=("x",), correlated=False))),
        ("y ~ (1 + x + C(z)|g)", random(RandomTerm(("g",), slopes=("x", "C(z)")))),
        ("y ~ (1|a/b)", random(RandomTerm(("a",)), RandomTerm(("a", "b")))),
        ("y ~ (1|a/b/c)", random(RandomTerm(("a",)), RandomTerm(("a", "b")), RandomTerm(("a", "b", "c")))),
        ("y ~ (x||a/b)", random(*(RandomTerm(g, slopes=("x",), correlated=False) for g in [("a",), ("a", "b")]))),
        ("y ~ (1|a:b)", random(RandomTerm(("a", "b")))),
        ("y ~ (1|a:b/c)", random(RandomTerm(("a", "b")), RandomTerm(("a", "b", "c")))),
        ("y ~ (1|a) + (1|b)", random(RandomTerm(("a",)), RandomTerm(("b",)))),
        ("y ~ (1|`my group`)", random(RandomTerm(("my group",)))),
        ("y ~ ((1|g))", random(RandomTerm(("g",)))),
    ],
)
def test_random_terms(text: str, expected: Formula) -> None:
    assert parse(text) == expected


def test_grouping_factors_in_order_of_appearance() -> None:
    assert parse("y ~ (1|b) + (1|a/b) + (x|c)").grouping_factors == ("b", "a", "c")


def test_whitespace_anywhere() -> None:
    assert parse("\ty~x+( 1 + z ||g )+nn( . ,hidden = [ 3 ] )\n") == parse("y ~ x + (1 + z || g) + nn(., hidden=[3])")


def test_all_parts_together() -> None:
    formula = parse("cbind(k, n - k) ~ 0 + x + nn(a + b, dropout=0.1) + offset(log(t)) + (1 + x | g) + (1 | h)")
    assert formula == Formula(
        response=BinomialResponse("k", "n - k"),
        fixed=(FixedTerm("x"),),
        intercept=False,
        offsets=(Offset("log(t)"),),
        networks=(NetworkTerm(inputs=("a", "b"), dropout=0.1),),
        random=(RandomTerm(("g",), slopes=("x",)), RandomTerm(("h",))),
    )


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("y~x1*x2+x3", "y ~ 1 + x1 * x2 + x3"),
        ("y ~ 0 + C(g, Treatment('b')) + (x|g)", 'y ~ 0 + C(g, Treatment("b")) + (1 + x | g)'),
        ("y ~ nn(x, net='m', activation='relu')", 'y ~ 1 + nn(x, net="m", activation="relu")'),
        ("y ~ (1||a/`b c`)", "y ~ 1 + (1 || a) + (1 || a:`b c`)"),
        ("y ~ offset(t) + nn(.)", "y ~ 1 + offset(t) + nn(.)"),
        (r"""y ~ C(x, Treatment('it\'s "b"'))""", r"""y ~ 1 + C(x, Treatment("it's \"b\""))"""),
    ],
)
def test_canonical_text(text: str, canonical: str) -> None:
    assert str(parse(text)) == canonical


ROUND_TRIP = [
    "y ~ x",
    "y ~ 1",
    "y ~ 0",
    "y ~ 0 + x",
    "y ~ x - 1",
    "np.log(y) ~ x",
    "cbind(k, n - k) ~ x",
    "y ~ C(x) + C(x, Treatment('b'))",
    "y ~ x1:x2 + x1*x2 + x1/x2",
    "y ~ (x1 + x2):x3 + a:(b:c) + (a*b)*c + a*(b*c)",
    "y ~ scale(x) + center(x) + np.log(x) + bs(x, df=4, degree=3)",
    "y ~ I(x**2) + I(x ** 2 + z) + I(-x) + I(--x) + I((-x) ** 2) + I(2 ** -x)",
    "y ~ I(a - (b - c)) + I((a - b) - c) + I(a / (b * c)) + I(a ** (b ** c)) + I((a ** b) ** c)",
    "y ~ I(1e-3 * x) + I(.5 + x) + I(2. * x)",
    "y ~ `my col` + `my col`:x",
    "y ~ bs(x, [1, 2], k=poly(z, w='a'), s=\"q\")",
    "y ~ offset(log(t)) + offset(u)",
    "y ~ nn(x1 + x2 + C(region))",
    "y ~ nn(x, hidden=[100, 50, 25, 12], dropout=0.25)",
    "y ~ nn(x, net='mynet', activation='tanh')",
    "y ~ nn(.) + nn(. + C(region), dropout=1e-1)",
    "y ~ (1|g)",
    "y ~ (1 + x|g) + (0 + z||h)",
    "y ~ (-1 + x|g)",
    "y ~ (1|a/b/c)",
    "y ~ (1|a:b) + (x || a:b/c)",
    "y ~ (1|`my group`) + (1|`a b`:c)",
    "y ~ (1|a) + (1|b)",
    "cbind(k, n - k) ~ 0 + x + nn(a + b, dropout=0.1) + offset(log(t)) + (1 + x | g)",
    "np.log(y + 1) ~ poly(x, 2) + x:C(g) + nn(z, hidden=[3]) + (x || g/h)",
]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_round_trip(text: str) -> None:
    formula = parse(text)
    again = parse(str(formula))
    assert again == formula
    assert str(again) == str(formula)
