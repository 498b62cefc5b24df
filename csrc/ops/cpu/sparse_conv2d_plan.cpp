// The tap plans of the CPU sparse_conv2d (sparse_conv2d_plan.h), and the op sparse_conv2d_plan.
#include "sparse_conv2d_plan.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cstddef>
#include <cstring>

namespace prunekit {
namespace {

// Whether a tap `shift` input elements from each output's window start ever lands on the image:
// some output o in [0, outputs) with 0 <= o * stride + shift < size.
bool reaches_image(int64_t shift, int64_t stride, int64_t outputs, int64_t size) {
  const int64_t first = shift >= 0 ? 0 : (-shift + stride - 1) / stride;
  return first < outputs && first * stride + shift < size;
}

template <typename index_t>
TapPlan plan_taps_of(const SparseConvArgs& a, int64_t height, int64_t width, const int64_t* row,
                     const index_t* column, const std::vector<int64_t>& nonfinite) {
  struct Shift {  // of one (kh, kw) position of the kernel
    int64_t row, column;
    bool lands, used;
  };
  const int64_t area = a.kernel_h * a.kernel_w;
  std::vector<Shift> shifts;
  shifts.reserve(area);
  for (int64_t kh = 0; kh < a.kernel_h; ++kh) {
    for (int64_t kw = 0; kw < a.kernel_w; ++kw) {
      const int64_t row_shift = kh * a.dilation_h - a.padding_h;
      const int64_t column_shift = kw * a.dilation_w - a.padding_w;
      const bool lands = reaches_image(row_shift, a.stride_h, a.out_h, height) &&
                         reaches_image(column_shift, a.stride_w, a.out_w, width);
      shifts.push_back({row_shift, column_shift, lands, lands});
    }
  }
  // channel = column / area as a multiply and shift (exact for column < 2^32 / area, which
  // every column is when in_channels * area^2 < 2^32); a hardware division per kept weight
  // dominated the plans of small layers.
  const uint64_t reciprocal = ((uint64_t(1) << 32) + area - 1) / area;
  const bool by_reciprocal = a.in_channels * area * area < (int64_t(1) << 32);
  const auto channel_of = [&](int64_t flat) -> int64_t {
    return by_reciprocal ? static_cast<int64_t>((static_cast<uint64_t>(flat) * reciprocal) >> 32)
                         : flat / area;
  };
  // The border serves every position that lands (kept weights there or not, so one pass over
  // the weights suffices), and the positions of inf or NaN weights.
  for (const int64_t j : nonfinite) {
    shifts[column[j] - channel_of(column[j]) * area].used = true;
  }
  int64_t top = 0, left = 0, below = 0, right = 0;  // reach beyond each edge of the image
  for (const Shift& shift : shifts) {
    if (!shift.used) continue;
    top = std::max(top, -shift.row);
    left = std::max(left, -shift.column);
    below = std::max(below, (a.out_h - 1) * a.stride_h + shift.row + 1 - height);
    right = std::max(right, (a.out_w - 1) * a.stride_w + shift.column + 1 - width);
  }
  // Every output's window start lies in the bordered image even when no tap is used (all pruned,
  // a bias-only layer), since the task loop lays output rows out over its rows.
  below = std::max(below, (a.out_h - 1) * a.stride_h + 1 - height - top);
  right = std::max(right, (a.out_w - 1) * a.stride_w + 1 - width - left);
  TapPlan plan;
  plan.top = top, plan.left = left;
  plan.padded_h = top + height + below;
  plan.padded_w = left + width + right;
  plan.offsets.reserve(a.nonzeros);
  plan.index.reserve(a.nonzeros);
  auto next_nonfinite = nonfinite.begin();
  for (int64_t oc = 0; oc < a.out_channels; ++oc) {
    for (int64_t j = row[oc]; j < row[oc + 1]; ++j) {
      const int64_t channel = channel_of(column[j]);
      const Shift& shift = shifts[column[j] - channel * area];
      const bool is_nonfinite = next_nonfinite != nonfinite.end() && *next_nonfinite == j;
      next_nonfinite += is_nonfinite;
      if (!shift.lands && !is_nonfinite) continue;
      plan.index.push_back(j);
      const int64_t offset =
          (channel * plan.padded_h + shift.row + top) * plan.padded_w + shift.column + left;
      plan.offsets.push_back(offset);
      plan.max_offset = std::max(plan.max_offset, offset);
    }
    plan.rows.push_back(static_cast<int64_t>(plan.offsets.size()));
  }
  plan.left_out = static_cast<int64_t>(plan.index.size()) < a.nonzeros;
  if (!plan.left_out) plan.index.clear();  // every kept weight, in order
  return plan;
}

// The header of a packed plan: the call it was made for, then its border and sizes.
struct PlanHeader {
  int64_t magic;
  int64_t height, width, in_channels, out_channels, nonzeros;
  int64_t kernel_h, kernel_w, stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w;
  int64_t top, left, padded_h, padded_w, taps, left_out;
};
constexpr int64_t kPlanMagic = 0x70726e6b706c616eLL;  // "prnkplan"
constexpr int64_t kHeaderWords = sizeof(PlanHeader) / sizeof(int64_t);

PlanHeader header_of(const SparseConvArgs& a, int64_t height, int64_t width) {
  PlanHeader h{};
  h.magic = kPlanMagic;
  h.height = height, h.width = width;
  h.in_channels = a.in_channels, h.out_channels = a.out_channels, h.nonzeros = a.nonzeros;
  h.kernel_h = a.kernel_h, h.kernel_w = a.kernel_w;
  h.stride_h = a.stride_h, h.stride_w = a.stride_w;
  h.padding_h = a.padding_h, h.padding_w = a.padding_w;
  h.dilation_h = a.dilation_h, h.dilation_w = a.dilation_w;
  return h;
}

// The fields that name the call, equal between two headers.
bool same_call(const PlanHeader& x, const PlanHeader& y) {
  return std::memcmp(&x, &y, offsetof(PlanHeader, top)) == 0;
}

at::Tensor sparse_conv2d_plan_cpu(const at::Tensor& input, const at::Tensor& values,
                                  const at::Tensor& row_offsets, const at::Tensor& columns,
                                  at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation) {
  const PlannedCall call = plan_call(input, values, row_offsets, columns, kernel_size, stride,
                                     padding, dilation);
  return pack_plan(call.args, input.size(2), input.size(3), call.plan);
}

}  // namespace

TapPlan plan_taps(const SparseConvArgs& a, int64_t height, int64_t width,
                  const at::Tensor& row_offsets, const at::Tensor& columns,
                  const std::vector<int64_t>& nonfinite) {
  const at::Tensor rows = row_offsets.contiguous();
  const at::Tensor cols = columns.contiguous();
  TapPlan plan;
  AT_DISPATCH_INDEX_TYPES(cols.scalar_type(), "plan_taps", [&] {
    plan = plan_taps_of<index_t>(a, height, width, rows.const_data_ptr<int64_t>(),
                                 cols.const_data_ptr<index_t>(), nonfinite);
  });
  return plan;
}

PlannedCall plan_call(const at::Tensor& input, const at::Tensor& values,
                      const at::Tensor& row_offsets, const at::Tensor& columns,
                      at::IntArrayRef kernel_size, at::IntArrayRef stride,
                      at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SparseConvArgs a = check_sparse_conv_args(input, values, row_offsets, columns,
                                                  c10::nullopt, kernel_size, stride, padding,
                                                  dilation);
  return {a, plan_taps(a, input.size(2), input.size(3), row_offsets, columns, {})};
}

at::Tensor pack_plan(const SparseConvArgs& a, int64_t height, int64_t width, const TapPlan& plan) {
  PlanHeader h = header_of(a, height, width);
  h.top = plan.top, h.left = plan.left, h.padded_h = plan.padded_h, h.padded_w = plan.padded_w;
  h.taps = static_cast<int64_t>(plan.offsets.size());
  h.left_out = plan.left_out;
  at::Tensor packed = at::empty(
      {kHeaderWords + static_cast<int64_t>(plan.rows.size() + plan.offsets.size() +
                                           plan.index.size())},
      at::kLong);
  int64_t* out = packed.data_ptr<int64_t>();
  std::memcpy(out, &h, sizeof(h));
  out = std::copy(plan.rows.begin(), plan.rows.end(), out + kHeaderWords);
  out = std::copy(plan.offsets.begin(), plan.offsets.end(), out);
  std::copy(plan.index.begin(), plan.index.end(), out);
  return packed;
}

TapView unpack_plan(const at::Tensor& packed, const SparseConvArgs& a, int64_t height,
                    int64_t width, bool* left_out) {
  constexpr const char* kWrongPlan =
      "sparse_conv2d: the plan was not made by sparse_conv2d_plan for this layer and input size";
  TORCH_CHECK(packed.dim() == 1 && packed.scalar_type() == at::kLong && packed.is_cpu() &&
                  packed.is_contiguous() && packed.numel() >= kHeaderWords,
              kWrongPlan);
  const int64_t* words = packed.const_data_ptr<int64_t>();
  PlanHeader h;
  std::memcpy(&h, words, sizeof(h));
  TORCH_CHECK(same_call(h, header_of(a, height, width)), kWrongPlan);
  TORCH_CHECK(h.taps >= 0 && h.taps <= a.nonzeros &&
                  packed.numel() ==
                      kHeaderWords + a.out_channels + 1 + h.taps * (h.left_out ? 2 : 1) &&
                  (h.left_out || h.taps == a.nonzeros),
              kWrongPlan);
  // The border holds the image, and every output's window start lies inside it.
  const int64_t last_row = h.padded_h - 1 - (a.out_h - 1) * a.stride_h;
  const int64_t last_column = h.padded_w - 1 - (a.out_w - 1) * a.stride_w;
  TORCH_CHECK(h.top >= 0 && h.left >= 0 && h.top + height <= h.padded_h &&
                  h.left + width <= h.padded_w && h.padded_h <= a.padded_h &&
                  h.padded_w <= a.padded_w && last_row >= 0 && last_column >= 0,
              kWrongPlan);
  TapView view{words + kHeaderWords, nullptr, nullptr, h.top, h.left, h.padded_h, h.padded_w, 0};
  view.offsets = view.rows + a.out_channels + 1;
  view.index = h.left_out ? view.offsets + h.taps : nullptr;
  TORCH_CHECK(view.rows[0] == 0 && view.rows[a.out_channels] == h.taps, kWrongPlan);
  for (int64_t oc = 0; oc < a.out_channels; ++oc) {
    TORCH_CHECK(view.rows[oc] <= view.rows[oc + 1], kWrongPlan);
  }
  // An offset past the last window start of the last channel would read past the images.
  const int64_t last_offset =
      ((a.in_channels - 1) * h.padded_h + last_row) * h.padded_w + last_column;
  int64_t low = 0, high = 0;
  for (int64_t t = 0; t < h.taps; ++t) {
    low = std::min(low, view.offsets[t]);
    high = std::max(high, view.offsets[t]);
  }
  TORCH_CHECK(low >= 0 && high <= last_offset, kWrongPlan);
  view.max_offset = high;
  if (view.index) {
    low = high = 0;
    for (int64_t t = 0; t < h.taps; ++t) {
      low = std::min(low, view.index[t]);
      high = std::max(high, view.index[t]);
    }
    TORCH_CHECK(low >= 0 && high < a.nonzeros, kWrongPlan);
  }
  *left_out = h.left_out;
  return view;
}

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("sparse_conv2d_plan", &sparse_conv2d_plan_cpu); }

}  // namespace prunekit
