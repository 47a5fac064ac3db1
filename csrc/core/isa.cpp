#include "core/isa.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace qcnn {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
    case Isa::Avx2:
#if defined(__x86_64__) || defined(_M_X64)
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
      return false;
#endif
  }
  return false;
}

Isa select_isa() {
  const char* forced = std::getenv("QCNN_ISA");
  if (forced && *forced) {
    const std::string name = forced;
    for (Isa isa : {Isa::Scalar, Isa::Avx2}) {
      if (name != isa_name(isa)) continue;
      if (!isa_supported(isa)) throw std::invalid_argument("QCNN_ISA=" + name + ": this CPU cannot run that path");
      return isa;
    }
    throw std::invalid_argument("QCNN_ISA=" + name + ": unknown path (known: scalar, avx2)");
  }
  return isa_supported(Isa::Avx2) ? Isa::Avx2 : Isa::Scalar;
}

}  // namespace qcnn
