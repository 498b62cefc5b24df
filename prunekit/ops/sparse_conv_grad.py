"""Gradients of ``sparse_conv2d``, so a ``SparseConv2d`` trains (sparse training: only the kept
weights exist, so only they are updated).

The op's autograd formula calls ``sparse_conv2d_backward``: on CPU the C++ kernel (the input's
gradient through the transposed sparse weight, the kept weights' gradients as one dot product
each); on CUDA ``sparse_conv2d_backward_reference``, which forms the dense weight and uses
torch's convolution gradients, then keeps the kept positions. The reference is also the CPU
kernel's test oracle.
"""
from __future__ import annotations

import torch

from .. import _C  # noqa: F401  (registers torch.ops.prunekit.*)
from .csr import value_rows, weight_from_rows


def sparse_conv2d_backward_reference(grad_output, input, values, row_offsets, columns,
                                     kernel_size, stride, padding, dilation):
    """(grad_input, grad_values) by dense convolution gradients."""
    weight = weight_from_rows(values, row_offsets, columns, input.shape[1], kernel_size)
    grad_input = torch.nn.grad.conv2d_input(input.shape, weight, grad_output, stride, padding,
                                            dilation)
    grad_weight = torch.nn.grad.conv2d_weight(input, weight.shape, grad_output, stride, padding,
                                              dilation)
    kept = (value_rows(row_offsets), columns.long())
    return grad_input, grad_weight.reshape(weight.shape[0], -1)[kept]


@torch.library.register_kernel("prunekit::sparse_conv2d_backward", "cuda")
def _backward_on_cuda(grad_output, input, values, row_offsets, columns, kernel_size, stride,
                      padding, dilation):
    return sparse_conv2d_backward_reference(grad_output, input, values, row_offsets, columns,
                                            kernel_size, stride, padding, dilation)


@torch.library.register_fake("prunekit::sparse_conv2d_backward")
def _backward_shapes(grad_output, input, values, row_offsets, columns, kernel_size, stride,
                     padding, dilation):
    return input.new_empty(input.shape), values.new_empty(values.shape)  # contiguous, as returned


def _save_for_backward(ctx, inputs, output):
    input, values, row_offsets, columns, bias, kernel_size, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(input, values, row_offsets, columns)
    ctx.geometry = (kernel_size, stride, padding, dilation)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    if torch.is_grad_enabled():  # create_graph=True: the backward op has no gradient of its own
        raise RuntimeError("sparse_conv2d has no second derivative (double backward)")
    input, values, row_offsets, columns = ctx.saved_tensors
    grad_input, grad_values = torch.ops.prunekit.sparse_conv2d_backward(
        grad_output.contiguous(), input, values, row_offsets, columns, *ctx.geometry)
    grad_bias = grad_output.sum((0, 2, 3)) if ctx.has_bias else None
    return grad_input, grad_values, None, None, grad_bias, None, None, None, None, None


torch.library.register_autograd("prunekit::sparse_conv2d", _backward,
                                setup_context=_save_for_backward)
