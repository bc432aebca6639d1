"""The guidance sweep's outputs: the Markdown table, the trade-off plot (accuracy against Frechet distance labelled
by scale, diversity against scale) and the grid image (rows = settings, columns = classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from condiff.evaluation.reports import markdown_table, nonfinite_notes, pyplot, save_figure, write_report

__all__ = [
    "SWEEP_COLUMNS",
    "row_line",
    "sweep_markdown",
    "plot_tradeoff",
    "save_grid",
    "tensor_to_pil",
    "sweep_output_paths",
    "write_sweep",
]


def tensor_to_pil(image) -> Image.Image:
    """A [C, H, W] tensor in [0, 1] -> a PIL image ("L" for one channel, else "RGB")."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return Image.fromarray(array[0], "L") if array.shape[0] == 1 else Image.fromarray(array.transpose(1, 2, 0))


def row_line(row: dict[str, Any]) -> str:
    quality = ""
    if row.get("accuracy") is not None:
        quality = (
            f", accuracy {row['accuracy']:.3f}, FD {row['frechet_distance']:.2f} "
            f"({row['fd_ratio_matched']:.2f}x floor), diversity {row['diversity_relative']:.2f}x real"
        )
    if row.get("nonfinite_images"):
        quality += f", {row['nonfinite_images']} non-finite images (not scored)"
    return (
        f"{row['label']}: NFE/img {row['nfe_per_image']}, {row['images_per_second']:.3g} img/s"
        f" ({row['num_images']} images){quality}"
    )


SWEEP_COLUMNS = (
    ("w", "guidance_scale", "g"),
    ("variant", "variant", ""),
    ("NFE/img", "nfe_per_image", ".0f"),
    ("img/s", "images_per_second", ".3g"),
    ("images", "num_images", "d"),
    ("accuracy", "accuracy", ".3f"),
    ("Frechet dist.", "frechet_distance", ".2f"),
    ("FD / real floor (same N)", "fd_ratio_matched", ".2f"),
    ("diversity (rel. to real)", "diversity_relative", ".3f"),
)


def sweep_markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    lines = [
        "# Guidance sweep",
        "",
        f"{s['num_images_per_setting']} images per row ({s['num_per_class']} per class), sampler {s['sampler']}, "
        f"{s['num_inference_steps']} steps, batch {s['batch_size']}, seed {s['seed']}; machine: {m['platform']}, "
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device {m['device']}, "
        f"1-min load {m.get('load_average_1min')}.",
        "",
    ]
    real = report.get("real_data")
    if real:
        lines += [
            f"Real data: Frechet distance floor {real['floor_matched']:.2f} (real train subsets of "
            f"{real['num_samples']} rows vs the test split; {real['floor_all_train_rows']:.2f} with all train "
            f"rows); within-class diversity of the test split {real['diversity_test_split']:.3f} (= 1.0 relative).",
            "",
        ]
    else:
        lines += ["Not scored: the MNIST evaluator does not fit this pipeline (speed, NFE and the grid only).", ""]
    lines += [
        markdown_table(report["rows"], SWEEP_COLUMNS),
        "",
        *nonfinite_notes(report["rows"]),
        "Diversity: mean pairwise evaluator-feature distance within each class, relative to the real test "
        "split's. NFE/img: UNet evaluations per image (both CFG branches run only where w is not 0 or 1 and, "
        "with an interval, only inside it).",
        "",
        "Grid rows (top to bottom): " + "; ".join(s["grid_rows"]) + ".",
        "",
    ]
    return "\n".join(lines)


