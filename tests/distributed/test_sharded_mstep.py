"""The M-step's row sums over 2 processes (torchrun, gloo): beta's Newton step, the intercept shift,
PX-EM's working parameters, the gaussian residual variance and conditionals, and the gaussian exact
E-step's draws (same seed) computed on half the rows each, with
their sums all-reduced, equal those on all rows in one process, and are the same in both processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from support.torchrun import run_workers


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("sharded_mstep")
    run_workers(Path(__file__).with_name("mstep_worker.py"), [str(out)], processes=2)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.parametrize("name", ["beta", "nll", "shift", "maps", "residual", "gauss_maps", "conditional_moments", "conditional_residual", "exact_draws"])
def test_sharded_m_step_equals_all_rows_in_one_process(ranks, name):
    for r in ranks:
        sharded, whole = r["sharded"][name], r["whole"][name]
        if name in ("maps", "gauss_maps", "conditional_moments", "exact_draws"):
            for a, b in zip(sharded, whole):
                np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
        else:
            np.testing.assert_allclose(sharded, whole, rtol=1e-5, atol=1e-7)
    assert ranks[0]["sharded"][name] == ranks[1]["sharded"][name]
