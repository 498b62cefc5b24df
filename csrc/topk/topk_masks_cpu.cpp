// topk_masks on CPU: each group keeps its k largest scores, without concatenating or sorting.
//
// Scores are computed on the fly from the inputs (criterion(x, g), never stored) and compared by
// their order-preserving keys (topk_masks_common.h), so selection is a radix search per group:
//   pass 1  histogram the top 16 bits of every key of the group, in parallel chunks (one
//           histogram per thread, merged), noting any NaN; the bucket holding the k-th largest
//           key follows from a scan of the histogram from the top;
//   pass 2  write the group's masks: keys above the bucket are kept, keys below are dropped, keys
//           inside it are gathered as candidates (key, input, flat index);
//   finish  keep the best (k - above) candidates, largest key first, ties to the lower (input,
//           flat index), so the result is exact and deterministic.
// A group small enough to be one chunk skips the histogram: all its elements are candidates.
// Extra memory: the histograms and one bucket's candidates, not a copy of the scores.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <vector>

#include "topk_masks_common.h"

namespace prunekit {
namespace {

using topk::Criterion;

constexpr int64_t kGrain = 1 << 16;  // elements per parallel chunk
constexpr int64_t kRun = 64;         // elements per inner run of a chunk
constexpr int kBucketBits = 16;
constexpr int kBuckets = 1 << kBucketBits;

struct Candidate {
  uint64_t key;
  int64_t input;
  int64_t index;
};

bool better(const Candidate& a, const Candidate& b) {
  if (a.key != b.key) return a.key > b.key;
  if (a.input != b.input) return a.input < b.input;
  return a.index < b.index;
}

// The scores of every input, read through the criterion at compile time.
template <typename scalar_t, Criterion C>
struct ScoreReader {
  using float_t = at::opmath_type<scalar_t>;
  using key_t = typename topk::KeyTraits<float_t>::key_t;
  static constexpr int kShift = sizeof(key_t) * 8 - kBucketBits;

  // One input's scores; the loops index it directly, so they see plain pointers.
  struct Scores {
    const scalar_t* x;
    const scalar_t* g;
    float_t operator[](int64_t i) const {
      if constexpr (topk::needs_grads(C)) {
        return topk::score_of<C, float_t>(static_cast<float_t>(x[i]), static_cast<float_t>(g[i]));
      } else {
        return topk::score_of<C, float_t>(static_cast<float_t>(x[i]), float_t(0));
      }
    }
    key_t key(int64_t i) const { return topk::order_key<float_t>((*this)[i]); }
  };

  std::vector<Scores> inputs;

  explicit ScoreReader(const topk::Request& request) {
    for (size_t t = 0; t < request.inputs.size(); ++t) {
      const scalar_t* grad =
          request.grads.empty() ? nullptr : request.grads[t].const_data_ptr<scalar_t>();
      inputs.push_back({request.inputs[t].const_data_ptr<scalar_t>(), grad});
    }
  }

  float_t score(int64_t t, int64_t i) const { return inputs[t][i]; }
  static int bucket_of(key_t key) { return static_cast<int>(key >> kShift); }
};

// Calls visit(input, begin, end) over chunks of the given inputs, in parallel.
template <typename Visit>
void for_chunks(const topk::Request& request, const std::vector<int64_t>& members, Visit visit) {
  struct Chunk {
    int64_t input, begin, end;
  };
  std::vector<Chunk> chunks;
  for (int64_t t : members) {
    const int64_t n = request.inputs[t].numel();
    for (int64_t begin = 0; begin < n; begin += kGrain) {
      chunks.push_back({t, begin, std::min(n, begin + kGrain)});
    }
  }
  at::parallel_for(0, static_cast<int64_t>(chunks.size()), 1, [&](int64_t first, int64_t last) {
    for (int64_t c = first; c < last; ++c) visit(chunks[c].input, chunks[c].begin, chunks[c].end);
  });
}

// Raises the NaN error for the first NaN score over all inputs, in (input, index) order.
template <typename Reader>
[[noreturn]] void fail_on_first_nan(const topk::Request& request, const Reader& reader) {
  for (size_t t = 0; t < request.inputs.size(); ++t) {
    for (int64_t i = 0; i < request.inputs[t].numel(); ++i) {
      if (std::isnan(reader.score(t, i))) topk::fail_on_nan(request.criterion, t, i);
    }
  }
  TORCH_CHECK(false, "topk_masks: a NaN score was seen but not found again");
}

template <typename scalar_t, Criterion C>
class GroupSelector {
  using Reader = ScoreReader<scalar_t, C>;
  using float_t = typename Reader::float_t;
  using key_t = typename Reader::key_t;

