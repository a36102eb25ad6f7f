// Shared helpers for the CPU kernels of every op family.
//
// Each family lives in one file, csrc/<family>.cpp, and registers its ops into the
// `icrm_cpu` namespace with TORCH_LIBRARY_FRAGMENT + TORCH_LIBRARY_IMPL(icrm_cpu, CPU, ...).
// The Python package calls them as torch.ops.icrm_cpu.<name>; the public, device-generic ops
// (torch.library custom ops in icrm_kernels/ops/) dispatch to them for CPU tensors.
// Input validation with readable messages happens in Python; the checks here are a last line
// of defence against calls that bypass it.
#pragma once

#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <limits>

namespace icrm {

// Grain size for at::parallel_for: below this many elements a loop stays on one thread,
// where thread start-up would cost more than it saves.
constexpr int64_t kGrain = 1 << 14;

inline void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor, got ", t.device());
}

}  // namespace icrm
