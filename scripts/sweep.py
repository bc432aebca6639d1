"""Guidance sweep on any saved pipeline (the same as `condiff sweep`):

    python scripts/sweep.py --model out/mnist-cfg [--quick] [--out-dir benchmarks/results]

All options: `python scripts/sweep.py --help`. The code lives in `condiff.evaluation.sweep`.
"""

import sys

from condiff.evaluation.sweep import main

if __name__ == "__main__":
    sys.exit(main())
