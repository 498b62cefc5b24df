// sparse_conv2d on CPU: a convolution that multiplies only the kept weights.
//
// The weight is stored per output channel (CSR rows): the kept weights' values and their column
// in the flattened (in-channel, kh, kw) filter. The taps are planned per input size (tap_plan.h:
// on each call, or once by sparse_conv2d_plan and handed in): kept weights whose tap never lands
// on the image are left out (unless inf or NaN), and the input is copied into a zero border only
// as wide as the remaining taps reach (at most the layer's padding). A kept weight then reads the bordered input at a fixed offset from each output
// position, so one output channel is
//   y[oc, oh, ow] = bias[oc] + sum over kept j of value[j] * x_pad[ic_j, oh*sh + kh_j*dh,
//                                                                   ow*sw + kw_j*dw]
// (x_pad: the input with the layer's padding; the narrower border reads the same values).
// With stride 1 along the width, output position (oh, ow) reads padded element oh*Wp + ow +
// offset[j], which is affine in q = oh*Wp + ow: a band of output rows is one 1-D sparse
// correlation over q (positions with ow >= OW are computed and dropped). The sum for a block of
// kBlock consecutive q stays in registers while every kept weight of the channel adds its
// contribution (one broadcast and kBlock/8 fused multiply-adds on AVX2), so the output is written
// once and the zeros are never multiplied. Other strides step through each output row.
// Work is split over (image, band of output rows, output channel), channel innermost, so a
// thread reuses a band's input rows from cache across channels.
// The task loop is compiled twice, for AVX2+FMA and for the build's default target (plain
// x86-64), and the AVX2 one is chosen at run time when the CPU has it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "../simd/simd.h"
#include "sparse_conv_common.h"
#include "tap_plan.h"

