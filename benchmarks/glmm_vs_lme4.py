"""Plain GLMMs (no ``nn()``) fitted here, in lme4 (R) and in GPBoost, on simulated data of growing size.

The data come from ``gmenn_formula.simulation.simulate(nonlinear=False)``:
five uniform features with slopes ~ U(0, 1), intercept 0.5, three crossed
random-intercept factors with variances .5, .3 and .2 (and residual variance 1
for gaussian), unequal cluster sizes (Poisson(rows / levels) + 1). Every tool
fits the same model, ``y ~ x0 + ... + x4 + (1 | g0) + (1 | g1) + (1 | g2)``:

- gmenn_formula: ``gf.gmenn(formula, data, family=...)`` with default settings
  (Monte Carlo EM with an exact Newton step for the fixed effects: maximum
  likelihood, the exact likelihood for binomial too);
- lme4: ``lmer(REML = FALSE)`` / ``glmer(family = binomial)`` (Laplace), run by
  ``Rscript benchmarks/lme4_fit.R``;
- GPBoost: ``GPModel(group_data=..., likelihood="gaussian" | "bernoulli_logit")``
  and ``.fit(y, X)`` with an intercept column in X (no boosting).

Each fit runs in its own process under a wall-clock limit and a resident
memory cap (the process tree is polled; over the cap it is killed), so a tool
that cannot finish is reported with what it hit instead of stopping the
benchmark; a tool that failed at one size is not retried at a larger one of
the same family. The time is each fit's own clock (reading the CSV excluded,
building the design/model included; ours includes compiling the E-step).

    python benchmarks/glmm_vs_lme4.py            # quick: 10^4 and 10^5 rows, 3 x 1,000 levels (make bench-lme4)
    python benchmarks/glmm_vs_lme4.py --full     # up to 10^6 rows and 3 x 10^5 levels (make bench-lme4-full)

Options: ``--timeout S`` (per fit; default 300 quick, 600 full), ``--mem-gb G``
(per fit, default 12), ``--tools ours,lme4,gpboost``, ``--families``,
``--sizes ROWSxLEVELS,...``, ``--out FILE`` (the Markdown results file).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FEATURES = 5
INTERCEPT = 0.5
VARIANCES = (0.5, 0.3, 0.2)
QUICK_SIZES = [(10_000, 1_000), (100_000, 1_000)]
FULL_SIZES = [(10_000, 1_000), (100_000, 1_000), (100_000, 10_000), (1_000_000, 10_000), (1_000_000, 100_000)]
TOOLS = ("ours", "lme4", "gpboost")
TOOL_NAMES = {"ours": "gmenn_formula", "lme4": "lme4", "gpboost": "GPBoost"}


# ----------------------------------------------------------------------------------------------
# Workers: one fit each, in a fresh process, writing a JSON result.


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _worker_ours(csv: str, formula: str, family: str) -> dict:
    import pandas as pd

    import gmenn_formula as gf

    data = pd.read_csv(csv)
    start, cpu = time.perf_counter(), time.process_time()
    fit = gf.gmenn(formula, data, family=family, verbose=0)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    vc = fit.varcorr()
    variances = {str(row.group): float(row.variance) for row in vc.itertuples() if row.term2 is None or pd.isna(row.term2)}
    fixef = {str(row.term): float(row.estimate) for row in fit.fixef().itertuples()}
    history = fit.history
    estep, setup = float(history["estep_seconds"].sum()), float(history["setup_seconds"].sum())
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "variances": variances,
        "fixef": fixef,
        "peak_mb": _peak_mb(),
        "note": f"{len(history)} epochs, E-step {estep / seconds:.0%} (tracing and compiling {setup:.1f} s)",
        "version": f"gmenn_formula {getattr(gf, '__version__', '?')}",
    }


def _worker_gpboost(csv: str, formula: str, family: str) -> dict:
    import gpboost as gpb
    import pandas as pd

    data = pd.read_csv(csv)
    features = [f"x{j}" for j in range(FEATURES)]
    groups = sorted(c for c in data.columns if c.startswith("g"))
    start, cpu = time.perf_counter(), time.process_time()
    X = np.column_stack([np.ones(len(data))] + [data[c].to_numpy(float) for c in features])
    model = gpb.GPModel(group_data=data[groups], likelihood="gaussian" if family == "gaussian" else "bernoulli_logit")
    model.fit(y=data["y"].to_numpy(float), X=X)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    cov = model.get_cov_pars()
    variances = {("Residual" if name == "Error_var" else str(name)): float(cov[name].iloc[0]) for name in cov.columns}
    coef = np.asarray(model.get_coef()).ravel()
    fixef = dict(zip(["(Intercept)"] + features, map(float, coef)))
    return {"seconds": seconds, "cpu_seconds": cpu, "variances": variances, "fixef": fixef, "peak_mb": _peak_mb(), "note": "",
            "version": f"GPBoost {gpb.__version__}"}


def worker(tool: str, csv: str, formula: str, family: str, out: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    result = (_worker_ours if tool == "ours" else _worker_gpboost)(csv, formula, family)
    Path(out).write_text(json.dumps(result))


# ----------------------------------------------------------------------------------------------
# Running one fit under a time limit and a memory cap.


@dataclass
class Outcome:
    tool: str
    ok: bool
    seconds: float | None = None
    cpu_seconds: float | None = None
    variances: dict = field(default_factory=dict)
    fixef: dict = field(default_factory=dict)
    peak_mb: float | None = None
    note: str = ""
    failure: str = ""
    version: str = ""
    blas: str = ""


def _tree_rss_mb(proc) -> float:
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        members = [parent] + parent.children(recursive=True)
    except psutil.Error:
        return 0.0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def _kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_tool(tool: str, csv: Path, formula: str, family: str, timeout: float, mem_mb: float, workdir: Path) -> Outcome:
    out = workdir / f"{tool}.json"
    out.unlink(missing_ok=True)
    if tool == "lme4":
        if shutil.which("Rscript") is None:
            return Outcome(tool, False, failure="not installed (Rscript missing; `make bench-lme4` installs R and lme4)")
        command = ["Rscript", str(HERE / "lme4_fit.R"), str(csv), formula, family, str(out)]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", tool, str(csv), formula, family, str(out)]
    stderr_path = workdir / f"{tool}.stderr"
    with open(stderr_path, "wb") as stderr:
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        peak, failure = 0.0, ""
        while proc.poll() is None:
            time.sleep(0.25)
            peak = max(peak, _tree_rss_mb(proc))
            elapsed = time.perf_counter() - start
            if peak > mem_mb:
                _kill(proc)
                failure = f"memory cap: resident memory passed {mem_mb / 1024:.0f} GB after {elapsed:.0f} s (killed)"
            elif elapsed > timeout:
                _kill(proc)
                failure = f"timeout: no result after {timeout:.0f} s (killed; {peak / 1024:.1f} GB resident then)"
    if failure:
        return Outcome(tool, False, peak_mb=peak, failure=failure)
    if proc.returncode != 0 or not out.exists():
        lines = [line.strip() for line in stderr_path.read_text(errors="replace").splitlines() if line.strip()]
        elapsed = time.perf_counter() - start
        if proc.returncode < 0:
            reason = {-9: " (likely the kernel's out-of-memory killer)", -11: " (segmentation fault)", -6: " (abort)"}.get(proc.returncode, "")
            said = [line for line in lines if "segfault" in line or "cause" in line or "rror" in line][:2]
            text = f"crashed: signal {-proc.returncode}{reason} after {elapsed:.0f} s" + (f"; {' '.join(said)[:120]}" if said else "")
        else:
            errors = [line for line in lines if "rror" in line or "cannot allocate" in line]
            text = f"error (exit {proc.returncode}, after {elapsed:.0f} s): " + ((errors or lines or ["no output"])[-1])[:160]
        return Outcome(tool, False, peak_mb=peak, failure=text)
    result = json.loads(out.read_text())
    peak_self = result.get("peak_mb") or 0.0
    warnings = result.get("warnings", "")
    note = result.get("note", "") or (f"warning: {warnings[:100]}" if warnings else "")
    return Outcome(tool, True, seconds=result["seconds"], cpu_seconds=result.get("cpu_seconds"), variances=result["variances"], fixef=result["fixef"],
                   peak_mb=max(peak, peak_self), note=note, version=result.get("version", ""), blas=result.get("blas", ""))


# ----------------------------------------------------------------------------------------------
# The table.

HEADER = ("| rows | levels | family | tool | fit s | x ours | CPU s | peak GB | var g0 | var g1 | var g2 | residual "
          "| var MAE | intercept | slope MAE | note |")
RULE = "|" + "---|" * (HEADER.count("|") - 1)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.{digits}f}"


def truth_row(rows: int, levels: int, family: str, beta: np.ndarray) -> str:
    residual = "1.000" if family == "gaussian" else "—"
    v = [f"**{x:.3f}**" for x in VARIANCES]
    return (f"| {rows:,} | 3 x {levels:,} | {family} | *truth* | | | | | {v[0]} | {v[1]} | {v[2]} | {residual} | | "
            f"**{INTERCEPT:.3f}** | | slopes {', '.join(f'{b:.2f}' for b in beta)} |")


def outcome_row(rows: int, levels: int, family: str, o: Outcome, ours_seconds: float | None, beta: np.ndarray) -> str:
    lead = f"| {rows:,} | 3 x {levels:,} | {family} | {TOOL_NAMES[o.tool]} |"
    peak = _fmt(o.peak_mb / 1024, 2) if o.peak_mb else "—"
    if not o.ok:
        return f"{lead} **{o.failure.split(':')[0]}** | | | {peak} | | | | | | | | {o.failure} |"
    est = [o.variances.get(f"g{i}", np.nan) for i in range(3)]
    mae = float(np.mean(np.abs(np.array(est) - np.array(VARIANCES))))
    slopes = np.array([o.fixef.get(f"x{j}", np.nan) for j in range(FEATURES)])
    ratio = _fmt(o.seconds / ours_seconds, 2) if ours_seconds else "—"
    residual = _fmt(o.variances.get("Residual")) if family == "gaussian" else "—"
    return (f"{lead} {o.seconds:.1f} | {ratio} | {_fmt(o.cpu_seconds, 1)} | {peak} | {_fmt(est[0])} | {_fmt(est[1])} | {_fmt(est[2])} | "
            f"{residual} | {_fmt(mae)} | {_fmt(o.fixef.get('(Intercept)'))} | {_fmt(float(np.mean(np.abs(slopes - beta))))} | {o.note} |")


def machine_description(blas: str, versions: list[str], load_start: tuple, load_end: tuple) -> list[str]:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = "?"
    try:
        kb = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
        mem = f"{kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True).stdout.strip()
        if subprocess.run(["git", "status", "--porcelain", "--", "gmenn_formula"], cwd=HERE, capture_output=True, text=True).stdout.strip():
            commit += " + uncommitted changes in gmenn_formula/"
    except OSError:
        commit = "?"
    import torch

    return [
        f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, commit {commit or '?'}",
        f"- machine: {os.cpu_count()} CPU cores ({cpu}), {mem} RAM, {platform.platform()}",
        f"- R's BLAS: {blas or 'unknown (lme4 did not run)'}",
        f"- versions: {'; '.join(sorted(set(v for v in versions if v)))}; torch {torch.__version__} ({torch.get_num_threads()} threads)",
        f"- load average (1 min) at start / end: {load_start[0]:.1f} / {load_end[0]:.1f} "
        "(above the core count means another process competed for the cores and times are inflated)",
    ]


def r_blas() -> str:
    if shutil.which("Rscript") is None:
        return ""
    try:
        return subprocess.run(["Rscript", "-e", "cat(sessionInfo()$BLAS)"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="up to 10^6 rows and 3 x 10^5 levels")
    parser.add_argument("--timeout", type=float, help="seconds per fit (default 300 quick, 600 full)")
    parser.add_argument("--mem-gb", type=float, default=12.0, help="resident memory cap per fit (default 12)")
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--families", default="gaussian,binomial")
    parser.add_argument("--sizes", help="ROWSxLEVELS,... e.g. 10000x1000,100000x1000")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="Markdown results file (default benchmarks/results/glmm_vs_lme4[_full].md)")
    args = parser.parse_args(argv)

    sizes = ([tuple(int(float(p)) for p in s.split("x")) for s in args.sizes.split(",")] if args.sizes
             else FULL_SIZES if args.full else QUICK_SIZES)
    timeout = args.timeout or (600.0 if args.full else 300.0)
    tools = [t for t in args.tools.split(",") if t]
    if "ours" not in tools:
        tools.insert(0, "ours")
    families = args.families.split(",")
    out_path = Path(args.out) if args.out else RESULTS / ("glmm_vs_lme4_full.md" if args.full else "glmm_vs_lme4.md")

    from gmenn_formula.simulation import paper_scenario

    load_start = os.getloadavg()
    lines: list[str] = [HEADER, RULE]
    print(HEADER, RULE, sep="\n", flush=True)
    failed: dict[tuple[str, str], str] = {}
    versions, blas = [], ""
    wall = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="glmm_vs_lme4_") as tmp:
        workdir = Path(tmp)
        for rows, levels in sizes:
            for family in families:
                sim = paper_scenario(rows=rows, features=FEATURES, levels=(levels,) * 3, variances=VARIANCES, family=family,
                               rows_per_level=rows / levels, intercept=INTERCEPT, nonlinear=False, seed=args.seed)
                beta = sim.beta[:, 0]
                csv = workdir / "data.csv"
                sim.data.to_csv(csv, index=False)
                block = [truth_row(rows, levels, family, beta)]
                ours_seconds = None
                for tool in tools:
                    if (tool, family) in failed:
                        outcome = Outcome(tool, False, failure=f"skipped: {failed[(tool, family)]}")
                    else:
                        outcome = run_tool(tool, csv, sim.formula, family, timeout, args.mem_gb * 1024, workdir)
                        if not outcome.ok:
                            failed[(tool, family)] = f"{outcome.failure.split(':')[0]} at {rows:,} rows x {levels:,} levels"
                    if tool == "ours" and outcome.ok:
                        ours_seconds = outcome.seconds
                    versions.append(outcome.version)
                    blas = outcome.blas or blas
                    block.append(outcome_row(rows, levels, family, outcome, ours_seconds, beta))
                    print(block[-1] if len(block) > 2 else "\n".join(block), flush=True)
                lines += block
    load_end = os.getloadavg()
    total = time.perf_counter() - wall

    machine = machine_description(blas or r_blas(), versions, load_start, load_end)
    doc = [
        f"# Plain GLMMs: gmenn_formula vs lme4 vs GPBoost ({'full' if args.full else 'quick'} mode)",
        "",
        f"Written by `python benchmarks/glmm_vs_lme4.py{''.join(' ' + a for a in (sys.argv[1:] if argv is None else argv))}` "
        f"({'`make bench-lme4' + ('-full' if args.full else '') + '`, ' if not args.sizes else ''}{total / 60:.1f} minutes). Model: "
        f"`y ~ x0 + ... + x{FEATURES - 1} + (1 | g0) + (1 | g1) + (1 | g2)`, three crossed factors with the given "
        "number of levels each, rows per level ~ Poisson(rows / levels) + 1, seed "
        f"{args.seed}. Each fit: {timeout:.0f} s limit, {args.mem_gb:.0f} GB resident memory cap. "
        "'fit s' is the fit's own wall clock; 'x ours' its ratio to gmenn_formula's time on the same data; "
        "'CPU s' the CPU time of the fit (all threads; less sensitive than wall time to other processes on the machine); "
        "'peak GB' the process's peak resident memory (interpreter and data included); 'var MAE' the mean "
        "absolute error of the three variance components against the truth; 'slope MAE' that of the five "
        "slopes. lme4: ML (`REML = FALSE`) for gaussian, Laplace for binomial; GPBoost: its default "
        "(Laplace for binomial); gmenn_formula: Monte Carlo EM on the exact likelihood.",
        "",
        *machine,
        "",
        *lines,
        "",
    ]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text("\n".join(doc))
    print("\n" + "\n".join(machine))
    print(f"\nwritten to {out_path} ({total / 60:.1f} minutes)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:7])
    else:
        main()
