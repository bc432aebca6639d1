"""Flags, checks and factories shared by the denoiser tasks (class-conditional CFG, unconditional, spatial): the UNet's
shape, the noise schedule and prediction type, and the validation sampler's settings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from condiff.engine.args import require_int, require_real
from condiff.options import NETWORK_TARGETS, NOISE_SCHEDULES, PREDICTION_TYPES, UNET_ARCHITECTURES, VARIANCE_TYPES


def add_denoiser_arguments(p: argparse.ArgumentParser, parametrisations: bool = False) -> None:
    """The UNet's shape and the diffusion flags; `parametrisations`: also learned variance and the mean and score
    targets (`add_parametrisation_arguments`)."""
    g = p.add_argument_group("model")
    g.add_argument("--block_out_channels", type=int, nargs="+", default=[32, 64, 64])
    g.add_argument("--layers_per_block", type=int, default=1)
    g.add_argument("--attention", action="store_true", help="add attention blocks at the lower resolutions")
    g.add_argument("--norm_num_groups", type=int, default=8)
    g.add_argument(
        "--architecture",
        choices=UNET_ARCHITECTURES,
        default="UNet2DModel",
        help="UNet2DConditionModel (no cross-attention) is the one a guidance-distilled student can share (distill)",
    )
    add_init_unet_argument(g)
    add_diffusion_arguments(p, parametrisations)


def add_init_unet_argument(g: argparse._ActionsContainer) -> None:
    """The `--init_unet` flag of the denoiser tasks and the latent task."""
    g.add_argument(
        "--init_unet",
        type=Path,
        default=None,
        help="fine-tune: start from the unet/ weights of this saved pipeline folder (its shape must be the flags'; "
        "with --variance_type learned_range a fixed-variance folder's UNet gains a zero-initialised variance head); "
        "a resumed checkpoint takes precedence",
    )


def add_diffusion_arguments(p: argparse.ArgumentParser, parametrisations: bool = False) -> None:
    """The noise schedule, prediction type and validation sampler flags every diffusion task has."""
    g = p.add_argument_group("diffusion")
    targets = PREDICTION_TYPES + (NETWORK_TARGETS if parametrisations else ())
    explain = "what the UNet predicts; mean and score are converted to epsilon for every scheduler when sampling"
    g.add_argument("--prediction_type", choices=targets, default="epsilon", help=explain if parametrisations else None)
    if parametrisations:
        g.add_argument(
            "--variance_type",
            choices=VARIANCE_TYPES,
            default="fixed",
            help="learned_range: the UNet also predicts the reverse variance (Nichol & Dhariwal), trained with the "
            "hybrid loss; ancestral DDPM samples with it (diffusers' variance_type='learned_range')",
        )
        g.add_argument("--vlb_weight", type=float, default=0.001, help="lambda of L_simple + lambda L_vlb")
    g.add_argument("--noise_schedule", choices=NOISE_SCHEDULES, default="squaredcos_cap_v2")
    g.add_argument("--num_train_timesteps", type=int, default=1000)
    g.add_argument("--validation_inference_steps", type=int, default=20, help="sampler steps of validation grids")


STEPS_PER_GRID_UNIT = 100


def add_grid_size_argument(g, flag: str, full: int, unit: int = 1, per: str = "class") -> None:
    """A validation-grid size flag whose default (None, "auto") is sized to the run by `plan_grid_size`."""
    g.add_argument(
        f"--{flag}",
        type=int,
        default=None,
        help=f"images per {per} of the validation grids and of the card's final grid (default: {unit} per "
        f"{STEPS_PER_GRID_UNIT} training steps, at least {unit}, at most {full}: a short run is not dominated by "
        "rendering its grid)",
    )


def plan_grid_size(a: argparse.Namespace, flag: str, total_steps: int, full: int, unit: int = 1) -> None:
    """Replace an unset (None) grid size by the run-sized default, so that training_args.json records it."""
    if getattr(a, flag) is None:
        setattr(a, flag, min(full, unit * max(1, total_steps // STEPS_PER_GRID_UNIT)))


def check_channels(channels, norm_num_groups: int) -> None:
    """`--block_out_channels` must be positive multiples of `--norm_num_groups`."""
    if (
        not isinstance(channels, (list, tuple))
        or not channels
        or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 or c % norm_num_groups for c in channels)
    ):
        raise ValueError(
            f"--block_out_channels {channels} must be positive multiples of --norm_num_groups ({norm_num_groups})"
        )


def check_denoiser_args(a: argparse.Namespace) -> None:
    """The model and diffusion flags' values (before any data or model work)."""
    for name in ("layers_per_block", "norm_num_groups"):
        require_int(name, getattr(a, name))
    check_diffusion_args(a)
    check_channels(a.block_out_channels, a.norm_num_groups)
    if getattr(a, "architecture", "UNet2DModel") != "UNet2DModel" and a.attention:
        raise ValueError("--attention is available only with --architecture UNet2DModel")
    check_init_unet(a)


def check_init_unet(a: argparse.Namespace, architecture: str | None = None) -> None:
    """`--init_unet` names a saved folder with a UNet of `--architecture` (or of `architecture`, for a task that
    has one UNet class); its shapes are compared when loaded."""
    folder = getattr(a, "init_unet", None)
    if folder is None:
        return
    config, weights = Path(folder) / "unet" / "config.json", Path(folder) / "unet" / INIT_WEIGHTS
    if not config.is_file() or not weights.is_file():
        raise ValueError(f"--init_unet {folder}: needs unet/config.json and unet/{INIT_WEIGHTS} (a folder saved by "
                         "condiff train or save_pretrained)")  # fmt: skip
    found, wanted = json.loads(config.read_text()).get("_class_name"), architecture or a.architecture
    if found != wanted:
        fix = "" if architecture else f" (--architecture {wanted}): pass --architecture {found}"
        raise ValueError(f"--init_unet {folder} holds a {found}, the run trains a {wanted}{fix}")


