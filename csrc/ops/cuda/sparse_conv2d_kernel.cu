// sparse_conv2d on CUDA: a convolution that multiplies only the kept weights (forward only).
//
// The weight is stored per output channel (CSR rows): the kept weights' values and their column
// (ic * KH + kh) * KW + kw in the flattened filter. A kept weight reads the unpadded input at
//   ih = oh*sh + dy, iw = ow*sw + dx   with dy = kh*dh - ph, dx = kw*dw - pw,
// i.e. at the fixed offset ic*H*W + dy*W + dx from the output position's base oh*sh*W + ow*sw,
// and multiplies 0 where (ih, iw) falls in the padding: a bounds check per read instead of a
// padded copy of the input.
//
// One block computes a tile of one (image, output channel) plane. blockIdx.x runs over the
// (n, oc) pairs, oc fastest, so that blocks running together read the same image through L1/L2;
// blockIdx.y runs over tiles of output positions (both grid-stride, so any size fits the grid).
// The block decodes its row's kept weights kTile at a time into shared memory, where all threads
// read them as broadcasts. Each thread holds kPerThread outputs blockDim.x apart, so consecutive
// threads read consecutive ow (coalesced) and one shared read of a weight serves several outputs.
// Sums are in the accumulation type (float for float, double for double), starting from the bias
// and adding the kept weights in row order. All on the current stream; the host never waits here.
#include "../common/sparse_conv_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace prunekit {
namespace {

constexpr int kMaxThreads = 128;  // threads per block; fewer for small planes
constexpr int kPerThread = 4;     // outputs per thread
constexpr int kTile = 256;        // kept weights in shared memory at a time

// The shapes of one call, in elements. Rows and columns of the padded input fit int (checked).
struct Shape {
  int64_t pairs, out_channels, image_size, in_plane, plane;  // C*H*W, H*W, OH*OW
  int in_h, in_w, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, padding_h, padding_w, dilation_h, dilation_w;
};

template <typename scalar_t, typename column_t>
__global__ void __launch_bounds__(kMaxThreads)
    sparse_conv2d_forward(const scalar_t* __restrict__ input, const scalar_t* __restrict__ values,
                          const int64_t* __restrict__ row_offsets,
                          const column_t* __restrict__ columns, const scalar_t* __restrict__ bias,
                          scalar_t* __restrict__ output, const Shape s) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t tile_value[kTile];
  __shared__ int64_t tile_offset[kTile];  // ic*H*W + dy*W + dx, negative in the top-left padding
  __shared__ int tile_dy[kTile];
  __shared__ int tile_dx[kTile];

  const int64_t tile_size = int64_t(blockDim.x) * kPerThread;
  const int64_t tiles = (s.plane + tile_size - 1) / tile_size;
  for (int64_t pair = blockIdx.x; pair < s.pairs; pair += gridDim.x) {
    const int64_t oc = pair % s.out_channels;
    const int64_t begin = row_offsets[oc];
    const int64_t end = row_offsets[oc + 1];
    const scalar_t* image = input + (pair / s.out_channels) * s.image_size;
    scalar_t* plane_out = output + pair * s.plane;
    const acc_t start = bias ? static_cast<acc_t>(bias[oc]) : acc_t(0);

    for (int64_t tile = blockIdx.y; tile < tiles; tile += gridDim.y) {
      // This thread's outputs: the window corner (top, left) in input coordinates and its index
      // into the image. p rises with k, so the `count` valid ones come first.
      acc_t sum[kPerThread];
      int64_t base[kPerThread];
      int top[kPerThread], left[kPerThread];
      int count = 0;
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const int64_t p = tile * tile_size + int64_t(k) * blockDim.x + threadIdx.x;
        const bool valid = p < s.plane;
        top[k] = valid ? static_cast<int>(p / s.out_w) * s.stride_h : 0;
        left[k] = valid ? static_cast<int>(p % s.out_w) * s.stride_w : 0;
        base[k] = int64_t(top[k]) * s.in_w + left[k];
        sum[k] = start;
        count += valid;
      }

      for (int64_t first = begin; first < end; first += kTile) {
        const int length = static_cast<int>(end - first < kTile ? end - first : kTile);
        __syncthreads();  // every thread is done reading the previous tile of weights
        for (int j = threadIdx.x; j < length; j += blockDim.x) {
          // In the column's own type: int32 columns (the usual) get 32-bit divisions.
          const column_t column = columns[first + j];
          const column_t kernel_w = s.kernel_w, kernel_h = s.kernel_h;
          const int kw = static_cast<int>(column % kernel_w);
          const int kh = static_cast<int>(column / kernel_w % kernel_h);
          const int64_t ic = column / kernel_w / kernel_h;
          const int dy = kh * s.dilation_h - s.padding_h;
          const int dx = kw * s.dilation_w - s.padding_w;
          tile_value[j] = static_cast<acc_t>(values[first + j]);
          tile_offset[j] = ic * s.in_plane + int64_t(dy) * s.in_w + dx;
          tile_dy[j] = dy;
          tile_dx[j] = dx;
        }
        __syncthreads();
        for (int j = 0; j < length; ++j) {
          const acc_t value = tile_value[j];
          const int64_t offset = tile_offset[j];
          const int dy = tile_dy[j];
          const int dx = tile_dx[j];
#pragma unroll
          for (int k = 0; k < kPerThread; ++k) {
            // Unsigned compares also reject negative rows and columns (the top-left padding).
            const unsigned ih = static_cast<unsigned>(top[k] + dy);
            const unsigned iw = static_cast<unsigned>(left[k] + dx);
            if (k < count) {
              // Padding reads as 0 and is still multiplied: an inf or NaN weight gives NaN
              // there, as in the dense convolution.
              const bool inside = ih < unsigned(s.in_h) && iw < unsigned(s.in_w);
              sum[k] += value * (inside ? static_cast<acc_t>(image[base[k] + offset]) : acc_t(0));
            }
          }
        }
      }

      const int64_t p0 = tile * tile_size + threadIdx.x;
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        if (k < count) plane_out[p0 + int64_t(k) * blockDim.x] = static_cast<scalar_t>(sum[k]);
      }
    }
  }
}

