"""The five training targets compared (issue 22): class-conditional models of one architecture and budget trained
to predict epsilon, v, x0, the posterior mean or the score, sampled on the same seeds (accuracy, FD / floor,
unguided and guided) and scored in bits/dim.

    python benchmarks/prediction_targets.py --models out/eps:epsilon out/v:v out/x0:x0 out/mean:mean out/score:score
    python benchmarks/prediction_targets.py --merge a.json b.json   # one table from runs made in parallel

Writes benchmarks/results/prediction_targets.{json,md,png}. The code is `lib/targets_benchmark.py`.
"""

import sys
from pathlib import Path

from lib.targets_benchmark import main

if __name__ == "__main__":
    sys.exit(main(default_out_dir=Path(__file__).resolve().parent / "results"))
