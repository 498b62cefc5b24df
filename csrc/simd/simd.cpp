#include "simd.h"

#include <atomic>

namespace prunekit::simd {
namespace {

std::atomic<bool> forced_default{false};

bool cpu_has_avx2_fma() {
#ifdef PRUNEKIT_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace

bool use_avx2() { return cpu_has_avx2_fma() && !default_forced(); }

void force_default(bool forced) { forced_default.store(forced, std::memory_order_relaxed); }

bool default_forced() { return forced_default.load(std::memory_order_relaxed); }

}  // namespace prunekit::simd
