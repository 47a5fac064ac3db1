// Schemas of the integer-inference ops used by qcnn.load (the Python runtime) and the exporter.
// Activations are int32 codes in NCHW; accumulators are int32. CPU kernels: cpu/int_ops_kernel.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(qcnn, m) {
  m.def("pack_bits(Tensor values, int bits) -> Tensor");
  m.def("unpack_bits(Tensor packed, int bits, int count) -> Tensor");
  m.def("huffman_code_lengths(Tensor counts, int max_length) -> Tensor");
  m.def("huffman_encode(Tensor values, Tensor code_lengths) -> Tensor");
  m.def("huffman_decode(Tensor data, Tensor code_lengths, int count) -> Tensor");
  m.def("int_conv2d(Tensor x, int x_zero_point, Tensor weight, int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "int_conv2d_shared(Tensor x, int x_zero_point, Tensor indices, Tensor codebook, int[2] kernel_size, "
      "int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "int_requantize(Tensor x, int x_zero_point, Tensor? bias, Tensor multiplier, Tensor shift, int zero_point, "
      "int qmin, int qmax) -> Tensor");
  m.def(
      "int_add(Tensor a, int a_zero_point, int a_multiplier, Tensor b, int b_zero_point, int b_multiplier, int shift, "
      "int zero_point, int qmin, int qmax) -> Tensor");
  m.def("int_max_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def("int_avg_pool2d(Tensor x, int[2] kernel_size, int[2] stride) -> Tensor");
}
