// Schemas of the weight-index coding ops of the exporter (docs/FORMAT.md section 3): bit packing and
// canonical Huffman coding, and their inverses (which check the coding in tests). Integer inference
// is the engine's alone (engine.cpp).
// CPU kernels: cpu/int_ops_kernel.cpp.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(qcnn, m) {
  m.def("pack_bits(Tensor values, int bits) -> Tensor");
  m.def("unpack_bits(Tensor packed, int bits, int count) -> Tensor");
  m.def("huffman_code_lengths(Tensor counts, int max_length) -> Tensor");
  m.def("huffman_encode(Tensor values, Tensor code_lengths) -> Tensor");
  m.def("huffman_decode(Tensor data, Tensor code_lengths, int count) -> Tensor");
}
