"""One process of a 2-process E-step check, started by torchrun (tests/distributed/test_sharded_estep.py).

Every process builds the same binomial data (2,000 rows, two crossed factors), keeps every
other row (its shard), and writes to ``OUT/rank{r}.json``: the sharded log density and its
gradient at a fixed position next to the same on all rows in this one process (no mesh), the
whitening's Cholesky factors both ways, two chunks of NUTS draws from the sharded sampler, and the
posterior means of the effects from a sharded EStep beside those from a one-process EStep on all rows,
and the many-class (rank-one) whitening of a 20-class categorical model both ways.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from gmenn_formula.distributed.group import ProcessGroup, start

group = ProcessGroup.from_environment()
start(group)

import jax  # noqa: E402  (after start: JAX's backend must start after the distributed runtime)
import jax.numpy as jnp  # noqa: E402

from gmenn_formula.estep import sampler  # noqa: E402
from gmenn_formula.estep.arrays import SamplerConfig, TermArrays  # noqa: E402
from gmenn_formula.estep.driver import EStep  # noqa: E402
from gmenn_formula.estep.inputs import ModelParams, Structure, model_data  # noqa: E402
from gmenn_formula.estep.model import compile_structure  # noqa: E402
from gmenn_formula.estep.kernels import whitening_at  # noqa: E402
from gmenn_formula.estep.precondition import DENSE_OUTPUTS, build_whitening  # noqa: E402
from gmenn_formula.estep.sharded import ShardedKernels, row_mesh  # noqa: E402
from gmenn_formula.families import get_family  # noqa: E402

rng = np.random.default_rng(0)
n, levels = 2000, (30, 20)
family = get_family("binomial")
codes = [rng.integers(0, q, n).astype(np.int32) for q in levels]
F = rng.normal(0, 0.5, (n, 1)).astype(np.float32)
effects = [rng.normal(0, 0.7, q) for q in levels]
eta = F[:, 0] + sum(b[c] for b, c in zip(effects, codes))
y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(np.float32)
trials = np.ones(n, np.float32)
covariances = [np.full((1, 1, 1), 0.5, np.float32) for _ in levels]
chol_inverses = tuple(np.linalg.inv(np.linalg.cholesky(S)).astype(np.float32) for S in covariances)
position = tuple(jnp.asarray(rng.normal(0, 0.5, (q, 1)), jnp.float32) for q in levels)


def term_arrays(rows: np.ndarray) -> tuple[TermArrays, ...]:
    return tuple(TermArrays(c[rows], np.ones((len(rows), 1), np.float32), q) for c, q in zip(codes, levels))


def problem(rows: np.ndarray):
    terms = term_arrays(rows)
    structure = Structure.of(family, terms, y[rows], trials[rows], 1)
    params = ModelParams(F=jnp.asarray(F[rows]), chol_inverses=tuple(map(jnp.asarray, chol_inverses)), dispersion=jnp.float32(1.0))
    return structure, params, model_data(terms, y[rows], trials[rows], np.ones(len(rows), np.float32))


everything = np.arange(n)
structure, params, data = problem(everything)
model = compile_structure(structure)
value, gradient = jax.value_and_grad(model.logdensity)(position, params, data)
precisions = tuple(jnp.asarray(np.linalg.inv(S)) for S in covariances)
fisher = family.fisher(model.eta(position, params, data), data.trials, params.dispersion, xp=jnp)
reference_whitening = build_whitening(position, fisher, data.codes, data.Z, precisions)

shard = everything[group.rank :: group.size]
local_structure, local_params, local_data = problem(shard)
kernels = ShardedKernels(local_structure, row_mesh())
global_params = ModelParams(F=kernels.rows(local_params.F), chol_inverses=kernels.replicated(local_params.chol_inverses), dispersion=kernels.replicated(local_params.dispersion))
global_data = jax.tree.map(kernels.rows, local_data)
global_position = kernels.replicated(position)
sharded_value, sharded_gradient = jax.jit(jax.value_and_grad(kernels.logdensity))(global_position, global_params, global_data)
whitening = kernels.whitening(global_position, global_params, global_data, kernels.replicated(precisions))

config = SamplerConfig(kind="whitened", num_draws=4, burn_in=0, max_tree_depth=5)
state = kernels.replicated(sampler.init(position, config))
draws = []
for key in jax.random.split(jax.random.PRNGKey(7), 2):
    state, chunk, info = kernels.sample(kernels.replicated(key), state, config, whitening, global_params, global_data)
    draws.append([np.asarray(d).tolist() for d in chunk])




def posterior_means(estep: EStep, rows: np.ndarray) -> list[list[float]]:
    """Per term (q,) the mean of 3 epochs of 8 draws given F on ``rows``."""
    epochs = [estep.draw(F[rows], covariances, 1.0, 8, 0).effects for _ in range(3)]
    return [np.mean([e[l] for e in epochs], axis=(0, 1)).ravel().tolist() for l in range(len(levels))]


chunked = SamplerConfig(kind="whitened", num_draws=4, burn_in=0, max_tree_depth=5)
sharded_estep = EStep(family, term_arrays(shard), y[shard], trials[shard], np.ones(len(shard), np.float32), 1, chunked, seed=3, mesh=row_mesh())
whole_estep = EStep(family, term_arrays(everything), y, trials, np.ones(n, np.float32), 1, chunked, seed=3)
sharded_means, whole_means = posterior_means(sharded_estep, shard), posterior_means(whole_estep, everything)
uneven = everything[:1100] if group.rank == 0 else everything[1100:]  # 1,100 and 900 rows: padded to 1,100
uneven_estep = EStep(family, term_arrays(uneven), y[uneven], trials[uneven], np.ones(len(uneven), np.float32), 1, chunked, seed=3, mesh=row_mesh())
uneven_means = posterior_means(uneven_estep, uneven)

# Many classes: the rank-one whitening's per-level sums are summed over the shards as the blocks are.
classes = DENSE_OUTPUTS + 4
categorical = get_family("categorical")
class_rng = np.random.default_rng(1)
y_class = class_rng.integers(0, classes, n)
F_class = class_rng.normal(0, 0.5, (n, classes)).astype(np.float32)
class_center = tuple(jnp.asarray(class_rng.normal(0, 0.3, (q, classes)), jnp.float32) for q in levels)
class_precisions = tuple(jnp.full((classes, 1, 1), 2.0, jnp.float32) for _ in levels)


def class_problem(rows: np.ndarray):
    terms = term_arrays(rows)
    chol_inverse = tuple(jnp.full((classes, 1, 1), np.sqrt(2.0), jnp.float32) for _ in levels)
    params = ModelParams(F=jnp.asarray(F_class[rows]), chol_inverses=chol_inverse, dispersion=jnp.float32(1.0))
    return Structure.of(categorical, terms, y_class[rows], trials[rows], classes), params, model_data(terms, y_class[rows], trials[rows], np.ones(len(rows), np.float32))


class_structure, class_params, class_data = class_problem(everything)
whole_rank_one = whitening_at(class_center, class_params, class_data, class_precisions, categorical, compile_structure(class_structure).eta)
local_structure, local_params, local_data = class_problem(shard)
class_kernels = ShardedKernels(local_structure, row_mesh())
sharded_rank_one = class_kernels.whitening(
    class_kernels.replicated(class_center),
    ModelParams(F=class_kernels.rows(local_params.F), chol_inverses=class_kernels.replicated(local_params.chol_inverses), dispersion=class_kernels.replicated(local_params.dispersion)),
    jax.tree.map(class_kernels.rows, local_data),
    class_kernels.replicated(class_precisions),
)


def rank_one_fields(whitening) -> dict:
    return {"kind": type(whitening).__name__} | {
        name: [np.asarray(x).ravel().tolist() for x in getattr(whitening, name)] for name in ("scale", "direction", "gain")
    }


out = Path(sys.argv[1])
(out / f"rank{group.rank}.json").write_text(
    json.dumps(
        {
            "rows": len(shard),
            "value": float(value),
            "sharded_value": float(sharded_value),
            "gradient": [np.asarray(g).ravel().tolist() for g in gradient],
            "sharded_gradient": [np.asarray(g).ravel().tolist() for g in sharded_gradient],
            "chol": [np.asarray(c).ravel().tolist() for c in reference_whitening.chol],
            "sharded_chol": [np.asarray(c).ravel().tolist() for c in whitening.chol],
            "draws": draws,
            "sharded_means": sharded_means,
            "whole_means": whole_means,
            "uneven_means": uneven_means,
            "rank_one": rank_one_fields(whole_rank_one),
            "sharded_rank_one": rank_one_fields(sharded_rank_one),
        }
    )
)
