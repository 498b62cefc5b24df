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
// With a unit width stride, the outputs (oh, ow..ow+w) of one row read w consecutive elements
// after each tap's offset. The outputs are cut in tiles of a few rows by a few 8-float vectors of
// columns (tile_for: a row's columns in even runs of whole vectors, and more rows when the row is
// short), or, where that sums fewer positions, a band of rows is one run over the bordered rows
// whose border columns are summed and dropped (1x1 layers, small padded planes). A tile's sums
// stay in registers while every kept weight of the channel adds its contribution: one broadcast
// and one fused multiply-add per vector of the tile (AVX2), up to eight independent sums so the
// adds do not wait on each other, and the output written once. Tiles of rows prefetch the input
// of the kept weight a few on, whose place the hardware cannot guess. Other width strides sum each
// output row's positions one by one. How a call is cut (schedule_for) is a function of its
// shapes, its input's layout, its kept weights' count and the thread count;
// sparse_conv2d_schedule says it in words.
// Work is split over (image, band of output rows, group of output channels); inside a task each
// tile passes through every channel of the group before the next tile, so the tile's input is
// read from cache by all channels but the first, and the group's kept weights stay in L1 across
// tiles. Bands are short enough that the input they read stays in L2. Bordered images are copied
// one at a time into one buffer (kept by the calling thread) whose border is zeroed once a call.
// The task loop is compiled twice, for AVX2+FMA and for the build's default target (plain
// x86-64), and the AVX2 one is chosen at run time when the CPU has it.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../../simd/simd.h"
#include "../common/sparse_conv_common.h"
#include "sparse_conv2d_plan.h"

