#!/usr/bin/env bash
# One call on a lent GPU machine (see docs/BENCHMARKS.md): build qcnn._C with the CUDA kernels for
# sm_90, run the CUDA tests, then the fake_quant benchmark. Logs and JSON go to ${OUT:-runs/gpu}.
# Usage: [BENCH=0] [REST_TIMEOUT=S] benchmarks/gpu_check.sh [DATASET_DIR]  (DATASET_DIR: Fashion-MNIST .gz
# files for the retraining tests; BENCH=0 skips the benchmark; REST_TIMEOUT bounds the rest of the suite)
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD/python
{ nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv; nproc; $PY -c \
  "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"; } \
  2>&1 | tee "$OUT/machine.txt"
if [ $# -ge 1 ]; then mkdir -p /usr/share/datasets/fashion-mnist && cp "$1"/*.gz /usr/share/datasets/fashion-mnist/; fi
# The GPU image's CXX (/opt/gcc/bin/g++) built an extension that segfaulted whenever a c10 error was
# raised (2026-11-30, torch 2.11); the distribution's g++ does not.
if [ -x /usr/bin/g++ ]; then export CXX=/usr/bin/g++ CC=/usr/bin/gcc; fi
t0=$(date +%s)
TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$(nproc) QCNN_FORCE_CUDA=1 $PY setup.py build_ext --inplace >"$OUT/build.log" 2>&1 \
  || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s; $(grep 'qcnn build' "$OUT/build.log")"
$PY -m pytest -q -p no:cacheprovider tests/python/test_fake_quant.py tests/python/test_cuda.py 2>&1 \
  | tee "$OUT/pytest_cuda.log" | tail -15
[ "${BENCH:-1}" = 1 ] && $PY benchmarks/bench_fake_quant.py --repeats 20 --json "$OUT/bench_fake_quant.json" 2>&1 \
  | tee "$OUT/bench.log"
timeout "${REST_TIMEOUT:-150}" $PY -m pytest -q -p no:cacheprovider tests/python \
  --ignore=tests/python/test_fake_quant.py --ignore=tests/python/test_cuda.py >"$OUT/pytest_rest.log" 2>&1
echo "rest of the suite: rc $?; $(tail -1 "$OUT/pytest_rest.log")"
