// Where each kept weight of a CPU sparse_conv2d reads its input: planned per input size, either
// on every call or once (sparse_conv2d_plan) and then handed to each call as one int64 tensor.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "../common/sparse_conv_common.h"

namespace prunekit {

// The input is placed in a zero border only as wide as the taps reach (with none, the kernel may
// read the input in place): the image starts `top` rows and `left` columns into a padded_h x
// padded_w plane. Tap t of output channel oc (t in [rows[oc], rows[oc + 1])) multiplies
// values[index[t]] (values[t] when index is null) with the bordered image at offsets[t] from each
// output's window start; no offset is above max_offset (0 when there are no taps).
struct TapView {
  const int64_t* rows;
  const int64_t* offsets;
  const int64_t* index;  // null: every kept weight is a tap, in order
  int64_t top, left, padded_h, padded_w;
  int64_t max_offset;
};

struct TapPlan {
  std::vector<int64_t> rows{0}, offsets, index;  // index: empty unless left_out
  int64_t top = 0, left = 0, padded_h = 0, padded_w = 0, max_offset = 0;
  bool left_out = false;  // whether some kept weights are not taps

  TapView view() const {
    return {rows.data(), offsets.data(), left_out ? index.data() : nullptr,
            top, left, padded_h, padded_w, max_offset};
  }
};

// The plan for a height x width input. Kept weights whose tap never lands on the image (large
// dilations on small feature maps: ASPP) only ever multiply padding zeros and are left out,
// except those listed in `nonfinite` (ascending indices of inf/NaN values, which turn padding into
// NaN as in F.conv2d). The CSR rows must have been checked (check_sparse_conv_args).
TapPlan plan_taps(const SparseConvArgs& a, int64_t height, int64_t width,
                  const at::Tensor& row_offsets, const at::Tensor& columns,
                  const std::vector<int64_t>& nonfinite);

// A plan or schedule call's checked arguments (no bias) and the taps planned for its input size.
struct PlannedCall {
  SparseConvArgs args;
  TapPlan plan;
};
PlannedCall plan_call(const at::Tensor& input, const at::Tensor& values,
                      const at::Tensor& row_offsets, const at::Tensor& columns,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation);

// The plan as one int64 tensor: a header naming the call it was made for, then rows, offsets and
// (when some weights were left out) index.
at::Tensor pack_plan(const SparseConvArgs& a, int64_t height, int64_t width, const TapPlan& plan);

// A packed plan checked against this call (the geometry it was made for, and every offset and
// index inside what the kernel may read): a wrong plan is an error, never a read out of bounds.
// It cannot check that the plan was made from these columns: that is the caller's promise.
// `left_out` tells whether the plan left out weights (then inf/NaN values need a fresh plan).
TapView unpack_plan(const at::Tensor& packed, const SparseConvArgs& a, int64_t height,
                    int64_t width, bool* left_out);

}  // namespace prunekit