 public:
  GroupSelector(const topk::Request& request, std::vector<at::Tensor>& masks)
      : request_(request), reader_(request), masks_(masks) {}

  // Writes the masks of group g's inputs and returns its threshold.
  double select(int64_t g) {
    const std::vector<int64_t>& members = request_.members[g];
    const int64_t k = request_.counts[g];
    const int64_t total = request_.totals[g];
    if (total == 0) return std::numeric_limits<double>::infinity();
    std::vector<Candidate> candidates;
    int64_t above = 0;
    if (total <= kGrain) {
      candidates = all_candidates(members);  // masks start false
    } else {
      const std::vector<int64_t> counts = histogram(members, total);
      if (k == 0) {
        for (int64_t t : members) masks_[t].fill_(false);
      } else {
        int bucket = kBuckets - 1;
        while (above + counts[bucket] < k) above += counts[bucket--];
        candidates = write_masks_outside(members, bucket);
      }
    }
    if (k == 0) return std::numeric_limits<double>::infinity();
    const int64_t wanted = k - above;  // >= 1: the k-th largest key lies in the bucket
    const auto kth = candidates.begin() + (wanted - 1);
    std::nth_element(candidates.begin(), kth, candidates.end(), better);
    for (int64_t c = 0; c < wanted; ++c) {
      masks_[candidates[c].input].data_ptr<bool>()[candidates[c].index] = true;
    }
    return static_cast<double>(topk::value_of_key<float_t>(static_cast<key_t>(kth->key)));
  }

 private:
  // Small groups: every element is a candidate; every mask starts false.
  std::vector<Candidate> all_candidates(const std::vector<int64_t>& members) {
    std::vector<Candidate> candidates;
    bool nan = false;
    for (int64_t t : members) {
      masks_[t].fill_(false);
      const auto scores = reader_.inputs[t];
      for (int64_t i = 0; i < request_.inputs[t].numel(); ++i) {
        const float_t score = scores[i];
        nan |= std::isnan(score);
        candidates.push_back({static_cast<uint64_t>(topk::order_key<float_t>(score)), t, i});
      }
    }
    if (nan) fail_on_first_nan(request_, reader_);
    return candidates;
  }

  // Pass 1: elements per top-16-bit bucket over the group; raises on NaN. A thread's counts fit
  // 32 bits unless the group has 2^32 elements or more.
  std::vector<int64_t> histogram(const std::vector<int64_t>& members, int64_t total) {
    return total < (int64_t(1) << 32) ? histogram_counting<uint32_t>(members)
                                      : histogram_counting<uint64_t>(members);
  }

