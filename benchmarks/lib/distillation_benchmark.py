"""Benchmark of issue 10, speed and quality against network evaluations per image: the textbook sampler, the teacher
with DPM-Solver++ (its default path and plain CFG at fewer steps), the guidance-distilled student (one evaluation per
step) and the consistency-distilled student (LCMScheduler), at 1, 2, 4, 8 and 14 evaluations per image, and each
progressive-distillation stage at its own step count (the last stage, the step-distilled student, on the curve too),
and one-step generators (issue 23) at their own defaults, in one run.
The headline is the fastest row that keeps accuracy >= 0.99 and a Frechet distance <= 2x the real floor (same N);
the second, issue 23's: the fastest one-evaluation row with accuracy >= 0.995 and FD <= 1.5x."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from condiff.argtypes import int_in
from condiff.evaluation.cli_args import apply_quick, report_parser
from condiff.evaluation.reports import describe_machine, machine_info, markdown_table, pyplot, report_main, save_figure
from condiff.evaluation.sampling import can_evaluate, default_num_inference_steps, generate_samples, pipeline_device
from condiff.evaluation.scoring import empty_metrics, metric_fields, score_samples, timing_fields
from condiff.loading import load_pipeline
from lib.sampler_benchmark import textbook_row

NFE_CURVE = (1, 2, 4, 8, 14)
TARGET_ACCURACY, TARGET_FD_RATIO = 0.99, 2.0
ONE_NFE_ACCURACY, ONE_NFE_FD_RATIO = 0.995, 1.5  # issue 23: one network evaluation at the teacher's quality

COLUMNS = (
    ("model", "model", ""),
    ("sampler", "sampler", ""),
    ("steps", "num_inference_steps", "d"),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("img/s", "images_per_second", ".3g"),
    ("x textbook", "speedup_vs_textbook", ".3g"),
    ("x teacher default", "speedup_vs_default", ".3g"),
    ("accuracy", "accuracy", ".3f"),
    ("Frechet dist.", "frechet_distance", ".2f"),
    ("FD / real floor (same N)", "fd_ratio_matched", ".2f"),
)


def teacher_configs(pipe, nfes, every_step_scale: float) -> list[tuple[int, dict]]:
    """(NFE, call arguments) of the teacher: the default path at its own NFE and scale, and plain CFG (2 per step,
    guided at every step with `every_step_scale`) at the even NFEs below it; NFE 1 is one conditional step (w = 1:
    guidance needs two evaluations)."""
    default_steps = default_num_inference_steps(pipe)
    configs = []
    for nfe in nfes:
        if nfe == 1:
            configs.append((1, {"num_inference_steps": 1, "guidance_scale": 1.0}))
        elif nfe % 2 == 0 and nfe < 14:
            configs.append((nfe, {"num_inference_steps": nfe // 2} | every_step(every_step_scale)))
    configs.append((None, {"num_inference_steps": default_steps}))  # the default path (NFE measured)
    return configs


def every_step(scale: float) -> dict:
    """Call arguments for guidance at every step (no interval) with `scale`."""
    return {"guidance_interval": (0.0, 1.0), "guidance_scale": scale}


def student_configs(nfes, every_step_scale: float) -> list[tuple[int, dict]]:
    """A guidance-embedded student: one evaluation per step, so steps = NFE; guided at every step."""
    return [(nfe, {"num_inference_steps": nfe} | every_step(every_step_scale)) for nfe in nfes]


def measure(pipe, model: str, call: dict, guidance_scale: float, args, classifier, evaluate: bool) -> dict[str, Any]:
    kwargs = {"guidance_scale": guidance_scale} | call
    samples = generate_samples(pipe, args.num_per_class, args.batch_size, args.seed, **kwargs)
    row = {
        "model": model,
        "sampler": type(pipe.scheduler).__name__,
        "num_inference_steps": call["num_inference_steps"],
        "guidance_scale": kwargs["guidance_scale"],
    } | timing_fields(samples)
    row |= metric_fields(score_samples(samples, classifier)) if evaluate else empty_metrics()
    print(
        f"{model} {row['sampler']} {row['num_inference_steps']} steps: NFE {row['nfe_per_image']}, "
        f"{row['images_per_second']:.3g} img/s, accuracy {row.get('accuracy')}, FD ratio {row.get('fd_ratio_matched')}",
        flush=True,
    )
    return row


SETTINGS = (
    "guidance_scale", "few_step_guidance_scale", "num_per_class", "batch_size", "nfe", "seed", "textbook_batch_size",
)  # fmt: skip
MODELS = ("teacher", "guided", "lcm", "progressive", "one_step", "textbook_timed_steps")


def run_distillation_benchmark(args, classifier=None) -> dict[str, Any]:
    """All rows of the report, in one run (see the module docstring)."""
    teacher = load_pipeline(args.teacher, device=args.device)
    evaluate = can_evaluate(teacher, classifier)
    scale = args.guidance_scale
    # The textbook sampler gets the batch the pipeline's UNet runs at (its micro-batch size): no batching effect.
    tb_batch = args.textbook_batch_size or teacher.config.get("micro_batch_size") or args.batch_size
    textbook = textbook_row(teacher, scale, tb_batch, tb_batch, args.textbook_timed_steps, 0, args.seed, False,
                            classifier, print)  # fmt: skip
    textbook["model"] = "teacher, textbook sampler"
    rows = [textbook]
    few_step_scale = args.few_step_guidance_scale or scale
    for nfe, call in teacher_configs(teacher, args.nfe, few_step_scale):
        name = "teacher" if nfe else "teacher, default path"
        rows.append(measure(teacher, name, call, scale, args, classifier, evaluate))
    default = rows[-1]
    if args.guided:  # its default path (the teacher's, one branch per step), then the curve
        pipe = load_pipeline(args.guided, device=args.device)
        call = {"num_inference_steps": default_num_inference_steps(pipe)}
        rows.append(measure(pipe, "guidance-distilled, default path", call, scale, args, classifier, evaluate))
    for name, folder in (("guidance-distilled", args.guided), ("consistency-distilled", args.lcm)):
        if folder:
            pipe = load_pipeline(folder, device=args.device)
            for _, call in student_configs(args.nfe, few_step_scale):
                rows.append(measure(pipe, name, call, scale, args, classifier, evaluate))
    stages = args.progressive or []
    for i, folder in enumerate(stages):  # each stage at the step count it was distilled for; the last: the curve too
        pipe = load_pipeline(folder, device=args.device)
        own = default_num_inference_steps(pipe)
        steps = sorted({own, *args.nfe}) if i == len(stages) - 1 else [own]
        for call in ({"num_inference_steps": n} | every_step(few_step_scale) for n in steps):
            rows.append(measure(pipe, "progressive-distilled", call, scale, args, classifier, evaluate))
    for folder in args.one_step or []:  # at its own step count and guidance scale
        pipe = load_pipeline(folder, device=args.device)
        call = {"num_inference_steps": default_num_inference_steps(pipe), "guidance_interval": (0.0, 1.0)}
        call["guidance_scale"] = pipe.config.get("default_guidance_scale") or few_step_scale
        rows.append(measure(pipe, f"one-step ({Path(folder).name})", call, scale, args, classifier, evaluate))
    for row in rows:
        row["speedup_vs_textbook"] = row["images_per_second"] / textbook["images_per_second"]
        row["speedup_vs_default"] = row["images_per_second"] / default["images_per_second"]
    settings = {k: getattr(args, k) for k in SETTINGS + MODELS}
    machine = machine_info(pipeline_device(teacher))
    heads = {"headline": headline(rows), "one_nfe_headline": headline(rows, ONE_NFE_ACCURACY, ONE_NFE_FD_RATIO, 1)}
    return {"settings": settings, "machine": machine, "rows": rows} | heads


def headline(
    rows: list[dict], accuracy: float = TARGET_ACCURACY, fd_ratio: float = TARGET_FD_RATIO, nfe: float | None = None
) -> dict[str, Any]:
    """The fastest row (with `nfe` evaluations per image, when given) meeting the quality targets, and its ratios."""
    ok = [
        r
        for r in rows[1:]
        if r.get("accuracy") is not None
        and r["accuracy"] >= accuracy
        and r["fd_ratio_matched"] <= fd_ratio
        and (nfe is None or r["nfe_per_image"] == nfe)
    ]
    if not ok:
        return {"fastest_meeting_targets": None}
    best = max(ok, key=lambda r: r["images_per_second"])
    return {
        "fastest_meeting_targets": f"{best['model']}, {best['sampler']} {best['num_inference_steps']} steps",
        "nfe_per_image": best["nfe_per_image"],
        "speedup_vs_textbook": best["speedup_vs_textbook"],
        "speedup_vs_default": best["speedup_vs_default"],
        "accuracy": best["accuracy"],
        "fd_ratio_matched": best["fd_ratio_matched"],
    }


def distillation_markdown(report: dict[str, Any]) -> str:
    s, h, m = report["settings"], report["headline"], report["machine"]
    if h.get("fastest_meeting_targets"):
        head = (
            f"**Fastest path with accuracy >= {TARGET_ACCURACY} and FD <= {TARGET_FD_RATIO}x the real floor: "
            f"{h['fastest_meeting_targets']} ({h['nfe_per_image']:.0f} NFE/image): "
            f"{h['speedup_vs_textbook']:.3g}x the textbook sampler, {h['speedup_vs_default']:.3g}x the teacher's "
            f"default path** (accuracy {h['accuracy']:.3f}, FD / floor {h['fd_ratio_matched']:.2f})."
        )
    else:
        head = "**No row met the quality targets.**"
    one = report.get("one_nfe_headline") or {}
    if one.get("fastest_meeting_targets"):
        head += (
            f"\n\n**One network evaluation per image with accuracy >= {ONE_NFE_ACCURACY} and FD <= {ONE_NFE_FD_RATIO}x "
            f"the floor: {one['fastest_meeting_targets']}: {one['speedup_vs_textbook']:.3g}x the textbook sampler, "
            f"{one['speedup_vs_default']:.3g}x the teacher's default path** (accuracy {one['accuracy']:.3f}, FD / "
            f"floor {one['fd_ratio_matched']:.2f})."
        )
    elif "one_nfe_headline" in report:
        head += f"\n\n**No one-evaluation row met accuracy >= {ONE_NFE_ACCURACY} and FD <= {ONE_NFE_FD_RATIO}x.**"
    textbook = report["rows"][0]
    return "\n".join(
        [
            "# Distillation: speed and quality against network evaluations per image",
            "",
            f"Guidance scale {s['guidance_scale']} on the default paths' guidance intervals; rows guided at every "
            f"step (plain CFG, students' curves): {s['few_step_guidance_scale'] or s['guidance_scale']}; "
            f"{s['num_per_class']} images per class per row, batch {s['batch_size']}; {describe_machine(m)}.",
            "",
            head,
            "",
            f"Textbook sampler: {textbook['sampler']}, timed over its first {textbook['timed_steps']} steps at batch "
            f"{textbook['batch_size']} and extrapolated (every step is the same work). Teacher rows: NFE 1 is one "
            "conditional step (w = 1), even NFEs are plain CFG at NFE / 2 steps, 'default path' the pipeline's "
            "default.",
            "",
            markdown_table(report["rows"], COLUMNS),
            "",
        ]
    )


def plot_distillation(report: dict[str, Any], path: str | Path) -> Path:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    groups: dict[str, list[dict]] = {}
    for row in report["rows"][1:]:
        groups.setdefault(row["model"].split(",")[0], []).append(row)
    for ax, key, label, target in (
        (axes[0], "accuracy", "conditional accuracy", TARGET_ACCURACY),
        (axes[1], "fd_ratio_matched", "Frechet distance / real floor (same N)", TARGET_FD_RATIO),
    ):
        for name, rows in groups.items():
            pts = sorted((r["nfe_per_image"], r[key]) for r in rows if r.get(key) is not None)
            if pts:
                ax.plot(*zip(*pts), "o-", label=name)
        ax.axhline(target, color="gray", ls="--", lw=1, label="target")
        ax.set(xscale="log", xlabel="network evaluations per image", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return save_figure(fig, path)


def build_parser(default_out_dir: str | Path) -> argparse.ArgumentParser:
    p = report_parser("Distillation benchmark (issue 10)", default_out_dir, "distillation")
    p.set_defaults(batch_size=250)
    p.add_argument("--teacher", default=None, help="teacher pipeline folder (default: the shipped CFG model)")
    p.add_argument("--guided", default=None, help="guidance-distilled pipeline folder")
    p.add_argument("--lcm", default=None, help="consistency-distilled pipeline folder")
    p.add_argument(
        "--progressive",
        nargs="+",
        default=None,
        help="progressive-distillation stage folders, first to last (the last: also on the curve)",
    )
    p.add_argument(
        "--one-step", nargs="+", default=None, help="one-step generator folders (`condiff train "
        "distribution_matching`), each at its own default steps and guidance scale",
    )  # fmt: skip
    p.add_argument("--guidance-scale", type=float, default=3.0)
    p.add_argument(
        "--few-step-guidance-scale", type=float, default=None, help="scale of the rows guided at every step (plain "
        "CFG and the students' curves; lower than the default paths' interval-guided one); default: --guidance-scale",
    )  # fmt: skip
    p.add_argument("--nfe", type=int_in(1), nargs="+", default=list(NFE_CURVE))
    p.add_argument("--num-per-class", type=int_in(1), default=100)
    p.add_argument("--textbook-timed-steps", type=int_in(1), default=50)
    p.add_argument("--textbook-batch-size", type=int_in(1), default=None, help="default: the teacher's micro-batch")
    return p


def main(argv: list[str] | None = None, default_out_dir: str | Path = "benchmarks/results") -> int:
    parser = build_parser(default_out_dir)
    args = parser.parse_args(argv)
    if args.quick:
        apply_quick(args, {"num_per_class": 2, "nfe": [1, 2], "textbook_timed_steps": 2, "batch_size": 20}, parser)
    args.teacher = args.model or args.teacher
    return report_main(args, lambda: run_distillation_benchmark(args), distillation_markdown, plot_distillation)


if __name__ == "__main__":
    sys.exit(main())
