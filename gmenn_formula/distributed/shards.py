"""Row shards of a partitioned Parquet data set, and the levels every process agrees on.

Each process reads only its own files (:func:`shard_files`: file i goes to process i mod P), so
no process holds another's rows. Codes of grouping factors, classes of the response and levels
of categorical columns must mean the same thing in every process: :func:`level_frame` gathers
each process's distinct values of those columns and returns one small frame holding all of them,
from which every process learns the same design (:meth:`~gmenn_formula.design.DesignSpec.apply`
then codes its own rows).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pandas as pd

from gmenn_formula.distributed.group import ProcessGroup, gather_objects
from gmenn_formula.errors import DistributedError


def shard_files(source: str | Path | list[str | Path], group: ProcessGroup) -> list[Path]:
    """This process's Parquet files of ``source`` (a directory, a glob pattern or a list of files),
    sorted by path and dealt round-robin to the processes."""
    if isinstance(source, list):
        files = sorted(Path(f) for f in source)
    elif Path(source).is_dir():
        files = sorted(Path(source).rglob("*.parquet"))
    else:
        files = sorted(Path(f) for f in glob.glob(str(source)))
    if not files:
        raise DistributedError(f"No Parquet files found at {source!r}: give a directory of .parquet files, a glob pattern or a list.")
    if len(files) < group.size:
        raise DistributedError(
            f"{len(files)} Parquet file(s) at {source!r} for {group.size} processes: each process reads whole files, "
            f"so write the data in at least {group.size} files (e.g. pandas' to_parquet with partition_cols, or pyarrow's write_dataset)."
        )
    return files[group.rank :: group.size]


def read_shard(files: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    """The rows of ``files`` (one process's shard) as one frame, only ``columns`` if given."""
    try:
        import pyarrow.dataset as ds
    except ImportError as exc:  # pragma: no cover - pyarrow ships with the distributed extra
        raise DistributedError("Reading Parquet shards needs pyarrow: pip install 'gmenn-formula[distributed]'.") from exc
    dataset = ds.dataset([str(f) for f in files], format="parquet")
    missing = sorted(set(columns or []) - set(dataset.schema.names))
    if missing:
        raise DistributedError(f"Columns {missing} are not in the Parquet files {[str(f) for f in files[:3]]}; they hold {dataset.schema.names}.")
    return dataset.to_table(columns=columns).to_pandas()


def level_frame(frame: pd.DataFrame, columns: list[str], group: ProcessGroup) -> pd.DataFrame:
    """A frame with ``columns`` holding every distinct value any process has in each of them (the
    union over processes, missing values left out), row count the largest number of distinct
    values, shorter columns repeating their values; the same frame in every process."""
    local = {c: pd.unique(frame[c].dropna()) for c in columns}
    merged: dict[str, list] = {c: [] for c in columns}
    for values in gather_objects(local, group):
        for c in columns:
            merged[c].extend(values[c])
    rows = max([len(set(v)) for v in merged.values()], default=0)
    out = {}
    for c in columns:
        distinct = pd.Series(pd.unique(pd.Series(merged[c], dtype=frame[c].dtype))).sort_values(ignore_index=True)
        if rows and len(distinct) == 0:
            raise DistributedError(f"Column {c!r} holds no values in any process's shard.")
        out[c] = np.resize(distinct.to_numpy(), rows) if rows else distinct.to_numpy()
    return pd.DataFrame({c: pd.Series(v, dtype=frame[c].dtype) for c, v in out.items()})
