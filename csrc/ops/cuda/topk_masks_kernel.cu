// topk_masks on CUDA: each group's largest scores over a list of tensors, by a radix select on the
// scores' order keys (topk_masks_common.h), every group at once. Nothing is concatenated or sorted.
//
// The inputs are cut into chunks of kChunk elements; a chunk table (input, group, begin, end),
// ordered by group and then by (input, index), lets every kernel walk all inputs at once, one
// chunk per block in a grid-stride loop. Per group the device keeps `prefix` (the key bits decided
// so far) and `remaining` (how many to keep among the keys that start with the prefix).
//
//   digit passes  the key splits into 11-bit digits from the top (float keys 11+11+10 bits, double
//                 keys 5x11+9). count_digit histograms digit d of every key whose higher digits
//                 match its group's prefix (shared-memory bins, added to a global [G x 2048]
//                 histogram); select_digit (one block per group) finds the bin holding the
//                 remaining-th largest key, appends it to the prefix, subtracts the keys above it
//                 and zeroes the histogram for the next digit. After the last digit the prefix is
//                 the group's k-th largest key (its threshold) and `remaining` the number of keys
//                 equal to it that are kept.
//   mask pass     write_masks writes every mask: key > kth kept, key < kth dropped, key == kth (a
//                 tie) dropped for now and counted per chunk. The only pass that reads every
//                 element (the digit passes skip groups keeping nothing), so it also records the
//                 first NaN score (an atomicMin of its packed position).
//   tie pass      an inclusive cumsum of the per-chunk tie counts gives each chunk the ties of its
//                 group before it, in (input, index) order, since the chunks of a group are
//                 contiguous in the table. keep_first_ties re-reads only chunks whose ties can
//                 still be kept, ranks them with a block scan in index order and keeps those whose
//                 rank is below `remaining`.
//
// Groups keeping nothing (count 0) skip the digit passes: masks false, threshold inf. Groups
// keeping everything run like the others, which gives their threshold (the smallest score) and
// keeps all of their ties.
//
// Reads of the inputs: one per digit (3 for float keys, 6 for double), one for the masks, and
// the chunks with keepable ties once more.
//
// Extra device memory: the histograms (G x 2048 x 8 bytes), the group, input and chunk tables and
// two int64 per chunk (tie counts and their cumsum): O(G + N / kChunk), never O(N). Everything runs
// on the current stream; the tables go up through pinned memory without waiting, and the host
// waits once, at the end, to read the position of the first NaN score.
#include "../common/topk_masks_common.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