def plot_tradeoff(report: dict[str, Any], path: str | Path) -> Path:
    """Left: accuracy against Frechet distance, one line per variant, points labelled by scale (the CFG paper's
    trade-off figure); right: relative diversity against scale."""
    plt = pyplot()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    variants: dict[str, list[dict]] = {}
    for row in report["rows"]:
        variants.setdefault(row["variant"], []).append(row)
    scored = [r for r in report["rows"] if r.get("accuracy") is not None]
    for variant, rows in variants.items():
        rows = [r for r in rows if r.get("accuracy") is not None]
        if not rows:
            continue
        rows = sorted(rows, key=lambda r: r["guidance_scale"])
        ax.plot([r["frechet_distance"] for r in rows], [r["accuracy"] for r in rows], "o-", label=variant)
        for r in rows:
            ax.annotate(
                f"{r['guidance_scale']:g}",
                (r["frechet_distance"], r["accuracy"]),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=8,
            )
        ax2.plot([r["guidance_scale"] for r in rows], [r["diversity_relative"] for r in rows], "o-", label=variant)
    real = report.get("real_data")
    if real:
        ax.axvline(real["floor_matched"], color="gray", ls="--", lw=1, label="real data (same N)")
        ax2.axhline(1.0, color="gray", ls="--", lw=1, label="real data")
    if not scored:
        for a in (ax, ax2):
            a.text(0.5, 0.5, "not scored (no evaluator for this pipeline)", ha="center", transform=a.transAxes)
    ax.set_xlabel("Frechet distance to the test split (evaluator features)")
    ax.set_ylabel("conditional accuracy")
    ax.set_title("Guidance trade-off (labels: guidance scale w)")
    ax2.set_xlabel("guidance scale w")
    ax2.set_ylabel("within-class diversity / real")
    ax2.set_title("Diversity")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    s = report["settings"]
    fig.suptitle(f"{s['sampler']}, {s['num_inference_steps']} steps, {s['num_images_per_setting']} images per point")
    return save_figure(fig, path)


def save_grid(
    rows: list[list[Image.Image]], labels: list[str], path: str | Path, upscale: int = 2, label_width: int = 150
) -> Path:
    """Rows = settings (labelled on the left), columns = classes; made with `diffusers.utils.make_image_grid`."""
    from diffusers.utils import make_image_grid
    from PIL import ImageDraw

    if not rows or not rows[0]:
        raise ValueError("the sweep result holds no images")
    cols = max(len(r) for r in rows)
    blank = Image.new(rows[0][0].mode, rows[0][0].size)
    images = [img for r in rows for img in (r + [blank] * (cols - len(r)))]
    grid = make_image_grid(images, rows=len(rows), cols=cols).convert("RGB")
    grid = grid.resize((grid.width * upscale, grid.height * upscale), Image.NEAREST)
    canvas = Image.new("RGB", (grid.width + label_width, grid.height), "white")
    canvas.paste(grid, (label_width, 0))
    draw = ImageDraw.Draw(canvas)
    row_height = grid.height / len(rows)
    for i, label in enumerate(labels):
        draw.text((4, int(i * row_height + row_height / 2 - 5)), label, fill="black")
    path = Path(path)
    canvas.save(path)
    return path


SWEEP_FILES = {"json": ".json", "md": ".md", "png": ".png", "grid": "_grid.png"}


def sweep_output_paths(out_dir: str | Path, name: str = "guidance_sweep") -> dict[str, Path]:
    """The files `write_sweep` writes: `<name>.json`, `<name>.md`, `<name>.png` and `<name>_grid.png`."""
    out_dir = Path(out_dir)
    return {key: out_dir / f"{name}{tail}" for key, tail in SWEEP_FILES.items()}


def write_sweep(
    report: dict[str, Any], grid: list[list[Image.Image]], out_dir: str | Path, name: str = "guidance_sweep"
) -> dict[str, Path]:
    """Write `<name>.json`, `<name>.md`, `<name>.png` (trade-off plot) and `<name>_grid.png`."""
    files = sweep_output_paths(out_dir, name)
    paths = write_report(out_dir, name, report, sweep_markdown(report))
    paths["png"] = plot_tradeoff(report, files["png"])
    paths["grid"] = save_grid(grid, report["settings"]["grid_rows"], files["grid"])
    return paths
