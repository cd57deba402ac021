"""Checks of the files a user names for writing, made before any work (light: no torch)."""

from __future__ import annotations

import os
from pathlib import Path

from gmenn_formula.errors import DataError


def check_output(path: str | os.PathLike) -> None:
    """DataError when ``path`` is a directory, or its folder is missing or not writable."""
    folder = Path(path).resolve().parent
    if Path(path).is_dir():
        raise DataError(f"The output {path} is a directory; give a file name such as {Path(path) / 'out'}.")
    if not folder.is_dir():
        raise DataError(f"The output folder {folder} does not exist; create it or choose another -o path.")
    if not os.access(folder, os.W_OK):
        raise DataError(f"The output folder {folder} is not writable; choose another -o path.")
