// topk_masks on CPU: each group keeps its k largest scores, without concatenating or sorting.
//
// Scores are computed on the fly from the inputs (criterion(x, g), never stored) and compared by
// their order-preserving keys (topk_masks_common.h), so selection is a radix search per group:
//   pass 1  histogram the top 16 bits of every key of the group, in parallel chunks (one
//           histogram per thread, merged), noting any NaN; the bucket holding the k-th largest
//           key follows from a scan of the histogram from the top;
//   pass 2  write the group's masks: keys above the bucket are kept, keys below are dropped, keys
//           inside it are gathered as candidates (key, input, flat index) into one shared array;
//           the loop compares the scores with the bucket's bounds as values, which orders them as
//           their keys (eight at a time with AVX2 where the CPU has it, simd.h);
//   finish  keep the best (k - above) candidates: the (k - above)-th largest key among them (a
//           small histogram narrows it to one bucket first), then its ties by the lower (input,
//           flat index), so the result is exact and deterministic.
// Large groups first try to skip pass 1: a strided sample of the keys brackets the k-th largest
// key in a narrow range (a few binomial standard deviations of its rank in the sample either
// side), and pass 2 runs on that range instead of a bucket. When the range turns out not to hold
// the k-th key (an unrepresentative sample) or holds far more keys than the sample promised
// (ties), the exact passes run instead, so the result never depends on the sample.
// A group small enough to be one chunk skips the histogram: all its elements are candidates.
// Extra memory: the histograms and the candidates of one bucket or range (a sampled range's are
// capped near twice the sample's estimate), not a copy of the scores.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../../simd/simd.h"
#include "../common/topk_masks_common.h"

#ifdef PRUNEKIT_X86_DISPATCH
#include <immintrin.h>
#endif

