"""Sparse masked convolution against the dense convolution (oneDNN on CPU, cuDNN on CUDA), fp32.

Run with:  make bench   (or .venv/bin/python -m pytest benchmarks -k sparse_conv)
           add  -k "batch1"  or  -k "3x3"  to pick cases.

Layers of ResNet-50 and of the DeepLab-ResNet34 backbone (the dilated ones at NYUv2's 288x384
input, output stride 8: 36x48), batch 1 and 8, sparsities 0.7 to 0.95 (random unstructured
masks, as a saliency top-k leaves them):

  dense    F.conv2d on the masked weight (zeros still multiplied): the baseline.
  sparse   prunekit.ops.SparseConv2d: only kept weights are multiplied.

The summary's ratio is sparse's median over dense's: below 1 the sparse kernel is faster, and
1 / ratio is the speed-up. CUDA cases run when a GPU is present (cuDNN defaults, TF32 allowed).
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.ops import SparseConv2d, cuda_compiled

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_compiled() else [])
# name: (in_channels, out_channels, kernel, height, width, padding, dilation)
LAYERS = {
    "3x3-64@56x56": (64, 64, 3, 56, 56, 1, 1),
    "3x3-128@28x28": (128, 128, 3, 28, 28, 1, 1),
    "3x3-256@14x14": (256, 256, 3, 14, 14, 1, 1),
    "3x3-512@7x7": (512, 512, 3, 7, 7, 1, 1),
    "3x3d2-256@36x48": (256, 256, 3, 36, 48, 2, 2),
    "3x3d4-512@36x48": (512, 512, 3, 36, 48, 4, 4),
    "1x1-256to64@56x56": (256, 64, 1, 56, 56, 0, 1),
    "1x1-1024to256@14x14": (1024, 256, 1, 14, 14, 0, 1),
}
SPARSITIES = [0.7, 0.8, 0.9, 0.95]
BATCHES = [1, 8]


def layer(name, sparsity, batch, device):
    in_channels, out_channels, kernel, height, width, padding, dilation = LAYERS[name]
    generator = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation)
    mask = torch.rand(conv.weight.shape, generator=generator) >= sparsity
    with torch.no_grad():
        conv.weight.mul_(mask)
    x = torch.randn(batch, in_channels, height, width, generator=generator)
    return conv.to(device).eval(), mask.to(device), x.to(device)


def timed(forward, device):
    def run(x):
        with torch.no_grad():
            y = forward(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return y
    return run


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("sparsity", SPARSITIES, ids=lambda s: f"sparsity{s}")
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("device", DEVICES)
def test_sparse_conv_speed(benchmark, device, name, batch, sparsity, method):
    conv, mask, x = layer(name, sparsity, batch, device)
    sparse = SparseConv2d.from_conv(conv, mask)
    forward = conv if method == "dense" else sparse
    benchmark.group = f"{device} {name} batch{batch} sparsity{sparsity}"
    benchmark.extra_info.update(device=device, layer=name, batch=batch, sparsity=sparsity,
                                method=method, baseline="dense")
    y = benchmark.pedantic(timed(forward, device), args=(x,), rounds=10 if batch == 1 else 5,
                           iterations=1, warmup_rounds=2)
    # what was timed, checked outside the timing
    with torch.no_grad():
        want = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(y, want, rtol=1e-3, atol=1e-3)
