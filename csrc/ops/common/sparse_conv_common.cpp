#include "sparse_conv_common.h"

#include <ATen/Dispatch.h>

#include <algorithm>
#include <limits>
#include <utility>

namespace prunekit {

namespace {

void check_pair(at::IntArrayRef pair, const char* name, int64_t least) {
  TORCH_CHECK(pair.size() == 2, "sparse_conv2d: ", name, " must have 2 values, got ", pair.size());
  TORCH_CHECK(pair[0] >= least && pair[1] >= least, "sparse_conv2d: ", name, " must be >= ",
              least, ", got ", pair);
}

// The smallest and largest column: a loop on CPU (a reduction op would cost more than a small
// layer's convolution), aminmax on the device.
std::pair<int64_t, int64_t> column_range(const at::Tensor& columns) {
  if (!columns.is_cpu()) {
    const auto [low, high] = at::aminmax(columns);
    return {low.item<int64_t>(), high.item<int64_t>()};
  }
  const at::Tensor cols = columns.contiguous();
  int64_t low = std::numeric_limits<int64_t>::max(), high = std::numeric_limits<int64_t>::min();
  AT_DISPATCH_INDEX_TYPES(cols.scalar_type(), "column_range", [&] {
    const index_t* column = cols.const_data_ptr<index_t>();
    for (int64_t i = 0; i < cols.numel(); ++i) {
      low = std::min<int64_t>(low, column[i]);
      high = std::max<int64_t>(high, column[i]);
    }
  });
  return {low, high};
}

}  // namespace

SparseConvArgs check_sparse_conv_shapes(const at::Tensor& input, const at::Tensor& values,
                                        const at::Tensor& row_offsets, const at::Tensor& columns,
                                        const c10::optional<at::Tensor>& bias,
                                        at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                        at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, "sparse_conv2d: expected input [N, C, H, W], got ",
              input.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "sparse_conv2d: expected a float32 or float64 input, got ", input.scalar_type());
  TORCH_CHECK(values.dim() == 1 && values.scalar_type() == input.scalar_type() &&
                  values.device() == input.device(),
              "sparse_conv2d: expected values [nnz] of the input's dtype and device");
  TORCH_CHECK(row_offsets.dim() == 1 && row_offsets.numel() >= 1 &&
                  row_offsets.scalar_type() == at::kLong && row_offsets.device() == input.device(),
              "sparse_conv2d: expected row_offsets int64 [out_channels + 1] on the input's device");
  TORCH_CHECK(columns.dim() == 1 && columns.numel() == values.numel() &&
                  (columns.scalar_type() == at::kInt || columns.scalar_type() == at::kLong) &&
                  columns.device() == input.device(),
              "sparse_conv2d: expected columns int32/int64 [nnz] on the input's device");
  check_pair(kernel_size, "kernel_size", 1);
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(dilation, "dilation", 1);

  SparseConvArgs a{};
  a.batch = input.size(0);
  a.in_channels = input.size(1);
  a.out_channels = row_offsets.numel() - 1;
  a.nonzeros = values.numel();
  a.kernel_h = kernel_size[0], a.kernel_w = kernel_size[1];
  a.stride_h = stride[0], a.stride_w = stride[1];
  a.padding_h = padding[0], a.padding_w = padding[1];
  a.dilation_h = dilation[0], a.dilation_w = dilation[1];
  a.padded_h = input.size(2) + 2 * a.padding_h;
  a.padded_w = input.size(3) + 2 * a.padding_w;
  const int64_t span_h = a.dilation_h * (a.kernel_h - 1) + 1;
  const int64_t span_w = a.dilation_w * (a.kernel_w - 1) + 1;
  TORCH_CHECK(span_h <= a.padded_h && span_w <= a.padded_w, "sparse_conv2d: the kernel (",
              span_h, "x", span_w, " with dilation) is larger than the padded input (",
              a.padded_h, "x", a.padded_w, ")");
  a.out_h = (a.padded_h - span_h) / a.stride_h + 1;
  a.out_w = (a.padded_w - span_w) / a.stride_w + 1;
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->numel() == a.out_channels &&
                    bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
                "sparse_conv2d: expected bias [", a.out_channels, "] of the input's dtype");
  }
  // The CSR rows must be well formed: they index values and columns.
  const at::Tensor rows = row_offsets.cpu();
  const int64_t* r = rows.const_data_ptr<int64_t>();
  TORCH_CHECK(r[0] == 0 && r[a.out_channels] == a.nonzeros,
              "sparse_conv2d: row_offsets must run from 0 to nnz (", a.nonzeros, ")");
  for (int64_t oc = 0; oc < a.out_channels; ++oc) {
    TORCH_CHECK(r[oc] <= r[oc + 1], "sparse_conv2d: row_offsets must not decrease");
  }
  return a;
}

void check_csr_columns(const SparseConvArgs& a, const at::Tensor& columns) {
  if (a.nonzeros > 0) {
    const int64_t width = a.in_channels * a.kernel_h * a.kernel_w;
    const auto [low, high] = column_range(columns);
    TORCH_CHECK(low >= 0 && high < width,
                "sparse_conv2d: columns must lie in [0, ", width,
                ") for the input's channels and the kernel size; does the input have the "
                "layer's in_channels?");
  }
}

SparseConvArgs check_sparse_conv_args(const at::Tensor& input, const at::Tensor& values,
                                      const at::Tensor& row_offsets, const at::Tensor& columns,
                                      const c10::optional<at::Tensor>& bias,
                                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SparseConvArgs a = check_sparse_conv_shapes(input, values, row_offsets, columns, bias,
                                                    kernel_size, stride, padding, dilation);
  check_csr_columns(a, columns);
  return a;
}

}  // namespace prunekit
