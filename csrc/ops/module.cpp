// The Python module qcnn._C. It exposes nothing itself: importing it runs the static
// TORCH_LIBRARY registrations of every op in this shared object.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
