"""`condiff demo` (its flags and handler) and `condiff generate --steps-strip`'s writer; light to import (the CLI
imports it before parsing): gradio, torch and PIL are imported inside the functions."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from condiff.argtypes import int_in
from condiff.options import missing_module_message


def add_demo_parser(sub: Any, formatter_class: type) -> None:
    """The `demo` subcommand on the CLI's subparsers."""
    d = sub.add_parser(
        "demo",
        help="a local web page with live denoising for every pipeline (needs condiff[demo])",
        description="A local Gradio page: one tab per pipeline, the denoised estimate of each step shown live, a "
        'Stop button and a compare tab. Needs gradio (pip install "condiff[demo]").',
        formatter_class=formatter_class,
    )
    d.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every network interface)")
    d.add_argument("--port", type=int_in(1, 65535), default=7860, help="port to serve on")
    d.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="FOLDER",
        help="a saved pipeline folder shown in the tab of its pipeline class instead of the shipped model "
        "(a guidance-distilled class-conditional student in the fast tab); repeatable",
    )
    d.set_defaults(func=demo, quiet=True)


def demo(args: argparse.Namespace) -> None:
    """`condiff demo`: the Gradio page (`condiff.demo`); gradio and each --model folder are checked first."""
    if importlib.util.find_spec("gradio") is None:
        raise ValueError(missing_module_message("gradio", "condiff demo"))
    from condiff.demo.models import Models, view_for_folder

    folders: dict[str, str] = {}
    for folder in args.model or ():
        view = view_for_folder(folder)
        if view in folders:
            raise ValueError(f"--model {folder!r} and --model {folders[view]!r} both belong in the {view} view")
        folders[view] = folder
    from condiff.demo.app import build_app, serve

    models = Models(folders)
    models.warm("fast" if set(folders) == {"fast"} else "class-conditional")  # the first click previews at once
    serve(build_app(models), args.host, args.port, block=True)


def write_steps_strip(recorder: Any, out: Path, upscale: int) -> None:
    """--steps-strip: one row per image, one column per step, each tile that step's denoised estimate x0."""
    import io

    from PIL import Image

    from condiff.demo.previews import steps_strip
    from condiff.files import atomic_write_bytes

    data = io.BytesIO()
    strip = steps_strip(recorder.frames, upscale=upscale)
    strip.save(data, format=Image.registered_extensions()[out.suffix.lower()])
    atomic_write_bytes(out, data.getvalue())
    print(f"wrote {out} (denoising strip: {len(recorder.frames)} steps x {len(recorder.frames[-1])} images)")
