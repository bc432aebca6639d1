"""diffusers' `callback_on_step_end` protocol for condiff's pipelines: what a callback sees, and what it may change.

Part of the Hub-loadable pipeline code: imports only torch.
"""

from __future__ import annotations

from typing import Any

import torch

from .checks import check_callback_outputs, check_scale

Pair = tuple[torch.Tensor, torch.Tensor]


def step_callback(
    pipe: Any,
    callback: Any,
    step: int,
    t: Any,
    latents: torch.Tensor,
    names: Any,
    condition: Pair | None = None,
    denoised: torch.Tensor | None = None,
) -> tuple[torch.Tensor, Pair | None]:
    """diffusers' `callback_on_step_end` protocol; returns (latents, condition), each replaced if the callback hands
    one back.

    `condition` is the (null/negative, conditional) pair of N rows each; a callback asking for "prompt_embeds" gets
    them concatenated as [negative; positive] (2N rows), the way Stable Diffusion pipelines pass them under CFG, and
    "negative_prompt_embeds" the negative half; "denoised" is the step's estimate of x0 (`guidance.step_denoised`,
    read-only: handing it back changes nothing). A callback that sets `pipe._guidance_scale = 0.0` during a call whose
    scale was not 0 means what diffusers' CFG cut-off callbacks mean by it, "guidance off": the conditional
    prediction alone from the next step, stored as scale 1 (a call's `guidance_scale=0` argument stays unconditional).
    """
    if callback is None:
        return latents, condition
    available = {"latents": latents, "denoised": denoised}
    if condition is not None and "prompt_embeds" in names:
        available["prompt_embeds"] = torch.cat(condition)
    if condition is not None and "negative_prompt_embeds" in names:
        available["negative_prompt_embeds"] = condition[0]
    scale_before = pipe._guidance_scale
    outputs = check_callback_outputs(callback(pipe, step, t, {name: available[name] for name in names}), latents)
    for name in ("_guidance_scale", "_classifier_scale"):
        try:
            check_scale(f"pipe.{name}", getattr(pipe, name, 0.0))
        except (TypeError, ValueError) as error:
            raise type(error)(f"callback_on_step_end set {error}") from None
    if scale_before != 0 and pipe._guidance_scale == 0:
        pipe._guidance_scale = 1.0
    if condition is not None:
        condition = callback_condition(outputs, available, condition)
    return outputs.get("latents", latents), condition


def callback_condition(outputs: dict, given: dict, condition: Pair) -> Pair:
    """The (negative, positive) pair after a callback: "prompt_embeds" handed back with 2N rows replaces both
    halves, with N rows (or 1, for every image) the positive half; the last row of what it was given, alone, is
    diffusers' `SDCFGCutoffCallback` keeping "the conditional half" (`prompt_embeds[-1:]`): the positive half is kept.
    "negative_prompt_embeds" (N rows) replaces the negative half."""
    negative, positive = condition
    n = len(positive)
    returned = outputs.get("prompt_embeds")
    if returned is not None and returned is not given.get("prompt_embeds"):
        returned = returned.to(positive.device, positive.dtype)
        rows = len(returned)
        if rows == 2 * n:
            negative, positive = returned[:n], returned[n:]
        elif rows == n:
            positive = returned
        elif rows == 1 and torch.equal(returned[0], positive[-1]):
            pass  # SDCFGCutoffCallback's prompt_embeds[-1:]: the conditional half, as given
        elif rows == 1:
            positive = returned.expand(n, *returned.shape[1:])
        else:
            raise ValueError(
                f"callback_on_step_end returned prompt_embeds with {rows} rows; expected {2 * n} "
                f"([negative; positive]), {n} (positive) or 1"
            )
    returned = outputs.get("negative_prompt_embeds")
    if returned is not None and returned is not given.get("negative_prompt_embeds"):
        if len(returned) != n:
            raise ValueError(f"callback_on_step_end returned negative_prompt_embeds with {len(returned)} rows, not {n}")
        negative = returned.to(negative.device, negative.dtype)
    return negative, positive
