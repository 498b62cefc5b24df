"""Gradients of the sparse masked convolution against the dense masked convolution's: the input's
gradient, the kept weights' (the pruned weights have none), the bias's; and sparse training."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.ops import SparseConv2d
from prunekit.ops.sparse_conv_grad import sparse_conv2d_backward_reference

from helpers import DEVICES
TOLERANCE = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def random_layer(seed, dtype=torch.float64, density=None):
    """A conv with random geometry (strides, paddings up to beyond the kernel's reach,
    dilations), its random mask and an input batch."""
    generator = torch.Generator().manual_seed(seed)

    def draw(low, high):
        return int(torch.randint(low, high + 1, (), generator=generator))

    kernel = (draw(1, 4), draw(1, 4))
    dilation = (draw(1, 3), draw(1, 3))
    # half the seeds at unit strides: the backward's one-run-per-plane path
    stride = (1, 1) if seed % 2 else (draw(1, 3), draw(1, 3))
    conv = nn.Conv2d(draw(1, 6), draw(1, 6), kernel, stride=stride,
                     padding=(draw(0, 5), draw(0, 5)), dilation=dilation,
                     bias=seed % 3 > 0).to(dtype)
    span = [d * (k - 1) + 1 for d, k in zip(dilation, kernel)]
    x = torch.randn(draw(1, 3), conv.in_channels, span[0] + draw(0, 12), span[1] + draw(0, 15),
                    generator=generator, dtype=dtype)
    mask = torch.rand(conv.weight.shape, generator=generator) < (density or [0.1, 0.5, 0.9][seed % 3])
    return conv, mask, x


def dense_and_sparse_gradients(conv, mask, x, device):
    conv, mask, x = conv.to(device), mask.to(device), x.to(device)
    sparse = SparseConv2d.from_conv(conv, mask)
    grad_out = torch.randn(sparse(x).shape, dtype=x.dtype, device=device)
    x_dense, x_sparse = x.clone().requires_grad_(), x.clone().requires_grad_()
    weight = conv.weight.detach().clone().requires_grad_()
    bias = None if conv.bias is None else conv.bias.detach().clone().requires_grad_()
    (F.conv2d(x_dense, weight * mask, bias, conv.stride, conv.padding, conv.dilation)
     * grad_out).sum().backward()
    (sparse(x_sparse) * grad_out).sum().backward()
    return (x_dense, weight, bias), (x_sparse, sparse)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("seed", range(16))
def test_gradients_equal_the_dense_masked_convs(seed, dtype, device):
    conv, mask, x = random_layer(seed, dtype)
    (x_dense, weight, bias), (x_sparse, sparse) = dense_and_sparse_gradients(conv, mask, x, device)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(x_sparse.grad, x_dense.grad, **tolerance)
    kept = mask.to(device).reshape(conv.out_channels, -1)
    want = weight.grad.reshape(conv.out_channels, -1)[kept]  # row-major: the CSR order
    torch.testing.assert_close(sparse.values.grad, want, **tolerance)
    if bias is not None:
        torch.testing.assert_close(sparse.bias.grad, bias.grad, **tolerance)


@pytest.mark.parametrize("seed", range(6))
def test_gradcheck(seed):
    conv, mask, x = random_layer(seed, density=0.5)
    sparse = SparseConv2d.from_conv(conv, mask)

    def forward(x, values):
        return torch.ops.prunekit.sparse_conv2d(x, values, sparse.row_offsets, sparse.columns,
                                                None, sparse.kernel_size, sparse.stride,
                                                sparse.padding, sparse.dilation)
    assert torch.autograd.gradcheck(forward, (x.requires_grad_(), sparse.values.detach()
                                              .clone().requires_grad_()))


@pytest.mark.parametrize("seed", range(8))
def test_the_kernel_equals_the_reference_backward(seed):
    conv, mask, x = random_layer(seed)
    sparse = SparseConv2d.from_conv(conv, mask)
    grad_out = torch.randn(sparse(x).shape, dtype=x.dtype)
    args = (grad_out, x, sparse.values.detach(), sparse.row_offsets, sparse.columns,
            sparse.kernel_size, sparse.stride, sparse.padding, sparse.dilation)
    for got, want in zip(torch.ops.prunekit.sparse_conv2d_backward(*args),
                         sparse_conv2d_backward_reference(*args)):
        torch.testing.assert_close(got, want, **TOLERANCE[torch.float64])


@pytest.mark.parametrize("kernel, options", [
    (3, dict(padding=1)), (3, dict()), (1, dict()), ((3, 1), dict(padding=(1, 0))),
    ((1, 3), dict(padding=(0, 1))), (3, dict(padding=2, dilation=2)), (3, dict(padding=(0, 1))),
])
def test_unit_stride_layers_take_one_run_per_plane_and_equal_the_reference(kernel, options):
    generator = torch.Generator().manual_seed(8)
    conv = nn.Conv2d(5, 4, kernel, **options).double()
    for height, width in ((9, 11), (3, 17)):  # several rows; one output row when the kernel is 3
        x = torch.randn(2, 5, height, width, generator=generator, dtype=torch.double)
        mask = torch.rand(conv.weight.shape, generator=generator) < 0.5
        (x_dense, weight, _), (x_sparse, sparse) = dense_and_sparse_gradients(conv, mask, x, "cpu")
        torch.testing.assert_close(x_sparse.grad, x_dense.grad)
        torch.testing.assert_close(sparse.values.grad,
                                   weight.grad.reshape(conv.out_channels, -1)[mask.reshape(4, -1)])


@pytest.mark.parametrize("case", ["inf weight", "nan input"])
def test_values_beyond_finite_give_the_references_gradients(case):
    """The one-run path would meet them with its zero columns (0 * inf); such calls keep rows."""
    generator = torch.Generator().manual_seed(9)
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    mask = torch.ones(conv.weight.shape, dtype=torch.bool)
    x = torch.randn(1, 2, 6, 7, generator=generator, dtype=torch.double)
    if case == "inf weight":
        with torch.no_grad():
            conv.weight[0, 1, 0, 0] = torch.inf
    else:
        x[0, 0, 2, 6] = torch.nan  # the last column: a tap reaching right of it wraps onto it
    sparse = SparseConv2d.from_conv(conv, mask)
    grad_out = torch.randn(1, 2, 6, 7, generator=generator, dtype=torch.double)
    args = (grad_out, x, sparse.values.detach(), sparse.row_offsets, sparse.columns,
            sparse.kernel_size, sparse.stride, sparse.padding, sparse.dilation)
    for got, want in zip(torch.ops.prunekit.sparse_conv2d_backward(*args),
                         sparse_conv2d_backward_reference(*args)):
        torch.testing.assert_close(got, want, equal_nan=True)


def test_double_backward_is_refused():
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    sparse = SparseConv2d.from_conv(conv, torch.ones(conv.weight.shape, dtype=torch.bool))
    x = torch.randn(1, 2, 5, 5, dtype=torch.double, requires_grad=True)
    with pytest.raises(RuntimeError, match="no second derivative"):
        torch.autograd.grad(sparse(x).sum(), x, create_graph=True)


@pytest.mark.parametrize("case", ["all pruned", "no images", "taps off the image"])
def test_edge_cases(case):
    generator = torch.Generator().manual_seed(7)
    conv = nn.Conv2d(3, 2, 3, padding=24, dilation=24).double()
    mask = torch.rand(conv.weight.shape, generator=generator) < 0.5
    x = torch.randn(2, 3, 8, 10, generator=generator, dtype=torch.double)
    if case == "all pruned":
        mask.zero_()
    elif case == "no images":
        x = x[:0]
    (x_dense, weight, bias), (x_sparse, sparse) = dense_and_sparse_gradients(conv, mask, x, "cpu")
    torch.testing.assert_close(x_sparse.grad, x_dense.grad)
    torch.testing.assert_close(sparse.values.grad,
                               weight.grad.reshape(conv.out_channels, -1)[mask.reshape(2, -1)])
    torch.testing.assert_close(sparse.bias.grad, bias.grad)
    if case == "taps off the image":  # only centre taps ever see the 8x10 image at dilation 24
        off = mask.clone()
        off[:, :, 1, 1] = False
        assert not weight.grad[off].any()


def test_sparse_training_updates_only_kept_weights_as_masked_dense_training_does():
    conv, mask, x = random_layer(3, torch.float64, density=0.3)
    sparse = SparseConv2d.from_conv(conv, mask)
    dense = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                      conv.padding, conv.dilation, bias=conv.bias is not None).double()
    dense.load_state_dict(conv.state_dict())
    target = torch.randn(sparse(x).shape, dtype=torch.float64)
    sparse_step = torch.optim.SGD(sparse.parameters(), lr=0.1, momentum=0.9)
    dense_step = torch.optim.SGD(dense.parameters(), lr=0.1, momentum=0.9)
    for _ in range(5):
        for model, step in ((sparse, sparse_step), (dense, dense_step)):
            step.zero_grad()
            if model is dense:
                with torch.no_grad():
                    dense.weight.mul_(mask)
            F.mse_loss(model(x), target).backward()
            if model is dense:
                dense.weight.grad.mul_(mask)
            step.step()
    torch.testing.assert_close(sparse.dense_weight().detach(), dense.weight.detach() * mask)
    if conv.bias is not None:
        torch.testing.assert_close(sparse.bias.detach(), dense.bias.detach())