namespace prunekit {
namespace {

using topk::Criterion;

constexpr int kThreads = 256;               // threads per block, in every kernel
constexpr int64_t kChunk = 16384;           // elements per chunk
constexpr int kBlocksPerMultiprocessor = 8;  // blocks of the chunk kernels: enough to fill the GPU
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kBinsPerThread = kBins / kThreads;
static_assert(kBins % kThreads == 0, "select_digit gives each thread the same number of bins");

// A NaN's position packs as (input << 40 | index), so one atomicMin finds the first in (input,
// index) order; the host checks that both parts fit.
constexpr int kIndexBits = 40;
constexpr int64_t kMaxInputs = int64_t(1) << (63 - kIndexBits);
constexpr unsigned long long kNoNan = std::numeric_limits<int64_t>::max();

struct InputRef {
  const void* x;  // the input (weights or scores)
  const void* g;  // its gradient, for snip and gradflow; null otherwise
  bool* mask;
};

struct Chunk {
  int64_t input;
  int64_t group;
  int64_t begin;
  int64_t end;
};

struct GroupState {
  unsigned long long prefix;  // key bits decided so far, the rest zero
  int64_t remaining;          // keys still to keep among those that start with the prefix; 0: none
  int64_t first_chunk;        // its first chunk in the table (its chunks are contiguous)
};

// The key bits [low, high) that one digit pass decides; the bits from `high` up are decided.
struct Digit {
  int high;
  int low;
  unsigned int mask;  // (1 << (high - low)) - 1
};

Digit digit_below(int high) {
  const int low = std::max(0, high - kDigitBits);
  return {high, low, (1u << (high - low)) - 1u};
}

template <typename scalar_t>
using score_t = at::opmath_type<scalar_t>;  // float for float/half/bfloat16, double for double
template <typename scalar_t>
using key_type = typename topk::KeyTraits<score_t<scalar_t>>::key_t;

// The score of element i of an input, in score_t (float, or double for double inputs).
template <typename scalar_t, Criterion C>
__device__ __forceinline__ score_t<scalar_t> score_at(const InputRef& in, int64_t i) {
  using float_t = score_t<scalar_t>;
  const float_t x = static_cast<float_t>(static_cast<const scalar_t*>(in.x)[i]);
  if constexpr (C == Criterion::Snip || C == Criterion::GradFlow) {
    return topk::score_of<C>(x, static_cast<float_t>(static_cast<const scalar_t*>(in.g)[i]));
  } else {
    return topk::score_of<C>(x, x);  // the criterion reads no gradient
  }
}

template <typename scalar_t, Criterion C>
__device__ __forceinline__ key_type<scalar_t> key_at(const InputRef& in, int64_t i) {
  return topk::order_key(score_at<scalar_t, C>(in, i));
}

// Adds a block's bins to its group's global histogram and zeroes them. Called by the whole block.
__device__ void flush_bins(unsigned int* bins, unsigned long long* histogram) {
  __syncthreads();  // every count of the block is in
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) {
    const unsigned int n = bins[b];
    if (n != 0) {
      atomicAdd(histogram + b, static_cast<unsigned long long>(n));
      bins[b] = 0;
    }
  }
  __syncthreads();  // zeroed before the next chunk counts
}

// Digit pass, part 1: histograms of the digit over the keys that match their group's prefix.
template <typename scalar_t, Criterion C>
__global__ void __launch_bounds__(kThreads)
    count_digit(const Chunk* __restrict__ chunks, int64_t num_chunks,
                const InputRef* __restrict__ inputs, const GroupState* __restrict__ groups,
                Digit digit, unsigned long long* __restrict__ histograms) {
  constexpr int kKeyBits = 8 * sizeof(key_type<scalar_t>);
  __shared__ unsigned int bins[kBins];
  for (int b = threadIdx.x; b < kBins; b += blockDim.x) bins[b] = 0;
  __syncthreads();
  // The group whose counts the bins hold, and how many elements they have seen: flushed before
  // another group's chunk, or before a uint32 bin could overflow.
  int64_t held_group = -1;
  int64_t held = 0;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk chunk = chunks[c];
    const GroupState state = groups[chunk.group];
    if (state.remaining == 0) continue;  // keeps nothing: no threshold to find
    const int64_t n = chunk.end - chunk.begin;
    if (chunk.group != held_group || held + n > int64_t(std::numeric_limits<unsigned int>::max())) {
      if (held_group >= 0) flush_bins(bins, histograms + held_group * kBins);
      held_group = chunk.group;
      held = 0;
    }
    held += n;
    const InputRef in = inputs[chunk.input];
    const auto prefix = static_cast<key_type<scalar_t>>(state.prefix);
    // Each thread counts runs of one bin before adding them: many equal scores (zeros of pruned
    // weights, zero biases) would otherwise make every thread add to the same shared bin.
    unsigned int run_bin = 0;
    unsigned int run = 0;
    for (int64_t i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
      const key_type<scalar_t> key = key_at<scalar_t, C>(in, i);
      // The first digit takes every key (and a shift by the key's width would be undefined).
      if (digit.high == kKeyBits || ((key ^ prefix) >> digit.high) == 0) {
        const unsigned int bin = static_cast<unsigned int>(key >> digit.low) & digit.mask;
        if (bin != run_bin && run != 0) {
          atomicAdd(&bins[run_bin], run);
          run = 0;
        }
        run_bin = bin;
        ++run;
      }
    }
    if (run != 0) atomicAdd(&bins[run_bin], run);
  }
  if (held_group >= 0) flush_bins(bins, histograms + held_group * kBins);
}

