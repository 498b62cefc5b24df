"""DeepLab-ResNet34 as in the DiSparse and AdapMTL experiments."""
import pytest
import torch
from torch import nn

from prunekit.errors import UnknownNameError
from prunekit.models import build_model
from prunekit.models.deeplab import ASPPHead, BasicBlock


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("deeplab-resnet34", {"seg": 13, "depth": 1, "normal": 3}, width=0.125)


def test_resnet34_block_layout_and_dilations(model):
    stages = [model.backbone.layer1, model.backbone.layer2, model.backbone.layer3,
              model.backbone.layer4]
    assert [len(s) for s in stages] == [3, 4, 6, 3]
    assert all(isinstance(b, BasicBlock) for s in stages for b in s)
    assert [s[0].conv1.stride[0] for s in stages] == [1, 2, 1, 1]
    assert [s[-1].conv2.dilation[0] for s in stages] == [1, 1, 2, 4]


def test_output_stride_8_and_predictions_at_input_size(model):
    x = torch.randn(2, 3, 64, 80)
    model.eval()
    with torch.no_grad():
        assert model.backbone(x).shape[-2:] == (8, 10)
        out = model(x)
    assert {t: tuple(o.shape) for t, o in out.items()} == {
        "seg": (2, 13, 64, 80), "depth": (2, 1, 64, 80), "normal": (2, 3, 64, 80)}


def test_one_aspp_head_per_task_with_four_summed_dilated_branches(model):
    assert set(model.heads) == {"seg", "depth", "normal"}
    for head in model.heads.values():
        assert isinstance(head, ASPPHead)
        assert [b[0].dilation[0] for b in head.branches] == [6, 12, 18, 24]
    head = model.heads["depth"]
    x = torch.randn(1, model.backbone.out_channels, 8, 10)
    head.eval()
    with torch.no_grad():
        assert torch.allclose(head(x), sum(b(x) for b in head.branches))


def test_width_scales_channels_and_layout_covers_every_conv():
    full = build_model("deeplab-resnet34", {"seg": 13}, width=1.0)
    assert full.backbone.conv1.out_channels == 64 and full.backbone.out_channels == 512
    layout = full.layout().resolve(full)
    convs = [n for n, m in full.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(layout.params) == len(convs)
    assert all(n.startswith("backbone.") for n in layout.shared)
    assert all(n.startswith("heads.seg.") for n in layout.heads["seg"])


def test_unknown_model_name():
    with pytest.raises(UnknownNameError, match="did you mean 'deeplab-resnet34'"):
        build_model("deeplab-resnet43", {"seg": 13})
