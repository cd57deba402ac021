"""Locate the formula grammar, ``gmenn.lark``.

An installed wheel carries it as ``gmenn_formula/grammar/gmenn.lark``
(pyproject's force-include); an editable install reads the repository's
top-level ``grammar/gmenn.lark``.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files
from pathlib import Path

GRAMMAR_NAME = "gmenn.lark"


@cache
def grammar_text() -> str:
    """The grammar's text, from the installed package if it ships one, else from the repository."""
    installed = files("gmenn_formula") / "grammar" / GRAMMAR_NAME
    if installed.is_file():
        return installed.read_text(encoding="utf-8")
    repository = Path(__file__).resolve().parents[2] / "grammar" / GRAMMAR_NAME
    if not repository.is_file():
        raise FileNotFoundError(
            f"the formula grammar {GRAMMAR_NAME} is neither in the installed package "
            f"({installed}) nor in the repository ({repository}); reinstall gmenn-formula"
        )
    return repository.read_text(encoding="utf-8")
