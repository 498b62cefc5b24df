"""Forward time of the default model before and after filter removal.

Run with:  make bench   (or .venv/bin/python -m pytest benchmarks -k surgery)

  dense          the default run's model (DeepLab-ResNet-34, width 0.125), evaluation mode.
  half_removed   the same model with every other channel of every channel group removed
                 (prunekit.models.surgery.remove_filters): block-internal, ASPP hidden and
                 residual-stream channels alike; a smaller dense model.

One forward pass of a batch of 8 images of 64x80; 60 rounds after 3 warm-up rounds. Each result's
extra_info also holds the model's parameters and MACs per image.
"""
import pytest
import torch

from prunekit.models import build_model
from prunekit.models.surgery import count_macs, count_parameters, kept_channels, remove_filters

CHANNELS = {"seg": 13, "depth": 1, "normal": 3}
IMAGES = torch.randn(8, 3, 64, 80, generator=torch.Generator().manual_seed(0))


def default_model(half_removed: bool):
    torch.manual_seed(0)
    model = build_model("deeplab-resnet34", CHANNELS, 0.125).eval()
    if half_removed:
        remove_filters(model, {name: torch.arange(channels) % 2 == 0
                               for name, channels in kept_channels(model).items()})
    return model


@pytest.mark.parametrize("method", ["dense", "half_removed"])
def test_forward_after_filter_removal(benchmark, method):
    model = default_model(method == "half_removed")
    benchmark.group = "filter removal, forward batch 8 64x80, cpu"
    benchmark.extra_info.update(method=method, baseline="dense",
                                parameters=count_parameters(model),
                                macs=count_macs(model, tuple(IMAGES.shape[-2:])))
    with torch.no_grad():
        benchmark.pedantic(model, args=(IMAGES,), rounds=60, warmup_rounds=3)
