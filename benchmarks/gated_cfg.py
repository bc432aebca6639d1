"""Gated CFG against the shipped default on several independent seeds: accuracy and FD / same-N floor of the
class-conditional MNIST model, 1,000 samples per (setting, seed). Seeds 0, 4, 8, 12 share no noise (batch b of seed s
draws from seed s + b, 4 batches of 250). The gate curve is the shipped model's (`gated_cfg_curve`), fitted on seeds
1000+ (`condiff.evaluation.fit_gate_curve`).

    python benchmarks/gated_cfg.py                         # the published run (resumes from the .jsonl file)
    python benchmarks/gated_cfg.py --settings gated --seeds 0 --num-per-class 10 --out-dir /tmp/gated   # smoke
    python benchmarks/gated_cfg.py --model out/other-cfg-folder --out-dir out/gated   # another model (its own curve)
    python benchmarks/gated_cfg.py --settings gated gated-2.25 gated-3 --seeds 0 4 8 12 16 20   # the scale around 2.5

Writes <out-dir>/gated_cfg.{jsonl,md}. The code is `condiff.evaluation.gating`.
"""

import argparse
import sys
from pathlib import Path

import torch

from condiff import ClassConditionalDDPMPipeline, shipped_model_path
from condiff.evaluation import evaluate_pipeline
from condiff.evaluation.gating import measure_on_seeds, seeds_markdown

SETTINGS = {
    "default": ("CFG 3.5 on (0.3, 0.6), 10 steps (shipped before)", {"guidance": "cfg", "guidance_scale": 3.5,
                "guidance_interval": (0.3, 0.6), "num_inference_steps": 10}),
}  # fmt: skip
for _w in (2.5, 2.25, 2.75, 3.0):  # "gated": the shipped default; the others probe its scale
    SETTINGS["gated" if _w == 2.5 else f"gated-{_w:g}"] = (
        f"gated CFG {_w:g} on (0.45, 0.75), k 1, 14 steps",
        {"guidance": "gated_cfg", "guidance_scale": _w, "guidance_interval": (0.45, 0.75), "num_inference_steps": 14},
    )
DEFAULT_SETTINGS = ["default", "gated"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    p.add_argument("--settings", nargs="*", default=DEFAULT_SETTINGS, choices=list(SETTINGS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 4, 8, 12])
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", type=Path, default=None, help="a class-conditional folder (default: the shipped one)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = ClassConditionalDDPMPipeline.from_pretrained(args.model or shipped_model_path())
    pipe.set_progress_bar_config(disable=True)
    if pipe.config.get("gated_cfg_curve") is None:
        print(f"error: {args.model or 'the shipped model'} has no gated_cfg_curve (condiff.evaluation.fit_gate_curve)",
              file=sys.stderr)  # fmt: skip
        return 2
    settings = {SETTINGS[k][0]: SETTINGS[k][1] for k in args.settings}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = measure_on_seeds(pipe, settings, args.seeds, args.out_dir / "gated_cfg.jsonl", evaluate_pipeline,
                            args.num_per_class)  # fmt: skip
    model = f"`{args.model}`" if args.model else "shipped MNIST model"
    header = (f"# Gated CFG vs CFG on the interval, {model}, {10 * args.num_per_class} samples per row "
              "(`python benchmarks/gated_cfg.py`)")  # fmt: skip
    (args.out_dir / "gated_cfg.md").write_text(seeds_markdown(rows, header))
    print((args.out_dir / "gated_cfg.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
