// topk_masks on CPU: the k largest scores over a list of tensors, without concatenating or sorting.
//
// Floats order like their sign-adjusted bit patterns ("keys"), so selection is a radix search:
//   pass 1  histogram the top 16 bits of every key, over all tensors, in parallel chunks; the
//           bucket holding the k-th largest key follows from a scan of the histogram;
//   pass 2  write every mask: keys above the bucket are kept, below are dropped, and keys inside
//           it are gathered as candidates (key, tensor, flat index);
//   finish  keep the best (k - above) candidates: largest key first, ties to the lower
//           (tensor, flat index), so the result is exact and deterministic.
// Extra memory: the histograms and the candidates of one bucket, not a copy of the scores.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace prunekit {
namespace {

constexpr int64_t kGrain = 1 << 16;
constexpr int kBuckets = 1 << 16;

// Order-preserving unsigned key of a float: larger float, larger key; -0.0 and 0.0 are equal.
template <typename key_t, typename float_t>
inline key_t order_key(float_t value) {
  value = value + float_t(0);  // -0.0 + 0.0 is +0.0
  key_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  constexpr key_t sign = key_t(1) << (sizeof(key_t) * 8 - 1);
  return (bits & sign) ? key_t(~bits) : key_t(bits | sign);
}

template <typename key_t>
inline int top_bucket(key_t key) {
  return static_cast<int>(key >> (sizeof(key_t) * 8 - 16));
}

struct Candidate {
  uint64_t key;
  int64_t tensor;
  int64_t index;
};

// Calls visit(tensor, begin, end) over chunks of every tensor, in parallel.
template <typename Visit>
void for_chunks(const std::vector<at::Tensor>& tensors, Visit visit) {
  struct Chunk {
    int64_t tensor, begin, end;
  };
  std::vector<Chunk> chunks;
  for (int64_t t = 0; t < static_cast<int64_t>(tensors.size()); ++t) {
    const int64_t n = tensors[t].numel();
    for (int64_t begin = 0; begin < n; begin += kGrain) {
      chunks.push_back({t, begin, std::min(n, begin + kGrain)});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) visit(chunks[c].tensor, chunks[c].begin, chunks[c].end);
  });
}

// The float type each score dtype is read as, and the width of its key.
template <typename scalar_t>
struct KeyOf {
  using float_t = float;
  using key_t = uint32_t;
};
template <>
struct KeyOf<double> {
  using float_t = double;
  using key_t = uint64_t;
};

template <typename scalar_t>
void check_no_nan(const std::vector<at::Tensor>& tensors) {
  for (size_t t = 0; t < tensors.size(); ++t) {
    const scalar_t* data = tensors[t].const_data_ptr<scalar_t>();
    const int64_t n = tensors[t].numel();
    const int64_t nan_at = at::parallel_reduce(
        0, n, kGrain, n,
        [&](int64_t begin, int64_t end, int64_t found) {
          for (int64_t i = begin; i < end && i < found; ++i) {
            if (std::isnan(static_cast<double>(data[i]))) return i;
          }
          return found;
        },
        [](int64_t a, int64_t b) { return std::min(a, b); });
    TORCH_CHECK(nan_at == n, "topk_masks: expected scores without NaN, got NaN in scores[", t,
                "] at flat index ", nan_at);
  }
}

