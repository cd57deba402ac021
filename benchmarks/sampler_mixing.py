"""Mixing of the E-step samplers on the paper's base scenario: "paper" vs "whitened".

Softmax with C=5 classes; three crossed random intercepts with 1000, 10 and
1000 levels and variances 1e-4, .5, .5; 20,000 rows; F ~ N(0, 1) held fixed.
Each sampler first runs ``--warmup-epochs`` epochs with the paper's K=2,
R=1 (its step-size rule adapting, the whitening rebuilt each epoch at the
previous epoch's kept draws), then two epochs of ``--draws`` kept draws: the
first compiles (and serves as more burn-in), the second is timed. ESS per
parameter is arviz's ``method="mean"`` ESS of B and of B^2 over that chain;
the table shows the median and the 10th percentile over the 10,050 random
effects, per second of sampling. Compilation is excluded from all timings.

    .venv/bin/python benchmarks/sampler_mixing.py
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from gmenn_formula.estep.precondition import BlockWhitening, build_whitening
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "estep"))
from targets import linear_predictor  # noqa: E402  the reference target the sampler tests use

from gmenn_formula.estep.sampler import DrawInfo, SamplerConfig, SamplerState, init, sample_chunk
from gmenn_formula.families import get_family

LEVELS = (1000, 10, 1000)
VARIANCES = (1e-4, 0.5, 0.5)
NUM_CLASSES = 5
CATEGORICAL = get_family("categorical")


def simulate(num_rows: int, seed: int) -> dict[str, Any]:
    """Rows of the base scenario: codes, slope columns (ones), F, y and prior precisions."""
    rng = np.random.default_rng(seed)
    codes = tuple(jnp.asarray(rng.integers(0, q, num_rows), dtype=jnp.int32) for q in LEVELS)
    Z = tuple(jnp.ones((num_rows, 1), dtype=jnp.float32) for _ in LEVELS)
    F = jnp.asarray(rng.normal(size=(num_rows, NUM_CLASSES)), dtype=jnp.float32)
    truth = tuple(
        jnp.asarray(rng.normal(scale=np.sqrt(v), size=(q, NUM_CLASSES)), dtype=jnp.float32)
        for q, v in zip(LEVELS, VARIANCES, strict=True)
    )
    probabilities = np.asarray(jax.nn.softmax(linear_predictor(F, codes, Z, truth)), dtype=np.float64)
    cumulative = np.cumsum(probabilities / probabilities.sum(1, keepdims=True), axis=1)
    y = jnp.asarray((rng.random((num_rows, 1)) > cumulative).sum(1).clip(max=NUM_CLASSES - 1), dtype=jnp.int32)
    prior_precisions = tuple(jnp.full((NUM_CLASSES, 1, 1), 1.0 / v, dtype=jnp.float32) for v in VARIANCES)
    return {"codes": codes, "Z": Z, "F": F, "y": y, "prior_precisions": prior_precisions}


@jax.jit
def whitening_at(center: tuple[jax.Array, ...], data: dict[str, Any]) -> BlockWhitening:
    """Whitening at ``center`` from the categorical Fisher information of the rows there."""
    fisher = CATEGORICAL.fisher(linear_predictor(data["F"], data["codes"], data["Z"], center), None, None, xp=jnp)
    return build_whitening(center, fisher, data["codes"], data["Z"], data["prior_precisions"])


def logdensity(position: tuple[jax.Array, ...], data: dict[str, Any]) -> jax.Array:
    """Log density of the random effects (up to a constant) for the softmax model."""
    eta = linear_predictor(data["F"], data["codes"], data["Z"], position)
    loglik = jnp.sum(jnp.take_along_axis(jax.nn.log_softmax(eta), data["y"][:, None], axis=1))
    log_prior = sum(-0.5 * jnp.sum(B * B * P[:, 0, 0]) for B, P in zip(position, data["prior_precisions"], strict=True))
    return loglik + log_prior


def run_epoch(
    key: jax.Array, state: SamplerState, config: SamplerConfig, data: dict[str, Any], center: tuple[jax.Array, ...]
) -> tuple[SamplerState, tuple[jax.Array, ...], DrawInfo]:
    """One epoch; "whitened" rebuilds its whitening at ``center`` first."""
    whitening = None
    if config.kind == "whitened":
        whitening = whitening_at(center, data)
    return sample_chunk(key, state, logdensity, config, whitening, (data,))


def ess(draws: np.ndarray) -> np.ndarray:
    """arviz mean-ESS of each column of a single chain ``draws`` (N, D)."""
    return np.asarray(az.ess(az.convert_to_dataset(draws[None]), method="mean")["x"])


def benchmark(kind: str, data: dict[str, Any], warmup_epochs: int, num_draws: int, seed: int) -> dict[str, float]:
    """Warm up ``kind`` with K=2, R=1 epochs, then time the second of two epochs of ``num_draws`` draws."""
    key = jax.random.key(seed)
    warmup = SamplerConfig(kind=kind, num_draws=2, burn_in=1)
    state = init(tuple(jnp.zeros((q, NUM_CLASSES), dtype=jnp.float32) for q in LEVELS), warmup)
    center = state.position
    warmup_acceptance, warmup_seconds = [], []
    for _ in range(warmup_epochs):
        key, sub = jax.random.split(key)
        start = time.perf_counter()
        state, draws, info = jax.block_until_ready(run_epoch(sub, state, warmup, data, center))
        warmup_seconds.append(time.perf_counter() - start)
        center = tuple(d.mean(0) for d in draws)
        warmup_acceptance.append(float(info.mean_acceptance))
    measure = SamplerConfig(kind=kind, num_draws=num_draws, burn_in=0)
    key, compile_key, sub = jax.random.split(key, 3)
    state, draws, _ = jax.block_until_ready(run_epoch(compile_key, state, measure, data, center))  # compiles
    center = tuple(d.mean(0) for d in draws)
    start = time.perf_counter()
    _, draws, info = jax.block_until_ready(run_epoch(sub, state, measure, data, center))
    seconds = time.perf_counter() - start
    chain = np.concatenate([np.asarray(d).reshape(num_draws, -1) for d in draws], axis=1).astype(np.float64)
    ess_mean, ess_square = ess(chain), ess(chain**2)
    return {
        "seconds_per_draw": seconds / num_draws,
        "ms_per_leapfrog": 1e3 * seconds / float(info.num_leapfrog_steps.sum()),
        "seconds_paper_epoch": float(np.mean(warmup_seconds[1:])),
        "step_size": float(info.step_size),
        "acceptance": float(info.mean_acceptance),
        "warmup_acceptance": float(np.mean(warmup_acceptance)),
        "mean_leapfrog": float(info.mean_leapfrog_steps),
        "max_leapfrog": float(info.max_leapfrog_steps),
        "divergences": int(info.num_divergences),
        "ess_mean_median_per_s": float(np.median(ess_mean)) / seconds,
        "ess_mean_p10_per_s": float(np.quantile(ess_mean, 0.1)) / seconds,
        "ess_square_median_per_s": float(np.median(ess_square)) / seconds,
        "ess_square_p10_per_s": float(np.quantile(ess_square, 0.1)) / seconds,
        "ess_square_median": float(np.median(ess_square)),
    }


def markdown(results: dict[str, dict[str, float]], num_draws: int) -> str:
    """Markdown table of the benchmark results, one column per sampler."""
    rows = [
        ("seconds per draw", "seconds_per_draw", "{:.3f}"),
        ("seconds per K=2 warm-up epoch (whitening build included)", "seconds_paper_epoch", "{:.3f}"),
        ("ms per leapfrog step", "ms_per_leapfrog", "{:.2f}"),
        ("step size", "step_size", "{:.4f}"),
        ("mean acceptance (warm-up epochs)", "warmup_acceptance", "{:.2f}"),
        (f"mean acceptance ({num_draws}-draw chain)", "acceptance", "{:.2f}"),
        ("mean / max leapfrog steps per draw", ("mean_leapfrog", "max_leapfrog"), "{:.0f} / {:.0f}"),
        ("divergences", "divergences", "{}"),
        ("ESS(B) per s, median (p10)", ("ess_mean_median_per_s", "ess_mean_p10_per_s"), "{:.1f} ({:.1f})"),
        ("ESS(B^2) per s, median (p10)", ("ess_square_median_per_s", "ess_square_p10_per_s"), "{:.1f} ({:.1f})"),
        (f"ESS(B^2) median of {num_draws} draws", "ess_square_median", "{:.0f}"),
    ]
    kinds = list(results)
    lines = ["| | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|"]
    for label, keys, fmt in rows:
        keys = keys if isinstance(keys, tuple) else (keys,)
        cells = [fmt.format(*(results[k][key] for key in keys)) for k in kinds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--warmup-epochs", type=int, default=20)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = simulate(args.rows, args.seed)
    results = {kind: benchmark(kind, data, args.warmup_epochs, args.draws, args.seed) for kind in ("paper", "whitened")}
    print(f"{args.rows} rows, levels {LEVELS}, variances {VARIANCES}, C={NUM_CLASSES}; jax {jax.__version__}, "
          f"{os.cpu_count()} CPU cores\n")
    print(markdown(results, args.draws))


if __name__ == "__main__":
    main()
