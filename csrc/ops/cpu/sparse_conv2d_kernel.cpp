// sparse_conv2d on CPU: a convolution that multiplies only the kept weights.
//
// The weight is stored per output channel (CSR rows): the kept weights' values and their column
// in the flattened (in-channel, kh, kw) filter. The taps are planned per input size (sparse_conv2d_plan.h:
// on each call, or once by sparse_conv2d_plan and handed in): kept weights whose tap never lands
// on the image are left out (unless inf or NaN), and the input is copied into a zero border only
// as wide as the remaining taps reach (at most the layer's padding; read in place when none). A
// kept weight then reads the bordered input at a fixed offset from each output position, so one
// output channel is
//   y[oc, oh, ow] = bias[oc] + sum over kept j of value[j] * x_pad[ic_j, oh*sh + kh_j*dh,
//                                                                   ow*sw + kw_j*dw]
// (x_pad: the input with the layer's padding; the narrower border reads the same values).
// With unit strides, output position (oh, ow) reads padded element oh*Wp + ow + offset[j],
// which is affine in q = oh*Wp + ow: a band of output rows is one 1-D sparse correlation over q
// (positions with ow >= OW are computed and dropped). The sum for a block of
// kBlock consecutive q stays in registers while every kept weight of the channel adds its
// contribution (one broadcast and kBlock/8 fused multiply-adds on AVX2), so the output is written
// once and the zeros are never multiplied. Other strides step through each output row (blocks of
// kBlock outputs of one row).
// Work is split over (image, band of output rows, group of output channels); inside a task each
// block of positions passes through every channel of the group before the next block, so the
// block's input is read from L1 by all channels but the first, and the group's kept weights stay
// in L1 across blocks.
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

#include "../../simd/simd.h"
#include "../common/sparse_conv_common.h"
#include "sparse_conv2d_plan.h"

namespace prunekit {
namespace {

constexpr int64_t kBlock = 32;      // output positions summed in registers at a time
constexpr int64_t kBandSize = 1024;  // about this many output positions per parallel task
constexpr int64_t kGroupBytes = int64_t(1) << 15;  // kept weights of a group of channels, about
constexpr int64_t kTasksPerThread = 4;  // at least, when the channels allow
constexpr int64_t kMinParallelWork = int64_t(1) << 15;  // multiply-adds per thread, at least

// The shapes of one call, in elements.
struct Geometry {
  int64_t batch, in_channels, out_channels;
  int64_t padded_h, padded_w, out_h, out_w;
  int64_t stride_h, stride_w;
  int64_t rows_per_band, channels_per_group;
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

// sums[i] = bias + sum over the row of value[j] * x[offset[j] + i], for i in [0, kBlock).
// Reads kBlock elements after each offset whatever the block's useful length: see the slack.
template <typename scalar_t>
PRUNEKIT_INLINE void unit_stride_block(const scalar_t* x, Row<scalar_t> row, scalar_t bias,
                                       scalar_t* sums) {
  using vec = typename Vector32<scalar_t>::type;
  constexpr int64_t kLanes = sizeof(vec) / sizeof(scalar_t);
  constexpr int64_t kVectors = kBlock / kLanes;
  vec sum[kVectors];
  for (int64_t k = 0; k < kVectors; ++k) sum[k] = vec{} + bias;
  for (int64_t j = 0; j < row.count; ++j) {
    const scalar_t v = row.values[j];
    const scalar_t* in = x + row.offsets[j];
    for (int64_t k = 0; k < kVectors; ++k) {
      vec chunk;
      std::memcpy(&chunk, in + k * kLanes, sizeof(vec));
      sum[k] += v * chunk;
    }
  }
  std::memcpy(sums, sum, kBlock * sizeof(scalar_t));
}

// sums[i] = bias + sum over the row of value[j] * x[offset[j] + i * stride], i in [0, length).
template <typename scalar_t>
PRUNEKIT_INLINE void strided_block(const scalar_t* x, int64_t stride, Row<scalar_t> row,
                                   scalar_t bias, scalar_t* sums, int64_t length) {
  for (int64_t i = 0; i < length; ++i) sums[i] = bias;
  for (int64_t j = 0; j < row.count; ++j) {
    const scalar_t v = row.values[j];
    const scalar_t* in = x + row.offsets[j];
    for (int64_t i = 0; i < length; ++i) sums[i] += v * in[i * stride];
  }
}

// The block's sums: kBlock positions in registers when `whole`, else exactly `count` positions
// `stride` apart (partial blocks that must not read past the input, other strides).
template <typename scalar_t>
PRUNEKIT_INLINE void block_sums(const scalar_t* in, int64_t stride, bool whole,
                                Row<scalar_t> row, scalar_t bias, scalar_t* sums,
                                int64_t count) {
  if (whole) {
    unit_stride_block(in, row, bias, sums);
  } else {
    strided_block(in, stride, row, bias, sums, count);
  }
}

// Everything the tasks read and write.
template <typename scalar_t>
struct Problem {
  Geometry g;
  const scalar_t* padded;  // the bordered images, with slack after the last unless in_place
  const scalar_t* values;
  const int64_t* row_offsets;
  const int64_t* offsets;  // of each kept weight into one padded image
  const scalar_t* bias;    // or null
  scalar_t* output;
  int64_t bands, groups;
  bool in_place;  // the images are the caller's input, with nothing after the last

