"""The GPU path, run only where torch sees a GPU: a fit with device="cuda" trains the network and
draws the E-step there (JAX needs its CUDA build: pip install -U "jax[cuda12]"). On a machine
without a GPU every test here is skipped; benchmarks/gpu_check.py measures the same at scale."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU visible to torch")


def test_a_fit_on_the_gpu_trains_and_draws_there():
    from gmenn_formula.estep.runtime import configure_jax

    configure_jax()
    import jax

    import gmenn_formula as gf
    from gmenn_formula.simulation import paper_scenario

    assert any(d.platform == "gpu" for d in jax.devices()), "JAX sees no GPU: install its CUDA build (jax[cuda12])"
    sim = paper_scenario(rows=5000, family="binomial", levels=(100,), variances=(1.0,), seed=0)
    torch.cuda.reset_peak_memory_stats()
    fit = gf.gmenn(sim.formula, sim.data, family="binomial", device="cuda", seed=0, verbose=0)
    assert torch.cuda.max_memory_allocated() > 0
    assert sum((d.memory_stats() or {}).get("peak_bytes_in_use", 0) for d in jax.devices() if d.platform == "gpu") > 0
    variance = float(fit.varcorr()["variance"].iloc[0])
    assert 0.6 < variance < 1.5  # truth 1.0, 100 levels: sampling error ~14%
    assert np.isfinite(fit.predict(sim.data.head(10), type="response")).all()
