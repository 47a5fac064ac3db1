#include "core/isa.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace qcnn {

namespace {
constexpr Isa kAll[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni};
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512Vnni: return "avx512vnni";
  }
  return "?";
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__) || defined(_M_X64)
    case Isa::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512Vnni:
      return isa_supported(Isa::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    default:
      return false;
#endif
  }
  return false;
}

Isa select_isa() {
  const char* forced = std::getenv("QCNN_ISA");
  if (forced && *forced) {
    const std::string name = forced;
    for (Isa isa : kAll) {
      if (name != isa_name(isa)) continue;
      if (!isa_supported(isa)) throw std::invalid_argument("QCNN_ISA=" + name + ": this CPU cannot run that path");
      return isa;
    }
    throw std::invalid_argument("QCNN_ISA=" + name + ": unknown path (known: scalar, avx2, avx512vnni)");
  }
  Isa best = Isa::Scalar;
  for (Isa isa : kAll)
    if (isa_supported(isa)) best = isa;
  return best;
}

}  // namespace qcnn
