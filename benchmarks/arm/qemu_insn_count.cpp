// A qemu TCG plugin (API version 1, qemu 7.x user mode) that counts the guest instructions a program executes, one
// counter per instruction address, for the aarch64 instruction-count tables (benchmarks/bench_arm_insns.py). At exit
// it writes one line per executed instruction, "address count word disassembly" (the hexadecimal 32-bit instruction
// word: qemu 7.2's disassembler prints the dot-product and matrix instructions as bytes), to the file named by its
// `out` argument:
//   qemu-aarch64 -plugin build/qemu_insn_count.so,out=counts.txt PROGRAM ...
// The counters are plain adds: run the program on one thread. Declared here are the few entry points of qemu's plugin
// interface it uses (qemu resolves them in its own executable when it loads the plugin).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

extern "C" {
using qemu_plugin_id_t = uint64_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
using tb_trans_callback = void (*)(qemu_plugin_id_t, qemu_plugin_tb*);
using exit_callback = void (*)(qemu_plugin_id_t, void*);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, tb_trans_callback cb);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, exit_callback cb, void* userdata);
size_t qemu_plugin_tb_n_insns(const qemu_plugin_tb* tb);
qemu_plugin_insn* qemu_plugin_tb_get_insn(const qemu_plugin_tb* tb, size_t index);
uint64_t qemu_plugin_insn_vaddr(const qemu_plugin_insn* insn);
char* qemu_plugin_insn_disas(const qemu_plugin_insn* insn);
const void* qemu_plugin_insn_data(const qemu_plugin_insn* insn);
size_t qemu_plugin_insn_size(const qemu_plugin_insn* insn);
void qemu_plugin_register_vcpu_insn_exec_inline(qemu_plugin_insn* insn, qemu_plugin_op op, void* ptr, uint64_t imm);

__attribute__((visibility("default"))) extern const int qemu_plugin_version;
__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const void* info, int argc,
                                                               char** argv);
}

const int qemu_plugin_version = 1;

namespace {

struct Insn {
  uint64_t count = 0;  // qemu adds 1 here each time the instruction runs
  uint32_t word = 0;
  std::string disassembly;
};

// One record per guest address, kept for the whole run (a block translated again counts into the same record).
std::mutex records_lock;
std::unordered_map<uint64_t, std::unique_ptr<Insn>> records;
std::string out_path;

void on_translate(qemu_plugin_id_t, qemu_plugin_tb* tb) {
  const size_t n = qemu_plugin_tb_n_insns(tb);
  std::lock_guard<std::mutex> hold(records_lock);
  for (size_t i = 0; i < n; ++i) {
    qemu_plugin_insn* insn = qemu_plugin_tb_get_insn(tb, i);
    std::unique_ptr<Insn>& record = records[qemu_plugin_insn_vaddr(insn)];
    if (!record) {
      record = std::make_unique<Insn>();
      if (qemu_plugin_insn_size(insn) == sizeof record->word)
        std::memcpy(&record->word, qemu_plugin_insn_data(insn), sizeof record->word);
      if (char* text = qemu_plugin_insn_disas(insn)) {
        record->disassembly = text;
        std::free(text);
      }
    }
    qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &record->count, 1);
  }
}

void on_exit(qemu_plugin_id_t, void*) {
  std::lock_guard<std::mutex> hold(records_lock);
  FILE* f = std::fopen(out_path.c_str(), "w");
  if (!f) {
    std::fprintf(stderr, "qemu_insn_count: cannot write %s\n", out_path.c_str());
    return;
  }
  for (const auto& [address, record] : records)
    if (record->count)
      std::fprintf(f, "%llx %llu %08x %s\n", static_cast<unsigned long long>(address),
                   static_cast<unsigned long long>(record->count), record->word, record->disassembly.c_str());
  std::fclose(f);
}

}  // namespace

int qemu_plugin_install(qemu_plugin_id_t id, const void*, int argc, char** argv) {
  for (int i = 0; i < argc; ++i)
    if (std::strncmp(argv[i], "out=", 4) == 0) out_path = argv[i] + 4;
  if (out_path.empty()) {
    std::fprintf(stderr, "qemu_insn_count: give the output file as out=PATH\n");
    return 1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_exit, nullptr);
  return 0;
}
