"""parse() errors: caret messages in words, at the offending token."""

import re

import pytest

from gmenn_formula.errors import DataTypeError, FormulaSyntaxError, GmennError
from gmenn_formula.formula import parse


def error_of(text: str) -> FormulaSyntaxError:
    with pytest.raises(FormulaSyntaxError) as caught:
        parse(text)
    return caught.value


def lines(*rows: str) -> str:
    return "\n".join(rows)


GOLDEN = [
    (
        "y ~ x + (z + log(w)",
        lines(
            "'(' is never closed",
            "  y ~ x + (z + log(w)",
            "          ^",
            "Expected a closing ')'.",
        ),
    ),
    (
        "y ~ x & z",
        lines(
            "unexpected character '&'",
            "  y ~ x & z",
            "        ^",
            "Expected a name, number, string, bracket or operator.",
        ),
    ),
    (
        "y x",
        lines(
            "the formula has no '~'",
            "  y x",
            "    ^",
            "Expected '~' between the response and the terms, as in 'y ~ x'.",
        ),
    ),
    (
        "y ~ ",
        lines(
            "the right side of '~' is empty",
            "  y ~ ",
            "     ^",
            "Expected at least one term, as in 'y ~ x' or 'y ~ 1'.",
        ),
    ),
    (
        "y ~ x + (|g)",
        lines(
            "nothing before '|' in this random-effect term",
            "  y ~ x + (|g)",
            "           ^",
            "Expected an intercept or slopes, as in (1 | g) or (0 + x | g).",
        ),
    ),
    (
        "y ~ (1|)",
        lines(
            "unexpected ')' after '|'",
            "  y ~ (1|)",
            "         ^",
            "Expected a grouping factor after '|', as in (1 | g).",
        ),
    ),
    (
        "y ~ (1|log(g))",
        lines(
            "a grouping factor must be a column name",
            "  y ~ (1|log(g))",
            "         ^",
            "Expected a name, a:b (interaction) or a/b (nesting) after '|'.",
        ),
    ),
    (
        "y ~ nn(x, hiden=[3])",
        lines(
            "nn() has no option 'hiden'; did you mean 'hidden'?",
            "  y ~ nn(x, hiden=[3])",
            "            ^",
            "Expected one of hidden, dropout, net, activation.",
        ),
    ),
    (
        "y ~ nn(x, hidden=[64, 0])",
        lines(
            "hidden must be a non-empty list of positive integers",
            "  y ~ nn(x, hidden=[64, 0])",
            "                        ^",
            "Expected layer widths, as in hidden=[100, 50, 25, 12].",
        ),
    ),
]


@pytest.mark.parametrize(("text", "message"), GOLDEN, ids=[text for text, _ in GOLDEN])
def test_golden_message(text: str, message: str) -> None:
    assert str(error_of(text)) == message


