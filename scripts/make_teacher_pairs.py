"""The teacher ODE pairs of `train_distribution_matching.py --regression_pairs` (see `--help`).

python scripts/make_teacher_pairs.py --teacher src/condiff/assets/mnist-cfg --output pairs_5000.safetensors
"""

import sys

from condiff.teacher_pairs import main

if __name__ == "__main__":
    main(sys.argv[1:])
    sys.exit(0)
