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