namespace prunekit {
namespace {

constexpr int64_t kTileVectors = 8;  // sums of a tile held in 32-byte vector registers
constexpr int64_t kStridedBlock = 64;  // outputs of one row summed at a time, other strides
// 1x1 layers with fewer than kLongPointwise kept weights a channel are cut in runs of at most
// kPointwiseVectors: 8-vector runs measured 10-20% slower than 4-vector ones on 1x1 256->64 on
// 56x56 at 90-95% (13-26 kept weights), and 2-8% faster with 76-256 (1x1 256->64 at 70%,
// 1024->256 at 80-90%, 1024->1024 at 75%), as on 3x3 layers.
constexpr int64_t kPointwiseVectors = 4;
constexpr int64_t kLongPointwise = 64;
// Tiles of rows ask for the input of the kept weight this many further on while they add one
// (a prefetch): their reads jump between input channels and kernel rows, from L2, where the
// hardware does not guess them (3x3 layers with dilation 2-12: 5-9% faster measured; flat runs
// of 1x1 layers were 10-20% slower with it, and do without).
constexpr int64_t kTileAhead = 8;
constexpr int64_t kBandSize = 1024;  // output positions per parallel task, at most
constexpr int64_t kMinPointwiseBand = 128;  // output positions of a 1x1 layer's band, at least
constexpr int64_t kBandBytes = int64_t(1) << 19;  // input a band reads, at most (in L2)
constexpr int64_t kGroupBytes = int64_t(1) << 15;  // kept weights of a group of channels, about
constexpr int64_t kTasksPerThread = 4;  // at least, when the channels allow
constexpr int64_t kMinParallelWork = int64_t(1) << 15;  // multiply-adds per thread, at least

// Elements of scalar_t in one 32-byte vector.
template <typename scalar_t>
constexpr int64_t kLanes = 32 / sizeof(scalar_t);

// The outputs one tile sums with a unit width stride: `rows` output rows by `vectors` vectors of
// consecutive columns, rows * vectors <= kTileVectors.
struct Tile {
  int64_t rows, vectors;
};

// Splits `vectors` vectors into the fewest runs of at most `longest`, as even as can be (10 in
// runs of at most 8: 5 and 5, not 8 and 2): run i of `runs` has the vectors `run_vectors` gives.
struct Runs {
  int64_t runs, shorter, longer_runs;  // the first longer_runs runs have shorter + 1 vectors
  Runs(int64_t vectors, int64_t longest)
      : runs((std::max<int64_t>(vectors, 1) + longest - 1) / longest),
        shorter(std::max<int64_t>(vectors, 1) / runs),
        longer_runs(std::max<int64_t>(vectors, 1) % runs) {}
  int64_t run_vectors(int64_t i) const { return shorter + (i < longer_runs); }
};

// The tile for rows of out_w outputs: as many vectors as the longest run of a row (runs of at
// most `longest` vectors), and as many rows as fill kTileVectors (a short row is not summed in
// too few registers).
Tile tile_for(int64_t out_w, int64_t lanes, int64_t longest) {
  const int64_t vectors = Runs((out_w + lanes - 1) / lanes, longest).run_vectors(0);
  return {kTileVectors / vectors, vectors};
}

// The shapes of one call, in elements.
struct Geometry {
  int64_t batch, in_channels, out_channels;
  int64_t padded_h, padded_w, out_h, out_w;
  int64_t stride_h, stride_w;
  int64_t rows_per_band, channels_per_group;
  Tile tile;
  // Whether a band is summed as one run of positions q = row * padded_w + column (unit
  // strides: output (oh, ow) reads the bordered input at oh * padded_w + ow after each tap's
  // offset), cut in runs of whole vectors (Runs), one run per tile; the columns past out_w are
  // summed and dropped. Chosen when it sums no more positions than tiles of rows do.
  bool flat;
  int64_t longest;  // vectors of a flat run, at most
  // Elements of each input channel a band reads from its first row, when they are to be
  // prefetched into L2 before the band's first group (warm_band), else 0.
  int64_t band_span = 0;
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

// A tile's sums are 32-byte vectors (GCC vector extensions: AVX registers in the AVX2 build,
// pairs of SSE registers in the default one) that stay in registers over the row.
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

// sum[r][k] += value[j] * (vector k of x[offset[j] + row_at[r]...]) for the kept weights j in
// [0, count); with kAhead > 0, each also prefetches the tile's input under weight j + kAhead.
template <typename scalar_t, int64_t kRows, int64_t kVectors, int64_t kAhead, typename vec>
PRUNEKIT_INLINE void add_weights(const scalar_t* x, const int64_t (&row_at)[kRows],
                                 const scalar_t* value, const int64_t* offset, int64_t count,
                                 vec (&sum)[kRows][kVectors]) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  constexpr int64_t line = 64 / sizeof(scalar_t);  // elements of a cache line
  for (const int64_t* const end = offset + count; offset != end; ++offset, ++value) {
    if (kAhead > 0) {
      const scalar_t* ahead = x + offset[kAhead];
      for (int64_t r = 0; r < kRows; ++r) {
        for (int64_t i = 0; i < kVectors * lanes; i += line) {
          __builtin_prefetch(ahead + row_at[r] + i);
        }
      }
    }
    const scalar_t v = *value;
    const scalar_t* in = x + *offset;
    for (int64_t r = 0; r < kRows; ++r) {
      for (int64_t k = 0; k < kVectors; ++k) {
        vec chunk;
        std::memcpy(&chunk, in + row_at[r] + k * lanes, sizeof(vec));
        sum[r][k] += v * chunk;
      }
    }
  }
}

// to[r][i] = bias + sum over the row of value[j] * x[offset[j] + row_at[r] + i], for r in
// [0, kRows) and i in [0, kVectors * lanes): whole vectors whatever the tile's useful width (the
// caller checks that the reads stay inside the input). With kAhead > 0, the input of the weight
// kAhead on is prefetched (all but the last kAhead weights).
template <typename scalar_t, int64_t kRows, int64_t kVectors, int64_t kAhead>
PRUNEKIT_INLINE void tile_sums(const scalar_t* x, const int64_t (&row_at)[kRows],
                               Row<scalar_t> row, scalar_t bias, scalar_t* const (&to)[kRows]) {
  using vec = typename Vector32<scalar_t>::type;
  vec sum[kRows][kVectors];
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t k = 0; k < kVectors; ++k) sum[r][k] = vec{} + bias;
  }
  const int64_t ahead = kAhead > 0 ? std::max<int64_t>(row.count - kAhead, 0) : 0;
  add_weights<scalar_t, kRows, kVectors, kAhead>(x, row_at, row.values, row.offsets, ahead, sum);
  add_weights<scalar_t, kRows, kVectors, 0>(x, row_at, row.values + ahead, row.offsets + ahead,
                                            row.count - ahead, sum);
  for (int64_t r = 0; r < kRows; ++r) std::memcpy(to[r], sum[r], sizeof(sum[r]));
}

// sums[i] = bias + sum over the row of value[j] * x[offset[j] + i * stride], i in [0, length):
// exactly the positions asked for.
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