namespace prunekit {
namespace {

constexpr int64_t kBlock = 32;      // output positions summed in registers at a time
constexpr int64_t kBandSize = 1024;  // about this many output positions per parallel task
constexpr int64_t kMinParallelWork = int64_t(1) << 15;  // multiply-adds per thread, at least

// The shapes of one call, in elements.
struct Geometry {
  int64_t batch, in_channels, out_channels;
  int64_t padded_h, padded_w, out_h, out_w;
  int64_t stride_h, stride_w;
  int64_t rows_per_band;
};

// One output channel's kept weights: values and their offsets into one padded image.
template <typename scalar_t>
struct Row {
  const scalar_t* values;
  const int64_t* offsets;
  int64_t count;
};

#ifdef PRUNEKIT_X86_DISPATCH
#define PRUNEKIT_INLINE inline __attribute__((always_inline))
#else
#define PRUNEKIT_INLINE inline
#endif

// Sums `length` (<= kBlock) consecutive positions q of a unit-stride band into out[0, length).
// The kBlock sums are a few 32-byte vectors (GCC vector extensions: AVX registers in the AVX2
// build, pairs of SSE registers in the default one) that stay in registers over the row.
template <typename scalar_t>
struct Vector32;
template <>
struct Vector32<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct Vector32<double> {
  typedef double type __attribute__((vector_size(32)));
};

template <typename scalar_t>
PRUNEKIT_INLINE void unit_stride_block(const scalar_t* x, Row<scalar_t> row, scalar_t bias,
                                       scalar_t* out, int64_t length) {
  using vec = typename Vector32<scalar_t>::type;
  constexpr int64_t kLanes = sizeof(vec) / sizeof(scalar_t);
  constexpr int64_t kVectors = kBlock / kLanes;
  vec sum[kVectors];
  for (int64_t k = 0; k < kVectors; ++k) sum[k] = vec{} + bias;
  for (int64_t j = 0; j < row.count; ++j) {
    const scalar_t v = row.values[j];
    const scalar_t* in = x + row.offsets[j];  // reads up to kBlock past `length`: see slack
    for (int64_t k = 0; k < kVectors; ++k) {
      vec chunk;
      std::memcpy(&chunk, in + k * kLanes, sizeof(vec));
      sum[k] += v * chunk;
    }
  }
  scalar_t result[kBlock];
  std::memcpy(result, sum, sizeof(result));
  std::copy(result, result + length, out);
}

// One band of output rows [first, last) for unit width stride. With unit height stride too, the
// rows are one run of q over the padded width, of which each row keeps its first out_w columns
// (all of them when nothing is dropped: a 1x1 kernel without padding); else row by row.
template <typename scalar_t>
PRUNEKIT_INLINE void unit_stride_band(const Geometry& g, const scalar_t* image, Row<scalar_t> row,
                                      scalar_t bias, int64_t first, int64_t last, scalar_t* out,
                                      scalar_t* scratch) {
  if (g.stride_h != 1) {
    for (int64_t oh = first; oh < last; ++oh) {
      for (int64_t ow = 0; ow < g.out_w; ow += kBlock) {
        unit_stride_block(image + oh * g.stride_h * g.padded_w + ow, row, bias,
                          out + oh * g.out_w + ow, std::min(kBlock, g.out_w - ow));
      }
    }
    return;
  }
  const bool direct = g.padded_w == g.out_w;
  scalar_t* run = direct ? out + first * g.out_w : scratch;
  const int64_t length = (last - first) * g.padded_w;
  for (int64_t q = 0; q < length; q += kBlock) {
    unit_stride_block(image + first * g.padded_w + q, row, bias, run + q,
                      std::min(kBlock, length - q));
  }
  if (direct) return;
  for (int64_t oh = first; oh < last; ++oh) {
    const scalar_t* from = scratch + (oh - first) * g.padded_w;
    std::copy(from, from + g.out_w, out + oh * g.out_w);
  }
}

// One band of output rows for any stride: each output row steps through its input row.
template <typename scalar_t>
PRUNEKIT_INLINE void strided_band(const Geometry& g, const scalar_t* image, Row<scalar_t> row,
                                  scalar_t bias, int64_t first, int64_t last, scalar_t* out) {
  for (int64_t oh = first; oh < last; ++oh) {
    const scalar_t* line = image + oh * g.stride_h * g.padded_w;
    for (int64_t ow0 = 0; ow0 < g.out_w; ow0 += kBlock) {
      const int64_t length = std::min(kBlock, g.out_w - ow0);
      scalar_t sum[kBlock];
      for (int64_t i = 0; i < kBlock; ++i) sum[i] = bias;
      for (int64_t j = 0; j < row.count; ++j) {
        const scalar_t v = row.values[j];
        const scalar_t* in = line + row.offsets[j] + ow0 * g.stride_w;
        for (int64_t i = 0; i < length; ++i) sum[i] += v * in[i * g.stride_w];
      }
      std::copy(sum, sum + length, out + oh * g.out_w + ow0);
    }
  }
}

// Everything the tasks read and write.
template <typename scalar_t>
struct Problem {
  Geometry g;
  const scalar_t* padded;  // the zero-padded images, with slack after the last
  const scalar_t* values;
  const int64_t* row_offsets;
  const int64_t* offsets;  // of each kept weight into one padded image
  const scalar_t* bias;    // or null
  scalar_t* output;
  int64_t bands;
};

// Tasks [begin, end) of (image, band, channel), channel fastest, so consecutive tasks of a thread
// reuse one band's input rows from cache.
template <typename scalar_t>
PRUNEKIT_INLINE void run_tasks(const Problem<scalar_t>& p, int64_t begin, int64_t end) {
  const Geometry& g = p.g;
  std::vector<scalar_t> scratch(g.rows_per_band * g.padded_w + kBlock);
  const int64_t image_size = g.in_channels * g.padded_h * g.padded_w;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t oc = task % g.out_channels;
    const int64_t band = task / g.out_channels % p.bands;
    const int64_t n = task / g.out_channels / p.bands;
    const int64_t first = band * g.rows_per_band;
    const int64_t last = std::min(g.out_h, first + g.rows_per_band);
    const int64_t kept_begin = p.row_offsets[oc];
    const Row<scalar_t> row{p.values + kept_begin, p.offsets + kept_begin,
                            p.row_offsets[oc + 1] - kept_begin};
    const scalar_t bias = p.bias ? p.bias[oc] : scalar_t(0);
    const scalar_t* image = p.padded + n * image_size;
    scalar_t* out = p.output + (n * g.out_channels + oc) * g.out_h * g.out_w;
    if (g.stride_w == 1) {
      unit_stride_band(g, image, row, bias, first, last, out, scratch.data());
    } else {
      strided_band(g, image, row, bias, first, last, out);
    }
  }
}

// The task loop compiled for the default target and, on x86-64, for AVX2 with FMA.
template <typename scalar_t>
void run_tasks_default(const Problem<scalar_t>& p, int64_t begin, int64_t end) {
  run_tasks(p, begin, end);
}

#ifdef PRUNEKIT_X86_DISPATCH
template <typename scalar_t>
__attribute__((target("avx2,fma"))) void run_tasks_avx2(const Problem<scalar_t>& p,
                                                        int64_t begin, int64_t end) {
  run_tasks(p, begin, end);
}
#endif

template <typename scalar_t>
using TaskLoop = void (*)(const Problem<scalar_t>&, int64_t, int64_t);

// The AVX2 loop when this CPU has AVX2 and FMA (simd.h), else the default one.
template <typename scalar_t>
TaskLoop<scalar_t> best_task_loop() {
#ifdef PRUNEKIT_X86_DISPATCH
  if (simd::use_avx2()) return &run_tasks_avx2<scalar_t>;
#endif
  return &run_tasks_default<scalar_t>;
}

template <typename scalar_t>
void convolve(const Problem<scalar_t>& p) {
  const TaskLoop<scalar_t> loop = best_task_loop<scalar_t>();
  const int64_t tasks = p.g.batch * p.bands * p.g.out_channels;
  // Threads only for calls worth waking them: a task multiplies about (kept weights per channel)
  // x (positions of its band), and waking a thread costs some thousands of those.
  const int64_t kept_per_channel = p.row_offsets[p.g.out_channels] / p.g.out_channels;
  const int64_t work = std::max<int64_t>(1, kept_per_channel * p.g.rows_per_band * p.g.padded_w);
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / work);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) { loop(p, begin, end); });
}

