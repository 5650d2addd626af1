"""``python -m bench.actions``: the actions benchmark (see the package's docstring)."""

from __future__ import annotations

import sys

from bench.actions.cli import main

if __name__ == "__main__":
    sys.exit(main())
