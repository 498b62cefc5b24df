// Which build of a hot loop runs: the one for the default x86-64 target or the one for AVX2.
//
// Kernels compile their hot loops twice on x86-64 with GCC or Clang (once with
// __attribute__((target("avx2")) or target("avx2,fma"))) and ask use_avx2() once per call which
// to run, so one binary is fast on AVX2 machines and still correct on any x86-64 CPU. Tests
// force the default build to check it on machines that have AVX2.
#pragma once

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
#define PRUNEKIT_X86_DISPATCH 1
#endif

namespace prunekit::simd {

// True when this CPU has AVX2 and FMA, this build has the AVX2 loops, and the default build is
// not forced.
bool use_avx2();

// Forces the default build (true) or restores the choice by CPU (false).
void force_default(bool forced);

// Whether the default build is forced.
bool default_forced();

}  // namespace prunekit::simd