// Everything the tasks read and write.
template <typename scalar_t>
struct Problem {
  Geometry g;
  const scalar_t* padded;  // the bordered images (or the caller's input, read in place)
  const scalar_t* readable_end;  // the end of what may be read: the images and any slack
  const scalar_t* values;
  const int64_t* row_offsets;
  const int64_t* offsets;  // of each kept weight into one padded image
  int64_t max_offset;      // the largest of them
  const scalar_t* bias;    // or null
  scalar_t* output;
  int64_t bands, groups;

  Row<scalar_t> row(int64_t oc) const {
    const int64_t begin = row_offsets[oc];
    return {values + begin, offsets + begin, row_offsets[oc + 1] - begin};
  }
  scalar_t bias_of(int64_t oc) const { return bias ? bias[oc] : scalar_t(0); }
};

// Where one tile reads and writes: `in` is the input under its first position; its outputs are
// its sums from `skip` on (a tile that starts early to end where its run ends): `rows` rows of
// `columns` positions from `out` (in channel 0's plane), or in a flat band the `columns`
// positions from q of the band's run, whose first output is at `out`.
template <typename scalar_t>
struct TilePlace {
  const scalar_t* in;
  scalar_t* out;
  int64_t rows, columns, skip, q;
};

// Writes a tile's sums (one channel) to its outputs, leaving out a flat run's dropped columns.
template <typename scalar_t>
PRUNEKIT_INLINE void write_tile(const Geometry& g, const scalar_t* sums, int64_t width,
                                const TilePlace<scalar_t>& t, scalar_t* out) {
  if (!g.flat) {
    for (int64_t r = 0; r < t.rows; ++r) {
      std::copy(sums + r * width, sums + r * width + t.columns, out + r * g.out_w);
    }
    return;
  }
  if (g.padded_w == g.out_w) {  // no dropped columns
    std::copy(sums, sums + t.columns, out + t.q);
    return;
  }
  for (int64_t i = 0, q = t.q; i < t.columns;) {
    const int64_t row = q / g.padded_w, column = q - row * g.padded_w;
    const int64_t span = std::min(t.columns - i, g.padded_w - column);
    const int64_t kept = std::clamp<int64_t>(g.out_w - column, 0, span);
    std::copy(sums + i, sums + i + kept, out + row * g.out_w + column);
    i += span, q += span;
  }
}

// One tile of kRows rows by kVectors vectors, for every channel of [oc_begin, oc_end): each
// channel sums the tile while its input is in cache from the channel before. A whole tile's
// rows are stored straight to the output; the others go through `sums`. A tile short of rows
// sums its last row again in the missing ones; one whose whole vectors would read past the
// input sums exactly its positions instead.
template <typename scalar_t, int64_t kRows, int64_t kVectors, int64_t kAhead>
PRUNEKIT_INLINE void tile_of_channels(const Problem<scalar_t>& p, TilePlace<scalar_t> t,
                                      int64_t oc_begin, int64_t oc_end) {
  constexpr int64_t width = kVectors * kLanes<scalar_t>;
  const Geometry& g = p.g;
  const int64_t plane = g.out_h * g.out_w;
  const int64_t row_step = g.stride_h * g.padded_w;  // input elements between output rows
  int64_t row_at[kRows];
  for (int64_t r = 0; r < kRows; ++r) row_at[r] = std::min(r, t.rows - 1) * row_step;
  const bool whole = p.readable_end - (t.in + row_at[kRows - 1]) >= p.max_offset + width;
  // Whether the sums are exactly the outputs of rows of the output planes.
  const bool direct = whole && t.rows == kRows && t.columns == width && t.skip == 0 &&
                      (!g.flat || g.padded_w == g.out_w);
  scalar_t sums[kRows * width];
  scalar_t* to[kRows];
  for (int64_t r = 0; r < kRows; ++r) to[r] = sums + r * width;
  for (int64_t oc = oc_begin; oc < oc_end; ++oc) {
    const Row<scalar_t> row = p.row(oc);
    scalar_t* out = t.out + oc * plane;
    if (direct) {
      scalar_t* const at = g.flat ? out + t.q : out;
      for (int64_t r = 0; r < kRows; ++r) to[r] = at + r * g.out_w;
      tile_sums<scalar_t, kRows, kVectors, kAhead>(t.in, row_at, row, p.bias_of(oc), to);
      continue;
    }
    if (whole) {
      tile_sums<scalar_t, kRows, kVectors, kAhead>(t.in, row_at, row, p.bias_of(oc), to);
    } else {
      for (int64_t r = 0; r < t.rows; ++r) {
        strided_block(t.in + row_at[r] + t.skip, 1, row, p.bias_of(oc),
                      sums + r * width + t.skip, t.columns);
      }
    }
    write_tile(g, sums + t.skip, width, t, out);
  }
}

