// Defines the icrm_cpu op namespace for builds without Python (CMake, C++ tests).
// The Python extension defines it in module.cpp instead; exactly one of the two is linked.
#include <torch/library.h>

TORCH_LIBRARY(icrm_cpu, m) {}
