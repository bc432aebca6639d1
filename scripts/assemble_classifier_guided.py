"""Assemble a ClassifierGuidedPipeline folder from a trained diffusion model and a trained noise-aware classifier
(= `condiff assemble-classifier-guided ...`).

    python scripts/assemble_classifier_guided.py --diffusion_model out/mnist-unconditional \
        --classifier out/mnist-noisy-classifier --output_dir out/mnist-classifier-guided
"""

import sys

from condiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["assemble-classifier-guided", *sys.argv[1:]]))
