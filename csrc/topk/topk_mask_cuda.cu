// topk_mask on CUDA: the threshold comes from at::kthvalue, the tie budget from a device-side
// count, and one kernel writes the mask with the same rule as the CPU version (above the
// threshold, or equal to it and among the first `ties_to_keep` ties in flat-index order).
// Nothing is copied to the host except the NaN check.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace prunekit {
namespace {

constexpr int kThreads = 256;

template <typename scalar_t>
__global__ void write_topk_mask(const scalar_t* __restrict__ scores,
                                const scalar_t* __restrict__ threshold,
                                const int64_t* __restrict__ tie_rank,
                                const int64_t* __restrict__ ties_to_keep, int64_t n,
                                bool* __restrict__ out) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t t = static_cast<acc_t>(*threshold);
  const int64_t budget = *ties_to_keep;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t v = static_cast<acc_t>(scores[i]);
    out[i] = v > t || (v == t && tie_rank[i] <= budget);
  }
}

at::Tensor topk_mask_cuda(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.is_floating_point(),
              "topk_mask: expected floating-point scores, got ", scores.scalar_type());
  const int64_t n = scores.numel();
  TORCH_CHECK(k >= 0 && k <= n, "topk_mask: expected 0 <= k <= ", n,
              " (the number of scores), got k = ", k);
  const c10::cuda::CUDAGuard guard(scores.device());
  at::Tensor mask = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  if (n == 0) return mask;
  const at::Tensor flat = scores.contiguous().view({-1});
  TORCH_CHECK(!at::isnan(flat).any().item<bool>(), "topk_mask: expected scores without NaN");
  if (k == 0 || k == n) return mask.fill_(k == n);

  const at::Tensor threshold = std::get<0>(at::kthvalue(flat, n - k + 1));
  const at::Tensor ties = flat.eq(threshold);
  const at::Tensor tie_rank = ties.cumsum(0, at::kLong);
  const at::Tensor ties_to_keep = (k - flat.gt(threshold).sum()).to(at::kLong).contiguous();

  const int blocks = static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "topk_mask_cuda", [&] {
    write_topk_mask<scalar_t><<<blocks, kThreads, 0, stream>>>(
        flat.const_data_ptr<scalar_t>(), threshold.const_data_ptr<scalar_t>(),
        tie_rank.const_data_ptr<int64_t>(), ties_to_keep.const_data_ptr<int64_t>(), n,
        mask.data_ptr<bool>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) { m.impl("topk_mask", &topk_mask_cuda); }

}  // namespace prunekit
