// Schemas of the fake-quantization ops. Kernels: ops/cpu/fake_quant_kernel.cpp, ops/cuda/fake_quant_kernel.cu.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(qcnn, m) {
  // Uniform affine fake quantization; axis None = per tensor. zero_point (int32 or float32) is
  // rounded half to even and must lie in [qmin, qmax].
  m.def("fake_quant(Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int? axis) -> Tensor");
  // Straight-through gradient of x and, when need_qparam_grads, the LSQ gradients of scale and
  // zero_point (float32, shaped like scale; empty otherwise) multiplied by grad_factor.
  m.def(
      "fake_quant_backward(Tensor grad, Tensor x, Tensor scale, Tensor zero_point, int qmin, int qmax, int? axis, "
      "float grad_factor, bool need_qparam_grads) -> (Tensor, Tensor, Tensor)");
  // w -> alpha * sign(w), alpha = mean(|w|) per channel along axis (per tensor when None), sign(0) = +1.
  m.def("fake_quant_binary(Tensor w, int? axis) -> Tensor");
  m.def("fake_quant_binary_backward(Tensor grad, Tensor w, int? axis) -> Tensor");
}
