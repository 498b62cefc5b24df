"""Sparse masked convolution against the dense convolution (oneDNN on CPU, cuDNN on CUDA), fp32.

Run with:  make bench   (or .venv/bin/python -m pytest benchmarks -k sparse_conv)
           add  -k "batch1"  or  -k "3x3"  to pick cases.

Layers of ResNet-50 and of the DeepLab-ResNet34 backbone (prunekit.ops.conv_timing.REFERENCE_SHAPES,
the shapes `prunekit bench conv` times; the dilated ones at NYUv2's 288x384 input, output stride
8: 36x48), batch 1 and 8, sparsities 0.7 to 0.95 (random unstructured
masks, as a saliency top-k leaves them):

  dense    F.conv2d on the masked weight (zeros still multiplied): the baseline.
  sparse   prunekit.ops.SparseConv2d: only kept weights are multiplied.

test_sparse_conv_training_step_speed times forward + backward at batch 8 (sparse training:
gradients of the kept weights only, against the dense conv's gradients of every weight).

The summary's ratio is sparse's median over dense's: below 1 the sparse kernel is faster, and
1 / ratio is the speed-up. CUDA cases run when a GPU is present (cuDNN defaults, TF32 allowed).
"""
import pytest
import torch
import torch.nn.functional as F

from prunekit.ops.conv_timing import REFERENCE_SHAPES, random_masked_conv
from prunekit.ops import SparseConv2d, cuda_compiled

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_compiled() else [])
LAYERS = {shape.name.replace(",", "").replace(" ", "-"): shape for shape in REFERENCE_SHAPES}
SPARSITIES = [0.7, 0.8, 0.9, 0.95]
BATCHES = [1, 8]


def layer(name, sparsity, batch, device):
    shape = LAYERS[name]
    generator = torch.Generator().manual_seed(0)
    conv, mask = random_masked_conv(shape, sparsity, device, generator)
    x = torch.randn(batch, shape.in_channels, shape.height, shape.width, generator=generator)
    return conv, mask, x.to(device)


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


def training_step(conv, mask, sparse, method):
    """Forward and backward: the dense conv on the masked weight (gradients for every weight, as
    masked dense training computes them), or the sparse layer (kept weights only)."""
    weight = conv.weight.detach().clone().requires_grad_()

    def step(x, grad_out):
        if method == "dense":
            y = F.conv2d(x, weight * mask, conv.bias, conv.stride, conv.padding, conv.dilation)
        else:
            y = sparse(x)
        y.backward(grad_out)
        return y
    return step


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("sparsity", [0.9, 0.95], ids=lambda s: f"sparsity{s}")
@pytest.mark.parametrize("name", list(LAYERS))
def test_sparse_conv_training_step_speed(benchmark, name, sparsity, method):
    """Forward + backward at batch 8 on the CPU (sparse training against masked dense training)."""
    conv, mask, x = layer(name, sparsity, 8, "cpu")
    x.requires_grad_()
    sparse = SparseConv2d.from_conv(conv, mask)
    grad_out = torch.randn(sparse(x).shape, generator=torch.Generator().manual_seed(1))
    benchmark.group = f"cpu train {name} batch8 sparsity{sparsity}"
    benchmark.extra_info.update(device="cpu", layer=name, batch=8, sparsity=sparsity,
                                method=method, baseline="dense")
    benchmark.pedantic(training_step(conv, mask, sparse, method), args=(x, grad_out), rounds=5,
                       iterations=1, warmup_rounds=1)
