"""Puts tests/ on sys.path, so any test module can import the shared helpers: ``from support.quadrature import ...``."""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = str(Path(__file__).resolve().parent)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)