template <typename scalar_t>
void select(const std::vector<at::Tensor>& tensors, int64_t k, std::vector<at::Tensor>& masks) {
  using float_t = typename KeyOf<scalar_t>::float_t;
  using key_t = typename KeyOf<scalar_t>::key_t;
  std::vector<const scalar_t*> data;
  for (const auto& tensor : tensors) data.push_back(tensor.const_data_ptr<scalar_t>());
  auto key_of = [](scalar_t value) { return order_key<key_t>(static_cast<float_t>(value)); };

  // pass 1: one histogram per thread, merged
  const int threads = at::get_num_threads();
  std::vector<std::vector<int64_t>> local(threads, std::vector<int64_t>(kBuckets, 0));
  for_chunks(tensors, [&](int64_t t, int64_t begin, int64_t end) {
    int64_t* histogram = local[at::get_thread_num()].data();
    const scalar_t* scores = data[t];
    for (int64_t i = begin; i < end; ++i) ++histogram[top_bucket(key_of(scores[i]))];
  });
  std::vector<int64_t> histogram(kBuckets, 0);
  for (const auto& h : local) {
    for (int b = 0; b < kBuckets; ++b) histogram[b] += h[b];
  }
  std::vector<std::vector<int64_t>>().swap(local);
  int bucket = kBuckets - 1;
  int64_t above = 0;  // keys in buckets above `bucket`
  while (above + histogram[bucket] < k) above += histogram[bucket--];

  // pass 2: masks outside the bucket; candidates inside it
  std::vector<std::vector<Candidate>> gathered(threads);
  for_chunks(tensors, [&](int64_t t, int64_t begin, int64_t end) {
    bool* out = masks[t].data_ptr<bool>();
    const scalar_t* scores = data[t];
    auto& candidates = gathered[at::get_thread_num()];
    for (int64_t i = begin; i < end; ++i) {
      const key_t key = key_of(scores[i]);
      const int b = top_bucket(key);
      out[i] = b > bucket;
      if (b == bucket) candidates.push_back({static_cast<uint64_t>(key), t, i});
    }
  });
  std::vector<Candidate> candidates;
  for (auto& part : gathered) candidates.insert(candidates.end(), part.begin(), part.end());

  // finish: the best (k - above) candidates
  const int64_t wanted = k - above;
  auto better = [](const Candidate& a, const Candidate& b) {
    if (a.key != b.key) return a.key > b.key;
    if (a.tensor != b.tensor) return a.tensor < b.tensor;
    return a.index < b.index;
  };
  if (wanted < static_cast<int64_t>(candidates.size())) {
    std::nth_element(candidates.begin(), candidates.begin() + wanted, candidates.end(), better);
  }
  for (int64_t c = 0; c < wanted; ++c) {
    masks[candidates[c].tensor].data_ptr<bool>()[candidates[c].index] = true;
  }
}

std::vector<at::Tensor> topk_masks_cpu(at::TensorList scores, int64_t k) {
  int64_t total = 0;
  std::vector<at::Tensor> tensors;
  std::vector<at::Tensor> masks;
  for (size_t t = 0; t < scores.size(); ++t) {
    const at::Tensor& s = scores[t];
    TORCH_CHECK(s.is_floating_point(), "topk_masks: expected floating-point scores, got ",
                s.scalar_type(), " in scores[", t, "]");
    TORCH_CHECK(s.device().is_cpu(), "topk_masks: expected CPU tensors, got scores[", t, "] on ",
                s.device());
    TORCH_CHECK(t == 0 || s.scalar_type() == scores[0].scalar_type(),
                "topk_masks: expected one dtype, got ", scores[0].scalar_type(), " and ",
                s.scalar_type(), " in scores[", t, "]");
    tensors.push_back(s.contiguous());
    masks.push_back(at::empty(s.sizes(), s.options().dtype(at::kBool)));  // every element written
    total += s.numel();
  }
  TORCH_CHECK(k >= 0 && k <= total, "topk_masks: expected 0 <= k <= ", total,
              " (the number of scores), got k = ", k);
  if (tensors.empty() || total == 0) return masks;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, tensors[0].scalar_type(),
                                  "topk_masks_cpu", [&] {
                                    check_no_nan<scalar_t>(tensors);
                                    if (k == 0 || k == total) {
                                      for (auto& m : masks) m.fill_(k == total);
                                    } else {
                                      select<scalar_t>(tensors, k, masks);
                                    }
                                  });
  return masks;
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("topk_masks", &topk_masks_cpu); }

}  // namespace prunekit
