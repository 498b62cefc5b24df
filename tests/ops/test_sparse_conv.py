"""The sparse masked convolution (prunekit.ops.SparseConv2d, sparse_conv2d) against F.conv2d on the
masked dense weight: random and adversarial shapes, strides, paddings, dilations, batch sizes and
masks (all pruned, all kept, one weight, empty rows), float32 and float64. The random and network
shapes run with both builds of the CPU loops (AVX2 and default; the `cpu_build` fixture).
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.ops import (SparseConv2d, sparse_conv2d, sparse_conv2d_reference,
                          sparse_conv2d_schedule)

from helpers import DEVICES
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def random_mask(shape, density, generator):
    return torch.rand(shape, generator=generator) < density


def assert_matches_reference(conv, mask, x, device="cpu"):
    """The layer (on CPU with its tap plan) and the functional form (planning on the call) both
    equal the dense masked conv."""
    conv, x, mask = conv.to(device), x.to(device), mask.to(device)
    sparse = SparseConv2d.from_conv(conv, mask)
    got = sparse(x)
    assert (sparse.plan is not None) == (device == "cpu")
    unplanned = sparse_conv2d(x, sparse.values, sparse.row_offsets, sparse.columns,
                              sparse.kernel_size, sparse.bias, sparse.stride, sparse.padding,
                              sparse.dilation)
    want = sparse_conv2d_reference(x, conv.weight.detach(), mask, conv.bias,
                                   sparse.stride, sparse.padding, sparse.dilation)
    assert got.shape == want.shape and got.dtype == want.dtype and got.device == want.device
    torch.testing.assert_close(got, want.detach(), **TOLERANCE[x.dtype])
    torch.testing.assert_close(unplanned, want.detach(), **TOLERANCE[x.dtype])
    return got


def conv_layer(in_channels, out_channels, kernel, generator, dtype=torch.float32, bias=True,
               **options):
    conv = nn.Conv2d(in_channels, out_channels, kernel, bias=bias, **options).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, dtype=dtype))
        if bias:
            conv.bias.copy_(torch.randn(out_channels, generator=generator, dtype=dtype))
    return conv


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("seed", range(24))
def test_random_layers_equal_the_masked_dense_conv(seed, dtype, device):
    generator = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (), generator=generator))

    kernel = (draw(1, 5), draw(1, 5))
    options = dict(stride=(draw(1, 3), draw(1, 3)), padding=(draw(0, 3), draw(0, 3)),
                   dilation=(draw(1, 4), draw(1, 4)))
    span = [d * (k - 1) + 1 for d, k in zip(options["dilation"], kernel)]
    height, width = span[0] + draw(0, 40), span[1] + draw(0, 70)  # odd widths and long rows
    conv = conv_layer(draw(1, 9), draw(1, 9), kernel, generator, dtype, bias=seed % 3 > 0,
                      **options)
    x = torch.randn(draw(1, 3), conv.in_channels, height, width, generator=generator, dtype=dtype)
    mask = random_mask(conv.weight.shape, [0.05, 0.3, 0.9][seed % 3], generator)
    assert_matches_reference(conv, mask, x, device)


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape, options", [
    ((64, 64, 3), dict(padding=1)),                  # ResNet 3x3
    ((32, 16, 3), dict(padding=2, dilation=2)),      # DeepLab dilated
    ((32, 16, 3), dict(padding=4, dilation=4)),
    ((256, 64, 1), dict()),                          # 1x1: one run over the whole plane
    ((64, 32, 1), dict(stride=2)),                   # 1x1 downsampling
    ((16, 16, 3), dict(stride=2, padding=1)),        # strided 3x3
    ((8, 8, 3), dict(stride=(2, 1), padding=1)),     # height stride only
    ((8, 8, (1, 7)), dict(padding=(0, 3))),          # non-square kernels
    ((8, 8, (7, 1)), dict(padding=(3, 0))),
])
@pytest.mark.parametrize("width", [7, 31, 32, 33, 56])
def test_network_layer_shapes(shape, options, width, device):
    generator = torch.Generator().manual_seed(width)
    in_channels, out_channels, kernel = shape
    conv = conv_layer(in_channels, out_channels, kernel, generator, **options)
    x = torch.randn(2, in_channels, 9, width, generator=generator)
    assert_matches_reference(conv, random_mask(conv.weight.shape, 0.1, generator), x, device)


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kernel, options, in_channels", [
    (3, dict(padding=1), 3),                 # rows in tiles, or one run over padded rows
    (3, dict(padding=6, dilation=6), 3),     # wide border: tiles skip its columns
    (1, dict(), 3),                          # one run of the plane, read in place
    (1, dict(), 200),                        # the same in runs of 8 vectors (64+ kept weights)
    ((3, 1), dict(padding=(1, 0)), 3),       # one run, bordered above and below
    (3, dict(stride=(2, 1), padding=1), 3),  # tiles of rows two input rows apart
])
def test_every_tile_shape(kernel, options, in_channels, dtype):
    """The CPU kernel sums a row of outputs in runs of 1 to 8 whole vectors (8 floats or 4
    doubles), stacking up to 8 short rows in one tile, or a band of rows as one run; the last
    tile of a band may be short of rows or start early. Widths 1-70 and long rows, heights that
    leave every remainder, and planes of several bands cover each case on both dtypes."""
    generator = torch.Generator().manual_seed(11)
    conv = conv_layer(in_channels, 4, kernel, generator, dtype, **options)
    sizes = [(heights[width % 4], width) for width in range(1, 71)
             for heights in ((1, 3, 9, 13), (2, 5, 11, 17))]
    sizes += [(5, 100), (7, 131), (37, 29), (50, 41), (33, 33)]
    for height, width in sizes:
        x = torch.randn(2, in_channels, height, width, generator=generator, dtype=dtype)
        assert_matches_reference(conv, random_mask(conv.weight.shape, 0.4, generator), x)


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dilation, stride", [(6, 1), (7, 1), ((7, 9), 1), (12, 1), (24, 1),
                                              (5, 2), ((9, 3), (1, 2)), ((2, 30), 1)])
def test_taps_that_never_reach_the_image(dilation, stride, device):
    """ASPP on a small feature map: with padding as large as the dilation, most taps only ever
    read padding (the CPU kernel leaves them out and narrows the border), the rest part of the
    image."""
    generator = torch.Generator().manual_seed(3)
    conv = conv_layer(16, 8, 3, generator, padding=dilation, dilation=dilation, stride=stride)
    x = torch.randn(2, 16, 8, 10, generator=generator)
    for density in (0.1, 0.5, 1.0):
        assert_matches_reference(conv, random_mask(conv.weight.shape, density, generator), x,
                                 device)


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kernel, padding, dilation", [(3, 2, 1), (1, 40, 1), (3, 31, 30),
                                                       (3, (1, 25), 1)])
def test_outputs_larger_than_the_input_with_no_tap_on_it(kernel, padding, dilation, device):
    """Padding beyond the kernel's reach: outputs outside the image are the bias alone, also when
    no kept weight ever lands on the image (all pruned, or only taps off the image kept)."""
    generator = torch.Generator().manual_seed(5)
    conv = conv_layer(4, 3, kernel, generator, padding=padding, dilation=dilation)
    x = torch.randn(2, 4, 6, 7, generator=generator)
    none = torch.zeros(conv.weight.shape, dtype=torch.bool)
    corners = none.clone()
    if kernel == 3:
        corners[:, :, 0, 0] = corners[:, :, 2, 2] = True  # off an 6x7 image at dilation 30
    for mask in (none, corners, random_mask(conv.weight.shape, 0.5, generator)):
        assert_matches_reference(conv, mask, x, device)


@pytest.mark.parametrize("device", DEVICES)
def test_an_infinite_weight_on_padding_alone_gives_nan_as_the_dense_conv_does(device):
    generator = torch.Generator().manual_seed(4)
    conv = conv_layer(2, 3, 3, generator, padding=24, dilation=24)
    with torch.no_grad():
        conv.weight[1, 0, 0, 0] = math.inf  # a corner tap: never on an 8x10 image, 0 * inf
    x = torch.randn(1, 2, 8, 10, generator=generator)
    mask = torch.ones(conv.weight.shape, dtype=torch.bool)
    got = SparseConv2d.from_conv(conv, mask).to(device)(x.to(device)).cpu()
    want = F.conv2d(x, conv.weight.detach(), conv.bias.detach(), padding=24, dilation=24)
    torch.testing.assert_close(got, want, equal_nan=True)
    assert got[0, 1].isnan().all() and got[0, 0].isfinite().all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", ["all pruned", "all kept", "one weight", "empty rows"])
def test_adversarial_masks(case, device):
    generator = torch.Generator().manual_seed(0)
    conv = conv_layer(5, 6, 3, generator, padding=1)
    x = torch.randn(3, 5, 11, 13, generator=generator)
    mask = torch.zeros(conv.weight.shape, dtype=torch.bool)
    if case == "all kept":
        mask.fill_(True)
    elif case == "one weight":
        mask[4, 2, 0, 2] = True
    elif case == "empty rows":
        mask[::2] = random_mask(mask[::2].shape, 0.5, generator)
    got = assert_matches_reference(conv, mask, x, device)
    if case == "all pruned":  # only the bias is left
        assert torch.equal(got, conv.bias.detach().to(device).view(1, -1, 1, 1).expand_as(got))


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kernel, options", [(1, dict()), (3, dict(padding=1)),
                                             (3, dict(padding=2, dilation=2, stride=(1, 2)))])
@pytest.mark.parametrize("channels", [5, 16, 37])
def test_inputs_in_any_layout(channels, kernel, options, dtype, device):
    """Channels-last inputs (copied into the kernel's planes a block of channels at a time, never
    made contiguous whole), views whose columns or channels are strided, and a broadcast image
    give the dense conv's outputs; only a contiguous input is read in place."""
    generator = torch.Generator().manual_seed(channels)
    conv = conv_layer(channels, 6, kernel, generator, dtype, **options)
    mask = random_mask(conv.weight.shape, 0.5, generator)
    wide = torch.randn(2, 2 * channels, 11, 26, generator=generator, dtype=dtype)
    inputs = {
        "channels last": wide[:, :channels, :, :13].contiguous(
            memory_format=torch.channels_last),
        "every other column": wide[:, :channels, :, ::2],
        "every other channel": wide[:, ::2],
        "one image broadcast": wide[:1, :channels, :, :13].expand(3, -1, -1, -1),
    }
    for name, x in inputs.items():
        assert not x.is_contiguous(), name
        got = assert_matches_reference(conv, mask, x, device)
        assert got.is_contiguous()
        if device == "cpu":
            words = SparseConv2d.from_conv(conv, mask).schedule(x)
            assert "in place" not in words
            if kernel == 1:
                assert "in place" in SparseConv2d.from_conv(conv, mask).schedule(x.contiguous())


