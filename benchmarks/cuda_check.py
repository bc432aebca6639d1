"""CUDA check (run on a GPU machine; not part of the CPU test suite): the same training and sampling code on CUDA.

    python benchmarks/cuda_check.py --out results/cuda_check.json

Trains a few hundred steps with --mixed_precision no/bf16/fp16 through `condiff train cfg`, then samples
the trained pipeline on CUDA in fp32 and fp16 and scores it with the evaluator.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from condiff import ClassConditionalDDPMPipeline
from condiff.evaluation import evaluate_pipeline
from condiff.train import main as train_main


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="benchmarks/results/cuda_check.json")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workdir", default="/tmp/condiff-cuda")
    p.add_argument("--precision", default=None, help="run one precision in this process (internal)")
    a = p.parse_args()
    assert torch.cuda.is_available(), "this check needs a CUDA device"
    if a.precision is None:  # one process per precision: Accelerate's state is a per-process singleton
        report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": {}}
        for precision in ("no", "bf16", "fp16"):
            one = Path(a.workdir) / f"{precision}.json"
            cmd = [sys.executable, __file__, "--precision", precision, "--out", str(one), "--steps", str(a.steps)]
            subprocess.run(cmd + ["--workdir", a.workdir], check=True)
            report["runs"][precision] = json.loads(one.read_text())
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(report, indent=2))
        return
    precision = a.precision
    out = Path(a.workdir) / precision
    argv = (
        ["cfg", "--output_dir", str(out), "--max_train_steps", str(a.steps), "--mixed_precision", precision,
         "--train_batch_size", "128", "--report_to", "tensorboard", "--checkpointing_steps", str(a.steps // 2),
         "--validation_steps", str(a.steps), "--prediction_type", "v_prediction", "--dataloader_num_workers", "2"]
    )  # fmt: skip
    start = time.perf_counter()
    train_main(argv)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "training_summary.json").read_text())
    results = {"train_seconds": round(seconds, 1), "summary": summary}
    for dtype in (torch.float32, torch.float16):
        pipe = ClassConditionalDDPMPipeline.from_pretrained(out, dtype=dtype).to("cuda")
        m = evaluate_pipeline(pipe, guidance_scale=3.0, num_per_class=50, batch_size=500)
        results[f"sample_{str(dtype).split('.')[-1]}"] = {
            k: m[k] for k in ("accuracy", "fd_ratio", "images_per_second", "nfe_per_image")
        }
    print(precision, json.dumps(results))
    Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
