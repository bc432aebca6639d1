import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMScheduler  # noqa: E402

from condiff import ClassConditionalDDPMPipeline  # noqa: E402
from condiff.models import class_conditional_unet  # noqa: E402

NUM_CLASSES = 3


def tiny_unet(num_classes: int = NUM_CLASSES, seed: int = 0):
    torch.manual_seed(seed)
    return class_conditional_unet(num_classes, sample_size=8, channels=1, block_out_channels=(8, 16), norm_num_groups=4)


def tiny_pipeline(prediction_type: str = "epsilon") -> ClassConditionalDDPMPipeline:
    scheduler = DDPMScheduler(
        num_train_timesteps=50, beta_schedule="squaredcos_cap_v2", prediction_type=prediction_type
    )
    # eval mode, as `from_pretrained` returns a UNet: train mode takes other CPU kernels (outputs ~1e-6 apart)
    unet = tiny_unet().eval()
    pipe = ClassConditionalDDPMPipeline(unet=unet, scheduler=scheduler, id2label={0: "zero", 1: "one", 2: "two"})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe() -> ClassConditionalDDPMPipeline:
    return tiny_pipeline()


SAMPLE_WITHOUT_CONDIFF = """
import sys, torch
sys.modules["condiff"] = None  # make any import of condiff fail
from diffusers import DiffusionPipeline
folder, code, out, call = sys.argv[1:5]
pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline=code, trust_remote_code=True)
assert "condiff" not in type(pipe).__module__, type(pipe).__module__
pipe.set_progress_bar_config(disable=True)
images = pipe(generator=torch.Generator().manual_seed(0), output_type="pt", **eval(call)).images
torch.save(images, out)
print(type(pipe).__module__)
"""


def sample_without_condiff(folder, out, call: str, code=None) -> tuple[torch.Tensor, str]:
    """Load `folder` through diffusers' custom-pipeline mechanism (code from `code`, default the folder itself) in a
    subprocess where condiff cannot be imported, and call it with `eval(call)` (a dict literal of arguments) and a
    generator seeded 0. Returns (images as "pt", the pipeline class's module)."""
    import subprocess
    import sys

    args = [sys.executable, "-c", SAMPLE_WITHOUT_CONDIFF, str(folder), str(code or folder), str(out), call]
    # CPU results are bit-identical only at the same thread count (reductions split differently)
    threads = str(torch.get_num_threads())
    result = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": threads},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True), result.stdout.strip().splitlines()[-1]


TEXT_WIDTH = 32


@pytest.fixture(scope="session")
def encoder_folder(tmp_path_factory) -> str:
    """A tiny random BERT with all-MiniLM-L6-v2's tokenizer, saved as a folder (a text encoder named by path)."""
    from condiff.pipelines.text_encoding import DEFAULT_TEXT_ENCODER, resolve_text_encoder
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-encoder")
    torch.manual_seed(0)
    config = BertConfig(hidden_size=TEXT_WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).eval().save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_text_encoder(DEFAULT_TEXT_ENCODER)).save_pretrained(folder)
    return str(folder)


def latents_after_first_step(sample, pipe, **kwargs) -> torch.Tensor:
    """The latents after the first denoising step of `sample(pipe, callback_on_step_end=..., **kwargs)` (the call is
    interrupted there)."""
    seen = []

    def grab(p, i, t, tensors):
        seen.append(tensors["latents"].clone())
        p._interrupt = True
        return {}

    sample(pipe, callback_on_step_end=grab, **kwargs)
    return seen[0]
