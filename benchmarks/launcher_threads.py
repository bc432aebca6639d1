"""Training speed on a CPU by entry point: `python scripts/train_cfg.py`, `accelerate launch scripts/train_cfg.py`
(the README's command, where the launcher exports OMP_NUM_THREADS=1 and the engine then uses the cores per local
process) and `accelerate launch ... --num_threads 1` (what the launcher alone would give), alternated, one run.

    python benchmarks/launcher_threads.py [--steps 60] [--repeats 2]

Writes benchmarks/results/launcher_threads_cpu.{json,md}. Each run trains the default CFG model (batch 64) for
`--steps` optimizer steps; images/s come from the run's own training_summary.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from condiff.evaluation.reports import machine_info, markdown_table, write_report

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "python scripts/train_cfg.py": [sys.executable, "scripts/train_cfg.py"],
    "accelerate launch scripts/train_cfg.py": ["accelerate", "launch", "--num_processes", "1", "scripts/train_cfg.py"],
    "accelerate launch ... --num_threads 1": ["accelerate", "launch", "--num_processes", "1", "scripts/train_cfg.py",
                                              "--num_threads", "1"],
}  # fmt: skip


def one_run(command: list[str], steps: int, workdir: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=workdir))
    flags = ["--output_dir", str(out), "--max_train_steps", str(steps), "--report_to", "none",
             "--checkpointing_steps", "100000", "--validation_steps", "100000", "--validation_images_per_class", "1",
             "--validation_inference_steps", "2", "--lr_warmup_steps", "0"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    subprocess.run([*command, *flags], cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    summary = json.loads((out / "training_summary.json").read_text())
    return {"images_per_second": summary["images_per_second"], "torch_threads": summary["torch_threads"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "results")
    args = p.parse_args()
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as work:
        for _ in range(args.repeats):  # alternated, so that a noisy minute hits every variant alike
            for name, command in VARIANTS.items():
                runs[name].append(one_run(command, args.steps, Path(work)))
    base = statistics.median(r["images_per_second"] for r in runs["python scripts/train_cfg.py"])
    rows = []
    for name, found in runs.items():
        speed = statistics.median(r["images_per_second"] for r in found)
        rows.append({"command": name, "torch_threads": found[0]["torch_threads"], "images_per_second": speed,
                     "relative_to_python": speed / base, "runs": [r["images_per_second"] for r in found]})  # fmt: skip
    columns = [("command", "command", ""), ("threads", "torch_threads", "d"), ("images/s", "images_per_second", ".1f"),
               ("x python", "relative_to_python", ".2f")]  # fmt: skip
    report = {"steps": args.steps, "repeats": args.repeats, "machine": machine_info("cpu"), "rows": rows}
    markdown = f"# Training speed by entry point (CPU, {args.steps} steps, median of {args.repeats})\n\n"
    write_report(args.out_dir, "launcher_threads_cpu", report, markdown + markdown_table(rows, columns) + "\n")
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
