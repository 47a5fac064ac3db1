#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan) and runs each for SECONDS.
#   tests/fuzz/run.sh [SECONDS=60] [TARGET...]      TARGET: fuzz_qcnn_file, fuzz_kernel_paths, fuzz_idx (default all)
# Environment: FUZZ_DIR (default build/fuzz), JOBS (parallel compiles, default 2), CLANGXX.
# Prints executions, corpus size and findings per target; exits 1 if any target found something.
# Findings (crash-*, oom-*, timeout-*, leak-*) are kept in $FUZZ_DIR/artifacts; reproduce one with
#   build/fuzz/fuzz_qcnn_file build/fuzz/artifacts/fuzz_qcnn_file/crash-...
set -euo pipefail

SECONDS_PER_TARGET=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(fuzz_qcnn_file fuzz_kernel_paths fuzz_idx)
for t in "${TARGETS[@]}"; do
  case $t in fuzz_qcnn_file | fuzz_kernel_paths | fuzz_idx) ;;
    *) echo "run.sh: unknown target $t (fuzz_qcnn_file, fuzz_kernel_paths, fuzz_idx)" >&2; exit 2 ;;
  esac
done
case $SECONDS_PER_TARGET in '' | *[!0-9]*) echo "run.sh: SECONDS must be a positive integer" >&2; exit 2 ;; esac
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
OUT=${FUZZ_DIR:-$ROOT/build/fuzz}
JOBS=${JOBS:-2}

CXX=${CLANGXX:-}
if [ -z "$CXX" ]; then
  for c in clang++ clang++-14 clang++-15 clang++-16; do command -v "$c" >/dev/null && CXX=$c && break; done
fi
if [ -z "$CXX" ]; then
  echo "run.sh: clang++ not found; install it with: apt-get update && apt-get install -y clang libclang-rt-14-dev" >&2
  exit 2
fi

# -O1 -g as libFuzzer recommends; -fno-sanitize-recover: a UBSan report is a finding. No OpenMP:
# one thread keeps runs reproducible. Same ISA flags as CMakeLists.txt.
CXXFLAGS=(-std=c++17 -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
          -mavx2 -mfma -mf16c -I"$ROOT/csrc" -Wno-unknown-pragmas)
mkdir -p "$OUT/obj"

# Compiles SRC to OBJ (instrumented for coverage) unless OBJ is newer than SRC and its headers.
compile() {
  local src=$1 obj=$2 dep=${2%.o}.d
  if [ -f "$obj" ] && [ -f "$dep" ]; then
    local stale=0 f
    for f in $(sed -e 's/^[^:]*://' -e 's/\\$//' "$dep"); do
      [ "$f" -nt "$obj" ] && stale=1 && break
    done
    [ $stale -eq 0 ] && return 0
  fi
  "$CXX" "${CXXFLAGS[@]}" -fsanitize=fuzzer-no-link -MMD -MF "$dep" -c "$src" -o "$obj"
}

LIB_SOURCES=()
for f in "$ROOT"/csrc/core/*.cpp "$ROOT"/csrc/runtime/*.cpp; do
  [ "$(basename "$f")" = qcnn_infer_main.cpp ] && continue
  LIB_SOURCES+=("$f")
done
echo "run.sh: compiling ${#LIB_SOURCES[@]} sources with $CXX ($("$CXX" --version | head -1)), $JOBS at a time"
pids=()
objs=()
fail=0
for src in "${LIB_SOURCES[@]}" "$ROOT"/tests/fuzz/fuzz_*.cpp; do
  rel=${src#"$ROOT"/}
  obj="$OUT/obj/${rel//\//_}"
  obj=${obj%.cpp}.o
  case "$src" in */tests/fuzz/*) ;; *) objs+=("$obj") ;; esac
  compile "$src" "$obj" &
  pids+=($!)
  if [ ${#pids[@]} -ge "$JOBS" ]; then
    wait "${pids[0]}" || fail=1
    pids=("${pids[@]:1}")
  fi
done
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail -eq 0 ] || { echo "run.sh: compilation failed" >&2; exit 2; }

for t in "${TARGETS[@]}"; do
  "$CXX" "${CXXFLAGS[@]}" -fsanitize=fuzzer "$OUT/obj/tests_fuzz_$t.o" "${objs[@]}" -lz -o "$OUT/$t"
done

# Seeds: small valid files (re-made each run, cheap); the corpus grows across runs in $OUT/corpus.
python3 "$ROOT/tests/fuzz/make_seeds.py" "$OUT/seeds"

declare -A SEEDS=([fuzz_qcnn_file]=qcnn [fuzz_kernel_paths]=qcnn [fuzz_idx]=idx)
declare -A DICTS=([fuzz_qcnn_file]=qcnn.dict [fuzz_kernel_paths]=qcnn.dict [fuzz_idx]=idx.dict)
status=0
summary=()
for t in "${TARGETS[@]}"; do
  corpus="$OUT/corpus/$t"
  artifacts="$OUT/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  log="$OUT/$t.log"
  before=$(find "$artifacts" -type f | wc -l)
  echo "run.sh: $t for ${SECONDS_PER_TARGET}s (log: $log)"
  # Limits: 10 s per input, 2 GiB RSS, no single allocation above 512 MiB (the targets bound
  # their inputs to far less), inputs up to 64 KiB.
  set +e
  "$OUT/$t" "$corpus" "$OUT/seeds/${SEEDS[$t]}" -dict="$ROOT/tests/fuzz/${DICTS[$t]}" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 \
    -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  after=$(find "$artifacts" -type f | wc -l)
  found=$((after - before))
  [ $rc -ne 0 ] && [ $found -eq 0 ] && found=1  # a finding without an artifact (e.g. a crash in startup)
  summary+=("$(printf '%-16s executions %-10s (%s/s)  coverage %-6s corpus %-6s findings %s' \
    "$t" "${execs:-?}" "${rate:-?}" "${cov:-?}" "$(find "$corpus" -type f | wc -l)" "$found")")
  if [ $found -ne 0 ]; then
    status=1
    grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|.*uncaught exception|.*out-of-memory|.*Test unit written)' "$log" \
      | head -20 | sed "s/^/  $t: /"
  fi
done
echo "run.sh: summary (${SECONDS_PER_TARGET}s per target)"
printf '  %s\n' "${summary[@]}"
exit $status
