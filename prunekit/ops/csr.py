"""A pruned convolution's kept weights as CSR rows: one row per output channel, each value with
its column in the flattened (in-channel, kh, kw) filter. Shared by the sparse convolution and its
gradients."""
from __future__ import annotations

import torch


def csr_rows(weight: torch.Tensor, mask: torch.Tensor):
    """The kept weights of ``weight`` [out, in, kh, kw] as (values, row_offsets, columns)."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    kept = mask.reshape(flat.shape)
    rows, columns = kept.nonzero(as_tuple=True)  # row-major: sorted by row, then column
    counts = torch.bincount(rows, minlength=flat.shape[0])
    row_offsets = torch.zeros(flat.shape[0] + 1, dtype=torch.int64, device=weight.device)
    row_offsets[1:] = counts.cumsum(0)
    return flat[rows, columns].contiguous(), row_offsets, columns.to(torch.int32)


def value_rows(row_offsets: torch.Tensor) -> torch.Tensor:
    """The row (output channel) of each stored value of CSR rows."""
    return torch.repeat_interleave(
        torch.arange(row_offsets.numel() - 1, device=row_offsets.device), row_offsets.diff())


def weight_from_rows(values: torch.Tensor, row_offsets: torch.Tensor, columns: torch.Tensor,
                     in_channels: int, kernel_size) -> torch.Tensor:
    """The dense weight [out, in, kh, kw] of CSR rows, zero where nothing is stored (a repeated
    column adds, as in the kernels)."""
    out_channels = row_offsets.numel() - 1
    weight = values.new_zeros(out_channels, in_channels * kernel_size[0] * kernel_size[1])
    weight.index_put_((value_rows(row_offsets), columns.long()), values, accumulate=True)
    return weight.reshape(out_channels, in_channels, *kernel_size)