// tile_of_channels for a tile of `tile.rows` rows by `tile.vectors` vectors: one row of 1 to
// kTileVectors vectors, or kTileVectors / vectors rows.
template <typename scalar_t, int64_t kAhead>
PRUNEKIT_INLINE void tile_of_channels(const Problem<scalar_t>& p, Tile tile,
                                      TilePlace<scalar_t> t, int64_t oc_begin, int64_t oc_end) {
  constexpr int64_t T = kTileVectors;
#define PRUNEKIT_TILE(rows, vectors) \
  return tile_of_channels<scalar_t, rows, vectors, kAhead>(p, t, oc_begin, oc_end)
  switch (tile.vectors) {
    case 1: if (tile.rows == 1) PRUNEKIT_TILE(1, 1); PRUNEKIT_TILE(T / 1, 1);
    case 2: if (tile.rows == 1) PRUNEKIT_TILE(1, 2); PRUNEKIT_TILE(T / 2, 2);
    case 3: if (tile.rows == 1) PRUNEKIT_TILE(1, 3); PRUNEKIT_TILE(T / 3, 3);
    case 4: if (tile.rows == 1) PRUNEKIT_TILE(1, 4); PRUNEKIT_TILE(T / 4, 4);
    case 5: PRUNEKIT_TILE(1, 5);
    case 6: PRUNEKIT_TILE(1, 6);
    case 7: PRUNEKIT_TILE(1, 7);
    default: PRUNEKIT_TILE(1, 8);
  }
#undef PRUNEKIT_TILE
}

// The output rows [first, last) of channels [oc_begin, oc_end) of one image, for a unit width
// stride: in tiles of the call's shape, or (flat) as one run of positions up to the band's last
// output in runs of whole vectors, the last run starting early (into the band before, if need
// be) when it would pass that end: its first positions are summed twice and written once.
template <typename scalar_t>
PRUNEKIT_INLINE void tiled_band(const Problem<scalar_t>& p, const scalar_t* image,
                                scalar_t* planes, int64_t oc_begin, int64_t oc_end,
                                int64_t first, int64_t last) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  const Geometry& g = p.g;
  const int64_t row_step = g.stride_h * g.padded_w;  // input elements between output rows
  const scalar_t* in = image + first * row_step;
  scalar_t* out = planes + first * g.out_w;
  if (g.flat) {
    const int64_t positions = (last - first - 1) * g.padded_w + g.out_w;
    const int64_t before = first * g.padded_w;  // positions of the image before the band
    const Runs runs((positions + lanes - 1) / lanes, g.longest);
    for (int64_t i = 0, at = 0; i < runs.runs; ++i) {
      const int64_t width = runs.run_vectors(i) * lanes;
      const int64_t columns = std::min(width, positions - at);
      const int64_t start =
          columns < width && before + positions >= width ? positions - width : at;
      tile_of_channels<scalar_t, 0>(p, Tile{1, runs.run_vectors(i)},
                       TilePlace<scalar_t>{in + start, out, 1, columns, at - start, at},
                       oc_begin, oc_end);
      at += columns;
    }
    return;
  }
  const int64_t width = g.tile.vectors * lanes;
  for (int64_t oh = 0; oh < last - first; oh += g.tile.rows) {
    const int64_t rows = std::min(g.tile.rows, last - first - oh);
    for (int64_t ow = 0; ow < g.out_w; ow += width) {
      tile_of_channels<scalar_t, kTileAhead>(p, g.tile,
                       TilePlace<scalar_t>{in + oh * row_step + ow, out + oh * g.out_w + ow,
                                           rows, std::min(width, g.out_w - ow), 0, 0},
                       oc_begin, oc_end);
    }
  }
}

