// Runtime ISA dispatch for the CPU lane kernels: a loop written once is built twice, for
// AVX2 and for the baseline ISA, and the CPU picks one at run time, so the package needs no
// -march flag. ICRM_NO_AVX2=1 forces the baseline copy (the tests use it to cover that copy).
#pragma once

#include "special.h"  // ICRM_LANE

#include <cstdlib>
#include <string>

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define ICRM_AVX2_DISPATCH 1
#define ICRM_TARGET_AVX2 __attribute__((target("avx2,fma")))
// Without FMA in the target the compiler cannot contract a*b+c, so every result rounds as in
// the baseline copy: for kernels that promise bitwise equality across ISAs.
#define ICRM_TARGET_AVX2_NOFMA __attribute__((target("avx2")))
#else
#define ICRM_AVX2_DISPATCH 0
#endif

namespace icrm {

inline bool use_avx2() {
#if ICRM_AVX2_DISPATCH
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          !(std::getenv("ICRM_NO_AVX2") && std::string(std::getenv("ICRM_NO_AVX2")) == "1");
  return yes;
#else
  return false;
#endif
}

// K is a lane kernel: a struct with `Args`, `static constexpr bool kFma` (false: no FMA
// contraction, results bitwise equal to the baseline copy) and `static ICRM_LANE void
// run(const Args&)`, which the entry points below inline, each with its own ISA.
template <class K>
using LaneFn = void (*)(const typename K::Args&);

template <class K>
void lanes_baseline(const typename K::Args& p) {
  K::run(p);
}

#if ICRM_AVX2_DISPATCH
template <class K>
ICRM_TARGET_AVX2 void lanes_avx2(const typename K::Args& p) {
  K::run(p);
}

template <class K>
ICRM_TARGET_AVX2_NOFMA void lanes_avx2_nofma(const typename K::Args& p) {
  K::run(p);
}
#endif

template <class K>
LaneFn<K> pick_lanes() {
#if ICRM_AVX2_DISPATCH
  if (use_avx2()) {
    if constexpr (K::kFma) return &lanes_avx2<K>;
    else return &lanes_avx2_nofma<K>;
  }
#endif
  return &lanes_baseline<K>;
}

}  // namespace icrm
