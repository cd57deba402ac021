"""The store of exported E-step functions: a fit of a structure seen before (in another process)
imports neither PyMC nor blackjax and gives the same estimates; an unreadable entry is traced
anew; keys separate functions, settings and structures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from gmenn_formula.estep import store

FIT = """
import json, sys, warnings
import numpy as np, pandas as pd
import gmenn_formula as gf
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
g = rng.integers(0, 15, 300)
x = rng.normal(size=300)
y = (rng.random(300) < 1 / (1 + np.exp(-(0.5 * x + rng.normal(0, 0.8, 15)[g])))).astype(int)
fit = gf.gmenn("y ~ x + (1 | g)", pd.DataFrame({"y": y, "x": x, "g": g}), family="binomial", verbose=0, seed=3)
print(json.dumps({"variance": fit.varcorr()["variance"].tolist(), "beta": fit.fixef().to_numpy().ravel().tolist(),
                  "imported": sorted(m for m in ("pymc", "pytensor", "blackjax") if m in sys.modules)}))
"""


def _fit_in_a_new_process(cache: str) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": cache}
    result = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_stored_structure_fits_without_pymc_and_gives_the_same_estimates(tmp_path):
    cache = str(tmp_path)
    first = _fit_in_a_new_process(cache)
    entries = sorted(p.name for p in (tmp_path / "gmenn_formula" / "exported").iterdir())
    assert [name.split("-")[0] for name in entries] == ["sample_chunk", "whitening"]
    assert first["imported"] == ["blackjax", "pymc", "pytensor"]  # traced from the PyMC model
    again = _fit_in_a_new_process(cache)
    assert again["imported"] == []
    assert again["variance"] == first["variance"] and again["beta"] == first["beta"]

    for path in (tmp_path / "gmenn_formula" / "exported").iterdir():
        path.write_bytes(b"not an exported function")
    rebuilt = _fit_in_a_new_process(cache)
    assert rebuilt["imported"] == ["blackjax", "pymc", "pytensor"] and rebuilt["variance"] == first["variance"]
    assert _fit_in_a_new_process(cache)["imported"] == []  # the unreadable entries were replaced


def test_keys_separate_functions_settings_and_structures():
    paths = {
        store.entry_path("sample_chunk", "binomial(logit)|300|depth 5"),
        store.entry_path("sample_chunk", "binomial(logit)|300|depth 2"),
        store.entry_path("sample_chunk", "binomial(logit)|301|depth 5"),
        store.entry_path("whitening", "binomial(logit)|300|depth 5"),
    }
    assert len(paths) == 4
    assert store.entry_path("whitening", "x") == store.entry_path("whitening", "x")
    assert all(path.parent == store.store_dir() and path.name.endswith(store.SUFFIX) for path in paths)
