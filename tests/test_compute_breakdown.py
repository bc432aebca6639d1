"""Where a sampling call's time goes (benchmarks/lib/compute_breakdown.py): operator kinds, the convolutions' share of
the counted FLOPs, the profiled call and the throughput variants, which leave the pipeline as they found it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_pipeline

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from lib.compute import unet_forward_flops  # noqa: E402
from lib.compute_breakdown import conv_flops_share, op_kind, op_time_shares, sampling_variants  # noqa: E402


@pytest.mark.parametrize(
    "name, kind",
    [
        ("aten::mkldnn_convolution", "convolution"),
        ("aten::cudnn_convolution", "convolution"),
        ("aten::addmm", "matmul"),  # not "elementwise arithmetic", although the name contains "add"
        ("aten::mm", "matmul"),
        ("aten::native_group_norm", "normalisation"),
        ("aten::silu", "activation"),
        ("aten::copy_", "copies, layout, resampling"),
        ("aten::upsample_nearest2d", "copies, layout, resampling"),
        ("aten::add", "elementwise arithmetic"),
        ("aten::empty", "other"),
    ],
)
def test_operator_kinds(name, kind):
    assert op_kind(name) == kind


def test_conv_share_matches_the_convolutions_counted_by_hand():
    unet = tiny_pipeline().unet
    conv_flops = []

    def count(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
        conv_flops.append(2 * output.numel() * k)

    hooks = [m.register_forward_hook(count) for m in unet.modules() if isinstance(m, torch.nn.Conv2d)]
    share = conv_flops_share(unet)
    for h in hooks:
        h.remove()
    total = unet_forward_flops(unet, 1)
    assert 0 < share < 1  # the time and class embeddings are matmuls
    assert share * total == pytest.approx(sum(conv_flops), rel=1e-6)


def test_profiled_call_splits_its_time_by_operator_kind():
    pipe = tiny_pipeline()
    report = op_time_shares(pipe, 6, 3.0)
    kinds = {k["kind"]: k for k in report["kinds"]}
    assert report["batch_size"] == 6 and report["nfe_per_image"] == pipe(label=0, output_type="pt").nfe_per_image
    assert {"convolution", "normalisation", "activation"} <= kinds.keys()
    assert sum(k["share"] for k in report["kinds"]) == pytest.approx(1.0)
    assert sum(k["seconds"] for k in report["kinds"]) == pytest.approx(report["self_seconds_total"])
    assert [k["seconds"] for k in report["kinds"]] == sorted((k["seconds"] for k in report["kinds"]), reverse=True)


def test_variants_leave_the_pipeline_as_they_found_it():
    pipe = tiny_pipeline()
    pipe.register_to_config(micro_batch_size=4)
    pipe.unet.to(memory_format=torch.channels_last)
    unet, before = pipe.unet, pipe(label=[0, 1, 2] * 3, output_type="pt", generator=torch.manual_seed(0)).images
    rows = sampling_variants(pipe, 9, 3.0, micro_batch_sizes=(2, 4, 16, None), repeats=1, compile_unet=False)
    names = [r["name"] for r in rows]
    assert names == [
        "micro-batch 2",
        "micro-batch 4 (the pipeline's)",
        "micro-batch 9",  # 16 >= the batch is the whole batch, measured once
        "UNet forwards alone, micro-batch 4, channels_last",
        "UNet forwards alone, micro-batch 4, contiguous (NCHW)",
    ]
    assert all(r["images_per_second"] == pytest.approx(9 / r["seconds"]) for r in rows)
    assert pipe.unet is unet and pipe.config.micro_batch_size == 4
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    after = pipe(label=[0, 1, 2] * 3, output_type="pt", generator=torch.manual_seed(0)).images
    torch.testing.assert_close(after, before)
