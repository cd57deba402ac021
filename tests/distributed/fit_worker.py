"""One process of a data-parallel fit, started by torchrun (tests/distributed/test_fit.py):
``fit_shards(FORMULA, DATA, family=FAMILY, output=OUT/model.gmenn, **CONTROL)`` (CONTROL: JSON),
then ``OUT/rank{r}.json`` with what this process's result holds: variance components, fixed
effects, nobs, the log-likelihood, whether it keeps training rows, predictions on ``DATA``'s rows (all files, read
here only after the fit) and the number of rows this process read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from gmenn_formula.distributed.fit import fit_shards
from gmenn_formula.distributed.group import ProcessGroup, stop

formula, data, family, out, control = sys.argv[1], sys.argv[2], sys.argv[3], Path(sys.argv[4]), json.loads(sys.argv[5])
group = ProcessGroup.from_environment()
result = fit_shards(formula, data, family=family, output=out / "model.gmenn", verbose=0, **control)
every_row = pd.concat([pd.read_parquet(f) for f in sorted(Path(data).glob("*.parquet"))], ignore_index=True)
predictions = result.predict(every_row, type="link")
summary = {
    "varcorr": result.varcorr()[["group", "term", "variance", "mcse"]].to_dict(orient="list"),
    "fixef": result.fixef()["estimate"].tolist(),
    "nobs": result.nobs,
    "has_training_rows": result.has_training_rows,
    "predictions": [float(v) for v in pd.DataFrame(predictions).to_numpy().ravel()],
    "messages": result.state.messages,
    "loglik": float(result.loglik()),
    "loglik_se": result.loglik().se,
    "loglik_nobs": result.loglik().nobs,
}
(out / f"rank{group.rank}.json").write_text(json.dumps(summary))
stop()
