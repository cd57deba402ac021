"""``python -m gmenn_formula``: the ``gmenn`` command line."""

import sys

from gmenn_formula.cli import main

sys.exit(main())