// The same for other width strides: each block is kStridedBlock outputs of one row, summed one
// position at a time.
template <typename scalar_t>
PRUNEKIT_INLINE void strided_band(const Problem<scalar_t>& p, const scalar_t* image,
                                  scalar_t* planes, int64_t oc_begin, int64_t oc_end,
                                  int64_t first, int64_t last) {
  const Geometry& g = p.g;
  const int64_t plane = g.out_h * g.out_w;
  scalar_t sums[kStridedBlock];
  for (int64_t oh = first; oh < last; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ow += kStridedBlock) {
      const int64_t count = std::min(kStridedBlock, g.out_w - ow);
      const scalar_t* in = image + oh * g.stride_h * g.padded_w + ow * g.stride_w;
      for (int64_t oc = oc_begin; oc < oc_end; ++oc) {
        strided_block(in, g.stride_w, p.row(oc), p.bias_of(oc), sums, count);
        std::copy(sums, sums + count, planes + oc * plane + oh * g.out_w + ow);
      }
    }
  }
}

// Prefetches the input a band from output row `first` reads into L2, channel by channel in
// order: the tiles read it in the order of the kept weights, jumping between channels, which the
// hardware does not stream from memory (an input read in place can be there: 1x1 layers at
// batch 8).
template <typename scalar_t>
PRUNEKIT_INLINE void warm_band(const Geometry& g, const scalar_t* image, int64_t first) {
  constexpr int64_t line = 64 / sizeof(scalar_t);  // elements of a cache line
  const int64_t plane = g.padded_h * g.padded_w;
  const int64_t start = first * g.stride_h * g.padded_w;
  const int64_t length = std::min(g.band_span, plane - start);
  for (int64_t c = 0; c < g.in_channels; ++c) {
    const scalar_t* from = image + c * plane + start;
    for (int64_t i = 0; i < length; i += line) __builtin_prefetch(from + i, 0, 2);
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
    const int64_t band_index = task / p.groups % p.bands;
    const int64_t n = task / p.groups / p.bands;
    const int64_t first = band_index * g.rows_per_band;
    const int64_t last = std::min(g.out_h, first + g.rows_per_band);
    const int64_t oc_begin = group * g.channels_per_group;
    const int64_t oc_end = std::min(g.out_channels, oc_begin + g.channels_per_group);
    const scalar_t* image = p.padded + n * image_size;
    scalar_t* planes = p.output + n * g.out_channels * g.out_h * g.out_w;
    if (g.band_span > 0 && (group == 0 || task == begin)) warm_band(g, image, first);
    if (g.stride_w == 1) {
      tiled_band(p, image, planes, oc_begin, oc_end, first, last);
    } else {
      strided_band(p, image, planes, oc_begin, oc_end, first, last);
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
      1, kept_per_channel * g.channels_per_group * g.rows_per_band * g.out_w);
  const int64_t grain = std::max<int64_t>(1, kMinParallelWork / work);
  at::parallel_for(0, tasks, grain, [&](int64_t begin, int64_t end) { loop(p, begin, end); });
}

// Work-splitting grain for copying planes of `plane` elements: threads only for work worth
// waking them (a fork costs more than a small layer's copy).
int64_t copy_grain(int64_t plane) {
  return std::max<int64_t>(1, (int64_t(1) << 15) / std::max<int64_t>(plane, 1));
}

// Zeroes the border (plan) around the image's place in each of `channels` padded planes from
// `to`: once per call, as every image of the call is copied into the same places (a border can
// be several times the image: dilation 24 on 30x40 makes 78x88 planes).
template <typename scalar_t>
void zero_border(int64_t channels, int64_t height, int64_t width, const TapView& plan,
                 scalar_t* to) {
  const int64_t plane = plan.padded_h * plan.padded_w;
  at::parallel_for(0, channels, copy_grain(plane), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      scalar_t* out = to + c * plane;
      std::fill(out, out + plan.top * plan.padded_w, scalar_t(0));
      for (int64_t h = 0; h < height; ++h) {
        scalar_t* line = out + (plan.top + h) * plan.padded_w;
        std::fill(line, line + plan.left, scalar_t(0));
        std::fill(line + plan.left + width, line + plan.padded_w, scalar_t(0));
      }
      std::fill(out + (plan.top + height) * plan.padded_w, out + plane, scalar_t(0));
    }
  });
}

// Elements between neighbouring channels, rows and columns of an image (its tensor's strides).
struct Steps {
  int64_t channel, row, column;
};

