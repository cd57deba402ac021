"""The design of one process's shard, with encodings every process shares.

Each process learns the formula's encodings on its own rows (:func:`~gmenn_formula.design.design`,
with all its checks), then the processes exchange what must agree: the levels of every grouping
factor and the response's classes are replaced by their union over processes (sorted, as one
process would have sorted them), and the parametric columns (categorical fixed effects' coding,
network inputs) must already be the same everywhere. The shard is then coded with the shared
encodings (:meth:`~gmenn_formula.design.DesignSpec.apply`), so a level's code and a class's
column mean the same in every process.
"""

from __future__ import annotations

from dataclasses import replace
from functools import reduce

import pandas as pd

from gmenn_formula.design import Design, design
from gmenn_formula.design.grouping import GroupingFactor
from gmenn_formula.distributed.group import ProcessGroup, gather_objects
from gmenn_formula.errors import DistributedError


def agreed_design(formula: str, shard: pd.DataFrame, family: str | None, group: ProcessGroup, na_action: str = "omit") -> Design:
    """The design of ``shard`` (this process's rows) with the grouping levels and response classes
    of all processes' rows; DistributedError when the processes' parametric columns differ."""
    spec = design(formula, shard, family, na_action).spec
    mine = {
        "levels": [part.factor.levels for part in spec.random],
        "classes": spec.response.classes,
        "columns": [block.names for block in spec._blocks()],
    }
    everyone = gather_objects(mine, group)
    for rank, other in enumerate(everyone):
        if other["columns"] != mine["columns"]:
            differing = sorted(set(map(str, sum(map(list, mine["columns"]), []))) ^ set(map(str, sum(map(list, other["columns"]), []))))
            raise DistributedError(
                f"The model's columns differ between process {group.rank} and process {rank} ({differing}): a categorical "
                "column has levels missing from some shards. Store it as a pandas Categorical with the same categories in "
                "every file, or make it a grouping factor."
            )
    random = tuple(
        replace(part, factor=GroupingFactor(part.factor.columns, reduce(pd.Index.union, [o["levels"][l] for o in everyone])))
        for l, part in enumerate(spec.random)
    )
    classes = _union_classes([o["classes"] for o in everyone])
    if classes is not None and spec.family.name == "binomial" and len(classes) != 2:
        raise DistributedError(f"The binomial response holds {len(classes)} classes over all processes ({list(classes)}); it needs two.")
    shared = replace(spec, random=random, response=replace(spec.response, classes=classes))
    return shared.apply(shard, response=True, na_action=na_action)


def _union_classes(per_process: list[tuple | None]) -> tuple | None:
    """The processes' response classes as one tuple: as they are when all agree, else their sorted union."""
    if all(classes == per_process[0] for classes in per_process):
        return per_process[0]
    return tuple(sorted(set().union(*[c for c in per_process if c is not None])))