// Digit pass, part 2, one block per group: the bin holding the remaining-th largest key becomes
// the digit of the prefix. After the last digit, writes the threshold.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    select_digit(GroupState* __restrict__ groups, unsigned long long* __restrict__ histograms,
                 Digit digit, double* __restrict__ thresholds) {
  using Scan = cub::BlockScan<unsigned long long, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  GroupState& state = groups[blockIdx.x];
  const int64_t remaining = state.remaining;
  if (remaining == 0) return;  // the whole block leaves
  unsigned long long* histogram = histograms + static_cast<int64_t>(blockIdx.x) * kBins;

  // Thread j holds kBinsPerThread bins downwards from `top`, thread 0 the highest, so a scan in
  // thread order counts keys from the top. Each thread zeroes its bins for the next digit.
  const int top = kBins - 1 - static_cast<int>(threadIdx.x) * kBinsPerThread;
  unsigned long long counts[kBinsPerThread];
  unsigned long long sum = 0;
#pragma unroll
  for (int j = 0; j < kBinsPerThread; ++j) {
    counts[j] = histogram[top - j];
    histogram[top - j] = 0;
    sum += counts[j];
  }
  unsigned long long above;  // keys in the bins above this thread's
  Scan(scan_storage).ExclusiveSum(sum, above);

  const auto wanted = static_cast<unsigned long long>(remaining);
  if (above < wanted && wanted <= above + sum) {  // exactly one thread holds the bin
    int bin = -1;
#pragma unroll
    for (int j = 0; j < kBinsPerThread; ++j) {
      if (bin >= 0) continue;
      if (above + counts[j] >= wanted) {
        bin = top - j;
      } else {
        above += counts[j];
      }
    }
    const unsigned long long prefix =
        state.prefix | (static_cast<unsigned long long>(bin) << digit.low);
    state.prefix = prefix;
    state.remaining = remaining - static_cast<int64_t>(above);
    if (digit.low == 0) {  // the last digit: the prefix is the k-th largest key
      thresholds[blockIdx.x] = static_cast<double>(
          topk::value_of_key<score_t<scalar_t>>(static_cast<key_type<scalar_t>>(prefix)));
    }
  }
}

// Mask pass: keys above the group's k-th largest are kept, the rest dropped; ties with it are
// counted per chunk for keep_first_ties. Records the first NaN score.
template <typename scalar_t, Criterion C>
__global__ void __launch_bounds__(kThreads)
    write_masks(const Chunk* __restrict__ chunks, int64_t num_chunks,
                const InputRef* __restrict__ inputs, const GroupState* __restrict__ groups,
                int64_t* __restrict__ chunk_ties, unsigned long long* __restrict__ first_nan) {
  using Reduce = cub::BlockReduce<int, kThreads>;
  __shared__ typename Reduce::TempStorage reduce_storage;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const Chunk chunk = chunks[c];
    const GroupState state = groups[chunk.group];
    const bool keeps_some = state.remaining > 0;
    const auto kth = static_cast<key_type<scalar_t>>(state.prefix);
    const InputRef in = inputs[chunk.input];
    unsigned long long nan_at = kNoNan;
    int ties = 0;
    // Every element is read, also in groups keeping nothing, so that any NaN is found.
    for (int64_t i = chunk.begin + threadIdx.x; i < chunk.end; i += blockDim.x) {
      const score_t<scalar_t> score = score_at<scalar_t, C>(in, i);
      if (score != score && nan_at == kNoNan) {  // this thread's indices rise: the first is least
        nan_at = (static_cast<unsigned long long>(chunk.input) << kIndexBits) |
                 static_cast<unsigned long long>(i);
      }
      const key_type<scalar_t> key = topk::order_key(score);
      in.mask[i] = keeps_some && key > kth;
      ties += keeps_some && key == kth;
    }
    if (nan_at != kNoNan) atomicMin(first_nan, nan_at);
    const int chunk_total = Reduce(reduce_storage).Sum(ties);
    if (threadIdx.x == 0) chunk_ties[c] = chunk_total;
    __syncthreads();  // reduce_storage is reused by the next chunk
  }
}

// Tie pass: keeps the first `remaining` ties of each group in (input, index) order. ties_through
// is the inclusive cumsum of chunk_ties over the table, whose groups are contiguous.
template <typename scalar_t, Criterion C>
__global__ void __launch_bounds__(kThreads)
    keep_first_ties(const Chunk* __restrict__ chunks, int64_t num_chunks,
                    const InputRef* __restrict__ inputs, const GroupState* __restrict__ groups,
                    const int64_t* __restrict__ chunk_ties,
                    const int64_t* __restrict__ ties_through) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  for (int64_t c = blockIdx.x; c < num_chunks; c += gridDim.x) {
    const int64_t ties = chunk_ties[c];
    if (ties == 0) continue;
    const Chunk chunk = chunks[c];
    const GroupState state = groups[chunk.group];
    const int64_t first = state.first_chunk;
    const int64_t ties_before =  // in the group's earlier chunks
        (ties_through[c] - ties) - (ties_through[first] - chunk_ties[first]);
    const int64_t budget = state.remaining - ties_before;  // ties this chunk may still keep
    if (budget <= 0) continue;
    const int64_t wanted = budget < ties ? budget : ties;  // stop once these are found
    const auto kth = static_cast<key_type<scalar_t>>(state.prefix);
    const InputRef in = inputs[chunk.input];
    int64_t seen = 0;  // ties of this chunk before the current tile
    for (int64_t base = chunk.begin; base < chunk.end && seen < wanted; base += blockDim.x) {
      const int64_t i = base + threadIdx.x;
      const int tie = i < chunk.end && key_at<scalar_t, C>(in, i) == kth;
      int rank;
      int tile_ties;
      Scan(scan_storage).ExclusiveSum(tie, rank, tile_ties);
      if (tie && seen + rank < budget) in.mask[i] = true;
      seen += tile_ties;
      __syncthreads();  // scan_storage is reused by the next tile
    }
  }
}

