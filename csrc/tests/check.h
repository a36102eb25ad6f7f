// A minimal test harness for the C++ tests (no gtest dependency): EXPECT records a failure and
// the test's main returns icrm_test::finish().
#pragma once
#include <cstdio>

namespace icrm_test {
inline int& failures() { static int n = 0; return n; }
inline int finish() {
  if (failures() == 0) std::printf("all checks passed\n");
  else std::printf("%d check(s) failed\n", failures());
  return failures() == 0 ? 0 : 1;
}
}  // namespace icrm_test

#define EXPECT(cond)                                                             \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::printf("%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);     \
      ++icrm_test::failures();                                                  \
    }                                                                           \
  } while (0)