  template <typename count_t>
  std::vector<int64_t> histogram_counting(const std::vector<int64_t>& members) {
    const int threads = at::get_num_threads();
    // Scores are computed and checked for NaN a run at a time by a vectorisable loop, then
    // counted by a scalar one, which keeps the NaN test out of the scattered increments.
    std::vector<std::vector<count_t>> local(threads, std::vector<count_t>(kBuckets, 0));
    std::vector<char> nan(threads, 0);
    for_chunks(request_, members, [&](int64_t t, int64_t begin, int64_t end) {
      const int thread = at::get_thread_num();
      count_t* counts = local[thread].data();
      const auto scores = reader_.inputs[t];
      float_t run_scores[kRun];
      int nans = 0;
      for (int64_t run = begin; run < end; run += kRun) {
        const int n = static_cast<int>(std::min(kRun, end - run));
        for (int j = 0; j < n; ++j) {
          run_scores[j] = scores[run + j];
          nans += run_scores[j] != run_scores[j];
        }
        for (int j = 0; j < n; ++j) {
          ++counts[Reader::bucket_of(topk::order_key<float_t>(run_scores[j]))];
        }
      }
      nan[thread] |= nans > 0;
    });
    if (std::find(nan.begin(), nan.end(), 1) != nan.end()) fail_on_first_nan(request_, reader_);
    std::vector<int64_t> counts(kBuckets, 0);
    for (const auto& part : local) {
      for (int b = 0; b < kBuckets; ++b) counts[b] += part[b];
    }
    return counts;
  }

  // Pass 2: masks of the keys outside `bucket`; the keys inside it, returned as candidates. Runs
  // of kRun elements are masked by a branch-free (vectorisable) loop that also notes whether any
  // key falls in the bucket; only such runs are read again to gather the candidates.
  std::vector<Candidate> write_masks_outside(const std::vector<int64_t>& members, int bucket) {
    const key_t low = static_cast<key_t>(bucket) << Reader::kShift;
    const key_t span = (key_t(1) << Reader::kShift) - 1;  // keys low .. high are in it
    const key_t high = low | span;
    std::vector<std::vector<Candidate>> gathered(at::get_num_threads());
    for_chunks(request_, members, [&](int64_t t, int64_t begin, int64_t end) {
      bool* out = masks_[t].data_ptr<bool>();
      const auto scores = reader_.inputs[t];
      auto& candidates = gathered[at::get_thread_num()];
      for (int64_t run = begin; run < end; run += kRun) {
        const int64_t run_end = std::min(end, run + kRun);
        key_t inside = 0;
        for (int64_t i = run; i < run_end; ++i) {
          const key_t key = scores.key(i);
          out[i] = key > high;
          inside |= key - low <= span;
        }
        if (!inside) continue;
        for (int64_t i = run; i < run_end; ++i) {
          const key_t key = scores.key(i);
          if (key - low <= span) candidates.push_back({static_cast<uint64_t>(key), t, i});
        }
      }
    });
    std::vector<Candidate> candidates;
    for (auto& part : gathered) candidates.insert(candidates.end(), part.begin(), part.end());
    return candidates;
  }

  const topk::Request& request_;
  Reader reader_;
  std::vector<at::Tensor>& masks_;
};

std::tuple<std::vector<at::Tensor>, at::Tensor> topk_masks_cpu(at::TensorList inputs,
                                                               at::TensorList grads,
                                                               c10::string_view criterion,
                                                               at::IntArrayRef counts,
                                                               at::IntArrayRef groups) {
  const topk::Request request =
      topk::check_request(inputs, grads, std::string(criterion), counts, groups, at::kCPU);
  std::vector<at::Tensor> masks;
  for (const auto& x : request.inputs) {
    masks.push_back(at::empty(x.sizes(), x.options().dtype(at::kBool)));  // every element written
  }
  at::Tensor thresholds = at::empty({static_cast<int64_t>(request.counts.size())}, at::kDouble);
  if (request.inputs.empty()) {  // Python answers this case; kept for direct callers
    return {masks, thresholds.fill_(std::numeric_limits<double>::infinity())};
  }
  double* threshold = thresholds.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, request.inputs[0].scalar_type(),
                                  "topk_masks_cpu", [&] {
    topk::dispatch_criterion(request.criterion, [&](auto criterion_tag) {
      GroupSelector<scalar_t, decltype(criterion_tag)::value> selector(request, masks);
      for (size_t g = 0; g < request.counts.size(); ++g) threshold[g] = selector.select(g);
    });
  });
  return {masks, thresholds};
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CPU, m) { m.impl("topk_masks", &topk_masks_cpu); }

}  // namespace prunekit
