"""Parquet shards and shared encodings on 2 processes (torchrun, gloo): each process reads only its
files, and a grouping level's code and a class's column mean the same in both, though each
process's rows hold only some of the levels and classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from gmenn_formula.distributed.group import ProcessGroup
from gmenn_formula.distributed.shards import read_shard, shard_files
from gmenn_formula.errors import DistributedError
from support.torchrun import run_workers


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    data, out = tmp_path_factory.mktemp("parquet"), tmp_path_factory.mktemp("ranks")
    rng = np.random.default_rng(0)
    for part in range(4):  # process 0 reads parts 0 and 2, process 1 parts 1 and 3
        n = 60
        groups = [f"g{part * 3 + k}" for k in range(3)]  # each part has groups of its own
        pd.DataFrame(
            {
                "y": rng.choice(["a", "b"] if part % 2 == 0 else ["b", "c"], n),
                "x": rng.normal(size=n),
                "g": rng.choice(groups, n),
                "h": rng.choice(["u", "v", "w"], n),
                "k": rng.choice(["p", "q"] if part % 2 == 0 else ["r", "s"], n),
            }
        ).to_parquet(data / f"part{part}.parquet")
    run_workers(Path(__file__).with_name("design_worker.py"), [str(data), str(out)], processes=2)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_each_process_reads_only_its_files(ranks):
    assert ranks[0]["files"] == ["part0.parquet", "part2.parquet"]
    assert ranks[1]["files"] == ["part1.parquet", "part3.parquet"]


def test_levels_and_classes_are_the_union_in_every_process(ranks):
    assert ranks[0]["levels"] == ranks[1]["levels"]
    assert ranks[0]["levels"]["g"] == sorted(f"g{k}" for k in range(12))
    assert ranks[0]["classes"] == ranks[1]["classes"] == ["a", "b", "c"]


def test_codes_stand_for_each_row_s_own_level_and_class(ranks):
    for r in ranks:
        assert r["group_labels"] == r["groups"]
        assert r["answer_labels"] == r["answers"]


def test_shards_whose_encodings_cannot_agree_are_refused_by_name(ranks):
    """A categorical fixed column with levels p, q in one process's shard and r, s in the other's:
    the design's columns differ. A response with classes a, b in one shard and b, c in the other:
    fitted as binomial it holds three classes over all shards."""
    for r in ranks:
        assert "The model's columns differ between process" in r["refused"]["columns"]
        assert "(['k[q]', 'k[s]'])" in r["refused"]["columns"]  # the columns one process has and the other lacks
        assert "pandas Categorical with the same categories" in r["refused"]["columns"]
        assert r["refused"]["classes"].startswith("The binomial response holds 3 classes over all processes (['a', 'b', 'c'])")


def test_a_missing_column_is_refused_by_name(tmp_path):
    pd.DataFrame({"y": [1, 0], "g": ["a", "b"]}).to_parquet(tmp_path / "part0.parquet")
    with pytest.raises(DistributedError, match=r"Columns \['x'\] are not in the Parquet files"):
        read_shard(shard_files(tmp_path, ProcessGroup(0, 1)), columns=["y", "x"])


def test_fewer_files_than_processes_is_refused(tmp_path):
    (tmp_path / "only.parquet").write_bytes(b"")
    with pytest.raises(DistributedError, match="1 Parquet file.*for 2 processes.*at least 2 files"):
        shard_files(tmp_path, ProcessGroup(0, 2))


def test_no_files_is_refused(tmp_path):
    with pytest.raises(DistributedError, match="No Parquet files found"):
        shard_files(str(tmp_path / "*.parquet"), ProcessGroup(0, 1))
