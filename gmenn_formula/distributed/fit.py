"""A fit whose rows lie in Parquet files, by every process of a torchrun job (or by one process).

Each process reads its own files (:func:`~gmenn_formula.distributed.shards.shard_files`), the
encodings are agreed (:func:`~gmenn_formula.distributed.design.agreed_design`), and every process
runs the same Monte Carlo EM on its shard (:func:`~gmenn_formula.training.fit.fit_design` with
``data_parallel``), so all end with the same estimates. Rank 0 writes the model file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from gmenn_formula.design import Design
from gmenn_formula.distributed.design import agreed_design
from gmenn_formula.distributed.group import ProcessGroup, gather_objects, start, sum_arrays
from gmenn_formula.distributed.shards import read_shard, shard_files
from gmenn_formula.errors import DataTypeError, DistributedError
from gmenn_formula.formula import Formula
from gmenn_formula.paths import check_output
from gmenn_formula.results.likelihood import LogLik, marginal_loglik
from gmenn_formula.results.result import DEFAULT_LOGLIK, GmennResult
from gmenn_formula.results.state import FitState
from gmenn_formula.training.config import FitConfig
from gmenn_formula.training.progress import ProgressBar


def fit_shards(
    formula: str | Formula,
    source: str | Path | list[str | Path],
    family: str | None = None,
    nets: Mapping | None = None,
    na_action: str = "omit",
    output: str | Path | None = None,
    **control,
) -> GmennResult:
    """Fit ``formula`` to the rows of the Parquet files at ``source`` (a directory, a glob pattern
    or a list of files), as :func:`~gmenn_formula.gmenn` does to a DataFrame (same ``family``,
    ``nets``, ``na_action`` and ``**control``). Under torchrun every process calls this with the
    same arguments and reads only its share of the files (file i to process i mod P); the result
    is the same in every process, and rank 0 writes it to ``output`` if given. With several
    processes the result keeps no training rows (like a model read from a file): predict with
    ``newdata``; its log-likelihood (AIC, BIC, ``anova``) is computed over every shard's rows
    before the rows are dropped, by joint importance sampling. One process (no torchrun) reads
    every file and returns a result with its rows, as ``gmenn()`` on them would."""
    config = FitConfig.from_control(**control)
    if not isinstance(source, (str, Path, list)):
        raise DataTypeError(f"source must be a directory, a glob pattern or a list of Parquet files, not {type(source).__name__}.")
    if output is not None:
        check_output(output)
    group = ProcessGroup.from_environment()
    start(group)
    shard = read_shard(shard_files(source, group))
    design = agreed_design(formula, shard, family, group, na_action)
    from gmenn_formula.training.fit import fit_design, resolve_device  # the engine (PyMC, PyTensor, JAX) loads here

    _check_one_gpu_per_node(resolve_device(config.runtime.device), group)

    with ProgressBar(enabled=config.runtime.verbose > 0 and group.leader) as bar:
        state = fit_design(design, config, nets=nets, progress=bar.update, data_parallel=group.size > 1)
    if group.size == 1:
        result = GmennResult(design, state)
    else:
        result = GmennResult(
            Design.without_rows(design.spec, sum(gather_objects(design.num_dropped, group))), state, logliks={DEFAULT_LOGLIK: _loglik(design, state)}
        )
    if output is not None and group.leader:
        result.save(output)
    return result


def _loglik(shard: Design, state: FitState) -> LogLik:
    """The fit's log-likelihood over every process's rows (``shard``: this process's), by joint
    importance sampling with the same draws in every process and each draw's row sums all-reduced."""
    F = GmennResult(shard, state)._linear_predictor(shard, include_random=False)
    return marginal_loglik(shard, state, F, "auto", over_shards=sum_arrays)


def _check_one_gpu_per_node(device: torch.device, group: ProcessGroup, environ: dict[str, str] | None = None) -> None:
    """DistributedError for a GPU fit with several processes on one node (torchrun's
    LOCAL_WORLD_SIZE > 1): every process would use the node's first GPU (one device per process,
    by local rank, is not built); one process per node, or device='cpu', works."""
    environ = os.environ if environ is None else environ
    if group.size > 1 and device.type == "cuda" and int(environ.get("LOCAL_WORLD_SIZE", "1")) > 1:
        raise DistributedError(
            f"A data-parallel fit on GPUs runs one process per node (torchrun --nproc-per-node 1 on each); "
            f"{environ['LOCAL_WORLD_SIZE']} processes on this node would all use its first GPU. Use device='cpu' for several processes per node."
        )
