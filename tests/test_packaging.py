"""The grammar ships inside the wheel and is found from an installed wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_grammar_and_parses(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("gmenn_formula-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert "gmenn_formula/grammar/gmenn.lark" in archive.namelist()
        archive.extractall(tmp_path / "site")
    code = (
        "import gmenn_formula.formula.grammar_file as g, gmenn_formula as gf;"
        "print(gf.parse('y ~ nn(x1 + x2, hidden=[4]) + (1 | a/b)'));"
        "print(g.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "y ~ 1 + nn(x1 + x2, hidden=[4]) + (1 | a) + (1 | a:b)"
    assert str(tmp_path / "site") in lines[1]
