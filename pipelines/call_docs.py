"""The docstring text of the call arguments condiff's pipelines share, written once: `shared_call_docs` expands a line
`{shared: name, name, ...}` of a `__call__` docstring into those arguments' entries (as diffusers'
`replace_example_docstring` fills in examples), so `help(pipe.__call__)` shows each pipeline's full argument list.

Part of the Hub-loadable pipeline code: imports only the standard library.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable

SHARED_CALL_ARGS = {
    "num_inference_steps": "denoising steps; default: the model's `default_num_inference_steps`.",
    "generator": "a `torch.Generator`, or one per image, for reproducible sampling.",
    "latents": "initial noise of shape (N, C, H, W) (the latent shape in a latent pipeline); drawn from `generator` "
    "when None.",
    "guidance_rescale": "Lin et al. (2023) rescale factor in [0, 1] (CFG).",
    "guidance_interval": "(lo, hi) fractions of the noise range where guidance applies; elsewhere w = 1. Default: the "
    "model's `default_guidance_interval` ((0, 1) = every step).",
    "output_type": '"pil", "np", "pt" (a [0, 1] tensor) or "latent" (the final model-space tensor, not decoded).',
    "return_dict": "return a `CondiffPipelineOutput` (`images`, `nfe_per_image`) instead of a tuple `(images,)`.",
    "num_images_per_prompt": "diffusers' name, accepted as an alias of `num_images_per_label`; giving both with "
    "different values is an error, unless `num_images_per_label` is left at 1.",
    "corrector_steps": "Langevin corrector steps (Song et al. 2021, predictor-corrector) at each timestep before the "
    "scheduler's step, 0..100, each one guided prediction (counted in `nfe_per_image`). Default: the model's "
    "`default_corrector_steps` (0: none).",
    "corrector_snr": "the corrector's signal-to-noise ratio r in (0, 1] (step size 2 alpha_t (r ||z|| / ||s||)^2 per "
    "image). Default: the model's `default_corrector_snr` (0.16).",
}
_MARKER = re.compile(r"^(?P<indent> *)\{shared: (?P<names>[a-z_, ]+)\}$", re.MULTILINE)


def _entries(match: re.Match) -> str:
    indent = match["indent"]
    lines = []
    for name in (n.strip() for n in match["names"].split(",")):
        text = f"{name}: {SHARED_CALL_ARGS[name]}"
        lines.append(textwrap.fill(text, 120, initial_indent=indent, subsequent_indent=indent + "    "))
    return "\n".join(lines)


def shared_call_docs(fn: Callable) -> Callable:
    """Expand the `{shared: ...}` lines of `fn`'s docstring (names from `SHARED_CALL_ARGS`)."""
    if fn.__doc__:
        fn.__doc__ = _MARKER.sub(_entries, fn.__doc__)
    return fn
