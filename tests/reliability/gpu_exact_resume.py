"""Manual check for a CUDA machine (not collected by pytest): SIGKILL + resume == uninterrupted, with fp16 (the
GradScaler's state must come back too) and bf16 autocast.

    python tests/reliability/gpu_exact_resume.py --out results.json

On CUDA, convolution backward kernels are not bit-reproducible run to run, so the uninterrupted run is done twice
and the resumed run is compared against that floor: resumed-vs-uninterrupted must be no larger than a few times
uninterrupted-vs-uninterrupted (a resume that lost the scaler, the data position or the noise stream differs by
orders of magnitude more, as the CPU test shows: 3e-4 against 0).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _tiny import Spawned, max_abs_difference, tensors, train_command, wait_for  # noqa: E402


def run_case(precision: str, root: Path) -> dict:
    extra = ["--max_train_steps", "18", "--checkpointing_steps", "5", "--gradient_accumulation_steps", "2",
             "--mixed_precision", precision]  # fmt: skip
    dirs = {name: root / precision / name for name in ("a1", "a2", "b")}
    for name in ("a1", "a2"):
        assert Spawned(train_command(dirs[name], *extra), root / "logs", f"{precision}-{name}").wait(600) == 0
    b = Spawned(train_command(dirs["b"], *extra), root / "logs", f"{precision}-b")
    wait_for(lambda: (dirs["b"] / "checkpoint-5" / "condiff_complete.json").exists(), 600, b, poll=0.005)
    os.kill(b.proc.pid, signal.SIGKILL)
    b.wait(60)
    killed_before_end = not (dirs["b"] / "model_index.json").exists()
    resumed = Spawned(train_command(dirs["b"], *extra, "--resume_from_checkpoint", "latest"), root / "logs",
                      f"{precision}-b2")  # fmt: skip
    assert resumed.wait(600) == 0, resumed.stderr[-3000:]
    out = {"killed_before_end": killed_before_end, "checkpoint_files": sorted(
        p.name for p in (dirs["b"] / "checkpoint-15").iterdir())}  # fmt: skip
    for name in ("unet/diffusion_pytorch_model.safetensors", "checkpoint-15/model.safetensors"):
        floor = max_abs_difference(tensors(dirs["a1"] / name), tensors(dirs["a2"] / name))
        resumed_diff = max_abs_difference(tensors(dirs["a1"] / name), tensors(dirs["b"] / name))
        out[name] = {"uninterrupted_vs_uninterrupted": floor, "resumed_vs_uninterrupted": resumed_diff}
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="gpu_exact_resume.json")
    p.add_argument("--workdir", default="/tmp/condiff-gpu-resume")
    p.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    a = p.parse_args()
    import torch

    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "cases": {}}
    for precision in a.precisions:
        start = time.perf_counter()
        report["cases"][precision] = run_case(precision, Path(a.workdir))
        report["cases"][precision]["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(report["cases"][precision]), flush=True)
    Path(a.out).write_text(json.dumps(report, indent=2))
    subprocess.run(["nvidia-smi", "-L"], check=False)


if __name__ == "__main__":
    main()
