// What the CPU and CUDA sparse_conv2d share: the checked arguments and the output shape.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace prunekit {

// The arguments of one sparse_conv2d call, checked against each other, in elements.
struct SparseConvArgs {
  int64_t batch, in_channels, out_channels, nonzeros;
  int64_t kernel_h, kernel_w, stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w;
  int64_t padded_h, padded_w, out_h, out_w;
};

// Checks input [N, C, H, W] (float32 or float64), values [nnz] of its dtype and device,
// row_offsets int64 [out_channels + 1] rising from 0 to nnz, columns int32/int64 [nnz] in
// [0, C * kh * kw), bias [out_channels] or none, and two positive strides and dilations and two
// non-negative paddings; the kernel must fit the padded input.
SparseConvArgs check_sparse_conv_args(const at::Tensor& input, const at::Tensor& values,
                                      const at::Tensor& row_offsets, const at::Tensor& columns,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation);

// The same checks but for the columns' values, which a loop over every kept weight checks
// (calls with a checked tap plan do not read the columns).
SparseConvArgs check_sparse_conv_shapes(const at::Tensor& input, const at::Tensor& values,
                                        const at::Tensor& row_offsets, const at::Tensor& columns,
                                        const c10::optional<at::Tensor>& bias,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation);
void check_csr_columns(const SparseConvArgs& a, const at::Tensor& columns);

}  // namespace prunekit
