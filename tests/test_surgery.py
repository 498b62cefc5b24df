"""Filter removal rebuilds a smaller model with the same function as the masked one."""
import pytest
import torch

from prunekit import PrunekitError
from prunekit.models import build_model
from prunekit.models.surgery import (count_macs, count_parameters, remove_filters,
                                     removable_filters, zero_filters)

CHANNELS = {"seg": 13, "depth": 1, "normal": 3}


def model_with_statistics(seed=0):
    """A small DeepLab-ResNet whose BatchNorm layers hold non-trivial running statistics."""
    torch.manual_seed(seed)
    model = build_model("deeplab-resnet34", CHANNELS, 0.125)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, 32, 40))
    return model.eval()


def random_filter_masks(model, keep=0.5, seed=1):
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    for name, conv, _, _ in removable_filters(model):
        mask = torch.rand(conv.out_channels, generator=generator) < keep
        mask[torch.randint(conv.out_channels, (1,), generator=generator)] = True  # never empty
        masks[name] = mask
    return masks


def test_removal_gives_the_masked_models_outputs_on_blocks_with_downsample_paths():
    masks = random_filter_masks(model_with_statistics())
    masked = zero_filters(model_with_statistics(), masks)
    smaller = remove_filters(model_with_statistics(), masks)
    assert any(isinstance(getattr(m, "downsample", None), torch.nn.Sequential)
               for m in smaller.modules())  # residual paths with downsampling are covered
    image = torch.randn(2, 3, 32, 40)
    with torch.no_grad():
        expected, actual = masked(image), smaller(image)
    for task in CHANNELS:
        torch.testing.assert_close(actual[task], expected[task], rtol=1e-4, atol=1e-5)


def test_removal_shrinks_exactly_the_kept_channels():
    model = model_with_statistics()
    masks = random_filter_masks(model)
    before = count_parameters(model)
    remove_filters(model, masks)
    for name, conv, bn, reader in removable_filters(model):
        kept = int(masks[name].sum())
        assert conv.out_channels == kept and reader.in_channels == kept
        if bn is not None:
            assert bn.num_features == kept and bn.running_mean.shape == (kept,)
    assert count_parameters(model) < before


def test_macs_count_convolutions_by_hand():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    # 8x10 outputs: 4 channels x (3 x 3 x 3) + 2 channels x 4 per pixel
    assert count_macs(conv, (8, 10)) == 8 * 10 * (4 * 27 + 2 * 4)


def test_removal_lowers_macs_and_parameters_of_the_model():
    model = model_with_statistics()
    masks = {name: torch.arange(conv.out_channels) % 2 == 0
             for name, conv, _, _ in removable_filters(model)}
    macs, params = count_macs(model, (32, 40)), count_parameters(model)
    remove_filters(model, masks)
    assert count_macs(model, (32, 40)) < macs and count_parameters(model) < params


@pytest.mark.parametrize("bad,message", [
    ({"backbone.conv1.weight": torch.ones(8, dtype=torch.bool)}, "not a removable filter"),
    ({"backbone.layer1.0.conv1.weight": torch.ones(3, dtype=torch.bool)}, "must be a bool"),
    ({"backbone.layer1.0.conv1.weight": torch.zeros(8, dtype=torch.bool)}, "removes every"),
])
def test_bad_filter_masks_are_clear_errors(bad, message):
    with pytest.raises(PrunekitError, match=message):
        remove_filters(model_with_statistics(), bad)
