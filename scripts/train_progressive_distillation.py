"""One stage of progressive distillation: a student whose one DDIM step matches two of the teacher's (see `--help`).

accelerate launch scripts/train_progressive_distillation.py --teacher <teacher folder> --student_steps 8 \
    --output_dir out/mnist-pd-8
"""

import sys

from condiff.train import main

if __name__ == "__main__":
    main(["progressive_distillation", *sys.argv[1:]])
