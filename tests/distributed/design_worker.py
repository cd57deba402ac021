"""One process of a 2-process data check, started by torchrun (tests/distributed/test_shards.py):
reads its Parquet files of ``DATA`` and writes ``OUT/rank{r}.json`` with the files it read, the
shared grouping levels and classes, each of its rows' group and class beside the label its code
stands for, and the messages of the designs the processes cannot share (a categorical fixed column
with other levels in each shard; a binomial response with three classes over all shards)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gmenn_formula.distributed.design import agreed_design
from gmenn_formula.distributed.group import ProcessGroup, start
from gmenn_formula.distributed.shards import read_shard, shard_files
from gmenn_formula.errors import DistributedError

data, out = sys.argv[1], Path(sys.argv[2])
group = ProcessGroup.from_environment()
start(group)
files = shard_files(data, group)
shard = read_shard(files)
fitted = agreed_design("y ~ x + (1 | g) + (1 | h)", shard, "categorical", group)
refused = {}
for name, formula, family in (("columns", "y ~ k + (1 | g)", "categorical"), ("classes", "y ~ x + (1 | g)", "binomial")):
    try:
        agreed_design(formula, shard, family, group)
    except DistributedError as error:
        refused[name] = str(error)
codes = {term.name: term.codes.tolist() for term in fitted.random}
levels = {term.name: [str(v) for v in term.factor.levels] for term in fitted.random}
(out / f"rank{group.rank}.json").write_text(
    json.dumps(
        {
            "files": [f.name for f in files],
            "levels": levels,
            "classes": [str(c) for c in fitted.spec.response.classes],
            "groups": shard["g"].astype(str).tolist(),
            "group_labels": [levels["g"][c] for c in codes["g"]],
            "answers": shard["y"].astype(str).tolist(),
            "answer_labels": [str(fitted.spec.response.classes[k]) for k in fitted.response.y.astype(int).tolist()],
            "refused": refused,
        }
    )
)
