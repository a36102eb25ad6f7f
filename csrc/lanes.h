// Runtime ISA dispatch for the CPU lane kernels: a loop written once is built three times, for
// AVX-512 (F + VL), AVX2 and the baseline ISA, and the CPU picks one at run time, so the package
// needs no -march flag. ICRM_NO_AVX512=1 forces the AVX2 copy and ICRM_NO_AVX2=1 the baseline
// copy (the tests use them to cover those copies). The AVX-512 copy lets the vectorizer use
// 512-bit registers: half the instructions for the same lanes, so the out-of-order window covers
// twice the independent groups (the fixed-G group kernel: 0.35 -> 0.29 ms per 1M float rows on
// one Zen 4 core, bench/NOTES.md §9.4).
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
// AVX-512F brings FMA instructions with it, so its copy without contraction says so explicitly
// (GCC contracts a*b+c by default in C++, whatever -std). Clang has no such function attribute:
// there the kernels without FMA stay on the AVX2 copy.
#define ICRM_TARGET_AVX512 __attribute__((target("avx2,fma,avx512f,avx512vl")))
#if defined(__clang__)
#define ICRM_AVX512_NOFMA 0
#else
#define ICRM_AVX512_NOFMA 1
#define ICRM_TARGET_AVX512_NOFMA __attribute__((target("avx2,avx512f,avx512vl"), optimize("fp-contract=off")))
#endif
#else
#define ICRM_AVX2_DISPATCH 0
#endif

namespace icrm {

inline bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string(v) == "1";
}

inline bool use_avx2() {
#if ICRM_AVX2_DISPATCH
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && !env_flag("ICRM_NO_AVX2");
  return yes;
#else
  return false;
#endif
}

inline bool use_avx512() {
#if ICRM_AVX2_DISPATCH
  static const bool yes = use_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          !env_flag("ICRM_NO_AVX512");
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

template <class K>
ICRM_TARGET_AVX512 void lanes_avx512(const typename K::Args& p) {
  K::run(p);
}

#if ICRM_AVX512_NOFMA
template <class K>
ICRM_TARGET_AVX512_NOFMA void lanes_avx512_nofma(const typename K::Args& p) {
  K::run(p);
}
#endif
#endif

template <class K>
LaneFn<K> pick_lanes() {
#if ICRM_AVX2_DISPATCH
  if (use_avx512()) {
    if constexpr (K::kFma) return &lanes_avx512<K>;
#if ICRM_AVX512_NOFMA
    else return &lanes_avx512_nofma<K>;
#endif
  }
  if (use_avx2()) {
    if constexpr (K::kFma) return &lanes_avx2<K>;
    else return &lanes_avx2_nofma<K>;
  }
#endif
  return &lanes_baseline<K>;
}

}  // namespace icrm
