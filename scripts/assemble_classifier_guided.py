"""Assemble a ClassifierGuidedPipeline folder from a trained diffusion model and a trained noise-aware classifier.

    python scripts/assemble_classifier_guided.py --diffusion_model out/mnist-unconditional \
        --classifier out/mnist-noisy-classifier --output_dir out/mnist-classifier-guided
"""

from condiff.assemble import main

if __name__ == "__main__":
    main()
