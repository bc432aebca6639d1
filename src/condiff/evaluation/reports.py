"""Report plumbing shared by the guidance sweep and the benchmark scripts: what machine the numbers came from,
Markdown tables, JSON + Markdown (+ PNG) files, and matplotlib without a display."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Log",
    "machine_info",
    "describe_machine",
    "markdown_table",
    "nonfinite_notes",
    "pyplot",
    "save_figure",
    "write_report",
    "publish",
    "report_main",
]

Log = Callable[[str], None]


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What the numbers were measured on: platform, CPU count, torch threads, load, library versions, GPU."""
    import diffusers

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "device": str(device),
    }
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 2)
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        info["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    return info


def describe_machine(m: dict[str, Any]) -> str:
    """`machine_info` in one phrase, for a report's settings line."""
    return (
        f"{m['cpu_count']} CPUs, {m['torch_threads']} torch threads, device {m['device']}, "
        f"1-min load {m.get('load_average_1min')}"
    )


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return format(value, spec)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """A Markdown table: `columns` = (header, key, format spec); None shows as '-'."""
    head = "| " + " | ".join(h for h, _, _ in columns) + " |"
    rule = "|" + "|".join("---:" if spec else "---" for _, _, spec in columns) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k), spec) for _, k, spec in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def nonfinite_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Markdown lines naming the rows whose sampler produced NaN/inf images (left unscored)."""
    bad = [f"{r.get('name') or r.get('label')} ({r['nonfinite_images']})" for r in rows if r.get("nonfinite_images")]
    return [f"Not scored, non-finite images (count): {', '.join(bad)}.", ""] if bad else []


def pyplot():
    """matplotlib.pyplot on the Agg backend unless one was chosen (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, save (PNG, 120 dpi) and close a matplotlib figure; return its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return Path(path)


def _json_default(obj: Any):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (Path, torch.device, torch.dtype)):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _finite(obj: Any) -> Any:
    """Replace NaN/inf floats by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_report(out_dir: str | Path, name: str, report: dict[str, Any], markdown: str) -> dict[str, Path]:
    """Write `<out_dir>/<name>.json` and `<name>.md`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    paths["json"].write_text(json.dumps(_finite(report), indent=2, default=_json_default) + "\n")
    paths["md"].write_text(markdown)
    return paths


def publish(
    out_dir: Path, name: str, report: dict[str, Any], markdown: str, plot: Callable[[dict, Path], Path]
) -> dict[str, Path]:
    """Write the JSON, the Markdown and `plot`'s PNG (`<name>.png`), print the Markdown and the paths."""
    paths = write_report(out_dir, name, report, markdown)
    paths["png"] = plot(report, out_dir / f"{name}.png")
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return paths


def report_main(
    args: Any, run: Callable[[], dict[str, Any]], markdown: Callable[[dict], str], plot: Callable[[dict, Path], Path]
) -> int:
    """The body of a report's `main`: check `--out-dir` and `--name`, `run()` (checks, model loading, the
    measurement), stamp `--model`/`--quick` into the settings and `publish`. A bad argument or a model that cannot
    be loaded prints `error: ...` and returns 2; success returns 0."""
    from condiff.evaluation.cli_args import check_name, check_new_outputs, check_out_dir

    try:
        name = check_name(args.name)
        check_new_outputs([Path(args.out_dir) / f"{name}.{ext}" for ext in ("json", "md", "png")], args.overwrite)
        out_dir = check_out_dir(args.out_dir)
        report = run()
    except (ValueError, TypeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report["settings"] |= {"model": args.model or "shipped", "quick": bool(args.quick)}
    publish(out_dir, name, report, markdown(report), plot)
    return 0
