// Instruction-set selection for the integer kernels: one build runs on any x86-64 (or any aarch64) CPU, the
// kernels pick their path at run time from CPUID (on aarch64 Linux from the kernel's hardware capabilities,
// getauxval), and QCNN_ISA=scalar|avx2|avx512vnni|amx (aarch64: scalar|neon|neondot|i8mm) forces one.
#pragma once

namespace qcnn {

// Ordered: each path may use every kernel of the ones before it. avx512vnni adds the u8 x s8 GEMM
// (vpdpbusd, AVX-512 F/BW/VL + VNNI) and keeps the AVX2 kernels for everything else; amx adds the tile GEMM
// (tdpbusd, AMX-TILE + AMX-INT8, Intel Sapphire Rapids and later) for the layers large enough to fill its tiles.
// On aarch64: neon (ARMv8.0 Advanced SIMD, every aarch64 CPU) runs the quad GEMM with widening multiplies; neondot
// adds the dot product (SDOT, ARMv8.2 FEAT_DotProd); i8mm adds the int8 matrix multiply (USMMLA, FEAT_I8MM).
// Within each architecture the list is ordered best last.
enum class Isa { Scalar, Avx2, Avx512Vnni, Amx, Neon, NeonDot, I8mm };
inline constexpr Isa kAllIsas[] = {Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Amx,
                                   Isa::Neon,   Isa::NeonDot, Isa::I8mm};

const char* isa_name(Isa isa);
// True when this CPU (and OS) can run `isa`.
bool isa_supported(Isa isa);
// Which x86 kernel families a path runs, named path by path (not by the enum's order, so that paths for other
// architectures can join the enum without inheriting x86 kernels): the AVX2 kernels on avx2, avx512vnni and amx;
// the AVX-512 F/BW/VL + VNNI ones on avx512vnni and amx.
inline bool has_avx2(Isa isa) { return isa == Isa::Avx2 || isa == Isa::Avx512Vnni || isa == Isa::Amx; }
inline bool has_avx512(Isa isa) { return isa == Isa::Avx512Vnni || isa == Isa::Amx; }
// The aarch64 paths: NEON kernels (core/neon.h) on all three.
inline bool has_neon(Isa isa) { return isa == Isa::Neon || isa == Isa::NeonDot || isa == Isa::I8mm; }
// The paths with a u8 x s8 GEMM on k-quads (qgemm.h ConvKernel::Vnni): vpdpbusd on x86, the NEON kernels on aarch64.
inline bool has_quad_gemm(Isa isa) { return has_avx512(isa) || has_neon(isa); }
// The best supported path, or the one QCNN_ISA names (std::invalid_argument for an unknown name
// or one this CPU cannot run). Read once per call: a Model keeps what it chose at load.
Isa select_isa();

}  // namespace qcnn