@pytest.mark.usefixtures("cpu_build")
@pytest.mark.parametrize("padding,dilation", [(1, 1), (3, 3), (6, 6)])
def test_a_bordered_image_after_a_nan_one_reads_zeros_in_its_border(padding, dilation):
    """Bordered images share one buffer whose border is zeroed once per call, and a thread keeps
    it from call to call: an image after one of NaNs (in the batch, or in the call before, whose
    NaNs the kept buffer still holds) must read zeros in its border and only its own pixels."""
    generator = torch.Generator().manual_seed(9)
    conv = conv_layer(4, 5, 3, generator, padding=padding, dilation=dilation)
    mask = random_mask(conv.weight.shape, 0.6, generator)
    sparse = SparseConv2d.from_conv(conv, mask)
    poisoned = torch.full((1, 4, 9, 11), math.nan)
    finite = torch.randn(2, 4, 9, 11, generator=generator)
    sparse(poisoned)
    got = sparse(torch.cat([poisoned, finite]))
    want = F.conv2d(finite, conv.weight.detach() * mask, conv.bias.detach(), padding=padding,
                    dilation=dilation)
    assert got[0].isnan().all()
    torch.testing.assert_close(got[1:], want, **TOLERANCE[torch.float32])
    torch.testing.assert_close(sparse(finite), want, **TOLERANCE[torch.float32])


