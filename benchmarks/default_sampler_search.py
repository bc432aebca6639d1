"""Quality of candidate default samplers for the shipped model (steps x guidance interval x scale x scheduler).

Quality only (1,000 samples each, 100 per class): run it where sampling is fast (a GPU); speed on the CPU is
measured by sampler_speed.py. Used to choose the shipped default; results in benchmarks/results/.

    python benchmarks/default_sampler_search.py 1 benchmarks/results/default_sampler_search_round1.json
    python benchmarks/default_sampler_search.py 2 benchmarks/results/default_sampler_search_round2.json
    python benchmarks/default_sampler_search.py 3 benchmarks/results/default_sampler_search_round3.json MODEL_FOLDER

Round 3 (issue 10's retrained teacher, passed as MODEL_FOLDER): DPM-Solver++ around the shipped default path,
guidance intervals and scales at <= 14 network evaluations per image.
"""

import json
import sys

import torch
from lib.textbook import textbook_sample, textbook_scheduler

from condiff.evaluation import balanced_labels, evaluate_images, evaluate_pipeline
from condiff.loading import load_pipeline
from condiff.models import scheduler_for

KEYS = ("accuracy", "frechet_distance", "floor", "fd_ratio", "fd_ratio_matched", "nfe_per_image")


def main() -> None:
    round_, out, model = sys.argv[1], sys.argv[2], (sys.argv[3] if len(sys.argv) > 3 else None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = load_pipeline(model, device=device)
    base = pipe.scheduler.config
    rows = []

    def ev(name, steps, scale, interval=(0.0, 1.0), rescale=0.0, seed=0, **sched_kwargs):
        pipe.scheduler = scheduler_for(name, base)
        if sched_kwargs:
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, **sched_kwargs)
        r = evaluate_pipeline(
            pipe, guidance_scale=scale, num_per_class=100, num_inference_steps=steps, batch_size=1000, seed=seed,
            guidance_interval=interval, guidance_rescale=rescale,
        )  # fmt: skip
        row = dict(
            sampler=name, steps=steps, scale=scale, interval=interval, rescale=rescale, seed=seed, **sched_kwargs
        )
        row.update({k: r[k] for k in KEYS})
        rows.append(row)
        print(json.dumps(row), flush=True)

    if round_ == "1":
        for steps in (10, 15, 20, 25):
            for interval in ((0.0, 1.0), (0.1, 0.9), (0.2, 0.8), (0.3, 0.7), (0.2, 1.0), (0.0, 0.8)):
                ev("dpm++2m", steps, 3.0, interval)
        for scale in (0.0, 1.0, 1.5, 2.0, 3.0, 5.0):
            ev("dpm++2m", 20, scale)
        for name in ("ddim", "unipc", "euler"):
            for steps in (10, 20):
                ev(name, steps, 3.0)
    elif round_ == "3":
        for interval in ((0.3, 0.6), (0.2, 0.6), (0.3, 0.7), (0.4, 0.7), (0.2, 0.5)):
            ev("dpm++2m", 10, 3.0, interval)
        for scale in (2.0, 4.0):
            ev("dpm++2m", 10, scale, (0.3, 0.6))
        ev("dpm++2m", 12, 3.0, (0.3, 0.5))
    else:
        for interval in ((0.0, 0.6), (0.1, 0.6), (0.2, 0.6), (0.0, 0.5), (0.2, 0.5), (0.3, 0.6)):
            for steps in (10, 15):
                for seed in (0, 1):
                    ev("dpm++2m", steps, 3.0, interval, seed=seed)
        for kwargs in ({"thresholding": False}, {"clip_sample": False}, {"timestep_spacing": "trailing"}):
            ev("ddim", 20, 3.0, **kwargs)
        # The textbook sampler (1000 DDPM steps, two separate forward passes per step) at the same scale.
        labels = balanced_labels(10, 100)
        for seed in (0, 1):
            images, nfe = textbook_sample(
                pipe.unet, textbook_scheduler(base), labels, 3.0, torch.Generator(device).manual_seed(seed)
            )
            r = evaluate_images(images, labels)
            row = dict(sampler="textbook-ddpm-1000", steps=1000, scale=3.0, seed=seed, nfe_per_image=nfe)
            row.update({k: r[k] for k in KEYS if k in r})
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