// Each image of `input` inside its zero border, planes one after another, then `slack` zeros.
template <typename scalar_t>
at::Tensor bordered_images(const at::Tensor& input, const TapView& plan, int64_t slack) {
  const at::Tensor x = input.contiguous();
  const int64_t planes = x.size(0) * x.size(1), height = x.size(2), width = x.size(3);
  const int64_t plane = plan.padded_h * plan.padded_w;
  at::Tensor buffer = at::empty({planes * plane + slack}, x.options());
  const scalar_t* from = x.const_data_ptr<scalar_t>();
  scalar_t* to = buffer.data_ptr<scalar_t>();
  // Threads only for work worth waking them (a fork costs more than a small layer's copy).
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(plane, 1));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      scalar_t* out = to + p * plane;
      std::fill(out, out + plan.top * plan.padded_w, scalar_t(0));
      for (int64_t h = 0; h < height; ++h) {
        scalar_t* line = out + (plan.top + h) * plan.padded_w;
        std::fill(line, line + plan.left, scalar_t(0));
        std::copy(from + (p * height + h) * width, from + (p * height + h + 1) * width,
                  line + plan.left);
        std::fill(line + plan.left + width, line + plan.padded_w, scalar_t(0));
      }
      std::fill(out + (plan.top + height) * plan.padded_w, out + plane, scalar_t(0));
    }
  });
  std::fill(to + planes * plane, to + planes * plane + slack, scalar_t(0));
  return buffer;
}

