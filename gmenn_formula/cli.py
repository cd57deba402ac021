"""The ``gmenn`` command line: fit, summary, predict, demo.

    gmenn fit "y ~ nn(x1 + x2) + (1 | g)" data.csv --family binomial -o model.gmenn
    torchrun --nproc-per-node 2 -m gmenn_formula fit "y ~ nn(x1 + x2) + (1 | g)" 'data/*.parquet' -o model.gmenn
    gmenn summary model.gmenn
    gmenn predict model.gmenn new.csv -o predictions.csv --type response
    gmenn demo --rows 20000

Mistakes (a bad formula, a missing column, a corrupt model file, an output folder
that does not exist) print one ``error: ...`` message and exit with status 2, and
are caught before any fitting starts where they can be; the library's warnings
(dropped rows, new levels, extreme scales) print as ``warning: ...``. ``predict``
writes one row per input row (empty where a predictor is missing). The parser is built from
light modules only, so ``--help`` and argument errors do not wait for torch,
PyMC or JAX to load. Ctrl-C during ``gmenn fit`` saves the fit so far (flagged
interrupted) and exits with status 130, as does a Ctrl-C with nothing to save.

``gmenn fit`` on a directory or glob pattern of Parquet files, or in a torchrun job, is a
data-parallel fit (:func:`gmenn_formula.distributed.fit.fit_shards`): each process reads its
share of the files, rank 0 prints the summary and writes the model.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from gmenn_formula.errors import DataError, EStepTimeoutError, GmennError, MissingValueWarning, NewLevelWarning, ScaleWarning
from gmenn_formula.families import FAMILIES
from gmenn_formula.paths import check_output
from gmenn_formula.results import PREDICT_TYPES
from gmenn_formula.training.config import FitConfig

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DEMO_ROWS = 20_000
DEMO_TEST_FRACTION = 0.2
READERS = (".csv", ".parquet")


def _read_data(path: str):
    """A CSV or parquet file as a DataFrame; DataError when it cannot be read."""
    import pandas as pd

    suffix = Path(path).suffix.lower()
    if suffix not in READERS:
        raise DataError(f"Cannot read {path}: the data must be a .csv or .parquet file.")
    try:
        return pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
    except ImportError as exc:
        raise DataError(f"Reading {path} needs a parquet engine: pip install pyarrow ({exc}).") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read {path}: {exc}") from exc


def _check_input(path: str) -> None:
    """Refuse an input file that is missing or of an unknown kind, before any work."""
    if Path(path).suffix.lower() not in READERS:
        raise DataError(f"Cannot read {path}: the data must be a .csv or .parquet file.")
    if not Path(path).is_file():
        raise DataError(f"No data file at {path}.")


def _control(args: argparse.Namespace) -> dict:
    """The fit settings given on the command line (FitConfig's flat names)."""
    control = {name: getattr(args, name) for name in _settings() if getattr(args, name, None) is not None}
    return {**control, "verbose": args.verbose}


def _settings() -> dict[str, object]:
    """Every fit setting but ``verbose`` (an option of its own) -> its rule."""
    groups = (FitConfig.__dataclass_fields__[name].default for name in ("training", "estep", "convergence", "runtime"))
    return {f.name: f.metadata["rule"] for group in groups for f in fields(group) if f.name != "verbose"}


def _sharded(data: str) -> bool:
    """Whether ``data`` names Parquet shards (a directory or a glob pattern), or this process is one of a torchrun job's."""
    from gmenn_formula.distributed.group import ProcessGroup

    return Path(data).is_dir() or any(mark in data for mark in "*?[") or ProcessGroup.from_environment().size > 1


def _fit_shards(args: argparse.Namespace, control: dict) -> int:
    """The data-parallel fit of ``args.data``'s Parquet files; rank 0 prints and saves."""
    from gmenn_formula.distributed.fit import fit_shards
    from gmenn_formula.distributed.group import ProcessGroup, stop

    leader = ProcessGroup.from_environment().leader
    if not leader:  # every process would print the same warnings
        warnings.simplefilter("ignore")
    result = fit_shards(args.formula, args.data, family=args.family, output=args.output, **{**control, "verbose": control["verbose"] * leader})
    if leader:
        print(result.summary())
        print(f"\nsaved to {args.output}")
    stop()
    return 0


def _fit(args: argparse.Namespace) -> int:
    import gmenn_formula as gf

    control = _control(args)
    FitConfig.from_control(**control)
    gf.parse(args.formula)
    check_output(args.output)
    if _sharded(args.data):
        return _fit_shards(args, control)
    _check_input(args.data)
    try:
        result = gf.gmenn(args.formula, _read_data(args.data), family=args.family, **control)
    except EStepTimeoutError as error:
        if error.result is not None:
            print(f"the fit so far saved to {error.result.save(args.output)}", file=sys.stderr)
        raise
    print(result.summary())
    print(f"\nsaved to {result.save(args.output)}" + (" (interrupted: the fit so far)" if result.interrupted else ""))
    return EXIT_INTERRUPTED if result.interrupted else 0


def _summary(args: argparse.Namespace) -> None:
    import gmenn_formula as gf

    print(gf.load(args.model).summary())


def _predict(args: argparse.Namespace) -> None:
    import pandas as pd

    import gmenn_formula as gf

    _check_input(args.data)
    check_output(args.output)
    result = gf.load(args.model)
    data = _read_data(args.data)
    re_form = "~0" if args.population_level else None
    predictions = result.predict(data, type=args.type, re_form=re_form, allow_new_levels=not args.no_new_levels)
    if not isinstance(predictions, pd.DataFrame):  # one prediction per input row, NaN where a predictor is missing
        predictions = pd.DataFrame({"class" if args.type == "class" else "fit": predictions}, index=data.index)
    predictions.to_csv(args.output, index_label="row")
    print(f"{len(predictions)} predictions written to {args.output}")


def _demo(args: argparse.Namespace) -> None:
    """Fit the paper's base multi-class scenario on simulated data; held-out AUC against the ceiling."""
    import numpy as np

    import gmenn_formula as gf
    from gmenn_formula.metrics import macro_auc
    from gmenn_formula.simulation import paper_scenario

    sim = paper_scenario(rows=args.rows, seed=args.seed)
    test = np.random.default_rng(args.seed).random(args.rows) < DEMO_TEST_FRACTION
    train_data, test_data = sim.data[~test], sim.data[test]
    print(
        f"Simulated the paper's base scenario: {args.rows} rows, 5 classes, 10 features, factors of 1000, 10 and "
        f"1000 levels with variances 1e-4, .5, .5; fitting on {len(train_data)} rows, testing on {len(test_data)}.\n"
        f"Formula: {sim.formula}\n"
    )
    started = time.perf_counter()
    result = gf.gmenn(sim.formula, train_data, family="categorical", seed=args.seed, verbose=args.verbose)
    seconds = time.perf_counter() - started
    print(result.summary())
    y = test_data["y"].to_numpy()
    with_effects = result.predict(test_data).to_numpy()
    population = result.predict(test_data, re_form="~0").to_numpy()
    rows = [
        ("gmenn fit (network + random effects)", macro_auc(y, with_effects)),
        ("network alone (re_form='~0')", macro_auc(y, population)),
        ("true probabilities (ceiling)", macro_auc(y, sim.probabilities[test])),
    ]
    print(f"\nHeld-out AUC (macro one-vs-rest, {len(test_data)} rows); fit took {seconds:.0f} s:")
    for label, auc in rows:
        print(f"  {label:<38} {auc:.3f}")


def _add_settings(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per fit setting (``--no-option`` for a switch), help from FitConfig."""
    descriptions = FitConfig.describe()
    for name, rule in _settings().items():
        option = f"--{name.replace('_', '-')}"
        if rule.kind is bool:
            parser.add_argument(option, dest=name, action=argparse.BooleanOptionalAction, default=None, help=descriptions[name])
        else:
            parser.add_argument(option, dest=name, type=rule.kind, choices=rule.choices or None, help=descriptions[name])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gmenn", description="Mixed effects neural networks with lme4 formulas, fitted by Monte Carlo EM."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = commands.add_parser("fit", help="fit a model to a CSV/parquet file and save it")
    fit.add_argument("formula", help='lme4-style formula, e.g. "y ~ nn(x1 + x2) + (1 | g)"')
    fit.add_argument("data", help="training data (.csv or .parquet), or Parquet shards (a directory or a quoted glob pattern) for a data-parallel fit")
    fit.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.gmenn)")
    fit.add_argument("--family", choices=FAMILIES, help="response family (default: gaussian, binomial for cbind())")
    _add_settings(fit)
    fit.add_argument("--verbose", type=int, default=1, help="1: progress bar (default), 0: silent")
    fit.set_defaults(run=_fit)

    summary = commands.add_parser("summary", help="print the summary of a saved model")
    summary.add_argument("model", help="model file written by gmenn fit")
    summary.set_defaults(run=_summary)

    predict = commands.add_parser("predict", help="predict new data with a saved model")
    predict.add_argument("model", help="model file written by gmenn fit")
    predict.add_argument("data", help="new data (.csv or .parquet)")
    predict.add_argument("-o", "--output", required=True, help="CSV file to write, one row per predicted row")
    predict.add_argument("--type", choices=PREDICT_TYPES, default="response", help="prediction scale (default: response)")
    predict.add_argument("--population-level", action="store_true", help="leave out the random effects (lme4's re.form = ~0)")
    predict.add_argument(
        "--no-new-levels", action="store_true", help="fail on grouping levels unseen in training instead of predicting them with effect 0"
    )
    predict.set_defaults(run=_predict)

    demo = commands.add_parser("demo", help="fit the paper's base multi-class scenario on simulated data")
    held_out = f"{DEMO_TEST_FRACTION:.0%} are held out"
    demo.add_argument("--rows", type=int, default=DEMO_ROWS, help=f"simulated rows (default {DEMO_ROWS:,}); {held_out}")
    demo.add_argument("--seed", type=int, default=0, help="seed of the simulation and the fit")
    demo.add_argument("--verbose", type=int, default=1, help="1: progress bar (default), 0: silent")
    demo.set_defaults(run=_demo)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``gmenn`` command; returns the exit status (0, 2 after an error, 130 after Ctrl-C)."""
    args = _parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for category in (MissingValueWarning, NewLevelWarning, ScaleWarning):
            warnings.simplefilter("always", category)
        warnings.showwarning = _show_warning
        try:
            return args.run(args) or 0
        except GmennError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_ERROR
        except KeyboardInterrupt:
            print("interrupted; nothing was saved", file=sys.stderr)
            return EXIT_INTERRUPTED