@pytest.mark.parametrize("device", DEVICES)
def test_batch_of_zero_images_and_values_beyond_finite(device):
    generator = torch.Generator().manual_seed(1)
    conv = conv_layer(3, 4, 3, generator, padding=1)
    mask = random_mask(conv.weight.shape, 0.5, generator)
    empty = SparseConv2d.from_conv(conv, mask).to(device)(torch.empty(0, 3, 8, 8, device=device))
    assert empty.shape == (0, 4, 8, 8)
    x = torch.randn(1, 3, 8, 8, generator=generator)
    x[0, :, 2, 3] = math.inf
    x[0, :, 5, 5] = -math.inf
    x[0, 0, 6, 1] = math.nan
    only_kept = torch.zeros_like(mask)
    only_kept[:, :, 1, 1] = True  # centre taps only: each output reads its own pixel
    got = SparseConv2d.from_conv(conv, only_kept).to(device)(x.to(device))
    # the dense masked conv would spread inf and NaN through 0 * inf; a 1x1 conv has no zeros
    want = F.conv2d(x, conv.weight.detach()[:, :, 1:2, 1:2], conv.bias.detach())
    torch.testing.assert_close(got.cpu(), want, equal_nan=True)
    assert got[0, :, 6, 1].isnan().all() and got[0, :, 0, 0].isfinite().all()


