// The Python module object of the extension. The ops themselves are registered with
// TORCH_LIBRARY_FRAGMENT in each csrc/<family>.cpp; importing icrm_kernels._C loads this
// shared library, which runs those registrations. This file is only for the Python build
// (CMakeLists.txt leaves it out).
#include <Python.h>
#include <torch/library.h>

// The namespace is defined once here; every family adds to it with TORCH_LIBRARY_FRAGMENT.
TORCH_LIBRARY(icrm_cpu, m) {}

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
