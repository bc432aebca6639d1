"""Prompt adherence of the shipped text-to-image model across held-out phrasing styles, per guidance setting:
accuracy, Frechet distance and FD / same-N floor for each style (`condiff.evaluation.text_prompts.held_out_styles`),
1,000 samples per cell (100 per digit), seed 0, the model's sampler and steps.

    python benchmarks/text_guidance_styles.py                                  # default, w=3 and w=4 on (0.2, 0.7)
    python benchmarks/text_guidance_styles.py --settings 2:0:1 3.5:0.2:0.7 --num-per-class 10   # smoke run

A setting is W:LO:HI (CFG scale W on the noise interval (LO, HI)), auto:W:LO:HI[:C:CLO:CHI] (autoguidance with
the guide UNet of --guide, w W on (LO, HI), plus CFG C on (CLO, CHI)), or apg:W:LO:HI (diffusers'
`AdaptiveProjectedGuidance`, eta 0, scale W on the model's steps whose t / T lies in (LO, HI)). Writes JSON lines to
benchmarks/results/text_guidance_styles.jsonl (an existing cell is kept, so a run resumes).

    python benchmarks/text_guidance_styles.py --guide out/text-guide --settings auto:2:0:1 auto:2:0:1:3:0.2:0.7
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from condiff.pipelines.guiders import Autoguidance

from condiff import LatentCFGPipeline, shipped_model_path
from condiff.evaluation import evaluate_pipeline
from condiff.evaluation.frontier import step_window
from condiff.evaluation.text_prompts import PromptedPipeline, held_out_styles

KEYS = ("accuracy", "frechet_distance", "floor_matched", "fd_ratio_matched", "nfe_per_image")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["2:0:1", "3:0.2:0.7", "4:0.2:0.7"])
    p.add_argument("--num-per-class", type=int, default=100)
    p.add_argument("--model", type=Path, default=None, help="a text-to-image folder (default: the shipped one)")
    p.add_argument("--guide", type=Path, default=None, help="a text-to-image folder whose UNet guides (auto:...)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent / "results" / "text_guidance_styles.jsonl"
    )
    args = p.parse_args()
    settings = [parse_setting(s, p) for s in args.settings]
    if any(s["method"] == "autoguidance" for s in settings) and args.guide is None:
        p.error("--settings auto:... needs --guide")
    torch.set_num_threads(args.threads)
    pipe = LatentCFGPipeline.from_pretrained(args.model or shipped_model_path("latent"))
    if args.guide is not None:
        from diffusers import UNet2DConditionModel

        pipe.guide_unet = UNet2DConditionModel.from_pretrained(args.guide, subfolder="unet", use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    model = str(args.model or "shipped")
    done = {_key(r) for r in map(json.loads, _lines(args.out))}
    for setting in settings:
        w, (lo, hi) = setting["w"], setting["interval"]
        for style, phrasings in held_out_styles().items():
            row = setting | {"style": style, "num_per_class": args.num_per_class, "model": model}
            if args.guide is not None and setting["method"] == "autoguidance":
                row["guide"] = str(args.guide)
            if _key(row) in done:
                continue
            guidance, given = None, {"guidance_scale": w, "guidance_interval": (lo, hi)}
            if setting["method"] == "autoguidance":
                guidance = Autoguidance((lo, hi), setting["cfg"], tuple(setting["cfg_interval"]))
            if setting["method"] == "apg":  # a diffusers guider brings its own scale and window
                guidance, given = apg_guider(pipe, w, (lo, hi)), {}
            result = evaluate_pipeline(PromptedPipeline(pipe, phrasings), num_per_class=args.num_per_class, seed=0,
                                       guidance=guidance, **given)  # fmt: skip
            row |= {k: result.get(k) for k in KEYS}
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    return 0


def apg_guider(pipe: LatentCFGPipeline, w: float, interval: tuple[float, float]) -> object:
    """diffusers' APG (eta 0) at scale `w` on the window of the model's default steps that matches `interval`."""
    from diffusers.guiders import AdaptiveProjectedGuidance

    pipe.scheduler.set_timesteps(pipe.config.default_num_inference_steps)
    start, stop = step_window(pipe.scheduler.timesteps, pipe.scheduler.config.num_train_timesteps, interval)
    return AdaptiveProjectedGuidance(guidance_scale=w, eta=0.0, start=start, stop=stop)


def parse_setting(text: str, p: argparse.ArgumentParser) -> dict:
    """W:LO:HI (CFG), apg:W:LO:HI or auto:W:LO:HI[:C:CLO:CHI] (autoguidance, optionally CFG C on (CLO, CHI))."""
    auto, apg = text.startswith("auto:"), text.startswith("apg:")
    try:
        values = [float(v) for v in text.removeprefix("auto:").removeprefix("apg:").split(":")]
    except ValueError:
        p.error(f"--settings: {text!r} is not W:LO:HI, apg:W:LO:HI or auto:W:LO:HI[:C:CLO:CHI]")
    if len(values) != 3 and not (auto and len(values) == 6):
        p.error(f"--settings: {text!r} is not W:LO:HI, apg:W:LO:HI or auto:W:LO:HI[:C:CLO:CHI]")
    row = {"w": values[0], "interval": values[1:3]}
    if auto:
        cfg, cfg_interval = (values[3], values[4:6]) if len(values) == 6 else (1.0, [0.0, 1.0])
        return row | {"method": "autoguidance", "cfg": cfg, "cfg_interval": cfg_interval}
    return row | {"method": "apg" if apg else "cfg"}


def _key(row: dict) -> tuple:
    """A cell's identity; rows written before methods and models were recorded are CFG rows of the shipped model."""
    extra = (row.get("cfg"), tuple(row.get("cfg_interval") or ()), row.get("guide"))
    return (row.get("method", "cfg"), row.get("model", "shipped"), row["w"], tuple(row["interval"]), row["style"],
            row["num_per_class"], *extra)  # fmt: skip


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


if __name__ == "__main__":
    sys.exit(main())