def test_a_nan_read_only_by_pruned_weights_does_not_spread():
    """Pruned weights are never multiplied, so 0 * NaN = NaN of the dense conv does not happen."""
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    mask = torch.zeros(conv.weight.shape, dtype=torch.bool)
    mask[0, 0, 1, 1] = True
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 0] = math.nan
    got = SparseConv2d.from_conv(conv, mask)(x)
    assert got[0, 0, 0, 0].isnan() and got[0, 0, 1, 1].item() == 0.0


def test_from_conv_keeps_nonzero_weights_without_a_mask_and_round_trips_the_weight():
    generator = torch.Generator().manual_seed(2)
    conv = conv_layer(4, 3, 3, generator, padding=1)
    mask = random_mask(conv.weight.shape, 0.4, generator)
    with torch.no_grad():
        conv.weight.mul_(mask)
    sparse = SparseConv2d.from_conv(conv)
    assert sparse.values.numel() == int(mask.sum())
    assert sparse.density == pytest.approx(float(mask.float().mean()))
    assert torch.equal(sparse.dense_weight(), conv.weight.detach())
    assert "density=" in repr(sparse)


def test_state_dict_round_trip():
    generator = torch.Generator().manual_seed(3)
    conv = conv_layer(4, 3, 3, generator, padding=1)
    mask = random_mask(conv.weight.shape, 0.4, generator)
    sparse = SparseConv2d.from_conv(conv, mask)
    fresh = SparseConv2d.from_conv(conv, mask)
    with torch.no_grad():
        fresh.values.zero_()
    assert set(sparse.state_dict()) == {"values", "bias", "row_offsets", "columns"}
    fresh.load_state_dict(sparse.state_dict())
    x = torch.randn(1, 4, 6, 6, generator=generator)
    assert torch.equal(fresh(x), sparse(x))


@pytest.mark.parametrize("padding, expected", [("same", (2, 1)), ("valid", (0, 0))])
def test_string_paddings(padding, expected):
    generator = torch.Generator().manual_seed(4)
    conv = conv_layer(2, 2, (5, 3), generator, padding=padding)
    sparse = SparseConv2d.from_conv(conv, random_mask(conv.weight.shape, 0.5, generator))
    assert sparse.padding == expected
    x = torch.randn(1, 2, 9, 8, generator=generator)
    torch.testing.assert_close(sparse(x), F.conv2d(x, sparse.dense_weight(), conv.bias,
                                                   padding=padding))


