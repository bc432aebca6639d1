"""The text-to-image report (what `benchmarks/latent_cfg.py` and `condiff evaluate --pipeline latent --attributes N`
run): prompt adherence over a guidance sweep, attribute control (thick vs thin, left vs right slant, negative
prompts) and speed against the pixel-space CFG pipeline. The measurements are in `text_prompts`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["ATTRIBUTES", "attribute_section", "attribute_markdown", "speed_section", "run_benchmark"]

ATTRIBUTES = (("thickness", "thin", "thick"), ("slant", "left-slanted", "right-slanted"))


def attribute_section(pipe: Any, per_digit: int, scale: float, call: dict[str, Any]) -> dict[str, Any]:
    """Attribute control and negative-prompt shifts at guidance scale `scale`, `per_digit` images per digit and
    word; `call` holds further pipeline / sampling arguments (num_inference_steps, batch_size, seed)."""
    from condiff.evaluation.text_prompts import attribute_control, negative_prompt_shift, real_attribute_stats

    stats = real_attribute_stats()
    call = {"guidance_scale": scale, **call}
    control = [attribute_control(pipe, a, lo, hi, per_digit, stats, **call) for a, lo, hi in ATTRIBUTES]
    negative = [negative_prompt_shift(pipe, a, lo, hi, per_digit, **call) for a, lo, hi in ATTRIBUTES]
    return {"real": stats, "guidance_scale": scale, "control": control, "negative": negative}


def attribute_markdown(section: dict[str, Any]) -> str:
    """The attribute section as Markdown tables."""
    lines = [f"## Attribute control (guidance scale {section['guidance_scale']:g})", ""]
    for c in section["control"]:
        lines += [
            f"**{c['attribute']}**: '{c['high']}' minus '{c['low']}' prompts, {c['images_per_value']} images per word, "
            f"in SDs of the real data ({c['real_sd']:.2f}); accuracy {c['accuracy'][c['low']]:.3f} / "
            f"{c['accuracy'][c['high']]:.3f}; smallest gap over digits **{c['min_gap_sd']:.2f} SD**.",
            "",
            "| digit | " + " | ".join(str(d) for d in range(10)) + " |",
            "|---|" + "---:|" * 10,
            f"| mean, {c['low']} | " + " | ".join(f"{v:.2f}" for v in c["mean_low"]) + " |",
            f"| mean, {c['high']} | " + " | ".join(f"{v:.2f}" for v in c["mean_high"]) + " |",
            "| gap (SD) | " + " | ".join(f"{v:.2f}" for v in c["gap_sd"]) + " |",
            "",
        ]
    lines += ["Negative prompts (neutral held-out prompts; mean of the attribute, accuracy):", ""]
    lines += [
        "| attribute | no negative | " + " | ".join(k for k in section["negative"][0] if k.startswith("neg")) + " |",
        "|---|---:|---:|---:|",
    ]
    for n in section["negative"]:
        keys = [k for k in n if k not in ("attribute", "images")]
        lines.append(
            f"| {n['attribute']} | " + " | ".join(f"{n[k]['mean']:.2f} ({n[k]['accuracy']:.3f})" for k in keys) + " |"
        )
    return "\n".join(lines) + "\n"


def speed_section(latent: Any, cfg_model: str | None, steps: int, per_class: int) -> dict[str, Any]:
    """Images/s of the latent pipeline (VAE decoding included) and the pixel CFG pipeline, same steps and scale."""
    from condiff.evaluation.sampling import generate_samples
    from condiff.evaluation.text_prompts import PromptedPipeline
    from condiff.loading import load_pipeline

    pixel = load_pipeline(cfg_model)
    pixel.set_progress_bar_config(disable=True)
    call = {"num_inference_steps": steps, "guidance_scale": 3.0, "guidance_interval": (0.0, 1.0)}
    rows = {}
    for name, pipe in (("latent (text, VAE decode included)", PromptedPipeline(latent)), ("pixel (class CFG)", pixel)):
        samples = generate_samples(pipe, per_class, batch_size=100, **call)
        rows[name] = {"images_per_second": samples.images_per_second, "nfe_per_image": samples.nfe_per_image}
    names = list(rows)
    ratio = rows[names[0]]["images_per_second"] / rows[names[1]]["images_per_second"]
    return {"steps": steps, "images": 10 * per_class, "batch": 100, "rows": rows, "latent_over_pixel": ratio}


def run_benchmark(args: argparse.Namespace, results: Path, command: str) -> dict[str, Any]:
    """The whole benchmark (`benchmarks/latent_cfg.py`'s options in `args`); writes `results/<name>.{json,md,png}`."""
    from condiff.evaluation.guidance_methods import Setting, plot_settings, run_settings, settings_markdown
    from condiff.evaluation.reports import publish
    from condiff.evaluation.text_prompts import PromptedPipeline
    from condiff.loading import load_pipeline

    if args.quick:
        args.num_per_class, args.attribute_per_digit = 5, 5
    latent = load_pipeline(args.model, pipeline="latent")
    latent.set_progress_bar_config(disable=True)
    settings = [Setting("text CFG", "latent, held-out prompts", "latent", None, args.steps, {"guidance_scale": w})
                for w in args.scales]  # fmt: skip
    report = run_settings({"latent": PromptedPipeline(latent)}, settings, args.num_per_class, args.batch_size)
    scale = args.attribute_scale or latent.config.default_guidance_scale
    call = {"num_inference_steps": args.steps, "batch_size": args.batch_size}
    report["attributes"] = attribute_section(latent, args.attribute_per_digit, scale, call)
    report["speed"] = speed_section(latent, args.cfg_model, args.steps, 10 if args.quick else 30)
    report["settings"] |= {"quick": args.quick, "command": command}
    s = report["speed"]
    speed = ", ".join(f"{k}: {v['images_per_second']:.2f} img/s" for k, v in s["rows"].items())
    markdown = settings_markdown(report, "Latent text-to-image: guidance sweep on held-out prompts")
    markdown += "\n" + attribute_markdown(report["attributes"])
    markdown += (f"\n## Speed ({s['steps']} steps, w=3 on every step, batch {s['batch']}, {s['images']} images)\n\n"
                 f"{speed}; latent / pixel = **{s['latent_over_pixel']:.2f}x**.\n")  # fmt: skip
    publish(results, args.name + ("_quick" if args.quick else ""), report, markdown, plot_settings)
    return report
