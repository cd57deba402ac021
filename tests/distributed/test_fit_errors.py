"""fit_shards' bad input in one process: each mistake is named before any fitting starts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import gmenn_formula as gf
from gmenn_formula.errors import ColumnNotFoundError, ControlError, DataError, DataTypeError, DistributedError


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    for part in range(2):
        pd.DataFrame({"y": rng.normal(size=50), "x": rng.normal(size=50), "g": rng.choice(["a", "b", "c"], 50)}).to_parquet(folder / f"p{part}.parquet")
    return folder


def test_source_of_another_type_is_named(folder):
    with pytest.raises(DataTypeError, match="source must be a directory, a glob pattern or a list of Parquet files, not DataFrame"):
        gf.fit_shards("y ~ x + (1 | g)", pd.DataFrame({"y": [1.0]}))


def test_a_bad_setting_fails_before_any_file_is_read(tmp_path):
    with pytest.raises(ControlError, match="epochs"):
        gf.fit_shards("y ~ x + (1 | g)", tmp_path / "absent", epochs=-1)


def test_an_output_folder_that_does_not_exist_fails_before_the_fit(folder, tmp_path):
    with pytest.raises(DataError, match="The output folder .*absent does not exist"):
        gf.fit_shards("y ~ x + (1 | g)", folder, output=tmp_path / "absent" / "m.gmenn")


def test_missing_files_and_columns_are_named(folder, tmp_path):
    with pytest.raises(DistributedError, match="No Parquet files found at"):
        gf.fit_shards("y ~ x + (1 | g)", str(tmp_path / "*.parquet"))
    with pytest.raises(ColumnNotFoundError, match="Column 'nothere' used in the fixed part is not in the data"):
        gf.fit_shards("y ~ nothere + (1 | g)", folder)


def test_several_processes_on_one_node_may_not_share_its_gpu():
    import torch

    from gmenn_formula.distributed.fit import _check_one_gpu_per_node
    from gmenn_formula.distributed.group import ProcessGroup

    two = ProcessGroup(0, 2)
    with pytest.raises(DistributedError, match="2 processes on this node would all use its first GPU"):
        _check_one_gpu_per_node(torch.device("cuda"), two, {"LOCAL_WORLD_SIZE": "2"})
    _check_one_gpu_per_node(torch.device("cuda"), two, {"LOCAL_WORLD_SIZE": "1"})  # one process per node
    _check_one_gpu_per_node(torch.device("cpu"), two, {"LOCAL_WORLD_SIZE": "2"})
