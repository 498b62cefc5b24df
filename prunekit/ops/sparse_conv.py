"""Sparse masked convolution: a pruned conv layer that multiplies only its kept weights.

``SparseConv2d.from_conv(conv, mask)`` stores the kept weights of ``conv.weight`` as CSR rows, one
per output channel (values, and each value's column in the flattened (in-channel, kh, kw)
filter), and its forward calls the ``sparse_conv2d`` kernel of prunekit._C: no im2col of the
input, no densified weight. ``sparse_conv2d_reference`` is ``F.conv2d`` on the masked dense weight,
the oracle of the tests. The op has gradients (prunekit/ops/sparse_conv_grad.py), so the layer
trains: its kept weights and bias are parameters, the pruned weights do not exist. The op has a
shape function, so models holding the layer go through ``torch.export``.

On CPU the kernel first plans where each kept weight reads the input, which depends on the input's
height and width; ``sparse_conv2d_plan`` makes that plan once, and ``SparseConv2d`` keeps it per
input size (for a 512-channel 7x7 layer at 90% sparsity, planning took longer than the
convolution).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import _C  # noqa: F401  (registers torch.ops.prunekit.sparse_conv2d)
from .csr import csr_rows, weight_from_rows


def _pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _geometry(kernel_size, stride, padding, dilation) -> tuple[tuple[int, int], ...]:
    return (_pair(kernel_size, "kernel_size"), _pair(stride, "stride"),
            _pair(padding, "padding"), _pair(dilation, "dilation"))


def sparse_conv2d(input: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor,
                  columns: torch.Tensor, kernel_size, bias: torch.Tensor | None = None,
                  stride=1, padding=0, dilation=1,
                  plan: torch.Tensor | None = None) -> torch.Tensor:
    """``conv2d`` (groups 1) of ``input`` [N, C, H, W] with a weight given as CSR rows.

    Row ``oc`` (output channel) holds ``values[row_offsets[oc]:row_offsets[oc + 1]]`` at the
    flattened (in-channel, kh, kw) positions ``columns[...]``; every other weight is zero and is
    never multiplied. float32 or float64. ``plan`` (CPU only): ``sparse_conv2d_plan`` of the same
    rows, geometry and input size, to skip planning the taps; a plan made for another geometry
    or size is refused, but one made from other columns cannot be told apart.
    """
    return torch.ops.prunekit.sparse_conv2d(
        input, values, row_offsets, columns, bias,
        *_geometry(kernel_size, stride, padding, dilation), plan)


def sparse_conv2d_plan(input: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor,
                       columns: torch.Tensor, kernel_size, stride=1, padding=0,
                       dilation=1) -> torch.Tensor:
    """Where each kept weight reads inputs of ``input``'s height and width (CPU), as one int64
    tensor for ``sparse_conv2d(..., plan=)``. It holds no values: it stays valid while
    ``row_offsets`` and ``columns`` do."""
    return torch.ops.prunekit.sparse_conv2d_plan(
        input, values.detach(), row_offsets, columns,
        *_geometry(kernel_size, stride, padding, dilation))


def sparse_conv2d_schedule(input: torch.Tensor, values: torch.Tensor, row_offsets: torch.Tensor,
                           columns: torch.Tensor, kernel_size, stride=1, padding=0,
                           dilation=1) -> str:
    """How the CPU kernel cuts a call on ``input``'s shape into work, in words: ``tiles 2x32``
    (output rows x columns summed in registers at a time), ``runs of 32`` (rows end to end,
    ``+ border`` when the border's columns are summed and dropped) or ``strided``, then its
    bands of rows and groups of channels, and ``in place`` when the input is not copied. It is
    chosen from the shapes, whether ``input`` is contiguous (only then read in place), the kept
    weights' count and the thread count alone."""
    return torch.ops.prunekit.sparse_conv2d_schedule(
        input, values.detach(), row_offsets, columns,
        *_geometry(kernel_size, stride, padding, dilation))


@torch.library.register_fake("prunekit::sparse_conv2d")
def _sparse_conv2d_shape(input, values, row_offsets, columns, bias, kernel_size, stride, padding,
                         dilation, plan=None):
    """The output's shape and dtype without computing it (torch.export traces with this)."""
    out_h, out_w = (
        (size + 2 * pad - dil * (kernel - 1) - 1) // step + 1
        for size, pad, dil, kernel, step in zip(input.shape[2:], padding, dilation, kernel_size,
                                                stride))
    return input.new_empty(input.shape[0], row_offsets.shape[0] - 1, out_h, out_w)


def sparse_conv2d_reference(input: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                            bias: torch.Tensor | None = None, stride=1, padding=0,
                            dilation=1) -> torch.Tensor:
    """Pure-torch ``sparse_conv2d``: ``F.conv2d`` with the pruned weights set to zero."""
    return F.conv2d(input, weight * mask, bias, stride, padding, dilation)


def _explicit_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        # torch pads "same" asymmetrically when the total is odd; only symmetric cases map here
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        if any(total % 2 for total in totals):
            raise ValueError("padding='same' with an even dilated kernel pads asymmetrically; "
                             "sparse_conv2d pads symmetrically")
        return (totals[0] // 2, totals[1] // 2)
    return tuple(conv.padding)


class SparseConv2d(nn.Module):
    """A conv layer computing only its kept weights (CSR rows over output channels).

    Build it with ``SparseConv2d.from_conv(conv, mask)``. Its outputs equal
    ``F.conv2d(x, conv.weight * mask, conv.bias, ...)`` within float rounding. State: the
    parameters ``values`` (the kept weights) and ``bias`` (when the conv has one), and the
    buffers ``row_offsets`` and ``columns``. On CPU it also keeps the tap plan of the last input
    size it saw (the non-persistent buffer ``plan``), made again when the size changes or the
    rows are modified or replaced.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, values: torch.Tensor,
                 row_offsets: torch.Tensor, columns: torch.Tensor,
                 bias: torch.Tensor | None = None, stride=1, padding=0, dilation=1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.stride = _pair(stride, "stride")
        self.padding = _pair(padding, "padding")
        self.dilation = _pair(dilation, "dilation")
        self.values = nn.Parameter(values)
        self.register_buffer("row_offsets", row_offsets)
        self.register_buffer("columns", columns)
        self.bias = None if bias is None else nn.Parameter(bias)
        self.register_buffer("plan", None, persistent=False)
        self._planned_for = None  # (height, width, the rows and their versions) of `plan`

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, mask: torch.Tensor | None = None) -> "SparseConv2d":
        """The sparse form of ``conv`` keeping the weights where ``mask`` is true.

        mask: bool, of ``conv.weight``'s shape; None keeps the nonzero weights.
        """
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"expected an nn.Conv2d, got {type(conv).__name__}")
        if conv.groups != 1:
            raise ValueError(f"sparse_conv2d supports groups=1, this conv has {conv.groups}")
        if conv.padding_mode != "zeros":
            raise ValueError(f"sparse_conv2d pads with zeros, this conv pads "
                             f"{conv.padding_mode!r}")
        weight = conv.weight.detach()
        if mask is None:
            mask = weight != 0
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"expected a bool mask of shape {tuple(weight.shape)}, got "
                             f"{mask.dtype} {tuple(mask.shape)}")
        values, row_offsets, columns = csr_rows(weight, mask.to(weight.device))
        bias = None if conv.bias is None else conv.bias.detach().clone()
        return cls(conv.in_channels, conv.out_channels, conv.kernel_size, values, row_offsets,
                   columns, bias, conv.stride, _explicit_padding(conv), conv.dilation)

    @property
    def density(self) -> float:
        """Kept weights over all weights of the layer."""
        total = self.out_channels * self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        return self.values.numel() / total

    def dense_weight(self) -> torch.Tensor:
        """The full weight with pruned positions zero (for checks and for going back)."""
        return weight_from_rows(self.values, self.row_offsets, self.columns, self.in_channels,
                                self.kernel_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"expected input [N, {self.in_channels}, H, W], got "
                             f"{tuple(input.shape)}")
        return torch.ops.prunekit.sparse_conv2d(input, self.values, self.row_offsets,
                                                self.columns, self.bias, self.kernel_size,
                                                self.stride, self.padding, self.dilation,
                                                self._plan_for(input))

    def schedule(self, input: torch.Tensor) -> str:
        """How the CPU kernel cuts this layer's work on ``input`` (``sparse_conv2d_schedule``);
        ``"cuda"`` on a GPU."""
        if input.device.type != "cpu":
            return input.device.type
        return sparse_conv2d_schedule(input, self.values, self.row_offsets, self.columns,
                                      self.kernel_size, self.stride, self.padding, self.dilation)

    def _plan_for(self, input: torch.Tensor) -> torch.Tensor | None:
        """The tap plan for ``input``'s size on CPU, made on the first call at that size and
        kept while the rows are the same tensors, unmodified; None on other devices."""
        if input.device.type != "cpu":
            return None
        size = tuple(input.shape[2:])
        if torch.compiler.is_compiling():  # traced (torch.export): the plan made eagerly, if any
            fits = self.plan is not None and self._planned_for[:2] == size
            return self.plan if fits else None
        if not self._plan_is_current(size):
            self.plan = sparse_conv2d_plan(input, self.values, self.row_offsets, self.columns,
                                           self.kernel_size, self.stride, self.padding,
                                           self.dilation)
            self._planned_for = (*size, self.row_offsets, self.row_offsets._version,
                                 self.columns, self.columns._version)
        return self.plan

    def _plan_is_current(self, size: tuple[int, int]) -> bool:
        if self.plan is None:
            return False
        height, width, rows, rows_version, columns, columns_version = self._planned_for
        return ((height, width) == size and rows is self.row_offsets and columns is self.columns
                and rows._version == rows_version and columns._version == columns_version)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"density={self.density:.3f}")


from . import sparse_conv_grad  # noqa: E402,F401  (registers sparse_conv2d's gradients)
