#include "simd.h"

#include <atomic>

namespace prunekit::simd {
namespace {

std::atomic<bool> default_forced{false};

bool cpu_has_avx2_fma() {
#ifdef PRUNEKIT_X86_DISPATCH
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

}  // namespace

bool use_avx2() { return cpu_has_avx2_fma() && !default_forced.load(std::memory_order_relaxed); }

void force_default(bool forced) { default_forced.store(forced, std::memory_order_relaxed); }

}  // namespace prunekit::simd
