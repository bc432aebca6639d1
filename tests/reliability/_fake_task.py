"""A tiny non-diffusion task for fault injection into the engine: regression with a frozen output scale.

Run as a script (`python tests/reliability/_fake_task.py --output_dir D ...`) it trains through `condiff.train.main`
exactly as `scripts/train_*.py` do. `--fault KIND@N` injects a fault at the N-th loss computation of this process:
nan / inf (a non-finite loss), sigterm / sigint (a real signal to this process); `--sleep S` slows each loss
computation so that a test can kill the process mid-run.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from condiff.engine import Export, Modules, Task

CARD = str(Path(__file__).with_name("fake_card.md"))


class TinyRegressor(ModelMixin, ConfigMixin):
    @register_to_config
    def __init__(self, width: int = 8):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FakeTask(Task):
    name = "fake"
    description = "Regression on random data (engine tests)."
    defaults = {"train_batch_size": 8, "report_to": "none", "validation_steps": 100000, "lr_warmup_steps": 0}

    @classmethod
    def add_arguments(cls, p) -> None:
        p.add_argument("--num_examples", type=int, default=64)
        p.add_argument("--fault", default=None, help="nan@N, inf@N, sigterm@N or sigint@N")
        p.add_argument("--sleep", type=float, default=0.0)

    def __init__(self, args):
        super().__init__(args)
        self.calls = 0

    def dataset(self):
        g = torch.Generator().manual_seed(123)
        x = torch.randn(self.args.num_examples, 4, generator=g)
        return torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True).sin())

    def collate(self, rows):
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])

    def build(self) -> Modules:
        torch.manual_seed(self.args.seed)
        scale = torch.nn.Linear(1, 1)
        torch.nn.init.constant_(scale.weight, 2.0)
        torch.nn.init.constant_(scale.bias, 0.5)
        return Modules(trained={"regressor": TinyRegressor()}, frozen={"scale": scale})

    def loss(self, modules, batch, generator):
        x, y = batch
        self.calls += 1
        if self.args.sleep:
            time.sleep(self.args.sleep)
        jitter = 0.01 * torch.randn(x.shape, generator=generator, device=x.device)
        loss = F.mse_loss(modules.scale(modules.regressor(x + jitter)), y)
        kind, _, at = (self.args.fault or "none@0").partition("@")
        if self.calls == int(at):
            if kind in ("nan", "inf"):
                loss = loss * float(kind)
            elif kind in ("sigterm", "sigint"):
                os.kill(os.getpid(), getattr(signal, kind.upper()))
        return loss, {"jitter": jitter.abs().mean().item()}

    def validate(self, modules, step, output_dir):
        x, y = self.collate([self.dataset()[i] for i in range(16)])
        with torch.no_grad():
            return {"val_loss": F.mse_loss(modules.scale(modules.regressor(x)), y).item()}

    def export(self, modules, folder) -> Export:
        modules.regressor.save_pretrained(str(folder), safe_serialization=True)
        return Export(CARD, {"val_loss": self.validate(modules, 0, folder)["val_loss"]})


if __name__ == "__main__":
    from condiff.tasks import TASKS
    from condiff.train import main

    TASKS["fake"] = "_fake_task:FakeTask"
    main(["fake", *sys.argv[1:]])
