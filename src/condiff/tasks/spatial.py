"""The spatial-conditioning task: a pixel-space `UNet2DConditionModel` whose input is [x_t, c], c a low-resolution
image brought to the output size (super-resolution, with noise augmentation and its level as an input) or a one-hot
semantic layout map; c is dropped (zeros) with `--p_uncond` for classifier-free guidance, and a class label may be
given too (`--class_labels`, dropped with `--p_uncond_label`).

Exported as a `SuperResolutionPipeline` or a `SemanticLayoutPipeline` with a model card. Heavy imports live inside
the methods: `--help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from condiff.engine.args import require_choice, require_int, require_real
from condiff.engine.task import Export, Modules
from condiff.tasks.denoiser import (
    add_denoiser_arguments,
    check_denoiser_args,
    denoiser_training_scheduler,
    learns_variance,
    load_init_unet,
    network_target,
    unet_output_channels,
)
from condiff.tasks.image_data import ImageDataTask

CONDITIONS = ("super_resolution", "layout")
NOISE_LEVEL_EMBEDDING_DIM = 64
VALIDATION_IMAGES = 8


class SpatialConditionTask(ImageDataTask):
    name = "spatial"
    description = (
        "Train a diffusion model conditioned by concatenation: super-resolution (a low-resolution image, noise-"
        "augmented) or semantic layout maps (which class goes where), with classifier-free guidance on the map."
    )

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        super().add_arguments(p)
        add_denoiser_arguments(p, parametrisations=True)
        g = p.add_argument_group("spatial condition")
        g.add_argument("--condition", choices=CONDITIONS, default="super_resolution")
        g.add_argument(
            "--low_resolutions", type=int, nargs="+", default=[7, 14],
            help="super-resolution: the input sizes trained on (area-downsampled), one drawn per image",
        )  # fmt: skip
        g.add_argument(
            "--max_noise_level", type=int, default=250,
            help="super-resolution: augmentation levels s ~ U{0..max} of the low-resolution input (0: none)",
        )  # fmt: skip
        g.add_argument("--layout_cell", type=int, default=4, help="layout: pixels per map cell (its downsampling)")
        g.add_argument(
            "--canvas_fraction", type=float, default=0.0,
            help="layout: probability that an example is a digit-sized crop (offset a multiple of --layout_cell) of a "
            "2x2 canvas of training digits, some slots empty: digits at any place and next to each other",
        )  # fmt: skip
        g.add_argument("--p_uncond", type=float, default=0.1, help="probability of dropping the spatial condition")
        g.add_argument("--class_labels", action="store_true", help="also condition on the class label")
        g.add_argument("--p_uncond_label", type=float, default=0.5, help="probability of dropping the class label")
        g.add_argument(
            "--input_classifier", type=Path, default=None,
            help="super-resolution with --class_labels: a classifier of the low-resolution inputs (`condiff train "
            "evaluator --input_resolution N` folder) exported with the pipeline for label=\"auto\"",
        )  # fmt: skip

    def check_args(self) -> None:
        a = self.args
        super().check_args()
        check_denoiser_args(a)
        require_choice("condition", a.condition, CONDITIONS)
        if a.architecture != "UNet2DConditionModel":
            raise ValueError("--architecture must be UNet2DConditionModel for the spatial task (timestep_cond input)")
        if not a.low_resolutions:
            raise ValueError("--low_resolutions needs at least one size")
        for size in a.low_resolutions:
            require_int("low_resolutions", size, 1, a.resolution - 1)
        require_int("max_noise_level", a.max_noise_level, 0, a.num_train_timesteps - 1)
        require_int("layout_cell", a.layout_cell, 1, a.resolution)
        if a.resolution % a.layout_cell:
            raise ValueError(f"--layout_cell {a.layout_cell} must divide --resolution {a.resolution}")
        require_real("p_uncond", a.p_uncond, 0.0, 1.0)
        require_real("canvas_fraction", a.canvas_fraction, 0.0, 1.0)
        if a.canvas_fraction and (a.condition != "layout" or a.class_labels):
            raise ValueError("--canvas_fraction needs --condition layout without --class_labels")
        require_real("p_uncond_label", a.p_uncond_label, 0.0, 1.0)
        if a.input_classifier is not None:
            input_classifier_resolution(a.input_classifier)
            if a.condition != "super_resolution" or not a.class_labels:
                raise ValueError("--input_classifier needs --condition super_resolution with --class_labels")

    @property
    def condition_channels(self) -> int:
        return self.data.channels if self.args.condition == "super_resolution" else self.data.num_classes + 1

    def build(self) -> Modules:
        from condiff.models import class_conditional_condition_unet

        a = self.args
        self.noise_scheduler = denoiser_training_scheduler(a)
        unet = class_conditional_condition_unet(
            self.data.num_classes if a.class_labels else None, a.resolution, self.data.channels,
            tuple(a.block_out_channels), a.layers_per_block, a.norm_num_groups,
            NOISE_LEVEL_EMBEDDING_DIM if a.condition == "super_resolution" else None, self.condition_channels,
            unet_output_channels(a, self.data.channels),
        )  # fmt: skip
        return Modules(trained={"unet": load_init_unet(unet, a)})

    def condition(self, images, labels, generator):
        """(spatial condition at the images' size, UNet keyword inputs) of one batch; noise from `generator`."""
        import torch

        from condiff.pipelines.spatial_conditions import (
            augment_low_resolution,
            downsample_area,
            layout_map,
            noise_level_embedding,
            one_hot_layout,
            upsample_bicubic,
        )  # fmt: skip

        a, size = self.args, images.shape[-2:]
        if a.condition == "layout":
            layout = layout_map(images, labels, a.layout_cell, self.data.num_classes)
            return one_hot_layout(layout, self.data.num_classes + 1, size), {}
        n, device = images.shape[0], images.device
        which = torch.randint(0, len(a.low_resolutions), (n,), generator=generator, device=device)
        levels = torch.randint(0, a.max_noise_level + 1, (n,), generator=generator, device=device)
        abar = self.noise_scheduler.alphas_cumprod
        cond = torch.zeros_like(images)
        for k, low_size in enumerate(a.low_resolutions):
            rows = which == k
            low = augment_low_resolution(downsample_area(images[rows], low_size), levels[rows], abar, generator)
            cond[rows] = upsample_bicubic(low, tuple(size))
        return cond, {"timestep_cond": noise_level_embedding(levels, NOISE_LEVEL_EMBEDDING_DIM).to(images.dtype)}

    def loss(self, modules: Modules, batch: dict, generator):
        from condiff.diffusion import denoising_loss, drop_labels
        from condiff.pipelines.spatial_conditions import drop_condition

        a, images, labels = self.args, batch["images"], batch["labels"]
        if a.canvas_fraction:
            images, labels = compose_canvas_crops(images, labels, a.canvas_fraction, a.layout_cell, generator)
        cond, inputs = self.condition(images, labels, generator)
        cond = drop_condition(cond, a.p_uncond, generator)
        if a.class_labels:
            inputs["class_labels"] = drop_labels(labels, self.data.num_classes, a.p_uncond_label, generator)
        loss = denoising_loss(
            modules.unet, self.noise_scheduler, images, generator, concat=cond, target=network_target(a),
            vlb_weight=a.vlb_weight, encoder_hidden_states=None, **inputs,
        )  # fmt: skip
        return loss, {}

    def pipeline(self, modules: Modules):
        """The exported pipeline around the (averaged) UNet, with the default sampling scheduler."""
        from condiff.models import default_sampling_scheduler
        from condiff.options import MICRO_BATCH_SIZE
        from condiff.pipelines import SemanticLayoutPipeline, SuperResolutionPipeline

        a = self.args
        scheduler = default_sampling_scheduler(self.noise_scheduler)
        common = {"id2label": dict(enumerate(self.data.label_names)), "micro_batch_size": MICRO_BATCH_SIZE,
                  "image_channels": self.data.channels, "prediction_target": network_target(a)}  # fmt: skip
        if a.condition == "layout":
            return SemanticLayoutPipeline(modules.unet, scheduler, layout_cell=a.layout_cell, **common)
        if a.input_classifier is not None:
            from condiff.evaluator import MnistClassifier

            common["classifier"] = MnistClassifier.from_pretrained(a.input_classifier, use_safetensors=True).eval()
            common["classifier_resolution"] = input_classifier_resolution(a.input_classifier)
        return SuperResolutionPipeline(modules.unet, scheduler, max_noise_level=a.max_noise_level, **common)

    def sample_grid(self, modules: Modules, path: Path):
        """Held-out digits: rows of (input | output | real), seed 0 (`condiff.evaluation.spatial` draws them)."""
        import torch
        import torch.nn.functional as F

        from condiff.evaluation.spatial import spatial_comparison_grid

        images, labels, _ = self.held_out(VALIDATION_IMAGES)
        labels, a = torch.as_tensor(labels).long(), self.args
        if images.shape[-1] != a.resolution:
            images = F.interpolate(images, size=(a.resolution, a.resolution), mode="area")
        pipe = self.pipeline(modules)
        return spatial_comparison_grid(pipe, images, labels, a.validation_inference_steps, path)

    def validate(self, modules: Modules, step: int, output_dir: Path) -> dict:
        return {"validation": self.sample_grid(modules, Path(output_dir) / "samples" / f"step-{step:07d}.png")}

    def export(self, modules: Modules, folder: Path) -> Export:
        from condiff.hub import count_unet_parameters, stage_pipeline_code

        a = self.args
        pipe = self.pipeline(modules)
        pipe.save_pretrained(folder, safe_serialization=True)
        stage_pipeline_code(folder, "semantic_layout.py" if a.condition == "layout" else "super_resolution.py")
        self.sample_grid(modules, folder / "samples" / "final.png")
        layout = a.condition == "layout"
        hint = None if a.input_classifier is None else input_classifier_resolution(a.input_classifier)
        fields = {
            "sample_grid": "samples/final.png",
            "inference_steps": a.validation_inference_steps,
            "num_parameters": f"{count_unet_parameters(folder) / 1e6:.2f}M",
            "condition_channels": self.condition_channels,
            "class_labels": "yes" if a.class_labels else "no",
            "low_resolutions": ", ".join(f"{s}x{s}" for s in a.low_resolutions),
            "max_noise_level": a.max_noise_level,
            "layout_cell": a.layout_cell,
            "canvas_fraction": a.canvas_fraction,
            "input_classifier": "none" if hint is None else f"{hint}x{hint} inputs",
            "prediction_type": a.prediction_type + (", learned variance (learned_range)" if learns_variance(a) else ""),
            "noise_schedule": a.noise_schedule,
            "sampler": type(pipe.scheduler).__name__,
            "evaluation": "Not evaluated yet: run `python benchmarks/spatial_conditioning.py "
            f"--{'layout' if layout else 'sr'}-model <this folder>`.",
        }
        template = "semantic_layout.md" if layout else "super_resolution.md"
        tags = ["semantic-layout" if layout else "super-resolution", "classifier-free-guidance"]
        return Export(template, fields, tags, pipeline_tag="image-to-image")


def input_classifier_resolution(folder: Path) -> int:
    """The input size an evaluator folder's classifier was trained on (its metrics.json), checked before training."""
    import json

    metrics = Path(folder) / "metrics.json"
    if not (Path(folder) / "config.json").is_file() or not metrics.is_file():
        raise ValueError(f"--input_classifier {folder} is not a trained evaluator folder (config.json, metrics.json)")
    size = json.loads(metrics.read_text()).get("input_resolution")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"--input_classifier {folder}: its metrics.json records no input_resolution")
    return size


