"""The process group read from torchrun's environment, in one process."""

from __future__ import annotations

import pytest
import torch

from gmenn_formula.distributed.group import ProcessGroup, gather_objects, single_shard, start
from gmenn_formula.errors import DistributedError


def test_without_torchrun_a_process_is_a_group_of_one():
    group = ProcessGroup.from_environment({})
    assert group == ProcessGroup(0, 1) and group.leader
    start(group, {})  # joins nothing
    assert gather_objects({"a": 1}, group) == [{"a": 1}]
    assert single_shard(torch.ones(3)).tolist() == [1.0, 1.0, 1.0]


def test_torchrun_s_variables_give_the_rank():
    group = ProcessGroup.from_environment({"RANK": "1", "WORLD_SIZE": "4"})
    assert group == ProcessGroup(1, 4) and not group.leader


def test_a_group_without_its_rendezvous_address_is_refused():
    with pytest.raises(DistributedError, match="MASTER_ADDR and MASTER_PORT unset: start the processes with torchrun"):
        start(ProcessGroup(0, 2), {})


@pytest.mark.parametrize("environ", [{"RANK": "2", "WORLD_SIZE": "2"}, {"RANK": "x", "WORLD_SIZE": "2"}])
def test_an_impossible_rank_is_refused(environ):
    with pytest.raises(DistributedError, match="RANK"):
        ProcessGroup.from_environment(environ)