  Row<scalar_t> row(int64_t oc) const {
    const int64_t begin = row_offsets[oc];
    return {values + begin, offsets + begin, row_offsets[oc + 1] - begin};
  }
  scalar_t bias_of(int64_t oc) const { return bias ? bias[oc] : scalar_t(0); }
};

// The output rows [first, last) of channels [oc_begin, oc_end) of one image, for unit strides:
// with output position (oh, ow) at q = oh * padded_w + ow, the rows are one run of q, cut in
// blocks of kBlock; each row keeps its first out_w columns (all of them when no column is
// dropped: a 1x1 kernel without padding). Every channel of the group sums a block before the
// next block, so the block's input is read from cache by all but the first. With `at_end` (the
// band ends the caller's input) a partial block reads only its own positions.
template <typename scalar_t>
PRUNEKIT_INLINE void unit_stride_band(const Problem<scalar_t>& p, const scalar_t* image,
                                      scalar_t* planes, int64_t oc_begin, int64_t oc_end,
                                      int64_t first, int64_t last, bool at_end) {
  const Geometry& g = p.g;
  const int64_t plane = g.out_h * g.out_w;
  const int64_t length = (last - first) * g.padded_w;
  scalar_t sums[kBlock];
  for (int64_t q = 0; q < length; q += kBlock) {
    const int64_t count = std::min(kBlock, length - q);
    const int64_t row = q / g.padded_w, column = q - row * g.padded_w;
    const scalar_t* in = image + first * g.padded_w + q;
    const bool whole = !(at_end && count < kBlock);
    for (int64_t oc = oc_begin; oc < oc_end; ++oc) {
      block_sums(in, 1, whole, p.row(oc), p.bias_of(oc), sums, count);
      scalar_t* out = planes + oc * plane + (first + row) * g.out_w;
      if (g.padded_w == g.out_w) {
        std::copy(sums, sums + count, out + column);
        continue;
      }
      // The block's positions by output row, without the columns past out_w.
      for (int64_t i = 0, c = column; i < count; c = 0, out += g.out_w) {
        const int64_t span = std::min(count - i, g.padded_w - c);
        const int64_t kept = std::clamp<int64_t>(g.out_w - c, 0, span);
        std::copy(sums + i, sums + i + kept, out + c);
        i += span;
      }
    }
  }
}

// The same for any strides: each block is kBlock outputs of one row.
template <typename scalar_t>
PRUNEKIT_INLINE void strided_band(const Problem<scalar_t>& p, const scalar_t* image,
                                  scalar_t* planes, int64_t oc_begin, int64_t oc_end,
                                  int64_t first, int64_t last, bool at_end) {
  const Geometry& g = p.g;
  const int64_t plane = g.out_h * g.out_w;
  scalar_t sums[kBlock];
  for (int64_t oh = first; oh < last; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ow += kBlock) {
      const int64_t count = std::min(kBlock, g.out_w - ow);
      const scalar_t* in = image + oh * g.stride_h * g.padded_w + ow * g.stride_w;
      const bool whole = g.stride_w == 1 && !(at_end && count < kBlock);
      for (int64_t oc = oc_begin; oc < oc_end; ++oc) {
        block_sums(in, g.stride_w, whole, p.row(oc), p.bias_of(oc), sums, count);
        std::copy(sums, sums + count, planes + oc * plane + oh * g.out_w + ow);
      }
    }
  }
}

// Tasks [begin, end) of (image, band of output rows, group of output channels), group fastest,
// so consecutive tasks of a thread reuse one band's input rows from cache.
template <typename scalar_t>
PRUNEKIT_INLINE void run_tasks(const Problem<scalar_t>& p, int64_t begin, int64_t end) {
  const Geometry& g = p.g;
  const int64_t image_size = g.in_channels * g.padded_h * g.padded_w;
  for (int64_t task = begin; task < end; ++task) {
    const int64_t group = task % p.groups;
    const int64_t band = task / p.groups % p.bands;
    const int64_t n = task / p.groups / p.bands;
    const int64_t first = band * g.rows_per_band;
    const int64_t last = std::min(g.out_h, first + g.rows_per_band);
    const int64_t oc_begin = group * g.channels_per_group;
    const int64_t oc_end = std::min(g.out_channels, oc_begin + g.channels_per_group);
    const scalar_t* image = p.padded + n * image_size;
    scalar_t* planes = p.output + n * g.out_channels * g.out_h * g.out_w;
    // Whole blocks may read past a band's last position: into the next row, channel or image,
    // except after the last band of the last image when the input is read in place.
    const bool at_end = p.in_place && n == g.batch - 1 && last == g.out_h;
    if (g.stride_h == 1 && g.stride_w == 1) {
      unit_stride_band(p, image, planes, oc_begin, oc_end, first, last, at_end);
    } else {
      strided_band(p, image, planes, oc_begin, oc_end, first, last, at_end);
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
  const Geometry& g = p.g;
  const int64_t tasks = g.batch * p.bands * p.groups;
  // Threads only for calls worth waking them: a task multiplies about (kept weights of its
  // channels) x (positions of its band), and waking a thread costs some thousands of those.
  const int64_t kept_per_channel = p.row_offsets[g.out_channels] / g.out_channels;
  const int64_t work = std::max<int64_t>(
      1, kept_per_channel * g.channels_per_group * g.rows_per_band * g.padded_w);
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
             a.out_h, a.out_w, a.stride_h, a.stride_w, 1, 1};
  // Bands of (nearly) equal height (one short band would leave a thread idle at the end), groups
  // of channels whose kept weights stay in L1 while each block of the band passes through them.
  const int64_t bands = std::clamp<int64_t>(
      (a.out_h * g.padded_w + kBandSize - 1) / kBandSize, 1, std::max<int64_t>(a.out_h, 1));
  g.rows_per_band = (a.out_h + bands - 1) / bands;
  const int64_t taps = plan.rows[a.out_channels];
  const int64_t channel_bytes =
      std::max<int64_t>(1, taps / a.out_channels) * int64_t(sizeof(scalar_t) + sizeof(int64_t));
  int64_t per_group = std::clamp<int64_t>(kGroupBytes / channel_bytes, 1, a.out_channels);
  // Smaller groups when there would be too few tasks to keep every thread busy to the end.
  const int64_t wanted_groups = (kTasksPerThread * at::get_num_threads() + a.batch * bands - 1) /
                                (a.batch * bands);
  per_group = std::min(per_group, std::max<int64_t>(1, a.out_channels / wanted_groups));
  const int64_t groups = (a.out_channels + per_group - 1) / per_group;
  g.channels_per_group = (a.out_channels + groups - 1) / groups;  // groups of nearly equal size
  // Blocks read up to kBlock past a row's last output, and a tap reaches at most the kernel's
  // span into the row below.
  const int64_t slack = kBlock + (a.kernel_w - 1) * a.dilation_w + g.padded_w;
  // The input itself serves when the taps need no border and, with unit strides, every row's
  // positions are outputs (1x1 or kx1 kernels without padding, or only the centre tap landing):
  // then only the last band's partial blocks could read past the images, and they read exactly
  // their positions instead. This
  // saves a copy of the input (a quarter of the time of a 90%-sparse 1x1 layer on 56x56).
  const bool unit_strides = a.stride_h == 1 && a.stride_w == 1;
  const bool in_place = plan.top == 0 && plan.left == 0 && plan.padded_h == input.size(2) &&
                        plan.padded_w == input.size(3) && (!unit_strides || g.padded_w == a.out_w);
  const at::Tensor buffer =
      in_place ? input.contiguous() : bordered_images<scalar_t>(input, plan, slack);
  convolve(Problem<scalar_t>{g, buffer.const_data_ptr<scalar_t>(), tap_values, plan.rows,
                             plan.offsets, bias, output.data_ptr<scalar_t>(),
                             (g.out_h + g.rows_per_band - 1) / g.rows_per_band,
                             (g.out_channels + g.channels_per_group - 1) / g.channels_per_group,
                             in_place});
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