// A host table on the device, through pinned memory so that the host does not wait for the copy
// (the caching host allocator keeps the pinned buffer until the copy is done).
template <typename T>
at::Tensor to_device(const std::vector<T>& table, const at::Device& device) {
  const int64_t bytes = static_cast<int64_t>(table.size() * sizeof(T));
  at::Tensor pinned = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(pinned.data_ptr(), table.data(), bytes);
  return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device))
      .copy_(pinned, /*non_blocking=*/true);
}

// The device tables and buffers that the kernels share.
struct Work {
  at::Tensor chunks;      // Chunk[num_chunks]
  at::Tensor inputs;      // InputRef[inputs]
  at::Tensor groups;      // GroupState[G]
  at::Tensor histograms;  // int64 [G, kBins], zero between digit passes
  at::Tensor chunk_ties;  // int64 [num_chunks]
  at::Tensor first_nan;   // int64 [1], kNoNan or the packed position of the first NaN
  at::Tensor thresholds;  // float64 [G]
  int64_t num_chunks;
  int64_t num_groups;
};

template <typename scalar_t, Criterion C>
void run_passes(Work& work) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  int multiprocessors = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount,
                                        c10::cuda::current_device()));
  const int64_t max_blocks = int64_t(multiprocessors) * kBlocksPerMultiprocessor;
  const auto blocks = static_cast<unsigned int>(std::min(work.num_chunks, max_blocks));
  const auto group_blocks = static_cast<unsigned int>(work.num_groups);
  const auto* chunks = reinterpret_cast<const Chunk*>(work.chunks.const_data_ptr());
  const auto* inputs = reinterpret_cast<const InputRef*>(work.inputs.const_data_ptr());
  auto* groups = reinterpret_cast<GroupState*>(work.groups.data_ptr());
  auto* histograms = reinterpret_cast<unsigned long long*>(work.histograms.data_ptr<int64_t>());

  constexpr int kKeyBits = 8 * sizeof(key_type<scalar_t>);
  for (int high = kKeyBits; high > 0; high -= kDigitBits) {
    const Digit digit = digit_below(high);
    count_digit<scalar_t, C><<<blocks, kThreads, 0, stream>>>(chunks, work.num_chunks, inputs,
                                                              groups, digit, histograms);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    select_digit<scalar_t><<<group_blocks, kThreads, 0, stream>>>(
        groups, histograms, digit, work.thresholds.data_ptr<double>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  write_masks<scalar_t, C><<<blocks, kThreads, 0, stream>>>(
      chunks, work.num_chunks, inputs, groups, work.chunk_ties.data_ptr<int64_t>(),
      reinterpret_cast<unsigned long long*>(work.first_nan.data_ptr<int64_t>()));
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  const at::Tensor ties_through = work.chunk_ties.cumsum(0);
  keep_first_ties<scalar_t, C><<<blocks, kThreads, 0, stream>>>(
      chunks, work.num_chunks, inputs, groups, work.chunk_ties.const_data_ptr<int64_t>(),
      ties_through.const_data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<std::vector<at::Tensor>, at::Tensor> topk_masks_cuda(at::TensorList inputs,
                                                                at::TensorList grads,
                                                                c10::string_view criterion,
                                                                at::IntArrayRef counts,
                                                                at::IntArrayRef groups) {
  const topk::Request request =
      topk::check_request(inputs, grads, std::string(criterion), counts, groups, at::kCUDA);
  const int64_t num_groups = static_cast<int64_t>(request.counts.size());
  const double inf = std::numeric_limits<double>::infinity();
  if (request.inputs.empty()) {  // no device to use; check_request made every count 0
    return {std::vector<at::Tensor>{}, at::full({num_groups}, inf, at::kDouble)};
  }
  const at::Tensor& first = request.inputs[0];
  const c10::cuda::CUDAGuard guard(first.device());
  const int64_t num_inputs = static_cast<int64_t>(request.inputs.size());
  TORCH_CHECK(num_inputs <= kMaxInputs, "topk_masks: expected at most ", kMaxInputs,
              " inputs on CUDA, got ", num_inputs);
  TORCH_CHECK(num_groups <= int64_t(std::numeric_limits<int>::max()),
              "topk_masks: too many groups for CUDA: ", num_groups);

  std::vector<at::Tensor> masks;
  std::vector<InputRef> input_table;
  for (int64_t t = 0; t < num_inputs; ++t) {
    const at::Tensor& x = request.inputs[t];
    TORCH_CHECK(x.numel() < (int64_t(1) << kIndexBits), "topk_masks: expected fewer than 2^",
                kIndexBits, " elements per input on CUDA, got ", x.numel(), " in inputs[", t, "]");
    masks.push_back(at::empty(x.sizes(), x.options().dtype(at::kBool)));  // every element written
    input_table.push_back({x.const_data_ptr(),
                           request.grads.empty() ? nullptr : request.grads[t].const_data_ptr(),
                           masks.back().data_ptr<bool>()});
  }
  at::Tensor thresholds = at::full({num_groups}, inf, first.options().dtype(at::kDouble));

  // Chunks by group, then by (input, index): the ties of a group are ranked in that order.
  std::vector<Chunk> chunk_table;
  std::vector<GroupState> group_table;
  for (int64_t g = 0; g < num_groups; ++g) {
    group_table.push_back({0, request.counts[g], static_cast<int64_t>(chunk_table.size())});
    for (const int64_t t : request.members[g]) {
      const int64_t n = request.inputs[t].numel();
      for (int64_t begin = 0; begin < n; begin += kChunk) {
        chunk_table.push_back({t, g, begin, std::min(n, begin + kChunk)});
      }
    }
  }
  if (chunk_table.empty()) return {masks, thresholds};  // no elements: every count is 0

  Work work;
  work.num_chunks = static_cast<int64_t>(chunk_table.size());
  work.num_groups = num_groups;
  work.chunks = to_device(chunk_table, first.device());
  work.inputs = to_device(input_table, first.device());
  work.groups = to_device(group_table, first.device());
  work.histograms = at::zeros({num_groups, kBins}, first.options().dtype(at::kLong));
  work.chunk_ties = at::empty({work.num_chunks}, first.options().dtype(at::kLong));
  work.first_nan = at::full({1}, static_cast<int64_t>(kNoNan), first.options().dtype(at::kLong));
  work.thresholds = thresholds;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, first.scalar_type(), "topk_masks_cuda",
                                  [&] {
                                    topk::dispatch_criterion(request.criterion, [&](auto c) {
                                      run_passes<scalar_t, decltype(c)::value>(work);
                                    });
                                  });

  // The one wait: the position of the first NaN score, if any.
  const int64_t nan_at = work.first_nan.item<int64_t>();
  if (nan_at != static_cast<int64_t>(kNoNan)) {
    topk::fail_on_nan(request.criterion, nan_at >> kIndexBits,
                      nan_at & ((int64_t(1) << kIndexBits) - 1));
  }
  return {masks, thresholds};
}

// topk_mask is topk_masks with one input in one group: exactly k kept, ties to the lower flat
// index, NaN refused. (A threshold from at::kthvalue took 20 to 200 times longer on an H200.)
at::Tensor topk_mask_cuda(const at::Tensor& scores, int64_t k) {
  TORCH_CHECK(scores.is_floating_point(),
              "topk_mask: expected floating-point scores, got ", scores.scalar_type());
  const int64_t n = scores.numel();
  TORCH_CHECK(k >= 0 && k <= n, "topk_mask: expected 0 <= k <= ", n,
              " (the number of scores), got k = ", k);
  const int64_t counts[] = {k};
  const int64_t groups[] = {0};
  return std::get<0>(topk_masks_cuda(scores, {}, "score", counts, groups))[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(prunekit, CUDA, m) {
  m.impl("topk_masks", &topk_masks_cuda);
  m.impl("topk_mask", &topk_mask_cuda);
}

}  // namespace prunekit