// Channels copied together from an image whose columns are not consecutive (channels last):
// each position's reads are then a cache line of channels.
constexpr int64_t kCopiedChannels = 16;

// Copies one image's `channels` planes of height x width, element (c, h, w) at
// from[c * step.channel + h * step.row + w * step.column], into their places inside the zero
// borders of zero_border: row by row when columns are consecutive (NCHW), else kCopiedChannels
// channels of a row at a time, position by position (a channels-last image is read in order,
// and never copied whole to NCHW first).
template <typename scalar_t>
void copy_into_border(const scalar_t* from, Steps step, int64_t channels, int64_t height,
                      int64_t width, const TapView& plan, scalar_t* to) {
  const int64_t plane = plan.padded_h * plan.padded_w;
  const auto place = [&](int64_t c, int64_t h) {
    return to + c * plane + (plan.top + h) * plan.padded_w + plan.left;
  };
  if (step.column == 1) {
    at::parallel_for(0, channels, copy_grain(height * width), [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        for (int64_t h = 0; h < height; ++h) {
          const scalar_t* row = from + c * step.channel + h * step.row;
          std::copy(row, row + width, place(c, h));
        }
      }
    });
    return;
  }
  const int64_t blocks = (channels + kCopiedChannels - 1) / kCopiedChannels;
  const int64_t grain = copy_grain(kCopiedChannels * width);
  at::parallel_for(0, blocks * height, grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t first = task / height * kCopiedChannels, h = task % height;
      const int64_t count = std::min(kCopiedChannels, channels - first);
      scalar_t* rows[kCopiedChannels];
      for (int64_t i = 0; i < count; ++i) rows[i] = place(first + i, h);
      const scalar_t* line = from + first * step.channel + h * step.row;
      for (int64_t w = 0; w < width; ++w, line += step.column) {
        for (int64_t i = 0; i < count; ++i) rows[i][w] = line[i * step.channel];
      }
    }
  });
}

// Distinct input rows that `rows` consecutive output rows read in one channel.
int64_t input_rows_read(const SparseConvArgs& a, int64_t rows) {
  const int64_t span = (rows - 1) * a.stride_h + 1;  // under one kernel row
  return span >= a.dilation_h ? span + (a.kernel_h - 1) * a.dilation_h : span * a.kernel_h;
}

// How one call's work is cut: the geometry's tile, bands and groups, and whether the caller's
// input is read in place. A bordered copy is made and convolved one image at a time (g.batch 1):
// a batch of bordered images can outgrow the last-level cache (dilation 24 on 30x40: 14 MB an
// image at 512 channels), which made batch 8 twice as slow per image as batch 1.
struct Schedule {
  Geometry g;
  int64_t bands, groups;
  bool in_place;
};

