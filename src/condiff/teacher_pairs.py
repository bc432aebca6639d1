"""`scripts/make_teacher_pairs.py`: the paired dataset of `distribution_matching --regression_pairs`, (noise, label,
w, the teacher's image from that noise), written as one safetensors file (`distribution_matching.teacher_ode_pairs`
makes it)."""

from __future__ import annotations

import argparse
from pathlib import Path

from condiff.argtypes import float_in, int_in


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="make_teacher_pairs.py",
        description="Sample (noise, label, w, image) pairs from a CFG teacher's deterministic sampler, for "
        "distribution_matching --regression_pairs.",
    )
    p.add_argument("--teacher", required=True, help="a saved ClassConditionalDDPMPipeline folder")
    p.add_argument("--output", required=True, help="the .safetensors file to write (never overwritten)")
    p.add_argument("--num_pairs", type=int_in(1), default=5000)
    p.add_argument("--guidance_scale_range", type=float_in(0.0), nargs=2, default=[1.0, 2.0], metavar=("LO", "HI"))
    p.add_argument("--num_inference_steps", type=int_in(1), default=10, help="steps of the teacher's own scheduler")
    p.add_argument("--batch_size", type=int_in(1), default=50, help="pairs per call; w is drawn once per batch")
    p.add_argument("--seed", type=int_in(0), default=0)
    return p


def check_output(path: str) -> Path:
    out = Path(path)
    if out.suffix != ".safetensors":
        raise ValueError(f"--output must end in .safetensors, got {path!r}")
    if out.exists():
        raise ValueError(f"--output {path!r} exists; choose a new file (pairs are never overwritten)")
    if not out.parent.is_dir():
        raise ValueError(f"--output {path!r}: the folder {str(out.parent)!r} does not exist")
    return out


def check_deterministic(scheduler) -> None:
    """The pairs need the teacher's deterministic sampler: refuse the ancestral and SDE ones."""
    name, algorithm = type(scheduler).__name__, str(scheduler.config.get("algorithm_type", ""))
    if name == "DDPMScheduler" or "Ancestral" in name or "sde" in algorithm:
        raise ValueError(
            f"--teacher samples with {name} ({algorithm or 'ancestral'}), which draws fresh noise at every step: the "
            "pairs need a deterministic sampler (DPM-Solver++, DDIM, UniPC, Euler): save the teacher with one"
        )


def main(argv: list[str] | None = None) -> Path:
    """Check the flags, load the teacher, sample the pairs and write them atomically; returns the file."""
    from safetensors.torch import save

    from condiff.distribution_matching import teacher_ode_pairs
    from condiff.files import atomic_write_bytes
    from condiff.loading import load_pipeline

    a = build_parser().parse_args(argv)
    lo, hi = a.guidance_scale_range
    if lo > hi:
        raise ValueError(f"--guidance_scale_range must be LO <= HI, got {lo} {hi}")
    out = check_output(a.output)
    pipe = load_pipeline(a.teacher)
    check_deterministic(pipe.scheduler)
    pipe.set_progress_bar_config(disable=True)
    pairs = teacher_ode_pairs(pipe, a.num_pairs, (lo, hi), a.num_inference_steps, a.seed, a.batch_size)
    atomic_write_bytes(out, save({k: v.contiguous() for k, v in pairs.items()}))
    print(f"wrote {len(pairs['labels'])} pairs to {out}")
    return out
