// What the CPU and CUDA topk_masks share: the criteria, the order-preserving float keys, and the
// checks of the arguments (so both devices refuse the same inputs with the same words).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__CUDACC__)
#define PRUNEKIT_HOST_DEVICE __host__ __device__
#else
#define PRUNEKIT_HOST_DEVICE
#endif

namespace prunekit {
namespace topk {

// The score of one element, from its input x (a score or a weight) and, for snip and gradflow,
// its gradient g. Computed in float (double for double inputs) without rounding to the input dtype.
enum class Criterion { Score, Magnitude, Snip, GradFlow };

template <Criterion C, typename float_t>
PRUNEKIT_HOST_DEVICE inline float_t score_of(float_t x, float_t g) {
  if constexpr (C == Criterion::Score) {
    return x;
  } else if constexpr (C == Criterion::Magnitude) {
    return x < 0 ? -x : x;
  } else if constexpr (C == Criterion::Snip) {
    const float_t product = x * g;
    return product < 0 ? -product : product;
  } else {
    const float_t square = x * x;  // |g| * w^2, in this order, as the gradflow scorer computes it
    return (g < 0 ? -g : g) * square;
  }
}

PRUNEKIT_HOST_DEVICE constexpr bool needs_grads(Criterion c) {
  return c == Criterion::Snip || c == Criterion::GradFlow;
}

Criterion parse_criterion(const std::string& name);
const char* criterion_name(Criterion c);

// Calls f(std::integral_constant<Criterion, c>{}) so the criterion is a compile-time constant in
// the inner loops.
template <typename F>
decltype(auto) dispatch_criterion(Criterion c, F&& f) {
  switch (c) {
    case Criterion::Score: return f(std::integral_constant<Criterion, Criterion::Score>{});
    case Criterion::Magnitude: return f(std::integral_constant<Criterion, Criterion::Magnitude>{});
    case Criterion::Snip: return f(std::integral_constant<Criterion, Criterion::Snip>{});
    default: return f(std::integral_constant<Criterion, Criterion::GradFlow>{});
  }
}

// Keys: floats order like their sign-adjusted bit patterns. Larger float, larger unsigned key;
// -0.0 and 0.0 get the same key. float32 keys for float32/float16/bfloat16, 64-bit for double.
template <typename float_t>
struct KeyTraits {
  using key_t = uint32_t;
};
template <>
struct KeyTraits<double> {
  using key_t = uint64_t;
};

template <typename float_t>
PRUNEKIT_HOST_DEVICE inline typename KeyTraits<float_t>::key_t order_key(float_t value) {
  using key_t = typename KeyTraits<float_t>::key_t;
  value = value + float_t(0);  // -0.0 + 0.0 is +0.0
  key_t bits;
  memcpy(&bits, &value, sizeof(bits));
  constexpr key_t sign = key_t(1) << (sizeof(key_t) * 8 - 1);
  return (bits & sign) ? key_t(~bits) : key_t(bits | sign);
}

template <typename float_t>
PRUNEKIT_HOST_DEVICE inline float_t value_of_key(typename KeyTraits<float_t>::key_t key) {
  using key_t = typename KeyTraits<float_t>::key_t;
  constexpr key_t sign = key_t(1) << (sizeof(key_t) * 8 - 1);
  const key_t bits = (key & sign) ? key_t(key & ~sign) : key_t(~key);
  float_t value;
  memcpy(&value, &bits, sizeof(value));
  return value;
}

// The checked arguments: contiguous inputs and grads, the criterion, and each group's tensors.
struct Request {
  std::vector<at::Tensor> inputs;
  std::vector<at::Tensor> grads;  // empty unless the criterion needs them
  Criterion criterion;
  std::vector<int64_t> counts;               // elements to keep, per group
  std::vector<std::vector<int64_t>> members;  // tensor positions of each group, in order
  std::vector<int64_t> totals;               // elements per group
};

// Checks the arguments against each other (one dtype and device, grads matching inputs, groups
// in range, 0 <= counts[g] <= elements of group g) and returns them ready for a kernel.
Request check_request(at::TensorList inputs, at::TensorList grads, const std::string& criterion,
                      at::IntArrayRef counts, at::IntArrayRef groups, at::DeviceType device);

// The error for a NaN score at (tensor, index).
[[noreturn]] void fail_on_nan(Criterion c, int64_t tensor, int64_t index);

}  // namespace topk
}  // namespace prunekit
