"""Golden-text tests of ``summary()``: hand-made fits with fixed numbers pin lme4's layout.

Regenerate after an intended layout change with ``GMENN_UPDATE_GOLDEN=1 pytest tests/results/test_summary_golden.py``
and review the diff of ``tests/results/golden/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import gmenn_formula as gf

GOLDEN = Path(__file__).parent / "golden"


def _check(text: str, name: str) -> None:
    path = GOLDEN / name
    if os.environ.get("GMENN_UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert path.exists(), f"golden file {path} is missing; create it with GMENN_UPDATE_GOLDEN=1"
    assert text + "\n" == path.read_text()


@pytest.mark.parametrize(("fixture", "name"), [("glmm_result", "summary_glmm.txt"), ("categorical_result", "summary_categorical_nn.txt")])
def test_summary_matches_golden(fixture: str, name: str, request: pytest.FixtureRequest) -> None:
    _check(str(request.getfixturevalue(fixture).summary()), name)


@pytest.mark.parametrize("fixture", ["glmm_result", "categorical_result"])
def test_loaded_model_prints_the_same_summary(fixture: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    result = request.getfixturevalue(fixture)
    loaded = gf.load(result.save(tmp_path / "model.gmenn"))
    assert str(loaded.summary()) == str(result.summary())


def test_html_summary_has_the_tables(categorical_result) -> None:
    html = categorical_result.summary()._repr_html_()
    assert html.count("<table") == 4  # fit criteria, one random-effects block per class, no fixed effects
    assert "logLik" in html and "joint importance sampling" in html
    assert "class mid" in html and "MLP 2-3" in html
