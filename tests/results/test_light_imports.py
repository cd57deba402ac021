"""Reading a model and predicting load neither the engine nor its libraries; importing the package
loads the formula and design stages only."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


LOAD_AND_PREDICT = """
import json, sys, time
started = time.perf_counter()
import pandas as pd
import gmenn_formula as gf
imported = time.perf_counter()
fit = gf.load(sys.argv[1])
prediction = fit.predict(pd.DataFrame({"days": [0.0, 2.0], "subject": ["s1", "s9"]}))
str(fit.summary())
done = time.perf_counter()
engine = sorted(name for name in sys.modules if name.split(".")[0] in ("pymc", "pytensor", "jax", "blackjax")
                or name.startswith(("gmenn_formula.training.fit", "gmenn_formula.estep")))
print(json.dumps({"engine": engine, "import": imported - started, "load_predict": done - imported}))
"""


def test_load_and_predict_need_no_engine(glmm_result, tmp_path: Path) -> None:
    path = glmm_result.save(tmp_path / "model.gmenn")
    run = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(path)], capture_output=True, text=True, check=True)
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print("seconds:", report)
    assert report["engine"] == []


def test_importing_the_package_loads_no_torch_and_no_engine() -> None:
    code = "import sys, gmenn_formula; print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'pymc', 'pytensor', 'jax', 'blackjax'}))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
