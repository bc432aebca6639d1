"""Where classifier guidance's misses come from (issue 22): `condiff evaluate`'s draw of a classifier-guided folder
(`--num-per-class` per class, batches of 250, batch b drawn from seed + b) is generated again, and the evaluator's
misses are split by what the noise-aware classifier that guided them says of the same images at t = 0
(`condiff.evaluation.guidance_misses`): "fooled" (it calls the image the requested digit, the evaluator does not) or
"rejects" (guidance did not steer the image into the classifier's region of the class either). The draw's accuracy
and FD over the same-N floor are reported too (the figures `condiff evaluate --seed` gives).

    python benchmarks/classifier_guidance_misses.py --model FOLDER --seed 0 --grid out/misses.png
    python benchmarks/classifier_guidance_misses.py --num-per-class 2 --num-inference-steps 2   # smoke

Prints one JSON line (and writes it to --out when given); --grid draws the missed samples in a row.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from condiff.evaluation import evaluate_images, generate_samples, guidance_misses
from condiff.loading import load_pipeline


def misses_grid(images: torch.Tensor, indices: list[int], path: Path) -> None:
    """The missed samples (N, 1, H, W in [0, 1]) in one row, each framed in grey, 4x enlarged, as a PNG
    (`diffusers.utils.make_image_grid`)."""
    from diffusers.utils import make_image_grid
    from PIL import Image

    tiles = [np.pad(images[i, 0].numpy(), 2, constant_values=0.5) for i in indices] or [np.full((32, 32), 0.5)]
    pictures = [Image.fromarray((tile * 255).round().astype(np.uint8)) for tile in tiles]
    row = make_image_grid(pictures, rows=1, cols=len(pictures))
    path.parent.mkdir(parents=True, exist_ok=True)
    row.resize((row.width * 4, row.height * 4), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a classifier-guided folder (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--num-inference-steps", type=int, default=None, help="default: the folder's own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON line here")
    p.add_argument("--grid", type=Path, default=None, help="a PNG of the missed samples")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, pipeline="classifier-guided")
    steps = {} if args.num_inference_steps is None else {"num_inference_steps": args.num_inference_steps}
    samples = generate_samples(pipe, args.num_per_class, 250, args.seed, warmup=False, **steps)
    result = guidance_misses(samples.images, samples.labels, pipe.classifier)
    scores = evaluate_images(samples.images, samples.labels)  # the draw's `condiff evaluate` figures
    result |= {"accuracy": scores["accuracy"], "fd_over_floor_same_n": scores["fd_ratio_matched"]}
    result |= {"model": args.model or "shipped", "seed": args.seed, "requested": samples.labels.tolist()}
    line = json.dumps({k: v for k, v in result.items() if k != "requested"})
    print(line)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(line + "\n")
    if args.grid is not None:
        misses_grid(samples.images, result["missed_indices"], args.grid)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
