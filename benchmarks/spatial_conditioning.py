"""Super-resolution (4x: 7x7 -> 28x28, 2x: 14x14 -> 28x28) and layout maps (single digits; 56x112 canvases never
trained on) of the shipped spatial models on held-out test digits, beside bicubic, the real digits and the
information limit of a 7x7 input (a CNN trained on 7x7 inputs, trained once into --limit-dir, ~3 CPU minutes).

    python benchmarks/spatial_conditioning.py                                    # the published run, 1,000 digits
    python benchmarks/spatial_conditioning.py --num-samples 100 --num-canvases 10 --out-dir /tmp/spatial   # smoke

Writes <out-dir>/spatial_conditioning.{json,md,png}. The code is `condiff.evaluation.spatial_report`.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

from condiff import SemanticLayoutPipeline, SuperResolutionPipeline, shipped_model_path
from condiff.evaluation.spatial_report import spatial_figure, spatial_markdown, spatial_report

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sr-model", default=None, help="a SuperResolutionPipeline folder (default: the shipped one)")
    p.add_argument("--layout-model", default=None, help="a SemanticLayoutPipeline folder (default: the shipped one)")
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--num-canvases", type=int, default=250)
    p.add_argument("--noise-levels", type=int, nargs="+", default=[0], help="super-resolution augmentation levels")
    p.add_argument("--limit-dir", type=Path, default=Path("/tmp/condiff-limit-7x7"))
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sr = SuperResolutionPipeline.from_pretrained(args.sr_model or shipped_model_path("super-resolution"))
    layout = SemanticLayoutPipeline.from_pretrained(args.layout_model or shipped_model_path("layout"))
    try:
        report = spatial_report(
            sr, layout, args.num_samples, args.limit_dir, tuple(args.noise_levels), num_canvases=args.num_canvases
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "spatial_conditioning.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out_dir / "spatial_conditioning.md").write_text(spatial_markdown(report))
    spatial_figure(sr, layout, args.out_dir / "spatial_conditioning.png")
    print(spatial_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
