// Instruction-set selection for the integer kernels: one build runs on any x86-64 CPU, the
// kernels pick their path at run time from CPUID, and QCNN_ISA=scalar|avx2 forces one.
#pragma once

namespace qcnn {

enum class Isa { Scalar, Avx2 };

const char* isa_name(Isa isa);
// True when this CPU (and OS) can run `isa`.
bool isa_supported(Isa isa);
// The best supported path, or the one QCNN_ISA names (std::invalid_argument for an unknown name
// or one this CPU cannot run). Read once per call: a Model keeps what it chose at load.
Isa select_isa();

}  // namespace qcnn
