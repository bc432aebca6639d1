"""The demo page: one tab per pipeline and a compare tab, served offline (system fonts, no analytics, nothing
fetched from a CDN), with a queue so that several browser tabs take turns."""

from __future__ import annotations

import inspect
import os
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: it reads this at import

import gradio as gr  # noqa: E402

from condiff.demo.compare import compare_view  # noqa: E402
from condiff.demo.live import Stops  # noqa: E402
from condiff.demo.models import Models  # noqa: E402
from condiff.demo.views import (  # noqa: E402
    class_conditional_view,
    classifier_guided_view,
    fast_view,
    layout_view,
    super_resolution_view,
    text_view,
)

TABS = {  # view -> (tab title, builder)
    "class-conditional": ("Class-conditional (CFG)", class_conditional_view),
    "classifier-guided": ("Classifier guidance", classifier_guided_view),
    "latent": ("Text to image", text_view),
    "fast": ("Fast student", fast_view),
    "super-resolution": ("Super-resolution", super_resolution_view),
    "layout": ("Layout", layout_view),
}
CSS = "img { image-rendering: pixelated; } .mono textarea { font-family: monospace; }"
QUEUE_SIZE = 32  # waiting clicks across tabs; more are refused with a message


def offline_theme() -> gr.themes.Base:
    """Gradio's default look with system fonts: its own theme loads IBM Plex from Google Fonts."""
    return gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def _page_kwargs() -> dict[str, Any]:
    """theme and css: Blocks() arguments up to Gradio 5, launch() arguments from Gradio 6."""
    return {"theme": offline_theme(), "css": CSS}


LAUNCH_TAKES_THEME = "theme" in inspect.signature(gr.Blocks.launch).parameters


def build_app(models: Models | None = None) -> gr.Blocks:
    """The demo's Blocks (queue enabled); `models` picks the folder of each view (default: the shipped models)."""
    models = models or Models()
    stops = Stops()
    blocks_kwargs = {} if LAUNCH_TAKES_THEME else _page_kwargs()
    with gr.Blocks(title="condiff demo", analytics_enabled=False, **blocks_kwargs) as app:
        gr.Markdown("# condiff: conditional diffusion, live\nEach step's denoised estimate shows while sampling runs; "
                    "Stop interrupts after the current step.")  # fmt: skip
        with gr.Tabs():
            for view, (title, build) in TABS.items():
                with gr.Tab(title, id=view):
                    reason = models.available(view)
                    if reason:
                        gr.Markdown(f"This view {reason}.")
                    else:
                        build(models, stops)
            with gr.Tab("Compare", id="compare"):
                compare_view(models)
    app.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    return app


def serve(app: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, block: bool = True) -> str:
    """Serve `app` on host:port (any free port when None); returns its URL (at once when not `block`)."""
    launch = {"server_name": host, "server_port": port, "prevent_thread_lock": not block, "quiet": not block}
    launch |= _page_kwargs() if LAUNCH_TAKES_THEME else {}
    _, url, _ = app.launch(share=False, inbrowser=False, ssr_mode=False, show_error=False, **launch)
    return url