namespace prunekit {
namespace {

using topk::Criterion;

constexpr int64_t kGrain = 1 << 16;  // elements per parallel chunk
constexpr int64_t kRun = 64;         // elements per inner run of a chunk
constexpr int kBucketBits = 16;
constexpr int kBuckets = 1 << kBucketBits;
// The sampled pass: groups from kSampledMin elements; the first kRun elements of every
// kSampleStride are sampled; the range spans kSampleSigmas binomial standard deviations of the
// sample rank either side; it is given up when it would hold more than 1/kMaxRangeShare of the
// group.
constexpr int64_t kSampledMin = int64_t(1) << 20;
constexpr int64_t kSampleStride = 8192;
constexpr double kSampleSigmas = 4.0;
constexpr int64_t kMaxRangeShare = 16;

// 16 bytes for float keys: candidates are most of the extra memory, and fresh pages cost.
template <typename key_t>
struct Candidate {
  key_t key;
  uint32_t input;
  int64_t index;
};

// Ties at the threshold go to the lower (input, flat index).
template <typename key_t>
bool earlier(const Candidate<key_t>& a, const Candidate<key_t>& b) {
  return a.input != b.input ? a.input < b.input : a.index < b.index;
}

// The number of true bytes among n bools.
int64_t count_true(const bool* flags, int n) {
  int64_t count = 0;
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t word;
    std::memcpy(&word, flags + i, sizeof(word));
    count += (word * 0x0101010101010101ull) >> 56;  // sums the eight 0/1 bytes
  }
  for (; i < n; ++i) count += flags[i];
  return count;
}

// Packs eight 0/1 bytes into eight bits, byte i to bit i.
uint64_t pack_bytes(uint64_t bytes) { return (bytes * 0x0102040810204080ull) >> 56; }

// Compares one run of n <= kRun scores with the range [low, high]: writes out[j] = scores[j] >
// high, adds the number of true masks to `kept`, and returns bit j set for the scores inside the
// range or NaN.
template <typename float_t>
using RunClassifier = uint64_t (*)(const float_t* scores, int n, float_t low, float_t high,
                                   bool* out, int64_t& kept);

// The portable classifier: a branch-free (vectorisable) loop flags bytes, then packs them.
template <typename float_t>
uint64_t classify_run(const float_t* scores, int n, float_t low, float_t high, bool* out,
                      int64_t& kept) {
  alignas(8) uint8_t flagged[kRun] = {};
  for (int j = 0; j < n; ++j) {
    const float_t score = scores[j];
    out[j] = score > high;
    flagged[j] = ((low <= score) & (score <= high)) | (score != score);
  }
  kept += count_true(out, n);
  uint64_t bits = 0;
  for (int word = 0; word < kRun; word += 8) {  // flagged stays 0 from n on
    uint64_t bytes;
    std::memcpy(&bytes, flagged + word, sizeof(bytes));
    bits |= pack_bytes(bytes) << word;
  }
  return bits;
}

#ifdef PRUNEKIT_X86_DISPATCH
// The mask bytes of eight compare results: bit i of the index becomes byte i.
constexpr std::array<uint64_t, 256> kMaskBytes = [] {
  std::array<uint64_t, 256> bytes{};
  for (int bits = 0; bits < 256; ++bits) {
    for (int i = 0; i < 8; ++i) bytes[bits] |= static_cast<uint64_t>((bits >> i) & 1) << (8 * i);
  }
  return bytes;
}();

// The AVX2 classifier for float scores: eight compares at once, whose sign bits give the flags
// directly and the mask bytes through kMaskBytes (twice the speed of the portable loop here).
__attribute__((target("avx2"))) uint64_t classify_run_avx2(const float* scores, int n, float low,
                                                          float high, bool* out, int64_t& kept) {
  if (n < kRun) return classify_run<float>(scores, n, low, high, out, kept);  // a chunk's tail
  const __m256 lows = _mm256_set1_ps(low), highs = _mm256_set1_ps(high);
  uint64_t flagged = 0;
  int kept_here = 0;
  for (int j = 0; j < kRun; j += 8) {
    const __m256 v = _mm256_loadu_ps(scores + j);
    const int above = _mm256_movemask_ps(_mm256_cmp_ps(v, highs, _CMP_GT_OQ));
    const __m256 inside = _mm256_and_ps(_mm256_cmp_ps(v, lows, _CMP_GE_OQ),
                                        _mm256_cmp_ps(v, highs, _CMP_LE_OQ));
    const __m256 flags = _mm256_or_ps(inside, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    flagged |= static_cast<uint64_t>(_mm256_movemask_ps(flags)) << j;
    std::memcpy(out + j, &kMaskBytes[above], sizeof(uint64_t));
    kept_here += __builtin_popcount(above);
  }
  kept += kept_here;
  return flagged;
}
#endif

// The AVX2 classifier for float scores when the CPU has it (simd.h), else the portable one.
template <typename float_t>
RunClassifier<float_t> best_run_classifier() {
#ifdef PRUNEKIT_X86_DISPATCH
  if constexpr (std::is_same_v<float_t, float>) {
    if (simd::use_avx2()) return &classify_run_avx2;
  }
#endif
  return &classify_run<float_t>;
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
    // Scores begin..begin+n: read in place when they are the input itself, else computed into
    // `buffer` by a vectorisable loop.
    const float_t* run(int64_t begin, int n, float_t* buffer) const {
      if constexpr (std::is_same_v<scalar_t, float_t> && C == Criterion::Score) {
        return x + begin;
      } else {
        for (int j = 0; j < n; ++j) buffer[j] = (*this)[begin + j];
        return buffer;
      }
    }
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

// A view of contiguous items. The file stays C++17 (std::span and std::bit_width are C++20),
// the standard older torch releases build extensions with (torch 2.11: C++17).
template <typename T>
struct Items {
  T* first = nullptr;
  T* last = nullptr;
  T* begin() const { return first; }
  T* end() const { return last; }
  size_t size() const { return static_cast<size_t>(last - first); }
  T& operator[](int64_t i) const { return first[i]; }
};

template <typename T>
Items<T> items_of(std::vector<T>& items) {
  return {items.data(), items.data() + items.size()};
}

int bit_width(uint64_t value) { return value == 0 ? 0 : 64 - __builtin_clzll(value); }

// The key of descending rank `rank` (1 <= rank <= size) among `items`: a histogram of 4096
// buckets over their keys' span finds the bucket holding it, and nth_element runs among that
// bucket's items only (moved to the front). Three passes over the items instead of nth_element's
// many; as slow as nth_element only when one bucket holds most keys. Reorders the items.
template <typename Item, typename KeyOf>
auto key_of_rank(Items<Item> items, int64_t rank, KeyOf key_of) {
  constexpr int kRankBits = 12;
  const auto [lowest, highest] = std::minmax_element(
      items.begin(), items.end(),
      [&](const Item& a, const Item& b) { return key_of(a) < key_of(b); });
  const auto low = key_of(*lowest);
  const int width = bit_width(key_of(*highest) - low);
  const int shift = std::max(0, width - kRankBits);
  const auto bucket_of = [&](const Item& item) {
    return static_cast<size_t>((key_of(item) - low) >> shift);
  };
  std::vector<int64_t> counts(bucket_of(*highest) + 1, 0);
  for (const Item& item : items) ++counts[bucket_of(item)];
  size_t bucket = counts.size() - 1;
  while (counts[bucket] < rank) rank -= counts[bucket--];
  const auto end = std::partition(items.begin(), items.end(),
                                  [&](const Item& item) { return bucket_of(item) == bucket; });
  std::nth_element(items.begin(), items.begin() + (rank - 1), end,
                   [&](const Item& a, const Item& b) { return key_of(a) > key_of(b); });
  return key_of(items[rank - 1]);
}

// The keys from `low` to `high`, both included.
template <typename key_t>
struct KeyRange {
  key_t low, high;
};

// Candidates gathered by every thread straight into one array of at most `capacity`: a thread
// claims kBlock slots at a time and fills them, and the holes its last block leaves are closed at
// the end. One allocation whose pages are touched once: fresh pages cost a masking pass more than
// anything but its reads.
template <typename key_t>
class CandidateArray {
 public:
  static constexpr int64_t kBlock = 256;
  struct Cursor {  // one thread's current block
    int64_t next = 0, end = 0;
  };

  explicit CandidateArray(int64_t capacity)
      : capacity_(capacity), slots_(new Candidate<key_t>[capacity]) {}  // left uninitialised

  // False when the array is full.
  bool push(Cursor& cursor, const Candidate<key_t>& candidate) {
    if (cursor.next == cursor.end) {
      cursor.next = claimed_.fetch_add(kBlock, std::memory_order_relaxed);
      cursor.end = std::min(cursor.next + kBlock, capacity_);
      if (cursor.next >= cursor.end) {
        cursor.next = cursor.end;
        return false;
      }
    }
    slots_[cursor.next++] = candidate;
    return true;
  }

  // Every pushed candidate, once all threads are done: the slots left in their blocks are marked
  // and removed.
  Items<Candidate<key_t>> gathered(const std::vector<Cursor>& cursors) {
    const int64_t used = std::min(claimed_.load(), capacity_);
    int64_t first_hole = used;
    for (const Cursor& cursor : cursors) {
      for (int64_t slot = cursor.next; slot < cursor.end; ++slot) slots_[slot].input = kHole;
      if (cursor.next < cursor.end) first_hole = std::min(first_hole, cursor.next);
    }
    Candidate<key_t>* first = slots_.get();
    Candidate<key_t>* last = std::remove_if(first + first_hole, first + used,
                                            [](const auto& c) { return c.input == kHole; });
    return {first, last};
  }

 private:
  static constexpr uint32_t kHole = std::numeric_limits<uint32_t>::max();  // not an input
  int64_t capacity_;
  std::unique_ptr<Candidate<key_t>[]> slots_;
  std::atomic<int64_t> claimed_{0};
};

// What a masking pass leaves to the selection: the keys inside its range, how many lay above it.
template <typename key_t>
struct Masked {
  std::unique_ptr<CandidateArray<key_t>> storage;
  Items<Candidate<key_t>> candidates;
  int64_t above = 0;
  bool nan = false;
  bool overflow = false;  // more candidates than the pass allowed: it stopped early
};

template <typename scalar_t, Criterion C>
class GroupSelector {
  using Reader = ScoreReader<scalar_t, C>;
  using float_t = typename Reader::float_t;
  using key_t = typename Reader::key_t;
  using Range = KeyRange<key_t>;
  using Candidates = std::vector<Candidate<key_t>>;

 public:
  GroupSelector(const topk::Request& request, std::vector<at::Tensor>& masks)
      : request_(request), reader_(request), masks_(masks) {
    for (auto& mask : masks_) mask_data_.push_back(mask.data_ptr<bool>());
  }

  // Writes the masks of group g's inputs and returns its threshold.
  double select(int64_t g) {
    const std::vector<int64_t>& members = request_.members[g];
    const int64_t k = request_.counts[g];
    const int64_t total = request_.totals[g];
    if (total == 0) return none_kept;
    if (total <= kGrain) {
      Candidates candidates = all_candidates(members, total);  // masks start false
      return k == 0 ? none_kept : keep_best(items_of(candidates), k);
    }
    if (k > 0 && total >= kSampledMin) {
      if (const auto threshold = select_in_sampled_range(members, k, total)) return *threshold;
    }
    return select_exact(members, k, total);
  }

 private:
  static constexpr double none_kept = std::numeric_limits<double>::infinity();

  // Pass 2 over a range from a sample; no threshold when the range does not hold the k-th key.
  std::optional<double> select_in_sampled_range(const std::vector<int64_t>& members, int64_t k,
                                                int64_t total) {
    int64_t expected = 0;
    const auto range = sampled_range(members, k, total, expected);
    if (!range) return std::nullopt;
    Masked<key_t> masked = write_masks(members, *range, total, 2 * expected + kGrain);
    if (masked.nan) fail_on_first_nan(request_, reader_);
    const int64_t inside = static_cast<int64_t>(masked.candidates.size());
    if (masked.overflow || masked.above >= k || masked.above + inside < k) return std::nullopt;
    return keep_best(masked.candidates, k - masked.above);
  }

  // Passes 1 and 2: the bucket of the k-th key from the histogram, then its candidates.
  double select_exact(const std::vector<int64_t>& members, int64_t k, int64_t total) {
    const std::vector<int64_t> counts = histogram(members, total);
    if (k == 0) {
      for (int64_t t : members) masks_[t].fill_(false);
      return none_kept;
    }
    int64_t above = 0;
    int bucket = kBuckets - 1;
    while (above + counts[bucket] < k) above += counts[bucket--];
    const key_t low = static_cast<key_t>(bucket) << Reader::kShift;
    const key_t span = (key_t(1) << Reader::kShift) - 1;
    Masked<key_t> masked = write_masks(members, {low, static_cast<key_t>(low | span)},
                                       counts[bucket], std::numeric_limits<int64_t>::max());
    return keep_best(masked.candidates, k - masked.above);
  }

  // Keeps the `wanted` best candidates (1 <= wanted <= size) and returns the smallest kept score:
  // the wanted-th largest key first, then the ties at it by position.
  // Reorders the candidates.
  double keep_best(Items<Candidate<key_t>> candidates, int64_t wanted) {
    TORCH_INTERNAL_ASSERT(1 <= wanted && wanted <= static_cast<int64_t>(candidates.size()),
                          "topk_masks: the passes disagree on the count above the threshold");
    const key_t kth = key_of_rank(candidates, wanted, [](const auto& c) { return c.key; });
    Candidates ties;
    for (const auto& c : candidates) {
      if (c.key > kth) {
        mask_data_[c.input][c.index] = true;
        --wanted;
      } else if (c.key == kth) {
        ties.push_back(c);
      }
    }
    std::nth_element(ties.begin(), ties.begin() + (wanted - 1), ties.end(), earlier<key_t>);
    for (int64_t c = 0; c < wanted; ++c) mask_data_[ties[c].input][ties[c].index] = true;
    return static_cast<double>(topk::value_of_key<float_t>(kth));
  }

  // Small groups: every element is a candidate; every mask starts false.
  Candidates all_candidates(const std::vector<int64_t>& members, int64_t total) {
    Candidates candidates;
    candidates.reserve(total);
    bool nan = false;
    for (int64_t t : members) {
      masks_[t].fill_(false);
      const auto scores = reader_.inputs[t];
      for (int64_t i = 0; i < request_.inputs[t].numel(); ++i) {
        const float_t score = scores[i];
        nan |= std::isnan(score);
        candidates.push_back({topk::order_key<float_t>(score), static_cast<uint32_t>(t), i});
      }
    }
    if (nan) fail_on_first_nan(request_, reader_);
    return candidates;
  }

  // A key range that almost surely holds the k-th largest key, from a strided sample; none when
  // it would hold too large a share of the group (ties). `expected` is its share of the group.
  std::optional<Range> sampled_range(const std::vector<int64_t>& members, int64_t k,
                                     int64_t total, int64_t& expected) {
    const int threads = at::get_num_threads();
    std::vector<std::vector<key_t>> local(threads);
    // At most one run per stride, plus one per chunk for chunks shorter than a stride.
    const int64_t sampled = (total / kSampleStride + total / kGrain + members.size()) * kRun;
    for (auto& part : local) part.reserve(sampled / threads + sampled / 8);
    for_chunks(request_, members, [&](int64_t t, int64_t begin, int64_t end) {
      auto& keys = local[at::get_thread_num()];
      const auto scores = reader_.inputs[t];
      for (int64_t run = begin; run < end; run += kSampleStride) {
        for (int64_t i = run; i < std::min(end, run + kRun); ++i) keys.push_back(scores.key(i));
      }
    });
    std::vector<key_t> sample;
    size_t sample_size = 0;
    for (const auto& part : local) sample_size += part.size();
    sample.reserve(sample_size);
    for (const auto& part : local) sample.insert(sample.end(), part.begin(), part.end());
    const auto size = static_cast<int64_t>(sample.size());
    // The number of sampled keys at or above the k-th largest is binomial(size, k / total).
    const double share = static_cast<double>(k) / static_cast<double>(total);
    const double margin = kSampleSigmas * std::sqrt(size * share * (1 - share)) + 1;
    const auto first = static_cast<int64_t>(std::floor(share * size - margin));  // 1-based ranks
    const auto last = static_cast<int64_t>(std::ceil(share * size + margin));
    Range range{std::numeric_limits<key_t>::min(), std::numeric_limits<key_t>::max()};
    const auto key = [](key_t k) { return k; };
    if (first >= 1) range.high = key_of_rank(items_of(sample), first, key);
    if (last <= size) range.low = key_of_rank(items_of(sample), last, key);
    const auto inside = std::count_if(sample.begin(), sample.end(), [&](key_t key) {
      return range.low <= key && key <= range.high;
    });
    if (inside * kMaxRangeShare > size) return std::nullopt;
    expected = static_cast<int64_t>(static_cast<double>(inside) / size * total);
    return range;
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
      float_t buffer[kRun];
      int nans = 0;
      for (int64_t run = begin; run < end; run += kRun) {
        const int n = static_cast<int>(std::min(kRun, end - run));
        const float_t* run_scores = scores.run(run, n, buffer);
        for (int j = 0; j < n; ++j) nans += run_scores[j] != run_scores[j];
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

  // The masking pass: keys above `range` are kept, keys below it dropped, keys inside it
  // gathered as candidates (their masks false for now), stopping once there are more than
  // `cap` (give or take a block per thread); `bound` is the most the range can hold. Runs of
  // kRun scores are compared with the range's bounds as values by a run classifier, which flags
  // the scores inside the range and any NaN; only flagged scores are looked at again.
  Masked<key_t> write_masks(const std::vector<int64_t>& members, Range range, int64_t bound,
                            int64_t cap) {
    const float_t low = bound_value(range.low), high = bound_value(range.high);
    const RunClassifier<float_t> classify = best_run_classifier<float_t>();
    const int threads = at::get_num_threads();
    using Array = CandidateArray<key_t>;
    auto array = std::make_unique<Array>(std::min(cap, bound) + threads * Array::kBlock);
    std::vector<typename Array::Cursor> cursors(threads);
    std::vector<int64_t> above(threads, 0);
    std::vector<char> nan(threads, 0);
    std::atomic<bool> overflow{false};
    for_chunks(request_, members, [&](int64_t t, int64_t begin, int64_t end) {
      if (overflow.load(std::memory_order_relaxed)) return;
      const int thread = at::get_thread_num();
      bool* out = mask_data_[t];
      const auto scores = reader_.inputs[t];
      auto& cursor = cursors[thread];
      int64_t kept = 0;
      bool nans = false;
      float_t buffer[kRun];
      for (int64_t run = begin; run < end; run += kRun) {
        const int n = static_cast<int>(std::min(kRun, end - run));
        const float_t* run_scores = scores.run(run, n, buffer);
        for (uint64_t flagged = classify(run_scores, n, low, high, out + run, kept); flagged;
             flagged &= flagged - 1) {
          const int j = __builtin_ctzll(flagged);
          nans |= run_scores[j] != run_scores[j];
          if (!array->push(cursor, {topk::order_key<float_t>(run_scores[j]),
                                    static_cast<uint32_t>(t), run + j})) {
            overflow = true;
            return;
          }
        }
      }
      above[thread] += kept;
      nan[thread] |= nans;
    });
    Masked<key_t> masked;
    masked.overflow = overflow;
    masked.nan = std::find(nan.begin(), nan.end(), 1) != nan.end();
    for (int64_t part : above) masked.above += part;
    masked.candidates = array->gathered(cursors);
    masked.storage = std::move(array);
    return masked;
  }

  // A range bound as a score: scores compare with it as their keys compare with the key. The
  // keys beyond those of -inf and inf (NaN's) bound no score, so they become -inf and inf.
  // -0.0's key is never made (-0.0 scores get 0.0's), so it bounds as the largest negative score.
  static float_t bound_value(key_t key) {
    using limits = std::numeric_limits<float_t>;
    if (key <= topk::order_key<float_t>(-limits::infinity())) return -limits::infinity();
    if (key >= topk::order_key<float_t>(limits::infinity())) return limits::infinity();
    const float_t value = topk::value_of_key<float_t>(key);
    return value == 0 && std::signbit(value) ? -limits::denorm_min() : value;
  }

  const topk::Request& request_;
  Reader reader_;
  std::vector<at::Tensor>& masks_;
  std::vector<bool*> mask_data_;
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
