// sparse_conv2d's backward on CPU: the gradients with respect to the input and to the kept
// weights only (the pruned ones are never formed).
//
//   grad_input[n, ic, ih, iw] = sum over kept j = (oc, ic, kh, kw) and the outputs reading
//                               (ih, iw) through it of value[j] * grad_out[n, oc, oh, ow]
//   grad_values[j] = sum over n, oh, ow of grad_out[n, oc, oh, ow] *
//                    x_pad[n, ic, oh*sh + kh*dh, ow*sw + kw*dw]
// grad_input is the transposed sparse weight applied to grad_out: each kept weight adds a scaled
// copy of an output plane into a zero-padded input plane, which is cropped at the end. Its tasks
// are (image, input channel) pairs that own their plane, with the kept weights regrouped by input
// channel (a counting sort), so no two threads write the same element. grad_values is one dot
// product per kept weight over the padded input; its tasks are output channels. Both inner loops
// run along an output row (contiguous when the width stride is 1, so they vectorise).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdint>
#include <tuple>
#include <vector>

#include "../common/sparse_conv_common.h"

namespace prunekit {
namespace {

// A kept weight as the backward reads it.
template <typename scalar_t>
struct KeptWeight {
  int64_t out_channel, in_channel;
  int64_t offset;  // of its tap from an output's window start, in one padded plane
  scalar_t value;
};

template <typename scalar_t>
std::vector<KeptWeight<scalar_t>> kept_weights(const SparseConvArgs& a, const at::Tensor& values,
                                               const at::Tensor& row_offsets,
                                               const at::Tensor& columns) {
  const at::Tensor value = values.contiguous(), row = row_offsets.contiguous();
  const at::Tensor column = columns.to(at::kLong).contiguous();
  const scalar_t* v = value.const_data_ptr<scalar_t>();
  const int64_t* r = row.const_data_ptr<int64_t>();
  const int64_t* c = column.const_data_ptr<int64_t>();
  std::vector<KeptWeight<scalar_t>> kept;
  kept.reserve(a.nonzeros);
  for (int64_t oc = 0; oc < a.out_channels; ++oc) {
    for (int64_t j = r[oc]; j < r[oc + 1]; ++j) {
      const int64_t kw = c[j] % a.kernel_w, kh = c[j] / a.kernel_w % a.kernel_h;
      kept.push_back({oc, c[j] / (a.kernel_w * a.kernel_h),
                      kh * a.dilation_h * a.padded_w + kw * a.dilation_w, v[j]});
    }
  }
  return kept;
}

// The kept weights grouped by input channel: entries [first[ic], first[ic + 1]).
template <typename scalar_t>
std::vector<KeptWeight<scalar_t>> by_input_channel(const std::vector<KeptWeight<scalar_t>>& kept,
                                                   int64_t in_channels,
                                                   std::vector<int64_t>& first) {
  first.assign(in_channels + 1, 0);
  for (const auto& w : kept) ++first[w.in_channel + 1];
  for (int64_t ic = 0; ic < in_channels; ++ic) first[ic + 1] += first[ic];
  std::vector<int64_t> next(first.begin(), first.end() - 1);
  std::vector<KeptWeight<scalar_t>> grouped(kept.size());
  for (const auto& w : kept) grouped[next[w.in_channel]++] = w;
  return grouped;
}

// to[i * step] += scale * from[i] for i < n; the unit step (the common case) vectorises.
template <typename scalar_t>
void add_scaled(scalar_t* __restrict__ to, int64_t step, const scalar_t* __restrict__ from,
                int64_t n, scalar_t scale) {
  if (step == 1) {
    for (int64_t i = 0; i < n; ++i) to[i] += scale * from[i];
  } else {
    for (int64_t i = 0; i < n; ++i) to[i * step] += scale * from[i];
  }
}

// sum of a[i] * b[i * step] for i < n, in the accumulation type; eight partial sums so the unit
// step vectorises without reassociating one running sum.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
acc_t dot(const scalar_t* a, const scalar_t* b, int64_t step, int64_t n) {
  if (step != 1) {
    acc_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      sum += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i * step]);
    }
    return sum;
  }
  constexpr int kLanes = 8;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      lanes[k] += static_cast<acc_t>(a[i + k]) * static_cast<acc_t>(b[i + k]);
    }
  }
  acc_t sum = 0;
  for (; i < n; ++i) sum += static_cast<acc_t>(a[i]) * static_cast<acc_t>(b[i]);
  for (int k = 0; k < kLanes; ++k) sum += lanes[k];
  return sum;
}

template <typename scalar_t>
at::Tensor input_gradient(const SparseConvArgs& a, const at::Tensor& grad_out,
                          const std::vector<KeptWeight<scalar_t>>& kept, int64_t height,
                          int64_t width) {
  std::vector<int64_t> first;
  const auto grouped = by_input_channel(kept, a.in_channels, first);
  const int64_t plane = a.padded_h * a.padded_w, out_plane = a.out_h * a.out_w;
  at::Tensor padded = at::zeros({a.batch, a.in_channels, a.padded_h, a.padded_w},
                                grad_out.options());
  scalar_t* gi = padded.data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  at::parallel_for(0, a.batch * a.in_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / a.in_channels, ic = task % a.in_channels;
      scalar_t* target = gi + task * plane;
      for (int64_t e = first[ic]; e < first[ic + 1]; ++e) {
        const KeptWeight<scalar_t>& w = grouped[e];
        const scalar_t* source = go + (n * a.out_channels + w.out_channel) * out_plane;
        for (int64_t oh = 0; oh < a.out_h; ++oh) {
          add_scaled(target + oh * a.stride_h * a.padded_w + w.offset, a.stride_w,
                     source + oh * a.out_w, a.out_w, w.value);
        }
      }
    }
  });
  return padded.narrow(2, a.padding_h, height).narrow(3, a.padding_w, width).contiguous();
}

