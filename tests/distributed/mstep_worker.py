"""One process of a 2-process M-step check, started by torchrun (tests/distributed/test_sharded_mstep.py).

Every process builds the same data (600 rows, two grouping factors, draws of their effects), keeps
every other row, and writes ``OUT/rank{r}.json``: each M-step function on its shard with row sums
all-reduced (``Rows(over_shards=sum_tensors)``, ``GaussianEStep(over_shards=sum_tensors)``) beside
the same on all rows in this process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from gmenn_formula.distributed.group import ProcessGroup, start, sum_tensors
from gmenn_formula.families import get_family
from gmenn_formula.mstep.networks import FixedPart
from gmenn_formula.estep.arrays import TermArrays
from gmenn_formula.estep.gaussian import GaussianEStep
from gmenn_formula.mstep.step import GaussianConditionals, Rows, expansion_maps, intercept_shift, newton_fixed_effects, random_part, residual_variance

group = ProcessGroup.from_environment()
start(group)
g = torch.Generator().manual_seed(0)
n, levels, c = 600, (12, 7), 3
X = torch.cat([torch.ones(n, 1), torch.randn(n, 2, generator=g)], 1)
codes = tuple(torch.randint(0, q, (n,), generator=g) for q in levels)
Z = (torch.ones(n, 1), torch.cat([torch.ones(n, 1), torch.randn(n, 1, generator=g)], 1))
effects = (torch.randn(4, levels[0], 1, c, generator=g) * 0.5, torch.randn(4, levels[1], 2, c, generator=g) * 0.3)
y_class = torch.randint(0, c, (n,), generator=g)
y_gauss = torch.randn(n, generator=g)


def rows(index: torch.Tensor, y: torch.Tensor, sharded: bool) -> Rows:
    return Rows((), X[index], torch.zeros(len(index)), y[index], torch.ones(len(index)), tuple(k[index] for k in codes), tuple(z[index] for z in Z),
                **({"over_shards": sum_tensors} if sharded else {}))


def results(index: torch.Tensor, sharded: bool) -> dict:
    categorical, gaussian = get_family("categorical"), get_family("gaussian")
    R = rows(index, y_class, sharded)
    model = FixedPart([], X.shape[1], c)
    value = newton_fixed_effects(model, categorical, R, effects, 1.0)
    out = {"beta": model.beta.detach().double().ravel().tolist(), "nll": value}
    F = torch.zeros(len(index), c)
    out["shift"] = intercept_shift(categorical, F + random_part(effects, R).mean(0), R).double().tolist()
    out["maps"] = [A.double().ravel().tolist() for A in expansion_maps(categorical, F, effects, R, 1.0)]
    G = rows(index, y_gauss, sharded)
    single = tuple(B[..., :1] for B in effects)
    out["residual"] = residual_variance(torch.zeros(len(index), 1), random_part(single, G), G)
    out["gauss_maps"] = [A.double().ravel().tolist() for A in expansion_maps(gaussian, torch.zeros(len(index), 1), single, G, 1.0)]
    covariances = [torch.eye(B.shape[2])[None] * 0.4 for B in single]
    conditionals = GaussianConditionals.of(single, G, torch.zeros(len(index), 1), covariances, 1.0)
    out["conditional_moments"] = [S.ravel().tolist() for S in conditionals.second_moments()]
    out["conditional_residual"] = conditionals.residual_variance(G)
    terms = tuple(TermArrays(k[index].numpy(), z[index].numpy(), q) for k, z, q in zip(codes, Z, levels))
    estep = GaussianEStep(terms, y_gauss[index].numpy(), torch.ones(len(index)).numpy(), 5, torch.device("cpu"), **({"over_shards": sum_tensors} if sharded else {}))
    drawn = estep.draw(torch.zeros(len(index), 1).numpy(), [S.numpy() for S in covariances], 1.0, 3, 1)
    out["exact_draws"] = [B.ravel().tolist() for B in drawn.effects]
    return out


everything = torch.arange(n)
record = {"whole": results(everything, False), "sharded": results(everything[group.rank :: group.size], True)}
Path(sys.argv[1], f"rank{group.rank}.json").write_text(json.dumps(record))
