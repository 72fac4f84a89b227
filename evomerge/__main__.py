"""`python -m evomerge`: the same command line as `evomerge`."""

from __future__ import annotations

import sys

from evomerge.cli import main

if __name__ == "__main__":
    sys.exit(main())
