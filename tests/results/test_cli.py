"""The ``gmenn`` command line end to end on CSV files, and its one-line errors."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from results_fixtures import new_rows, tiny_data

import gmenn_formula as gf
from gmenn_formula.cli import main
from gmenn_formula.errors import NewLevelWarning

FORMULA = "y ~ x0 + (1 | g0) + (1 | g1)"


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path, str]:
    """(folder, model path, stdout of ``gmenn fit``) for a binomial GLMM fitted from a CSV."""
    folder = tmp_path_factory.mktemp("cli")
    tiny_data("binomial").to_csv(folder / "train.csv", index=False)
    new_rows(tiny_data("binomial")).drop(columns="y").to_csv(folder / "new.csv", index=False)
    model = folder / "model.gmenn"
    argv = ["fit", FORMULA, str(folder / "train.csv"), "--family", "binomial", "-o", str(model), "--epochs", "3", "--average-epochs", "2", "--seed", "1", "--verbose", "0"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return folder, model, out.getvalue()


def test_fit_prints_summary_and_writes_a_loadable_model(fitted) -> None:
    folder, model, out = fitted
    assert "Family: binomial  ( logit )" in out and f"saved to {model}" in out
    result = gf.load(model)
    assert result.nobs == 300 and result.state.config.runtime.seed == 1 and result.state.config.convergence.average_epochs == 2


def test_summary_prints_the_saved_summary(fitted, capsys) -> None:
    _, model, _ = fitted
    assert main(["summary", str(model)]) == 0
    assert capsys.readouterr().out.strip() == str(gf.load(model).summary())


@pytest.mark.parametrize(
    ("options", "kind", "re_form"),
    [([], "response", None), (["--type", "link"], "link", None), (["--type", "class"], "class", None), (["--population-level"], "response", "~0")],
)
def test_predict_writes_one_row_per_input_row(fitted, capsys, options: list[str], kind: str, re_form: str | None) -> None:
    folder, model, _ = fitted
    output = folder / "predictions.csv"
    assert main(["predict", str(model), str(folder / "new.csv"), "-o", str(output), *options]) == 0
    warned = "warning: Levels unseen in training get no random effect (g0: 5 row(s), g1: 5 row(s))." in capsys.readouterr().err
    assert warned == (re_form is None)  # population-level predictions use no random effect: no warning
    predictions = pd.read_csv(output, index_col="row")
    column = "class" if kind == "class" else "fit"
    assert list(predictions.columns) == [column] and list(predictions.index) == list(range(20))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NewLevelWarning)
        expected = gf.load(model).predict(pd.read_csv(folder / "new.csv"), type=kind, re_form=re_form)
    np.testing.assert_allclose(predictions[column], expected)


def test_predict_writes_every_row_when_a_predictor_is_missing(fitted, capsys) -> None:
    folder, model, _ = fitted
    new = pd.read_csv(folder / "new.csv")
    new.loc[2, "x0"] = None
    new.to_csv(folder / "missing.csv", index=False)
    assert main(["predict", str(model), str(folder / "missing.csv"), "-o", str(folder / "p.csv")]) == 0
    written = pd.read_csv(folder / "p.csv", index_col="row")
    assert list(written.index) == list(range(20)) and written["fit"].isna().tolist() == [row == 2 for row in range(20)]
    assert "warning: 1 of 20 row(s) have missing values in columns 'x0' (1); their predictions are NaN." in capsys.readouterr().err


def test_predict_reads_parquet(fitted, capsys) -> None:
    folder, model, _ = fitted
    pd.read_csv(folder / "new.csv").to_parquet(folder / "new.parquet")
    assert main(["predict", str(model), str(folder / "new.parquet"), "-o", str(folder / "p.csv"), "--population-level"]) == 0
    assert len(pd.read_csv(folder / "p.csv")) == 20 and "20 predictions written" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["fit", "y ~ x0 + + (1 | g0)", "{train}", "-o", "{folder}/m.gmenn"], "error: "),
        (["fit", "y ~ nothere + (1 | g0)", "{train}", "-o", "{folder}/m.gmenn"], "error: Column 'nothere' used in the fixed part is not in the data."),
        (["fit", FORMULA, "{folder}/train.txt", "-o", "{folder}/m.gmenn"], "error: Cannot read"),
        (["fit", FORMULA, "{folder}/absent.csv", "-o", "{folder}/m.gmenn"], "error: No data file at"),
        (["fit", FORMULA, "{folder}/none/*.parquet", "-o", "{folder}/m.gmenn"], "error: No Parquet files found at '{folder}/none/*.parquet'"),
        (["fit", FORMULA, "{empty}", "-o", "{folder}/m.gmenn"], "error: No Parquet files found at '{empty}'"),
        (["summary", "{train}"], "error: {train} is not a readable gmenn model file"),
        (["predict", "{model}", "{folder}/new.csv", "-o", "{folder}/p.csv", "--no-new-levels"], "error: 5 row(s) of the new data have levels of 'g0' unseen"),
    ],
    ids=["syntax", "column", "suffix", "absent-data", "glob-without-files", "folder-without-parquet", "corrupt-model", "new-levels"],
)
def test_mistakes_print_an_error_and_exit_2(fitted, capsys, argv: list[str], message: str) -> None:
    folder, model, _ = fitted
    names = {"folder": folder, "train": folder / "train.csv", "model": model, "empty": folder / "empty"}
    names["empty"].mkdir(exist_ok=True)
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(**names)) and "Traceback" not in err


def test_fit_of_a_parquet_folder_in_one_process_is_the_fit_of_its_rows(fitted, tmp_path: Path, capsys) -> None:
    """One process (no torchrun) reads every file of a folder: the fit of their rows in file order."""
    data = tiny_data("binomial")
    for part in range(3):
        data.iloc[part::3].to_parquet(tmp_path / f"part{part}.parquet")
    options = ["--family", "binomial", "--epochs", "3", "--average-epochs", "2", "--seed", "1", "--verbose", "0"]
    assert main(["fit", FORMULA, str(tmp_path), "-o", str(tmp_path / "m.gmenn"), *options]) == 0
    assert "saved to" in capsys.readouterr().out
    ordered = pd.concat([data.iloc[part::3] for part in range(3)])
    direct = gf.gmenn(FORMULA, ordered, family="binomial", epochs=3, average_epochs=2, seed=1, verbose=0)
    assert gf.load(tmp_path / "m.gmenn").varcorr()["variance"].tolist() == pytest.approx(direct.varcorr()["variance"].tolist(), rel=1e-9)


def test_a_torchrun_environment_that_is_not_one_is_named(fitted, monkeypatch, capsys) -> None:
    folder, _, _ = fitted
    monkeypatch.setenv("WORLD_SIZE", "two")
    assert main(["fit", FORMULA, str(folder / "train.csv"), "-o", str(folder / "m.gmenn")]) == 2
    assert capsys.readouterr().err.startswith("error: RANK and WORLD_SIZE must be integers (got RANK=None, WORLD_SIZE='two')")


def test_module_entry_point_reports_errors_without_traceback(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "gmenn_formula", "summary", str(tmp_path / "none.gmenn")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    assert run.stderr.strip() == f"error: No model file at {tmp_path / 'none.gmenn'}."


@pytest.mark.slow
def test_demo_at_its_default_size(capsys) -> None:
    assert main(["demo", "--verbose", "0"]) == 0
    out = capsys.readouterr().out
    assert "Held-out AUC (macro one-vs-rest" in out and "true probabilities (ceiling)" in out
    assert "Number of obs:" in out
