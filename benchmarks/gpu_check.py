"""Does a fit really run on the GPU? The paper's base scenario at 100,000 and 1,000,000 rows.

Checks that torch and JAX both see a GPU (JAX needs its CUDA build: ``pip install -U "jax[cuda12]"``
with the same version as the CPU jaxlib pinned in pyproject.toml), fits ``gf.gmenn`` on each size
with ``device="cuda"``, checks that both frameworks allocated GPU memory during the fit, and
prints per size: the whole fit's seconds, training and final-phase epochs, mean seconds per
training epoch, the E-step's share of the fit, torch's and JAX's peak GPU memory, AUC on held-out
rows. Exits 2 when no GPU is visible (``--allow-cpu`` runs the same on the CPU, to try the
script); exits 1 when a framework did not use the GPU.

    python benchmarks/gpu_check.py [--rows 100000 1000000] [--allow-cpu]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np


def _gpus() -> tuple[bool, bool]:
    """Whether torch and JAX each see a GPU."""
    import torch

    from gmenn_formula.estep.runtime import configure_jax

    configure_jax()
    import jax

    return torch.cuda.is_available(), any(d.platform == "gpu" for d in jax.devices())


def _jax_peak_bytes() -> int:
    import jax

    stats = [d.memory_stats() or {} for d in jax.devices() if d.platform == "gpu"]
    return int(sum(s.get("peak_bytes_in_use", 0) for s in stats))


def _fit(rows: int, device: str) -> dict:
    import torch

    import gmenn_formula as gf
    from gmenn_formula.metrics import macro_auc
    from gmenn_formula.simulation import paper_scenario

    sim = paper_scenario(rows=rows, family="categorical", classes=5, levels=(1000, 10, 1000), variances=(1e-4, 0.5, 0.5), seed=0)
    order = np.random.default_rng(1).permutation(rows)
    test, train = np.sort(order[: rows // 5]), np.sort(order[rows // 5 :])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    fit = gf.gmenn(sim.formula, sim.data.iloc[train], family="categorical", device=device, seed=0, verbose=0)
    seconds = time.perf_counter() - started
    history = fit.history
    training = history[history.phase == "train"]
    with warnings.catch_warnings():  # held-out rows of levels unseen in training: effect 0, as intended
        warnings.simplefilter("ignore")
        probabilities = fit.predict(sim.data.iloc[test], type="response")  # (n, classes), columns the class labels
    y = probabilities.columns.get_indexer(sim.data["y"].iloc[test])
    return {
        "rows": rows,
        "fit_s": seconds,
        "train_epochs": len(training),
        "final_epochs": len(history) - len(training),
        "train_epoch_s": float(training.seconds.mean()),
        "estep_share": float(history.estep_seconds.sum() / seconds),
        "torch_peak_gb": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "jax_peak_gb": _jax_peak_bytes() / 2**30,
        "auc": macro_auc(y, probabilities.to_numpy()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--allow-cpu", action="store_true", help="run on the CPU when no GPU is visible (to try the script)")
    args = parser.parse_args()
    torch_gpu, jax_gpu = _gpus()
    print(f"torch sees a GPU: {torch_gpu}; JAX sees a GPU: {jax_gpu}")
    if not (torch_gpu and jax_gpu) and not args.allow_cpu:
        print("No GPU visible to both frameworks: nothing to check (JAX's GPU build: pip install -U 'jax[cuda12]').")
        sys.exit(2)
    device = "cuda" if torch_gpu else "cpu"
    results = [_fit(rows, device) for rows in args.rows]
    print("| rows | fit s | train epochs | final epochs | s per train epoch | E-step share | torch peak GB | JAX peak GB | AUC |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['rows']:,} | {r['fit_s']:.1f} | {r['train_epochs']} | {r['final_epochs']} | {r['train_epoch_s']:.3f} | "
            f"{r['estep_share']:.2f} | {r['torch_peak_gb']:.2f} | {r['jax_peak_gb']:.2f} | {r['auc']:.3f} |"
        )
    unused = [name for name, peak in (("torch", "torch_peak_gb"), ("JAX", "jax_peak_gb")) if torch_gpu and not all(r[peak] > 0 for r in results)]
    if unused:
        print(f"{' and '.join(unused)} allocated no GPU memory during a fit: the fit did not run there.")
        sys.exit(1)


if __name__ == "__main__":
    main()
