"""Filter removal rebuilds a smaller model with the same function as the masked one."""
import pytest
import torch

from prunekit import PrunekitError
from prunekit.models import build_model
from prunekit.models.deeplab import DilatedResNet
from prunekit.models.surgery import (channel_groups, count_macs, count_parameters,
                                     kept_channels, remove_filters, shrink_to, zero_filters)

CHANNELS = {"seg": 13, "depth": 1, "normal": 3}
IMAGE = torch.randn(2, 3, 32, 40, generator=torch.Generator().manual_seed(5))
STREAMS = ["backbone.conv1.weight", "backbone.layer2.0.downsample.0.weight",
           "backbone.layer3.0.downsample.0.weight", "backbone.layer4.0.downsample.0.weight"]


def model_with_statistics(seed=0, width=0.125):
    """A small DeepLab-ResNet whose BatchNorm layers hold non-trivial scales, shifts and running
    statistics."""
    torch.manual_seed(seed)
    model = build_model("deeplab-resnet34", CHANNELS, width)
    model.train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        for _ in range(2):
            model(torch.randn(2, 3, 32, 40))
    return model.eval()


def random_filter_masks(model, keep=0.5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for group in channel_groups(model):
        mask = torch.rand(group.channels, generator=generator) < keep
        mask[torch.randint(group.channels, (1,), generator=generator)] = True  # never empty
        masks[group.name] = mask
    return masks


def assert_same_outputs(actual_model, expected_model, image=IMAGE):
    with torch.no_grad():
        expected, actual = expected_model(image), actual_model(image)
    for task in CHANNELS:
        torch.testing.assert_close(actual[task], expected[task], rtol=1e-4, atol=1e-5)


def test_groups_cover_blocks_aspp_and_every_residual_stream():
    groups = {group.name: group for group in channel_groups(model_with_statistics())}
    assert [name for name in groups if "downsample" in name or name == STREAMS[0]] == STREAMS
    assert "backbone.layer1.0.conv1.weight" in groups  # block-internal names as before
    assert "heads.seg.branches.3.3.weight" in groups
    assert "heads.seg.branches.3.6.weight" not in groups  # the heads' outputs stay
    stem = groups["backbone.conv1.weight"]  # layer1 has no downsample: its blocks extend the stem
    assert stem.weight_names() == ["backbone.conv1.weight"] + [
        f"backbone.layer1.{i}.conv2.weight" for i in range(3)]
    assert len(stem.readers) == 3 + 2  # conv1 of layer1's blocks, layer2.0's conv1 and downsample
    last = groups[STREAMS[-1]]
    assert last.weight_names()[:2] == [STREAMS[-1], "backbone.layer4.0.conv2.weight"]
    assert len(last.readers) == 2 + 4 * len(CHANNELS)  # layer4.1/2 conv1, ASPP branches' conv 0


def test_removal_gives_the_masked_models_outputs_on_every_group():
    masks = random_filter_masks(model_with_statistics())
    assert set(STREAMS) <= set(masks)
    masked = zero_filters(model_with_statistics(), masks)
    smaller = remove_filters(model_with_statistics(), masks)
    assert any(isinstance(getattr(m, "downsample", None), torch.nn.Sequential)
               for m in smaller.modules())  # residual paths with downsampling are covered
    assert_same_outputs(smaller, masked)


def test_zeroed_stream_channels_stay_zero_through_the_blocks():
    model = model_with_statistics()
    masks = {name: torch.arange(channels) % 3 != 0
             for name, channels in kept_channels(model).items() if name in STREAMS}
    zero_filters(model, masks)
    seen = {}
    hooks = [getattr(model.backbone, name).register_forward_hook(
        lambda module, inputs, output, name=name: seen.update({name: output}))
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4")]
    with torch.no_grad():
        model(IMAGE)
    for hook in hooks:
        hook.remove()
    # each stage's output is the stream started by its downsample, or the stem's for layer1
    for name, stream in zip(["maxpool", "layer1", "layer2", "layer3", "layer4"],
                            [STREAMS[0], *STREAMS]):
        assert seen[name][:, ~masks[stream]].abs().max() == 0
        assert seen[name][:, masks[stream]].abs().max() > 0


def test_removal_shrinks_exactly_the_kept_channels():
    model = model_with_statistics()
    masks = random_filter_masks(model)
    before = count_parameters(model)
    remove_filters(model, masks)
    for group in channel_groups(model):
        kept = int(masks[group.name].sum())
        for _, conv, bn in group.producers:
            assert conv.out_channels == kept
            if bn is not None:
                assert bn.num_features == kept and bn.running_mean.shape == (kept,)
        assert all(reader.in_channels == kept for reader in group.readers)
    assert kept_channels(model) == {name: int(mask.sum()) for name, mask in masks.items()}
    assert model.backbone.out_channels == int(masks[STREAMS[-1]].sum())
    assert count_parameters(model) < before


@pytest.mark.parametrize("name", [
    "backbone.conv1.weight", "backbone.layer2.0.downsample.0.weight",
    "backbone.layer4.0.downsample.0.weight", "backbone.layer3.2.conv1.weight",
    "heads.seg.branches.1.0.weight", "heads.depth.branches.2.3.weight",
])
def test_removal_cost_predicts_the_parameters_removed(name):
    model = model_with_statistics()
    group = next(group for group in channel_groups(model) if group.name == name)
    mask = torch.ones(group.channels, dtype=torch.bool)
    mask[1::3] = False
    before, predicted = count_parameters(model), int((~mask).sum()) * group.removal_cost()
    remove_filters(model, {name: mask})
    assert before - count_parameters(model) == predicted


def test_macs_count_convolutions_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    # 8x10 outputs: 4 channels x (3 x 3 x 3) + 2 channels x 4 per pixel
    assert count_macs(conv, (8, 10)) == 8 * 10 * (4 * 27 + 2 * 4)


def test_removal_lowers_macs_and_parameters_of_the_model():
    model = model_with_statistics()
    masks = {name: torch.arange(channels) % 2 == 0
             for name, channels in kept_channels(model).items()}
    macs, params = count_macs(model, (32, 40)), count_parameters(model)
    remove_filters(model, masks)
    assert count_macs(model, (32, 40)) < macs and count_parameters(model) < params
    before = kept_channels(model_with_statistics())
    assert kept_channels(model) == {name: (n + 1) // 2 for name, n in before.items()}


def test_a_second_removal_works_on_the_rebuilt_modules():
    masked, smaller = model_with_statistics(), model_with_statistics()
    for seed in (1, 2):
        masks = random_filter_masks(smaller, seed=seed)
        remove_filters(smaller, masks)
        # the same channels, as masks of the original shapes, on the masked model
        if seed == 1:
            first = masks
            zero_filters(masked, masks)
        else:
            combined = {}
            for name, keep in first.items():
                mask = keep.clone()
                mask[keep.nonzero().squeeze(1)] = masks[name]
                combined[name] = mask
            zero_filters(masked, combined)
    assert_same_outputs(smaller, masked)


def test_shrink_to_rebuilds_the_shapes_of_an_exported_model():
    smaller = remove_filters(model_with_statistics(), random_filter_masks(model_with_statistics()))
    state, counts = smaller.state_dict(), kept_channels(smaller)
    rebuilt = shrink_to(model_with_statistics(seed=3), counts)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in state.items()}
    rebuilt.load_state_dict(state, strict=True)
    assert rebuilt.backbone.out_channels == smaller.backbone.out_channels
    assert_same_outputs(rebuilt.eval(), smaller)


def test_a_backbone_alone_keeps_its_output_channels():
    torch.manual_seed(0)
    net = DilatedResNet(width=0.125).eval()
    names = [group.name for group in channel_groups(net)]
    assert "conv1.weight" in names and "layer3.0.downsample.0.weight" in names
    assert "layer4.0.downsample.0.weight" not in names  # its readers are outside the model
    masks = random_filter_masks(net)
    image = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = zero_filters(net, masks)(image)
        actual = remove_filters(net, masks)(image)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert channel_groups(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))) == []


@pytest.mark.parametrize("bad,message", [
    ({"heads.seg.branches.0.6.weight": torch.ones(13, dtype=torch.bool)},
     "unknown removable channel group.*backbone.conv1.weight"),
    ({"backbone.layer1.0.conv1.weight": torch.ones(3, dtype=torch.bool)}, "must be a bool"),
    ({"backbone.layer1.0.conv1.weight": torch.ones(8)}, "must be a bool"),
    ({"backbone.conv1.weight": torch.zeros(8, dtype=torch.bool)}, "removes every channel"),
])
def test_bad_filter_masks_are_clear_errors(bad, message):
    for function in (remove_filters, zero_filters):
        with pytest.raises(PrunekitError, match=message):
            function(model_with_statistics(), bad)


@pytest.mark.parametrize("counts,message", [
    ({"backbone.layer1.0.conv1.weight": 9}, "has 8 channels"),
    ({"backbone.conv1.weight": 0}, "removes every channel"),
    ({"backbone.fc.weight": 2}, "unknown removable channel group"),
])
def test_bad_counts_are_clear_errors(counts, message):
    with pytest.raises(PrunekitError, match=message):
        shrink_to(model_with_statistics(), counts)
