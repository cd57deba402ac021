"""Row shards of a partitioned Parquet data set: each process reads only its own files
(:func:`shard_files`: file i goes to process i mod P), so no process holds another's rows. The
encodings every process shares are agreed in :mod:`~gmenn_formula.distributed.design`.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from gmenn_formula.distributed.group import ProcessGroup
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