at::Tensor sparse_conv2d_cuda(const at::Tensor& input, const at::Tensor& values,
                              const at::Tensor& row_offsets, const at::Tensor& columns,
                              const c10::optional<at::Tensor>& bias, at::IntArrayRef kernel_size,
                              at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, const c10::optional<at::Tensor>& plan) {
  const SparseConvArgs a = check_sparse_conv_args(input, values, row_offsets, columns, bias,
                                                  kernel_size, stride, padding, dilation);
  TORCH_CHECK(input.is_cuda(), "sparse_conv2d: expected CUDA tensors");
  TORCH_CHECK(!plan, "sparse_conv2d: tap plans are for CPU inputs; pass none on CUDA");
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor output = at::empty({a.batch, a.out_channels, a.out_h, a.out_w}, input.options());
  if (output.numel() == 0) return output;
  // Input rows and columns, and window corners plus kernel offsets, are computed in int.
  constexpr int64_t kIntMax = std::numeric_limits<int>::max();
  TORCH_CHECK(a.padded_h <= kIntMax && a.padded_w <= kIntMax,
              "sparse_conv2d: the padded input is too large for CUDA: ", a.padded_h, "x",
              a.padded_w);

  const at::Tensor x = input.contiguous();
  const at::Tensor values_c = values.contiguous();
  const at::Tensor rows = row_offsets.contiguous();
  const at::Tensor columns_c = columns.contiguous();
  const at::Tensor bias_c = bias ? bias->contiguous() : at::Tensor();

  Shape s{};
  s.pairs = a.batch * a.out_channels;
  s.out_channels = a.out_channels;
  s.in_plane = x.size(2) * x.size(3);
  s.image_size = a.in_channels * s.in_plane;
  s.plane = a.out_h * a.out_w;
  s.in_h = static_cast<int>(x.size(2)), s.in_w = static_cast<int>(x.size(3));
  s.out_w = static_cast<int>(a.out_w);
  s.kernel_h = static_cast<int>(a.kernel_h), s.kernel_w = static_cast<int>(a.kernel_w);
  s.padding_h = static_cast<int>(a.padding_h), s.padding_w = static_cast<int>(a.padding_w);
  // A stride (dilation) larger than the padded input only ever multiplies oh = 0 (kh = 0): clamp.
  s.stride_h = static_cast<int>(std::min(a.stride_h, a.padded_h));
  s.stride_w = static_cast<int>(std::min(a.stride_w, a.padded_w));
  s.dilation_h = static_cast<int>(std::min(a.dilation_h, a.padded_h));
  s.dilation_w = static_cast<int>(std::min(a.dilation_w, a.padded_w));

  // Enough threads for the plane at kPerThread outputs each, in whole warps.
  const int64_t wanted = (s.plane + kPerThread - 1) / kPerThread;
  const int threads = static_cast<int>(std::min<int64_t>(kMaxThreads, (wanted + 31) / 32 * 32));
  const int64_t tile_size = int64_t(threads) * kPerThread;
  const int64_t tiles = (s.plane + tile_size - 1) / tile_size;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(s.pairs, kIntMax)),
                  static_cast<unsigned>(std::min<int64_t>(tiles, 65535)));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_conv2d_cuda", [&] {
    const auto launch = [&](const auto* column_data) {
      using column_t = std::remove_cv_t<std::remove_pointer_t<decltype(column_data)>>;
      sparse_conv2d_forward<scalar_t, column_t><<<grid, threads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), values_c.const_data_ptr<scalar_t>(),
          rows.const_data_ptr<int64_t>(), column_data,
          bias ? bias_c.const_data_ptr<scalar_t>() : nullptr, output.data_ptr<scalar_t>(), s);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (columns_c.scalar_type() == at::kInt) {
      launch(columns_c.const_data_ptr<int32_t>());
    } else {
      launch(columns_c.const_data_ptr<int64_t>());
    }
  });
  return output;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) { m.impl("sparse_conv2d", &sparse_conv2d_cuda); }

}  // namespace prunekit
