"""`python -m condiff ...` is the `condiff` command (generate, evaluate, sweep, train)."""

import sys

from condiff.cli import main

sys.exit(main())
