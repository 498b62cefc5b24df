// topk_mask on CPU: exact-k selection with std::nth_element, then a parallel mask pass.
//
// The k-th largest value is the threshold t. Every element above t is kept; of the elements
// equal to t, the first (k - count(> t)) in flat-index order are kept, so ties resolve the same
// way on every run and every device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace prunekit {
namespace {

constexpr int64_t kGrain = 1 << 15;

template <typename scalar_t>
int64_t first_nan_index(const scalar_t* data, int64_t n) {
  return at::parallel_reduce(
      0, n, kGrain, std::numeric_limits<int64_t>::max(),
      [&](int64_t begin, int64_t end, int64_t found) {
        for (int64_t i = begin; i < end && i < found; ++i) {
          if (std::isnan(static_cast<float>(data[i]))) return i;
        }
        return found;
      },
      [](int64_t a, int64_t b) { return std::min(a, b); });
}

template <typename scalar_t>
void topk_mask_cpu_impl(const at::Tensor& scores, int64_t k, bool* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* data = scores.const_data_ptr<scalar_t>();
  const int64_t n = scores.numel();

  const int64_t nan_at = first_nan_index(data, n);
  TORCH_CHECK(nan_at == std::numeric_limits<int64_t>::max(),
              "topk_mask: expected scores without NaN, got NaN at flat index ", nan_at);
  if (k == 0 || k == n) {
    std::fill(out, out + n, k == n);
    return;
  }

  std::vector<acc_t> values(data, data + n);
  std::nth_element(values.begin(), values.begin() + (n - k), values.end());
  const acc_t threshold = values[n - k];
  std::vector<acc_t>().swap(values);

  const int64_t above = at::parallel_reduce(
      0, n, kGrain, int64_t(0),
      [&](int64_t begin, int64_t end, int64_t count) {
        for (int64_t i = begin; i < end; ++i) {
          const bool keep = static_cast<acc_t>(data[i]) > threshold;
          out[i] = keep;
          count += keep;
        }
        return count;
      },
      std::plus<int64_t>());

  int64_t ties_to_keep = k - above;
  for (int64_t i = 0; i < n && ties_to_keep > 0; ++i) {
    if (static_cast<acc_t>(data[i]) == threshold) {
      out[i] = true;
      --ties_to_keep;
    }
  }
}

at::Tensor topk_mask_cpu(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.is_floating_point(),
              "topk_mask: expected floating-point scores, got ", scores.scalar_type());
  TORCH_CHECK(k >= 0 && k <= scores.numel(), "topk_mask: expected 0 <= k <= ", scores.numel(),
              " (the number of scores), got k = ", k);
  const at::Tensor contiguous = scores.contiguous();
  at::Tensor mask = at::empty(scores.sizes(), scores.options().dtype(at::kBool));
  if (scores.numel() == 0) return mask;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, scores.scalar_type(), "topk_mask_cpu",
                                  [&] { topk_mask_cpu_impl<scalar_t>(contiguous, k, mask.data_ptr<bool>()); });
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("topk_mask", &topk_mask_cpu); }

}  // namespace prunekit