INIT_WEIGHTS = "diffusion_pytorch_model.safetensors"


def load_init_unet(unet, a: argparse.Namespace):
    """Copy `--init_unet`'s weights into the freshly built `unet` (no-op without the flag); a shape that differs
    from the flags' UNet is refused, naming the flag and the first differing tensors."""
    folder = getattr(a, "init_unet", None)
    if folder is None:
        return unet
    from safetensors.torch import load_file

    saved, own = load_file(Path(folder) / "unet" / INIT_WEIGHTS), unet.state_dict()
    if learns_variance(a):
        saved = with_variance_head(saved, own)
    shared = own.keys() & saved.keys()
    differ = sorted((own.keys() ^ saved.keys()) | {k for k in shared if own[k].shape != saved[k].shape})
    if differ:
        raise ValueError(f"--init_unet {folder}: its UNet does not match the model flags (--block_out_channels, "
                         f"--layers_per_block, ...): {len(differ)} tensors differ, e.g. {differ[:3]}")  # fmt: skip
    unet.load_state_dict(saved)
    return unet


def with_variance_head(saved: dict, own: dict) -> dict:
    """A fixed-variance UNet's weights grown to a learned-variance UNet's 2C outputs: its mean channels are copied and
    the variance channels start at zero, i.e. v = 0, the log-variance half-way between beta_t and beta~_t (improved
    DDPM's interpolation). Weights that already have 2C outputs are returned unchanged."""
    import torch

    grown = dict(saved)
    for name in ("conv_out.weight", "conv_out.bias"):
        if name in saved and name in own and 2 * saved[name].shape[0] == own[name].shape[0]:
            grown[name] = torch.cat([saved[name], torch.zeros_like(saved[name])])
    return grown


def check_diffusion_args(a: argparse.Namespace) -> None:
    require_int("num_train_timesteps", a.num_train_timesteps)
    require_int("validation_inference_steps", a.validation_inference_steps, 1, a.num_train_timesteps)
    if getattr(a, "variance_type", "fixed") not in VARIANCE_TYPES:
        raise ValueError(f"--variance_type must be one of {VARIANCE_TYPES}, got {a.variance_type!r}")
    require_real("vlb_weight", getattr(a, "vlb_weight", 0.0), 0.0)


def learns_variance(a: argparse.Namespace) -> bool:
    return getattr(a, "variance_type", "fixed") == "learned_range"


def network_target(a: argparse.Namespace) -> str | None:
    """ "mean" or "score" when the UNet predicts one of them (converted to epsilon for the schedulers), else None."""
    return a.prediction_type if a.prediction_type in NETWORK_TARGETS else None


def denoiser_training_scheduler(a: argparse.Namespace):
    """The training noise scheduler of the flags: epsilon for the mean and score targets (the pipelines convert
    them), DDPM's learned_range variance for a UNet that learns it."""
    from condiff.models import training_scheduler

    scheduler_prediction = "epsilon" if network_target(a) else a.prediction_type
    variance = "learned_range" if learns_variance(a) else "fixed_small"
    return training_scheduler(a.noise_schedule, scheduler_prediction, a.num_train_timesteps, True, variance)


def unet_output_channels(a: argparse.Namespace, channels: int) -> int:
    """The image's channels, twice them for a UNet that learns its variance."""
    return channels * (2 if learns_variance(a) else 1)


def build_denoiser(a: argparse.Namespace, channels: int, num_classes: int | None):
    """(UNet, training noise scheduler) for the flags; `num_classes=None` gives an unconditional UNet."""
    from condiff.models import class_conditional_condition_unet, class_conditional_unet

    scheduler = denoiser_training_scheduler(a)
    out_channels = unet_output_channels(a, channels)
    if getattr(a, "architecture", "UNet2DModel") == "UNet2DConditionModel":
        blocks = tuple(a.block_out_channels)
        unet = class_conditional_condition_unet(
            num_classes, a.resolution, channels, blocks, a.layers_per_block, a.norm_num_groups,
            out_channels=out_channels,
        )  # fmt: skip
        return load_init_unet(unet, a), scheduler
    unet = class_conditional_unet(
        num_classes,
        a.resolution,
        channels,
        tuple(a.block_out_channels),
        a.layers_per_block,
        a.attention,
        a.norm_num_groups,
        out_channels=out_channels,
    )
    return load_init_unet(unet, a), scheduler


def save_grid(images: list, rows: int, path):
    """Save `images` as a grid of `rows` rows (creating the folder) and return it."""
    from diffusers.utils import make_image_grid

    grid = make_image_grid(images, rows=rows, cols=len(images) // rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid


def class_grid(pipe, num_classes: int, per_class: int, guidance_scale: float, steps: int | None, path):
    """`per_class` images of every class from a class-conditional pipeline, seed 0, saved as a grid (rows =
    classes): the validation and card grid of the tasks that export a `ClassConditionalDDPMPipeline`."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        label=[c for c in range(num_classes) for _ in range(per_class)],
        guidance_scale=guidance_scale,
        num_inference_steps=steps,
        generator=torch.Generator(device="cpu").manual_seed(0),
    ).images
    return save_grid(images, num_classes, path)