// The schedule of a call on an input of height x width planned as `plan`, for `threads`
// threads: it depends on the shapes, whether the input is contiguous (NCHW), the number of taps
// and the element size only.
template <typename scalar_t>
Schedule schedule_for(const SparseConvArgs& a, int64_t height, int64_t width, bool contiguous,
                      const TapView& plan, int64_t threads) {
  constexpr int64_t lanes = kLanes<scalar_t>;
  // Flat runs or tiles of rows, whichever sums fewer positions (flat ones sum the columns past
  // out_w, tiles round each row up to whole vectors and the rows up to whole tiles); flat runs
  // on a tie (unpadded 1x1 layers: the same positions, cut in longer runs).
  const int64_t taps = plan.rows[a.out_channels];
  const bool few_taps = a.kernel_h * a.kernel_w == 1 && taps < kLongPointwise * a.out_channels;
  const int64_t longest = few_taps ? kPointwiseVectors : kTileVectors;
  const Tile rows_tile = tile_for(a.out_w, lanes, longest);
  const auto rounded_up = [](int64_t n, int64_t step) { return (n + step - 1) / step * step; };
  const int64_t flat_positions = rounded_up((a.out_h - 1) * plan.padded_w + a.out_w, lanes);
  const int64_t tiled_positions = rounded_up(a.out_h, rows_tile.rows) *
                                  rounded_up(a.out_w, rows_tile.vectors * lanes);
  const bool flat = a.stride_h == 1 && a.stride_w == 1 && flat_positions <= tiled_positions;
  const Tile tile = flat || a.stride_w != 1 ? Tile{1, 1} : rows_tile;
  const bool needs_no_border = plan.top == 0 && plan.left == 0 && plan.padded_h == height &&
                               plan.padded_w == width;
  // The input itself serves when it is contiguous, the taps need no border and every tile's
  // reads stay inside it (other width strides read exactly their positions; a flat band ends its
  // last run at its last output when the image has room before it): it saves a copy of the input
  // (a quarter of the time of a 90%-sparse 1x1 layer on 56x56). A bordered copy ends in enough
  // zeros for any tile.
  const bool in_place = contiguous && needs_no_border && (a.stride_w != 1 || flat);
  Schedule s{{in_place ? a.batch : 1, a.in_channels, a.out_channels, plan.padded_h,
              plan.padded_w, a.out_h, a.out_w, a.stride_h, a.stride_w, 1, 1, tile, flat, longest},
             1, 1, in_place};
  // Bands of whole tiles of rows, as tall as allows at most kBandSize positions and at most
  // kBandBytes of input read (every group of channels reads it again: it should stay in L2), then
  // of (nearly) equal height (one short band would leave a thread idle at the end).
  int64_t band_rows = tile.rows;
  while (band_rows + tile.rows <= std::max<int64_t>(a.out_h, 1) &&
         (band_rows + tile.rows) * a.out_w <= kBandSize &&
         a.in_channels * input_rows_read(a, band_rows + tile.rows) * plan.padded_w *
                 int64_t(sizeof(scalar_t)) <= kBandBytes) {
    band_rows += tile.rows;
  }
  const int64_t tiles_high = (a.out_h + tile.rows - 1) / tile.rows;
  int64_t wanted_bands = std::max<int64_t>(1, (tiles_high * tile.rows + band_rows - 1) / band_rows);
  // A 1x1 layer's bands read no rows twice, where groups of channels each read the band again:
  // its threads get bands of their own (down to kMinPointwiseBand positions) before groups (1x1
  // 256->64 on 56x56 at 95%, 13 kept weights a channel, reads about a byte of input per
  // multiply-add, and two groups read it twice).
  if (a.kernel_h * a.kernel_w == 1) {
    const int64_t wanted_tasks = kTasksPerThread * threads;
    const int64_t most_bands = std::max<int64_t>(1, a.out_h * a.out_w / kMinPointwiseBand);
    wanted_bands = std::max(wanted_bands,
                            std::min((wanted_tasks + s.g.batch - 1) / s.g.batch,
                                     std::min(most_bands, tiles_high)));
  }
  s.g.rows_per_band = (tiles_high + wanted_bands - 1) / wanted_bands * tile.rows;
  s.bands = std::max<int64_t>(1, (a.out_h + s.g.rows_per_band - 1) / s.g.rows_per_band);
  // An input read in place may come from memory (a bordered copy was just written to cache).
  if (in_place) s.g.band_span = input_rows_read(a, s.g.rows_per_band) * plan.padded_w;
  // Groups of channels whose kept weights stay in L1 while each tile of the band passes through
  // them, smaller when there would be too few tasks to keep every thread busy to the end.
  const int64_t channel_bytes =
      std::max<int64_t>(1, taps / a.out_channels) * int64_t(sizeof(scalar_t) + sizeof(int64_t));
  int64_t per_group = std::clamp<int64_t>(kGroupBytes / channel_bytes, 1, a.out_channels);
  const int64_t wanted_groups = (kTasksPerThread * threads + s.g.batch * s.bands - 1) /
                                (s.g.batch * s.bands);
  per_group = std::min(per_group, std::max<int64_t>(1, a.out_channels / wanted_groups));
  s.groups = (a.out_channels + per_group - 1) / per_group;
  s.g.channels_per_group = (a.out_channels + s.groups - 1) / s.groups;  // nearly equal groups
  return s;
}

// The schedule in words, for `prunekit bench model`: "tiles 2x32" (rows x columns summed in
// registers at a time), "runs of 32" (rows end to end, "+ border" when the border's columns are
// summed and dropped) or "strided" (other width strides), then the bands and groups.
template <typename scalar_t>
std::string describe(const Schedule& s) {
  const Geometry& g = s.g;
  std::string how;
  if (g.stride_w != 1) {
    how = "strided";
  } else if (g.flat) {
    how = "runs of " + std::to_string(g.longest * kLanes<scalar_t>) +
          (g.padded_w != g.out_w ? " + border" : "");
  } else {
    how = "tiles " + std::to_string(g.tile.rows) + "x" +
          std::to_string(g.tile.vectors * kLanes<scalar_t>);
  }
  return how + ", " + std::to_string(s.bands) + (s.bands == 1 ? " band x " : " bands x ") +
         std::to_string(s.groups) + (s.groups == 1 ? " group" : " groups") +
         (s.in_place ? ", in place" : "");
}

