#include "core/isa.h"

#include <cstdlib>
#include <stdexcept>
#include <string>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif
#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace qcnn {

namespace {
#if defined(__x86_64__) || defined(_M_X64)
// AMX needs the CPU's AMX-TILE and AMX-INT8 (CPUID leaf 7: EDX bits 24 and 25), the OS saving the tile state
// (XCR0 bits 17 and 18) and, on Linux, the process's permission to use the tile data, asked for once.
bool amx_usable() {
  static const bool usable = [] {
    unsigned eax, ebx, ecx, edx;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    if (!(edx & (1u << 24)) || !(edx & (1u << 25))) return false;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !(ecx & (1u << 27))) return false;  // OSXSAVE
    unsigned xcr0_lo, xcr0_hi;
    __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & (3u << 17)) != (3u << 17)) return false;
#ifdef __linux__
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
#endif
    return true;
  }();
  return usable;
}
#endif

#if defined(__aarch64__)
// The kernel's hardware capabilities (Linux's arch/arm64 hwcap bits): AT_HWCAP's ASIMD (bit 1) and ASIMDDP (bit 20),
// AT_HWCAP2's I8MM (bit 13). Elsewhere only the baseline, Advanced SIMD, which every aarch64 CPU has.
bool arm_feature(Isa isa) {
#ifdef __linux__
  const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
  const bool neon = hwcap & (1ul << 1), dot = neon && (hwcap & (1ul << 20)), i8mm = dot && (hwcap2 & (1ul << 13));
  return isa == Isa::Neon ? neon : isa == Isa::NeonDot ? dot : i8mm;
#else
  return isa == Isa::Neon;
#endif
}
#endif

}  // namespace

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512Vnni: return "avx512vnni";
    case Isa::Amx: return "amx";
    case Isa::Neon: return "neon";
    case Isa::NeonDot: return "neondot";
    case Isa::I8mm: return "i8mm";
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
    case Isa::Amx:
      return isa_supported(Isa::Avx512Vnni) && amx_usable();
#elif defined(__aarch64__)
    case Isa::Neon:
    case Isa::NeonDot:
    case Isa::I8mm:
      return arm_feature(isa);
#endif
    default:
      return false;
  }
  return false;
}

Isa select_isa() {
  const char* forced = std::getenv("QCNN_ISA");
  if (forced && *forced) {
    const std::string name = forced;
    for (Isa isa : kAllIsas) {
      if (name != isa_name(isa)) continue;
      if (!isa_supported(isa)) throw std::invalid_argument("QCNN_ISA=" + name + ": this CPU cannot run that path");
      return isa;
    }
    std::string known;
    for (Isa isa : kAllIsas) known += std::string(known.empty() ? "" : ", ") + isa_name(isa);
    throw std::invalid_argument("QCNN_ISA=" + name + ": unknown path (known: " + known + ")");
  }
  Isa best = Isa::Scalar;
  for (Isa isa : kAllIsas)
    if (isa_supported(isa)) best = isa;
  return best;
}

}  // namespace qcnn
