"""Fixtures of the results tests: tiny real fits (cached per session) and hand-made fits (no fitting)."""

from __future__ import annotations

import warnings

import matplotlib
import pytest
from results_fixtures import TINY_CONTROL, handmade_categorical_nn, handmade_glmm, tiny_data, tiny_formula

import gmenn_formula as gf
from gmenn_formula.results.result import GmennResult

matplotlib.use("Agg")

_FITS: dict[tuple[str, str], GmennResult] = {}


@pytest.fixture(scope="session")
def tiny_fit():
    """``tiny_fit(family, kind)``: a tiny real fit, computed once per session."""

    def get(family: str, kind: str) -> GmennResult:
        if (family, kind) not in _FITS:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _FITS[family, kind] = gf.gmenn(tiny_formula(kind), tiny_data(family), family=family, **TINY_CONTROL)
        return _FITS[family, kind]

    return get


@pytest.fixture
def glmm_result() -> GmennResult:
    return handmade_glmm()


@pytest.fixture
def categorical_result() -> GmennResult:
    return handmade_categorical_nn()
