// The Python module object of the extension. The ops themselves are registered with
// TORCH_LIBRARY_FRAGMENT in each csrc/<family>.cpp; importing icrm_kernels._C loads this
// shared library, which runs those registrations. This file is only for the Python build
// (CMakeLists.txt leaves it out).
//
// It also holds one Python function: group_advantages_fixed, the eager fast path of
// group_advantages(rewards, group_size=G, preset=P) (icrm_kernels/ops/advantages.py). It calls
// the registered op icrm_cpu::group_advantages through the dispatcher, unboxed, so the kernel,
// the profiler's record of the op and its checks are the op's own; what it skips is torch.ops'
// conversion of 16 Python arguments into a boxed stack (~3 of the ~5 µs a torch.ops call of
// this op costs, bench/NOTES.md §14).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <exception>

// The namespace is defined once here; every family adds to it with TORCH_LIBRARY_FRAGMENT.
TORCH_LIBRARY(icrm_cpu, m) {}

namespace {

using GroupAdvantagesFn = at::Tensor(const at::Tensor&, const c10::optional<at::Tensor>&,
                                     const c10::optional<at::Tensor>&, int64_t, const c10::optional<at::Tensor>&,
                                     int64_t, int64_t, int64_t, double, bool, int64_t, bool, double, int64_t, double,
                                     double);

// group_advantages_fixed(rewards, group_size, baseline, scale, whiten, eps, unbiased, singleton,
// omit, whiten_eps, whiten_std, bnpo_low, bnpo_high) -> Tensor: icrm_cpu::group_advantages with
// the fixed layout (no offsets, order or whitening weights). The arguments are the op's, in its
// order; the caller has validated them (a wrong type raises TypeError, the op's own checks raise
// RuntimeError). The GIL is released while the kernel runs.
PyObject* group_advantages_fixed(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  constexpr Py_ssize_t kArgs = 13;
  if (nargs != kArgs || !THPVariable_Check(args[0])) {
    PyErr_Format(PyExc_TypeError, "group_advantages_fixed takes a tensor and %d option values, got %zd arguments",
                 static_cast<int>(kArgs - 1), nargs);
    return nullptr;
  }
  int64_t ints[6];  // group_size, baseline, scale, whiten, singleton, whiten_std
  double reals[4];  // eps, whiten_eps, bnpo_low, bnpo_high
  int flags[2];     // unbiased, omit
  const int int_at[6] = {1, 2, 3, 4, 7, 10}, real_at[4] = {5, 9, 11, 12}, flag_at[2] = {6, 8};
  for (int i = 0; i < 6; ++i) {
    if (!PyLong_Check(args[int_at[i]])) {
      PyErr_Format(PyExc_TypeError, "group_advantages_fixed: argument %d must be an int", int_at[i]);
      return nullptr;
    }
    ints[i] = PyLong_AsLongLong(args[int_at[i]]);
  }
  for (int i = 0; i < 4; ++i) reals[i] = PyFloat_AsDouble(args[real_at[i]]);
  for (int i = 0; i < 2; ++i) flags[i] = PyObject_IsTrue(args[flag_at[i]]);
  if (PyErr_Occurred()) return nullptr;
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("icrm_cpu::group_advantages", "")
                             .typed<GroupAdvantagesFn>();
  const at::Tensor& rewards = THPVariable_Unpack(args[0]);
  at::Tensor out;
  const char* error = nullptr;
  std::string message;
  PyThreadState* state = PyEval_SaveThread();
  try {
    out = op.call(rewards, c10::nullopt, c10::nullopt, ints[0], c10::nullopt, ints[1], ints[2], ints[3], reals[0],
                  flags[0] != 0, ints[4], flags[1] != 0, reals[1], ints[5], reals[2], reals[3]);
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
    error = message.c_str();
  } catch (const std::exception& e) {
    message = e.what();
    error = message.c_str();
  }
  PyEval_RestoreThread(state);
  if (error) {
    PyErr_SetString(PyExc_RuntimeError, error);
    return nullptr;
  }
  return THPVariable_Wrap(std::move(out));
}

PyMethodDef methods[] = {
    {"group_advantages_fixed", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&group_advantages_fixed)),
     METH_FASTCALL, "icrm_cpu::group_advantages with the fixed layout (the preset fast path)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
  return PyModule_Create(&module_def);
}
}
