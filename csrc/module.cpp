// The extension module is empty: importing fastloss._C runs the static TORCH_LIBRARY registrations
// of every op (csrc/ops), CPU kernel (csrc/cpu) and CUDA kernel (csrc/cuda) linked into it.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