// The convolution of `input` by the taps of `plan`, whose values are tap_values[t].
template <typename scalar_t>
void convolve_input(const SparseConvArgs& a, const at::Tensor& input, const TapView& plan,
                    const scalar_t* tap_values, const scalar_t* bias, at::Tensor& output) {
  Geometry g{a.batch, a.in_channels, a.out_channels, plan.padded_h, plan.padded_w,
             a.out_h, a.out_w, a.stride_h, a.stride_w, 1};
  g.rows_per_band = std::clamp<int64_t>(kBandSize / g.padded_w, 1, g.out_h);
  // Blocks read up to kBlock past a row's last output, and a tap reaches at most the kernel's
  // span into the row below.
  const int64_t slack = kBlock + (a.kernel_w - 1) * a.dilation_w + g.padded_w;
  const at::Tensor buffer = bordered_images<scalar_t>(input, plan, slack);
  convolve(Problem<scalar_t>{g, buffer.const_data_ptr<scalar_t>(), tap_values, plan.rows,
                             plan.offsets, bias, output.data_ptr<scalar_t>(),
                             (g.out_h + g.rows_per_band - 1) / g.rows_per_band});
}

// The ascending indices of inf and NaN values.
template <typename scalar_t>
std::vector<int64_t> nonfinite_values(const scalar_t* values, int64_t count) {
  bool finite = true;
  for (int64_t j = 0; j < count; ++j) finite &= std::isfinite(values[j]);
  std::vector<int64_t> found;
  for (int64_t j = 0; !finite && j < count; ++j) {
    if (!std::isfinite(values[j])) found.push_back(j);
  }
  return found;
}

// With a packed plan (sparse_conv2d_plan) the taps are read from it; without one, or when the
// plan left out weights that are now inf or NaN, they are planned for this call.
template <typename scalar_t>
void convolve_planned(const SparseConvArgs& a, const at::Tensor& input, const at::Tensor& values,
                      const at::Tensor& row_offsets, const at::Tensor& columns,
                      const c10::optional<at::Tensor>& packed, const scalar_t* bias,
                      at::Tensor& output) {
  const int64_t height = input.size(2), width = input.size(3);
  const at::Tensor values_c = values.contiguous();
  const scalar_t* value = values_c.const_data_ptr<scalar_t>();
  TapPlan fresh;
  TapView plan{};
  bool left_out = false;
  if (packed) plan = unpack_plan(*packed, a, height, width, &left_out);
  if (!packed || (left_out && !nonfinite_values(value, a.nonzeros).empty())) {
    check_csr_columns(a, columns);
    fresh = plan_taps(a, height, width, row_offsets, columns,
                      nonfinite_values(value, a.nonzeros));
    plan = fresh.view();
  }
  std::vector<scalar_t> gathered;  // the taps' values, when some kept weights are not taps
  if (plan.index) {
    const int64_t taps = plan.rows[a.out_channels];
    gathered.resize(taps);
    for (int64_t t = 0; t < taps; ++t) gathered[t] = value[plan.index[t]];
  }
  convolve_input<scalar_t>(a, input, plan, plan.index ? gathered.data() : value, bias, output);
}

at::Tensor sparse_conv2d_cpu(const at::Tensor& input, const at::Tensor& values,
                             const at::Tensor& row_offsets, const at::Tensor& columns,
                             const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                             at::IntArrayRef stride, at::IntArrayRef padding,
                             at::IntArrayRef dilation, const c10::optional<at::Tensor>& plan) {
  const SparseConvArgs args = check_sparse_conv_shapes(input, values, row_offsets, columns, bias,
                                                       kernel_size, stride, padding, dilation);
  at::Tensor output =
      at::empty({args.batch, args.out_channels, args.out_h, args.out_w}, input.options());
  if (output.numel() == 0) return output;
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_conv2d_cpu", [&] {
    convolve_planned<scalar_t>(args, input, values, row_offsets, columns, plan,
                               bias ? bias_c.const_data_ptr<scalar_t>() : nullptr, output);
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("sparse_conv2d", &sparse_conv2d_cpu); }

}  // namespace prunekit