# (formula, caret position, phrase of the message)
CASES = [
    # syntax
    ("", 0, "the formula is empty"),
    ("y + x", 5, "no '~'"),
    ("~ x", 0, "no response before '~'"),
    ("y ~ x ~ z", 6, "only one '~'"),
    ("(y ~ x)", 3, "unexpected '~'"),
    ("y ~ x +", 7, "ends after '+'"),
    ("y ~ x + )", 8, "unexpected ')' after '+'"),
    ("y ~ x y", 6, "unexpected name 'y'"),
    ("y ~ x 3", 6, "unexpected number 3"),
    ("y ~ x)", 5, "')' closes nothing"),
    ("y ~ f(x, [1, 2)", 14, "unexpected ')' before '[' is closed"),
    ("y ~ f(x,)", 8, "unexpected ')' after ','"),
    ("y ~ (1 || )", 10, "after '||'"),
    ("y ~ C(x, 'ab", 9, "the quote ' is never closed"),
    ("y ~ `my col", 4, "the quote ` is never closed"),
    ('y ~ C(x, "\\d")', 9, "invalid escape"),
    ("y ~ f(a=1, 2)", 11, "positional argument follows a keyword argument"),
    ("y ~ f(a=1, a=2)", 11, "keyword 'a' is given twice"),
    # calls outside the formula vocabulary (gmenn_formula.formula.functions), wherever they stand
    ("y ~ foo(x)", 4, "unknown function 'foo'"),
    ("y ~ x + np.savetxt('/tmp/p', x)", 8, "unknown function 'np.savetxt'"),
    ("pd.read_pickle('m') ~ x", 0, "unknown function 'pd.read_pickle'"),
    ("y ~ nn(x + os.system('ls'))", 11, "unknown function 'os.system'"),
    ("y ~ (1 + eval(x) | g)", 9, "unknown function 'eval'"),
    ("y ~ offset(__import__('os'))", 11, "unknown function '__import__'"),
    ("cbind(k, exec(n)) ~ x", 9, "unknown function 'exec'"),
    ("y ~ C(g, np.load('x.npy'))", 9, "unknown function 'np.load'"),
    ("y ~ I(np.lgo(x))", 6, "unknown function 'np.lgo'; did you mean 'np.log'?"),
    # terms
    ("y ~ 2", 4, "the number 2 cannot be a term"),
    ("y ~ x - z", 6, "'-' can only remove the intercept"),
    ("y ~ .", 4, "can only be an input of nn()"),
    ("y ~ 1 | g", 6, "needs parentheses"),
    ("y ~ x:(1|g)", 6, "random-effect term must be a term of its own"),
    ("y ~ log(x + nn(z))", 12, "nn() must be a term of its own"),
    # response
    ("nn(x) ~ z", 0, "nn() cannot be on the left side of '~'"),
    ("(1|g) ~ z", 0, "random-effect term cannot be on the left side"),
    ("cbind(k) ~ x", 0, "cbind() takes 2 arguments, not 1"),
    ("cbind(k, n, m) ~ x", 12, "cbind() takes 2 arguments, not 3"),
    ("cbind(k, n=1) ~ x", 9, "cbind() takes no keyword arguments"),
    ("log(cbind(k, n)) ~ x", 4, "cbind() can only be the whole left side"),
    ("y ~ cbind(k, n)", 4, "cbind() can only be the whole left side"),
    # offset
    ("y ~ offset()", 4, "offset() takes 1 argument, not 0"),
    ("y ~ nn(offset(t))", 7, "offset() cannot go inside nn()"),
    # random effects
    ("y ~ (1|a*b)", 7, "grouping factor must be a column name"),
    ("y ~ (1|a/(b/c))", 10, "grouping factor must be a column name"),
    ("y ~ (0|g)", 5, "neither an intercept nor slopes"),
    ("y ~ (x - z|g)", 7, "'-' can only remove the intercept"),
    ("y ~ (nn(x)|g)", 5, "nn() cannot go inside a random-effect term"),
    ("y ~ ((1|h)|g)", 5, "random-effect term cannot go inside a random-effect term"),
    # nn
    ("y ~ nn()", 4, "nn() has no inputs"),
    ("y ~ nn(hidden=[3])", 4, "nn() has no inputs"),
    ("y ~ nn(x, z)", 10, "takes its inputs as one expression"),
    ("y ~ nn(x + nn(z))", 11, "nn() cannot go inside nn()"),
    ("y ~ nn(x + (1|g))", 11, "random-effect term cannot go inside nn()"),
    ("y ~ nn(x + 1|g)", 12, "random-effect term cannot go inside nn()"),
    ("y ~ nn(0 + x)", 7, "nn() has no intercept to set"),
    ("y ~ nn(x - z)", 9, "'-' can only remove the intercept"),
    ("y ~ nn(x, hidden=[])", 17, "non-empty list of positive integers"),
    ("y ~ nn(x, hidden=4)", 17, "non-empty list of positive integers"),
    ("y ~ nn(x, hidden=[2.5])", 18, "non-empty list of positive integers"),
    ("y ~ nn(x, dropout=2)", 18, "dropout must be a number in [0, 1)"),
    ("y ~ nn(x, dropout=1)", 18, "dropout must be a number in [0, 1)"),
    ("y ~ nn(x, dropout=-0.1)", 18, "dropout must be a number in [0, 1)"),
    ("y ~ nn(x, dropout='a')", 18, "dropout must be a number in [0, 1)"),
    ("y ~ nn(x, net=mynet)", 14, "net must be a string"),
    ("y ~ nn(x, activation=tanh)", 21, "activation must be a string"),
    ("y ~ nn(x, activation='tanhh')", 21, "unknown activation \"tanhh\"; did you mean 'tanh'?"),
]


@pytest.mark.parametrize(("text", "position", "phrase"), CASES, ids=[text for text, _, _ in CASES])
def test_error_position_and_phrase(text: str, position: int, phrase: str) -> None:
    error = error_of(text)
    assert error.position == position
    assert phrase in error.reason
    assert error.formula == text


def test_unknown_option_without_close_match_lists_the_options() -> None:
    error = error_of("y ~ nn(x, units=3)")
    assert error.reason == "nn() has no option 'units'"
    assert error.expected == "one of hidden, dropout, net, activation"


def test_errors_are_value_errors_of_the_package() -> None:
    error = error_of("y ~ (")
    assert isinstance(error, ValueError)
    assert isinstance(error, GmennError)


def test_formula_must_be_a_string() -> None:
    with pytest.raises(DataTypeError, match="must be a string, not int"):
        parse(3)  # type: ignore[arg-type]


LARK_WORDS = re.compile(r"\$END|__ANON|\b(?:[A-Z]{3,}|[A-Z]+_[A-Z_]+)\b|Token|Tree")
BROKEN_FROM = "cbind(k, n - k) ~ 0 + x1*x2 + I(z ** 2) + nn(. + C(r), hidden=[8, 4], net='a') + (1 + x || a/b)"


@pytest.mark.parametrize(
    "text",
    [BROKEN_FROM[:end] for end in range(len(BROKEN_FROM))]
    + [BROKEN_FROM[:i] + BROKEN_FROM[i + 1 :] for i in range(len(BROKEN_FROM))],
)
def test_every_truncation_or_deletion_parses_or_fails_in_words(text: str) -> None:
    try:
        parse(text)
    except FormulaSyntaxError as error:
        assert 0 <= error.position <= len(text)
        assert error.reason
        assert not LARK_WORDS.search(str(error)), str(error)