def compose_canvas_crops(images, labels, fraction: float, cell: int, generator, p_empty: float = 0.25):
    """Replace each row, with probability `fraction`, by an image-sized crop of a 2x2 canvas of the batch's digits
    (each slot empty with probability `p_empty`) at an offset that is a multiple of `cell`, so the layout's cells
    stay within one slot. Returns (images, (N, H, W) per-pixel class ids for `layout_map`). A fully convolutional
    layout model trained on single centred digits learns that digits sit in the middle of the frame; crops teach it
    digits at any place, cut by the border or next to others, as they are on larger canvases."""
    import torch

    n, channels, h, w = images.shape
    device = images.device
    pixel_labels = labels.long().view(-1, 1, 1).expand(n, h, w).clone()
    rows = (torch.rand(n, generator=generator, device=device) < fraction).nonzero().flatten().tolist()
    picks = torch.randint(0, n, (len(rows), 4), generator=generator, device=device).tolist()
    empty = (torch.rand(len(rows), 4, generator=generator, device=device) < p_empty).tolist()
    offsets = (torch.randint(0, h // cell + 1, (len(rows), 2), generator=generator, device=device) * cell).tolist()
    composed = images.clone()
    for row, slots, blank, (dy, dx) in zip(rows, picks, empty, offsets):
        canvas = images.new_full((channels, 2 * h, 2 * w), -1.0)
        canvas_labels = torch.zeros(2 * h, 2 * w, dtype=torch.long, device=device)
        for slot, (pick, is_empty) in enumerate(zip(slots, blank)):
            r, c = divmod(slot, 2)
            if not is_empty:
                canvas[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = images[pick]
            canvas_labels[r * h : (r + 1) * h, c * w : (c + 1) * w] = labels[pick]
        composed[row], pixel_labels[row] = canvas[:, dy : dy + h, dx : dx + w], canvas_labels[dy : dy + h, dx : dx + w]
    return composed, pixel_labels
