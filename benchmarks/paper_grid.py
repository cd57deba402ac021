"""The MC-GMENN paper's simulation studies: MC-GMENN against Ignore, one-hot, target encoding, embeddings.

Scenarios (``gmenn_formula.simulation.simulate``, the paper's section 3; 10
features on U(-1, 1), LMMNN's nonlinear fixed part, per-class random
intercepts, unequal cluster sizes, 80/20 train/test split):

* Table 1 (binary, one factor): levels Q in 100 / 1,000 / 10,000 x variance
  0.1 / 1 / 10, 100,000 rows.
* Table 2 (5 classes, 100,000 rows): base (factors of 1,000 / 10 / 1,000
  levels, variances 1e-4 / .5 / .5) and its variations: dominant (first
  factor's variance 5), irrelevant (all three 1e-4), per-class (second
  factor's variances .0001 / .25 / .5 / .75 / .5), high-cardinality (three
  factors of 20,000 levels), ten factors (1,000 levels each, variances .1 ..
  1.0), 100 classes.

Methods: the baselines of ``benchmarks/baselines.py`` and MC-GMENN
(``gf.gmenn(sim.formula, train, family=...)``), all on the paper's MLP with
``gf.FitConfig()``'s default training settings. Beside them, two ceilings on
the same test rows: Bayes-optimal (the true probabilities) and the known-f
ceiling (true f and true variances, each level's effects the MAP given the
training rows; what a perfect network and perfect variances would reach with
this many rows per level).

Metrics per scenario and seed: test AUC (macro one-vs-rest for several
classes), accuracy, training wall time and its ratio to Ignore's in the same
run, and for MC-GMENN the MAE of the variance components against the truth
and the E-step's share of its wall time. Tables show mean (sd) over seeds.

Run: ``make bench`` (quick: reduced sizes, 2 seeds) or ``make bench-full``
(the paper's sizes, 5 seeds; hours). ``python benchmarks/paper_grid.py --help``
for subsets. Writes ``benchmarks/results/paper_grid_{quick,full}.{md,csv,png}``;
the CSV grows after every fit, so a long run that is stopped keeps what it did.
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import baselines

import gmenn_formula as gf
from gmenn_formula.errors import NewLevelWarning
from gmenn_formula.metrics import macro_auc, roc_auc
from gmenn_formula.simulation import Simulated, paper_scenario

RESULTS = Path(__file__).resolve().parent / "results"
TEST_FRACTION = 0.2
METHODS = (*baselines.METHODS, "MC-GMENN")
CEILINGS = ("Known-f ceiling", "Bayes-optimal")
@dataclass(frozen=True)
class Scenario:
    name: str
    table: str
    family: str  # "binomial" or "categorical"
    settings: dict = field(default_factory=dict)  # paper_scenario() keywords besides rows and seed

    def simulate(self, rows: int, seed: int) -> Simulated:
        return paper_scenario(rows=rows, family=self.family, seed=seed, **self.settings)


def _table1(levels: int, variance: float) -> Scenario:
    return Scenario(f"T1 Q={levels:,} var={variance:g}", "1", "binomial", {"levels": (levels,), "variances": (variance,)})


TABLE1 = [_table1(q, v) for q in (100, 1_000, 10_000) for v in (0.1, 1.0, 10.0)]
BASE = {"classes": 5, "levels": (1000, 10, 1000), "variances": (1e-4, 0.5, 0.5)}
TABLE2 = [
    Scenario("Base", "2", "categorical", BASE),
    Scenario("Dominant", "2", "categorical", {**BASE, "variances": (5.0, 0.5, 0.5)}),
    Scenario("Irrelevant", "2", "categorical", {**BASE, "variances": (1e-4, 1e-4, 1e-4)}),
    Scenario("Per-class var", "2", "categorical", {**BASE, "variances": (1e-4, (1e-4, 0.25, 0.5, 0.75, 0.5), 0.5)}),
    Scenario("High-card 3x20k", "2", "categorical", {**BASE, "levels": (20_000,) * 3}),
    Scenario("Ten factors", "2", "categorical", {**BASE, "levels": (1000,) * 10, "variances": tuple(np.round(np.arange(1, 11) / 10, 1))}),
    Scenario("100 classes", "2", "categorical", {**BASE, "classes": 100}),
]
SCENARIOS = {s.name: s for s in TABLE1 + TABLE2}

QUICK = {"rows": 20_000, "seeds": 2, "scenarios": ["Base", "T1 Q=100 var=10", "T1 Q=1,000 var=0.1"]}
FULL = {"rows": 100_000, "seeds": 5, "scenarios": [s.name for s in TABLE2 + TABLE1]}


# -- metrics and ceilings --------------------------------------------------------------------------------------


def auc(y: np.ndarray, P: np.ndarray) -> float:
    return roc_auc(y == 1, P[:, 1]) if P.shape[1] == 2 else macro_auc(y, P)


def accuracy(y: np.ndarray, P: np.ndarray) -> float:
    return float(np.mean(P.argmax(1) == y))


def _as_two_columns(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1) if p.ndim == 1 else p


def known_f_ceiling(sim: Simulated, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Test probabilities from the true f, the true variances and MAP effects given the training rows.

    The MAP is the minimum of NLL(y_train | f + sum_l b_l) + sum_l |b_l / sd_l|^2 / 2, a convex problem,
    solved in whitened coordinates (b = sd * z) by L-BFGS over all factors jointly. Levels without
    training rows keep their prior mode, 0."""
    f = torch.as_tensor(sim.fixed_eta, dtype=torch.float64)
    codes = [torch.as_tensor(sim.data[f"g{l}"].str.slice(len(f"g{l}_")).astype(int).to_numpy().copy()) for l in range(len(sim.effects))]
    sds = [torch.as_tensor(np.sqrt(v), dtype=torch.float64) for v in sim.variances]
    z = [torch.zeros(b.shape, dtype=torch.float64, requires_grad=True) for b in sim.effects]
    y = torch.as_tensor(sim.data["y"].to_numpy().copy())
    train_t, test_t = torch.as_tensor(train), torch.as_tensor(test)

    def eta(rows: torch.Tensor) -> torch.Tensor:
        return f[rows] + sum(sd * zl[c[rows]] for sd, zl, c in zip(sds, z, codes))

    def nll(e: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if e.shape[1] == 1:
            return torch.nn.functional.binary_cross_entropy_with_logits(e[:, 0], target.double(), reduction="sum")
        return torch.nn.functional.cross_entropy(e, target, reduction="sum")

    optimizer = torch.optim.LBFGS(z, lr=1.0, max_iter=200, tolerance_grad=1e-6, tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(eta(train_t), y[train_t]) + 0.5 * sum((zl**2).sum() for zl in z)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        e = eta(test_t)
        P = torch.sigmoid(e[:, 0]).numpy() if e.shape[1] == 1 else torch.softmax(e, dim=1).numpy()
    return _as_two_columns(P)


# -- MC-GMENN --------------------------------------------------------------------------------------------------


def fit_mcgmenn(sim: Simulated, family: str, train_data: pd.DataFrame, test_data: pd.DataFrame, seed: int, control: dict) -> dict:
    started = time.perf_counter()
    result = gf.gmenn(sim.formula, train_data, family=family, seed=seed, verbose=0, **control)
    seconds = time.perf_counter() - started
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        predicted = result.predict(test_data, type="response")
    if family == "categorical":
        P = predicted.reindex(columns=range(sim.variances.shape[1]), fill_value=0.0).to_numpy()
    else:
        P = _as_two_columns(np.asarray(predicted))
    vc = result.varcorr()
    vc = vc[vc["term2"].isna() & (vc["group"] != "Residual")]
    estimated = np.zeros_like(sim.variances)
    for l in range(sim.variances.shape[0]):
        rows = vc[vc["group"] == f"g{l}"]
        if "class" in rows and family == "categorical":
            estimated[l] = rows.set_index("class")["variance"].reindex(range(sim.variances.shape[1])).to_numpy()
        else:
            estimated[l] = rows["variance"].to_numpy()
    history = result.history
    train_phase = history[history["phase"] == "train"]
    return {
        "probabilities": P,
        "seconds": seconds,
        "epochs": len(train_phase),
        "best_epoch": int(result.state.best_epoch) if hasattr(result.state, "best_epoch") else np.nan,
        "final_epochs": int(len(history) - len(train_phase)),
        "var_mae": float(np.mean(np.abs(estimated - sim.variances))),
        # against the realised mean square of the drawn effects: the estimator's error without the draw's luck
        "var_mae_realised": float(np.mean(np.abs(estimated - np.stack([(b**2).mean(0) for b in sim.effects])))),
        "estep_share": float(history["estep_seconds"].sum() / seconds),
        "train_phase_seconds": float(train_phase["seconds"].sum()),
        "estimated_variances": np.array2string(estimated, precision=3, separator=",").replace("\n", ""),
    }


# -- one scenario and seed -------------------------------------------------------------------------------------


def run_one(scenario: Scenario, rows: int, seed: int, methods: tuple[str, ...], log, control: dict) -> list[dict]:
    """All methods on one scenario and seed. ``control``: settings passed to ``gf.gmenn`` besides seed and
    verbose=0 (empty by default, i.e. ``gf.FitConfig()``'s defaults: the same Adam rate, batch size, validation
    split, patience and epoch cap as the baselines)."""
    sim = scenario.simulate(rows, seed)
    order = np.random.default_rng(seed + 10_000).permutation(rows)
    num_test = round(TEST_FRACTION * rows)
    test, train = np.sort(order[:num_test]), np.sort(order[num_test:])
    train_data, test_data = sim.data.iloc[train], sim.data.iloc[test]
    classes = 2 if scenario.family == "binomial" else sim.variances.shape[1]
    features = [c for c in sim.data.columns if c.startswith("x")]
    factors = [c for c in sim.data.columns if c.startswith("g")]
    split = baselines.make_split(train_data, test_data, features, factors, "y", classes)
    y_test = split.test.y
    config = gf.FitConfig().training
    base = {"scenario": scenario.name, "table": scenario.table, "rows": rows, "seed": seed}
    records = []

    def add(method: str, P: np.ndarray, **extra) -> None:
        record = {**base, "method": method, "auc": auc(y_test, P), "accuracy": accuracy(y_test, P), **extra}
        records.append(record)
        timing = f" {extra['seconds']:.1f} s" if "seconds" in extra else ""
        log(f"  {scenario.name} seed {seed} {method:<16} AUC {record['auc']:.4f} acc {record['accuracy']:.4f}{timing}")

    add("Bayes-optimal", _as_two_columns(sim.probabilities[test][:, 0]) if classes == 2 else sim.probabilities[test])
    t0 = time.perf_counter()
    add("Known-f ceiling", known_f_ceiling(sim, train, test))
    log(f"    (known-f MAP in {time.perf_counter() - t0:.1f} s)")
    for method in methods:
        if method == "MC-GMENN":
            out = fit_mcgmenn(sim, scenario.family, train_data, test_data, seed, control)
        else:
            out = baselines.fit_baseline(method, split, config, seed)
        P = out.pop("probabilities")
        add(method, P, **out)
    return records


def add_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """time_ratio (and MC-GMENN's train_phase_ratio): seconds over Ignore's for the same scenario and seed."""
    ignore = frame[frame["method"] == "Ignore"].set_index(["scenario", "seed"])["seconds"]
    keys = pd.MultiIndex.from_frame(frame[["scenario", "seed"]])
    reference = ignore.reindex(keys).to_numpy()
    frame = frame.copy()
    frame["time_ratio"] = frame["seconds"] / reference
    frame["train_phase_ratio"] = frame.get("train_phase_seconds", np.nan) / reference
    return frame


# -- reporting -------------------------------------------------------------------------------------------------


def _mean_sd(values: pd.Series, digits: int) -> str:
    values = values.dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.mean():.{digits}f}"
    return f"{values.mean():.{digits}f} ({values.std(ddof=1):.{digits}f})"


def pivot(frame: pd.DataFrame, column: str, methods: list[str], digits: int) -> str:
    scenarios = list(dict.fromkeys(frame["scenario"]))
    lines = ["| scenario | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for scenario in scenarios:
        part = frame[frame["scenario"] == scenario]
        means = {m: part.loc[part["method"] == m, column].mean() for m in methods if m not in CEILINGS}
        best = max(means, key=lambda m: means[m]) if column in ("auc", "accuracy") and means else None
        cells = []
        for m in methods:
            cell = _mean_sd(part.loc[part["method"] == m, column], digits)
            cells.append(f"**{cell}**" if m == best else cell)
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MCGMENN_COLUMNS = [
    ("variance MAE", "var_mae", 3),
    ("MAE vs realised", "var_mae_realised", 3),
    ("E-step share", "estep_share", 2),
    ("fit s", "seconds", 0),
    ("time / Ignore", "time_ratio", 2),
    ("train-phase s", "train_phase_seconds", 0),
    ("train phase / Ignore", "train_phase_ratio", 2),
    ("train epochs", "epochs", 0),
    ("best epoch", "best_epoch", 0),
    ("final-phase epochs", "final_epochs", 0),
]


def mcgmenn_table(frame: pd.DataFrame) -> str:
    part = frame[frame["method"] == "MC-GMENN"]
    lines = ["| scenario | " + " | ".join(title for title, _, _ in MCGMENN_COLUMNS) + " |", "|---|" + "---|" * len(MCGMENN_COLUMNS)]
    for scenario, rows in part.groupby("scenario", sort=False):
        cells = [_mean_sd(rows[column], digits) if column in rows else "-" for _, column, digits in MCGMENN_COLUMNS]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def source_commit() -> str:
    """The commit of the gmenn_formula that is imported (BENCH_SOURCE_COMMIT overrides, e.g. for an exported tree)."""
    if os.environ.get("BENCH_SOURCE_COMMIT"):
        return os.environ["BENCH_SOURCE_COMMIT"]
    root = Path(gf.__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "gmenn_formula"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (commit or "unknown") + (" with uncommitted changes in gmenn_formula/" if dirty else "")


def machine(commit: str) -> str:
    mem = next((line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), "0")
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()
    )
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {int(mem) / 2**20:.1f} GiB RAM, {torch.get_num_threads()} torch threads, "
        f"Python {platform.python_version()}, torch {torch.__version__}, gmenn_formula at git {commit}"
    )


def plot(frame: pd.DataFrame, path: Path, title: str) -> None:
    """Left: AUC by scenario and method (mean, sd bars) with the two ceilings; right: time / Ignore."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    scenarios = list(dict.fromkeys(frame["scenario"]))
    x = np.arange(len(scenarios))
    fig, (ax_auc, ax_time) = plt.subplots(1, 2, figsize=(max(10, 2.0 * len(scenarios) + 5), 5.2), gridspec_kw={"width_ratios": [2, 1]})

    def bars(ax, data: pd.DataFrame, column: str, series: list[tuple[str, str, dict]]) -> None:
        width = 0.8 / len(series)
        for i, (method, label, style) in enumerate(series):
            rows = data[data["method"] == method]
            if rows.empty or column not in rows:
                continue
            stats = rows.groupby("scenario")[column].agg(["mean", "std"]).reindex(scenarios)
            ax.bar(x + (i - (len(series) - 1) / 2) * width, stats["mean"], width, yerr=stats["std"].fillna(0), label=label, capsize=2, **style)

    bars(ax_auc, frame, "auc", [(m, m, {"color": f"C{i}"}) for i, m in enumerate(METHODS)])
    for marker, ceiling in zip(("_", "x"), CEILINGS):
        stats = frame[frame["method"] == ceiling].groupby("scenario")["auc"].mean().reindex(scenarios)
        ax_auc.scatter(x, stats, marker=marker, s=1200 if marker == "_" else 60, color="black", zorder=3, label=ceiling)
    ax_auc.set_ylim(max(0.0, frame["auc"].min() - 0.03), min(1.0, frame["auc"].max() + 0.02))
    ax_auc.set_xticks(x, scenarios, rotation=20, ha="right")
    ax_auc.set_ylabel("test AUC (macro one-vs-rest)")
    ax_auc.set_title(f"{title}: test AUC, mean and sd over seeds")
    ax_auc.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.22))

    # MC-GMENN twice: the whole fit, and its training phase alone (what the paper's ratio measures).
    train_phase = frame[frame["method"] == "MC-GMENN"].assign(method="MC-GMENN train phase", time_ratio=lambda d: d["train_phase_ratio"])
    timed = [(m, m, {"color": f"C{i + 1}"}) for i, m in enumerate(METHODS[1:])]
    timed.append(("MC-GMENN train phase", "MC-GMENN, train phase only", {"color": f"C{len(METHODS) - 1}", "hatch": "//", "alpha": 0.5}))
    bars(ax_time, pd.concat([frame, train_phase]), "time_ratio", timed)
    ax_time.axhline(1.0, color="black", lw=0.8)
    ax_time.set_yscale("log")
    ax_time.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax_time.yaxis.set_major_formatter(ScalarFormatter())
    ax_time.yaxis.set_minor_formatter(NullFormatter())
    ax_time.set_xticks(x, scenarios, rotation=20, ha="right")
    ax_time.set_ylabel("wall time / Ignore's (same run)")
    ax_time.set_title("training time relative to Ignore")
    ax_time.legend(fontsize=8, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.22))
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def report(frame: pd.DataFrame, header: str) -> str:
    columns = [*METHODS, *CEILINGS]
    return "\n\n".join(
        [
            header,
            "Test AUC, mean (sd) over seeds; best method in bold:\n\n" + pivot(frame, "auc", columns, 3),
            "Test accuracy:\n\n" + pivot(frame, "accuracy", columns, 3),
            "Training wall time relative to Ignore's in the same run:\n\n" + pivot(frame, "time_ratio", list(METHODS), 2),
            "MC-GMENN details. Variance MAE: mean absolute error of all variance components (factor x class) against the "
            "simulation's variances; 'vs realised' against the mean square of the effects actually drawn. E-step share: the "
            "sampler's seconds over the fit's wall time (while the network trains the sampler runs beside the M-step, so "
            "this overstates what it adds). Train phase: the epochs until early stopping (the part the paper times); final phase: "
            "variance components on all rows with the network frozen. Estimated variances per seed are in the CSV.\n\n" + mcgmenn_table(frame),
        ]
    )


def _setting(text: str) -> tuple[str, object]:
    """``"max_average_epochs=40"`` -> ("max_average_epochs", 40); values are Python literals, else strings."""
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the paper's sizes: 100,000 rows, 5 seeds, all scenarios")
    parser.add_argument("--rows", type=int, help="rows per data set (before the 80/20 split)")
    parser.add_argument("--seeds", type=int, help="seeds 0..SEEDS-1")
    parser.add_argument("--scenarios", nargs="+", help=f"scenario names, of: {', '.join(SCENARIOS)}")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), help="methods to run (default all)")
    parser.add_argument("--name", help="results file stem (default paper_grid_quick / paper_grid_full)")
    parser.add_argument("--control", nargs="+", default=[], metavar="KEY=VALUE",
                        help="MC-GMENN settings (FitConfig fields) instead of the defaults, e.g. max_average_epochs=40")
    parser.add_argument("--from-csv", type=Path, help="only rebuild the tables and the plot from a results CSV (e.g. of a stopped run)")
    args = parser.parse_args(argv)
    if args.from_csv:
        frame = add_ratios(pd.read_csv(args.from_csv))
        stem = args.from_csv.with_suffix("")
        text = report(frame, f"# Paper grid, rebuilt from {args.from_csv.name} ({frame['seed'].nunique()} seed(s), {frame['rows'].iloc[0]:,} rows)")
        print(text)
        stem.with_suffix(".md").write_text(text + "\n")
        plot(frame, stem.with_suffix(".png"), f"{frame['rows'].iloc[0]:,} rows")
        return
    control = dict(_setting(text) for text in args.control)
    preset = FULL if args.full else QUICK
    rows, seeds = args.rows or preset["rows"], args.seeds or preset["seeds"]
    names = args.scenarios or preset["scenarios"]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {list(SCENARIOS)}")
    stem = args.name or ("paper_grid_full" if args.full else "paper_grid_quick")
    RESULTS.mkdir(exist_ok=True)
    csv_path = RESULTS / f"{stem}.csv"
    csv_path.unlink(missing_ok=True)
    started, started_at = time.perf_counter(), datetime.datetime.now().astimezone()
    load, commit = os.getloadavg()[0], source_commit()
    print(f"Paper grid: {len(names)} scenario(s) x {seeds} seed(s), {rows:,} rows; {machine(commit)}; load average {load:.2f}", flush=True)
    records: list[dict] = []
    for name in names:
        for seed in range(seeds):
            records += run_one(SCENARIOS[name], rows, seed, tuple(args.methods), lambda text: print(text, flush=True), control)
            pd.DataFrame(records).to_csv(csv_path, index=False)
    frame = add_ratios(pd.DataFrame(records))
    minutes = (time.perf_counter() - started) / 60
    header = (
        f"# Paper grid ({'full' if args.full else 'quick'}): {rows:,} rows per data set, 80/20 split, seeds 0..{seeds - 1}\n\n"
        f"Run {started_at:%Y-%m-%d %H:%M %Z}, {minutes:.1f} minutes in all; {machine(commit)}; load average at start {load:.2f}, at end {os.getloadavg()[0]:.2f}.\n"
        f"Command: `{' '.join(['python benchmarks/paper_grid.py', *(sys.argv[1:] if argv is None else argv)])}`. "
        f"Training settings of every method: gf.FitConfig() defaults (Adam lr {gf.FitConfig().training.learning_rate:g}, batch "
        f"{gf.FitConfig().training.batch_size}, validation {gf.FitConfig().training.validation_fraction:g}, patience {gf.FitConfig().training.patience}, "
        f"at most {gf.FitConfig().training.max_epochs(True)} epochs, best weights restored); MC-GMENN control: {control or 'defaults'}."
    )
    text = report(frame, header)
    print("\n" + text)
    (RESULTS / f"{stem}.md").write_text(text + "\n")
    plot(frame, RESULTS / f"{stem}.png", f"{'Full' if args.full else 'Quick'} grid, {rows:,} rows")
    print(f"\nWrote {RESULTS / stem}.md, .csv, .png")


if __name__ == "__main__":
    main()
