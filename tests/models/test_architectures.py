"""The built-in architectures: DeepLab with ResNet-34, ResNet-50, VGG-16 and MobileNetV2 trunks."""
import pytest
import torch
from torch import nn

from prunekit import pipeline
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.models import MODELS, build_model
from prunekit.models.surgery import (channel_groups, kept_channels, remove_filters, shrink_to,
                                     zero_filters)

CHANNELS = {"seg": 13, "depth": 1, "normal": 3}
ARCHITECTURES = ["deeplab-resnet34", "deeplab-resnet50", "vgg16", "mobilenetv2"]


def test_every_architecture_is_listed():
    assert sorted(MODELS) == sorted(ARCHITECTURES)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_output_stride_eight_and_the_width_multiplier(name):
    small, wider = build_model(name, CHANNELS, 0.125), build_model(name, CHANNELS, 0.25)
    image = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert small.backbone(image).shape[-2:] == (8, 10)
        outputs = small.eval()(image)
    assert {task: tuple(out.shape) for task, out in outputs.items()} == {
        task: (1, channels, 64, 80) for task, channels in CHANNELS.items()}
    count = lambda model: sum(p.numel() for p in model.parameters())  # noqa: E731
    assert count(wider) > 2 * count(small)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_a_quick_pruning_pass_on_each_architecture(tmp_path, name):
    result = pipeline.run(RunConfig(out=str(tmp_path / "run"), model=name, **QUICK))
    report = result.report
    assert report["complete"] and abs(report["sparsity"]["achieved"] - 0.9) < 0.05
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    model = build_model(name, CHANNELS, QUICK["width"])
    convs = {f"{module_name}.weight" for module_name, module in model.named_modules()
             if isinstance(module, nn.Conv2d)}
    assert set(checkpoint["masks"]) == convs  # every conv of trunk and heads is prunable


def model_with_statistics(name):
    torch.manual_seed(0)
    model = build_model(name, CHANNELS, 0.125).train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model(torch.randn(2, 3, 32, 40))
    return model.eval()


@pytest.mark.parametrize("name", ["deeplab-resnet50", "vgg16", "mobilenetv2"])
def test_filter_removal_gives_the_masked_models_outputs(name):
    groups = channel_groups(model_with_statistics(name))
    if name == "deeplab-resnet50":  # bottleneck-internal groups and residual streams
        names = [group.name for group in groups]
        assert {"backbone.layer1.0.conv1.weight", "backbone.layer1.0.conv2.weight",
                "backbone.layer2.0.downsample.0.weight"} <= set(names)
        stem = next(group for group in groups if group.name == "backbone.conv1.weight")
        assert "backbone.layer1.0.conv3.weight" not in stem.weight_names()  # layer1 downsamples
    else:  # the trunks have no removal rules: only the heads' hidden channels are groups
        assert all(group.name.startswith("heads.") for group in groups)
    generator = torch.Generator().manual_seed(1)
    masks = {}
    for group in groups:
        mask = torch.rand(group.channels, generator=generator) < 0.5
        mask[0] = True
        masks[group.name] = mask
    masked = zero_filters(model_with_statistics(name), masks)
    smaller = remove_filters(model_with_statistics(name), masks)
    image = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected, actual = masked(image), smaller(image)
    for task in CHANNELS:
        torch.testing.assert_close(actual[task], expected[task], rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in smaller.parameters()) < sum(
        p.numel() for p in masked.parameters())
    if name == "deeplab-resnet50":  # the trunk's output width follows the last stream
        last_stream = masks["backbone.layer4.0.downsample.0.weight"]
        assert smaller.backbone.out_channels == int(last_stream.sum())
        rebuilt = shrink_to(build_model(name, CHANNELS, 0.125), kept_channels(smaller))
        rebuilt.load_state_dict(smaller.state_dict(), strict=True)


def test_structured_pruning_warns_when_the_trunk_has_no_removal_rules(tmp_path):
    warnings = []
    pipeline.run(RunConfig(out=str(tmp_path / "run"), model="vgg16", mode="iterative",
                         scorer="taylor", params_ratio=0.9, **QUICK),
               warn=warnings.append)
    assert any("no channel-removal rules for its shared trunk" in w for w in warnings)