// A 64-byte aligned buffer of at least `size` elements for the bordered images of this thread's
// calls, kept from call to call (the largest one asked for so far, until the thread ends): a
// fresh one of megabytes can come back from the OS on a call, mapped and zeroed page by page
// again (1x1 256->64@56x56 on a channels-last input, called in turns with oneDNN's conv: up to
// 33 page faults and 0.40-0.46 ms a call with a fresh buffer, none and 0.35 ms with this one).
// Its contents are stale: every call zeroes the border.
template <typename scalar_t>
scalar_t* bordered_buffer(int64_t size) {
  struct Free {
    void operator()(void* memory) const { std::free(memory); }
  };
  thread_local std::unique_ptr<void, Free> buffer;
  thread_local int64_t held = 0;  // bytes
  const int64_t bytes = (size * int64_t(sizeof(scalar_t)) + 63) / 64 * 64;
  if (bytes > held) {
    buffer.reset();  // the smaller one freed before the larger is asked for
    held = 0;
    buffer.reset(std::aligned_alloc(64, bytes));
    TORCH_CHECK(buffer, "sparse_conv2d: out of memory for a bordered image of ", bytes, " bytes");
    held = bytes;
  }
  return static_cast<scalar_t*>(buffer.get());
}

// The convolution of `input` by the taps of `plan`, whose values are tap_values[t].
template <typename scalar_t>
void convolve_input(const SparseConvArgs& a, const at::Tensor& input, const TapView& plan,
                    const scalar_t* tap_values, const scalar_t* bias, at::Tensor& output) {
  const int64_t height = input.size(2), width = input.size(3);
  const Schedule s = schedule_for<scalar_t>(a, height, width, input.is_contiguous(), plan,
                                            at::get_num_threads());
  // The images from `images` (readable up to `end`), the outputs from image `first`.
  const auto convolve_images = [&](const scalar_t* images, const scalar_t* end, int64_t first) {
    scalar_t* out = output.data_ptr<scalar_t>() + first * a.out_channels * a.out_h * a.out_w;
    convolve(Problem<scalar_t>{s.g, images, end, tap_values, plan.rows, plan.offsets,
                               plan.max_offset, bias, out, s.bands, s.groups});
  };
  const scalar_t* images = input.const_data_ptr<scalar_t>();
  if (s.in_place) {
    convolve_images(images, images + input.numel(), 0);
    return;
  }
  // One bordered image at a time (from any layout: channels last, views), in one buffer that
  // ends in enough zeros for any tile; its border is zeroed once, and each image overwrites only
  // the inside.
  const int64_t bordered = a.in_channels * plan.padded_h * plan.padded_w;
  const int64_t slack = kTileVectors * kLanes<scalar_t>;
  scalar_t* image = bordered_buffer<scalar_t>(bordered + slack);
  std::fill(image + bordered, image + bordered + slack, scalar_t(0));
  zero_border(a.in_channels, height, width, plan, image);
  for (int64_t n = 0; n < a.batch; ++n) {
    copy_into_border(images + n * input.stride(0),
                     Steps{input.stride(1), input.stride(2), input.stride(3)}, a.in_channels,
                     height, width, plan, image);
    convolve_images(image, image + bordered + slack, n);
  }
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

std::string sparse_conv2d_schedule_cpu(const at::Tensor& input, const at::Tensor& values,
                                       const at::Tensor& row_offsets, const at::Tensor& columns,
                                       at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation) {
  const PlannedCall call = plan_call(input, values, row_offsets, columns, kernel_size, stride,
                                     padding, dilation);
  std::string words;
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_conv2d_schedule_cpu", [&] {
    words = describe<scalar_t>(schedule_for<scalar_t>(call.args, input.size(2), input.size(3),
                                                      input.is_contiguous(), call.plan.view(),
                                                      at::get_num_threads()));
  });
  return words;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) {
  m.impl("sparse_conv2d", &sparse_conv2d_cpu);
  m.impl("sparse_conv2d_schedule", &sparse_conv2d_schedule_cpu);
}

}  // namespace prunekit