template <typename scalar_t>
at::Tensor values_gradient(const SparseConvArgs& a, const at::Tensor& input,
                           const at::Tensor& grad_out,
                           const std::vector<KeptWeight<scalar_t>>& kept,
                           const at::Tensor& row_offsets) {
  using acc_t = at::opmath_type<scalar_t>;
  const at::Tensor padded =
      at::constant_pad_nd(input, {a.padding_w, a.padding_w, a.padding_h, a.padding_h})
          .contiguous();
  const scalar_t* x = padded.const_data_ptr<scalar_t>();
  const scalar_t* go = grad_out.const_data_ptr<scalar_t>();
  const at::Tensor rows = row_offsets.contiguous();
  const int64_t* r = rows.const_data_ptr<int64_t>();
  const int64_t plane = a.padded_h * a.padded_w, out_plane = a.out_h * a.out_w;
  at::Tensor grad = at::empty({a.nonzeros}, grad_out.options());
  scalar_t* g = grad.data_ptr<scalar_t>();
  at::parallel_for(0, a.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t oc = begin; oc < end; ++oc) {
      for (int64_t j = r[oc]; j < r[oc + 1]; ++j) {
        const KeptWeight<scalar_t>& w = kept[j];
        acc_t sum = 0;
        for (int64_t n = 0; n < a.batch; ++n) {
          const scalar_t* image = x + (n * a.in_channels + w.in_channel) * plane + w.offset;
          const scalar_t* outputs = go + (n * a.out_channels + oc) * out_plane;
          for (int64_t oh = 0; oh < a.out_h; ++oh) {
            sum += dot(outputs + oh * a.out_w, image + oh * a.stride_h * a.padded_w, a.stride_w,
                       a.out_w);
          }
        }
        g[j] = static_cast<scalar_t>(sum);
      }
    }
  });
  return grad;
}

// With unit strides, output (oh, ow) reads the padded input at q = oh * Wp + ow plus the tap's
// offset: laid out at the padded width (zeros in the columns ow >= OW), an output plane is one
// run of q, and every per-row loop below becomes one long loop per plane. The run stops at the
// last real output, so reads and writes stay inside the tap's padded plane. Other strides keep
// their rows, and so do inputs or weights beyond finite: the zero columns would meet them
// (0 * inf) where the convolution never does.
std::tuple<SparseConvArgs, at::Tensor> as_runs(const SparseConvArgs& a, const at::Tensor& grad_out,
                                               const at::Tensor& input, const at::Tensor& values) {
  if (a.stride_h != 1 || a.stride_w != 1 || a.out_h <= 1) return {a, grad_out};
  if (!at::isfinite(input).all().item<bool>() || !at::isfinite(values).all().item<bool>()) {
    return {a, grad_out};
  }
  SparseConvArgs runs = a;
  runs.out_h = 1;
  runs.out_w = (a.out_h - 1) * a.padded_w + a.out_w;
  if (a.out_w == a.padded_w) return {runs, grad_out};
  at::Tensor wide = at::zeros({a.batch, a.out_channels, a.out_h, a.padded_w}, grad_out.options());
  wide.narrow(3, 0, a.out_w).copy_(grad_out);
  return {runs, wide.view({a.batch, a.out_channels, a.out_h * a.padded_w})
                    .narrow(2, 0, runs.out_w)
                    .contiguous()};
}

std::tuple<at::Tensor, at::Tensor> sparse_conv2d_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& values,
    const at::Tensor& row_offsets, const at::Tensor& columns, at::IntArrayRef kernel_size,
    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation) {
  const SparseConvArgs a = check_sparse_conv_args(input, values, row_offsets, columns,
                                                  c10::nullopt, kernel_size, stride, padding,
                                                  dilation);
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({a.batch, a.out_channels, a.out_h, a.out_w}),
              "sparse_conv2d_backward: expected grad_output [", a.batch, ", ", a.out_channels,
              ", ", a.out_h, ", ", a.out_w, "], got ", grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() &&
                  grad_output.device() == input.device(),
              "sparse_conv2d_backward: grad_output must have the input's dtype and device");
  const at::Tensor x = input.contiguous();
  SparseConvArgs runs;
  at::Tensor grad_out;
  std::tie(runs, grad_out) = as_runs(a, grad_output.contiguous(), x, values);
  at::Tensor grad_input, grad_values;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_conv2d_backward_cpu", [&] {
    const auto kept = kept_weights<scalar_t>(a, values, row_offsets, columns);
    grad_input = input_gradient<scalar_t>(runs, grad_out, kept, x.size(2), x.size(3));
    grad_values = values_gradient<scalar_t>(runs, x, grad_out, kept, row_offsets);
  });
  return {grad_input, grad_values};
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("sparse_conv2d_backward", &sparse_conv2d_backward_cpu);
}

}  // namespace prunekit
