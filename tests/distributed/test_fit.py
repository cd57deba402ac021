"""The whole fit over 2 processes (torchrun, gloo) against the same fit in one process holding
every row (docs/distributed.md): a plain binomial GLMM draws the same chain, so its estimates agree
to float rounding; a network fit trains on other minibatches, so it agrees within the spread of
training. Both processes return the same result, rank 0 writes it, and neither keeps rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gmenn_formula as gf
from support.torchrun import run_workers

WORKER = Path(__file__).with_name("fit_worker.py")


def simulated(n: int, family: str, seed: int = 0) -> pd.DataFrame:
    """Two crossed factors (40 and 25 levels, variances .64 and .25), two covariates."""
    rng = np.random.default_rng(seed)
    a, b = rng.integers(0, 40, n), rng.integers(0, 25, n)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    eta = 0.3 + 0.5 * x1 - 0.4 * x2 + rng.normal(0, 0.8, 40)[a] + rng.normal(0, 0.5, 25)[b]
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int) if family == "binomial" else eta + np.sin(2 * x1) + rng.normal(0, 1, n)
    return pd.DataFrame({"y": y, "x1": x1, "x2": x2, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})


def fit_both(tmp_path: Path, formula: str, data: pd.DataFrame, family: str, files: int, control: dict) -> tuple[gf.GmennResult, list[dict]]:
    """The one-process fit of ``data`` and the two processes' summaries of the fit of its ``files`` Parquet parts."""
    folder, out = tmp_path / "data", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for part in range(files):
        data.iloc[part::files].to_parquet(folder / f"part{part}.parquet")
    run_workers(WORKER, [formula, str(folder), family, str(out), json.dumps(control)], processes=2)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # every process ends with the same result
    saved = gf.load(out / "model.gmenn")
    assert saved.varcorr()["variance"].tolist() == pytest.approx(ranks[0]["varcorr"]["variance"], rel=1e-6)
    ordered = pd.concat([pd.read_parquet(folder / f"part{p}.parquet") for p in range(files)], ignore_index=True)
    return gf.gmenn(formula, ordered, family=family, verbose=0, **control), ranks


def test_two_process_glmm_matches_one_process(tmp_path):
    control = {"seed": 0, "laplace_start": False}  # a data-parallel fit has no Laplace start
    one, ranks = fit_both(tmp_path, "y ~ x1 + x2 + (1 | a) + (1 | b)", simulated(4000, "binomial"), "binomial", 4, control)
    two = ranks[0]
    assert two["nobs"] == one.nobs == 4000
    assert not two["has_training_rows"]
    assert two["varcorr"]["variance"] == pytest.approx(one.varcorr()["variance"].tolist(), rel=0.01)
    assert two["fixef"] == pytest.approx(one.fixef()["estimate"].tolist(), rel=0.01, abs=1e-3)
    # the log-likelihood over both shards' rows: the same importance draws as one process's joint sampler
    joint = one.loglik(method="importance")
    assert two["loglik_nobs"] == 4000
    assert two["loglik"] == pytest.approx(float(joint), abs=3 * joint.se + 0.05)


def test_two_process_network_fit_matches_one_process_within_training_spread(tmp_path):
    # 3 files: one process reads two, the other one (unequal shards; the smaller takes as many minibatch steps, on fewer rows)
    data = simulated(3000, "gaussian")
    control = {"seed": 0, "closed_form": False, "overlap_estep": False}
    one, ranks = fit_both(tmp_path, "y ~ nn(x1 + x2) + (1 | a) + (1 | b)", data, "gaussian", 3, control)
    two = ranks[0]
    assert two["nobs"] == 3000
    assert two["varcorr"]["variance"] == pytest.approx(one.varcorr()["variance"].tolist(), rel=0.05)
    ordered = pd.concat([data.iloc[p::3] for p in range(3)], ignore_index=True)
    mine = np.asarray(one.predict(ordered, type="link"), dtype=float).ravel()
    theirs = np.asarray(two["predictions"])
    assert np.corrcoef(mine, theirs)[0, 1] > 0.99
    assert np.sqrt(np.mean((mine - theirs) ** 2)) < 0.15 * np.std(mine)