@pytest.mark.parametrize("make, message", [
    (lambda: nn.Conv2d(4, 4, 3, groups=2), "groups=1"),
    (lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"), "pads with zeros"),
    (lambda: nn.Conv2d(2, 2, 2, padding="same"), "asymmetrically"),
    (lambda: nn.Linear(2, 2), "expected an nn.Conv2d"),
])
def test_layers_it_cannot_take_are_refused(make, message):
    layer = make()
    with pytest.raises((ValueError, TypeError), match=message):
        SparseConv2d.from_conv(layer, torch.ones_like(layer.weight, dtype=torch.bool))


def test_bad_masks_and_inputs_are_refused():
    conv = nn.Conv2d(2, 3, 3)
    with pytest.raises(ValueError, match="bool mask of shape"):
        SparseConv2d.from_conv(conv, torch.ones(3, 2, 3))
    sparse = SparseConv2d.from_conv(conv, torch.ones_like(conv.weight, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected input \[N, 2, H, W\]"):
        sparse(torch.ones(1, 3, 5, 5))
    with pytest.raises(RuntimeError, match="larger than the padded input"):
        sparse(torch.ones(1, 2, 2, 5))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        sparse(torch.ones(1, 2, 5, 5, dtype=torch.float16))


@pytest.mark.parametrize("row_offsets, columns, message", [
    ([0, 1, 3], [0, 1, 99], "columns must lie in"),
    ([0, 3, 2, 3], [0, 1, 2], "must not decrease"),
    ([0, 1, 2], [0, 1, 2], "from 0 to nnz"),
    ([1, 2, 3], [0, 1, 2], "from 0 to nnz"),
])
def test_malformed_csr_rows_are_refused(row_offsets, columns, message):
    with pytest.raises(RuntimeError, match=message):
        sparse_conv2d(torch.ones(1, 2, 4, 4), torch.ones(3), torch.tensor(row_offsets),
                      torch.tensor(columns, dtype=torch.int32), 3)


@pytest.mark.parametrize("shape, size, how", [
    ((256, 64), (56, 56), "runs of 32, 8 bands x 1 group, in place"),
    ((1024, 256), (14, 14), "runs of 64, 2 bands x 10 groups, in place"),
])
def test_a_1x1_layer_gives_threads_bands_before_groups(shape, size, how):
    """With 2 threads (4 tasks each), a 1x1 layer on 56x56 is cut in 8 bands of one group, each
    input byte read once (every group reads its band again); 14x14 (196 positions) is not cut
    below 128 positions a band: its 2 bands (their input within L2) get groups of channels. With
    about 102 kept weights a channel (25 for 256->64), its runs are 8 vectors long, not 4."""
    generator = torch.Generator().manual_seed(0)
    conv = conv_layer(*shape, 1, generator)
    layer = SparseConv2d.from_conv(conv, random_mask(conv.weight.shape, 0.1, generator))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert layer.schedule(torch.randn(1, shape[0], *size, generator=generator)) == how
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shape, options, size, dtype, how", [
    ((256, 64, 1), dict(), (56, 56), torch.float32,
     r"runs of 32, \d+ bands? x \d+ groups?, in place"),
    ((16, 16, 3), dict(padding=1), (14, 14), torch.float32, r"runs of 64 \+ border, "),
    ((16, 16, 3), dict(padding=6, dilation=6), (30, 40), torch.float32, r"tiles 1x40, "),
    ((16, 16, 3), dict(padding=6, dilation=6), (30, 40), torch.float64, r"tiles 1x20, "),
    ((16, 16, 3), dict(padding=1), (7, 7), torch.float32, r"runs of 64 \+ border, 1 band x "),
    ((16, 16, 3), dict(padding=1, stride=2), (28, 28), torch.float32, r"strided, "),
])
def test_the_schedule_says_how_a_call_is_cut(shape, options, size, dtype, how):
    """`sparse_conv2d_schedule` (and `SparseConv2d.schedule`, which `bench model` prints): 1x1
    layers in runs of up to 4 vectors read in place; a 3x3 layer on 14x14 as one run over its
    16-wide bordered rows (fewer positions than tiles of 16 columns by 4 rows); dilation 6 on
    40-wide rows in tiles of 5 vectors (a run would sum the 12 border columns of each row); 7x7
    as one run of 61 positions over its 9-wide rows (an 8x8 tile sums as many); other width
    strides position by position."""
    generator = torch.Generator().manual_seed(0)
    conv = conv_layer(*shape, generator, dtype, **options)
    layer = SparseConv2d.from_conv(conv, random_mask(conv.weight.shape, 0.1, generator))
    x = torch.randn(1, shape[0], *size, generator=generator, dtype=dtype)
    assert re.match(how, layer.schedule(x)), layer.schedule(x)
    assert layer.schedule(x.to("meta")) == "meta"  # the CPU kernel's words only; a GPU: "cuda"
    assert layer.schedule(x) == sparse_conv2d_schedule(
        x, layer.values, layer.row_offsets, layer.columns, layer.kernel_size, layer.stride,
        layer.padding, layer.dilation)
