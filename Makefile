# qcnn: `make demo` runs the main job, `make test` runs every test. Both set the machine up first.
PYTHON  ?= python3
PIP     := $(PYTHON) -m pip
JOBS    ?= 2
STAMPS  := .stamps
BUILD   := build/cmake
APT_PKGS := catch2 nlohmann-json3-dev ninja-build zlib1g-dev dataset-fashion-mnist qemu-user g++-aarch64-linux-gnu
ARM_BUILD := build/aarch64
ARM_TOOLCHAIN := csrc/toolchains/aarch64-linux-gnu.cmake
# qemu's CPU models for the aarch64 tests: ARMv8.0 NEON only, the dot product (ARMv8.2), and every extension (i8mm).
ARM_CPUS := cortex-a53 cortex-a76 max
PY_DEPS  := numpy pyyaml tqdm matplotlib packaging pytest scipy safetensors onnx onnxruntime
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EXT_SOURCES := setup.py $(shell find csrc/core csrc/ops csrc/runtime -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' 2>/dev/null)
CORE_SOURCES := CMakeLists.txt $(shell find csrc tests/cpp tests/c_api benchmarks/arm -name '*.cpp' -o -name '*.h' -o -name '*.c' 2>/dev/null)

.PHONY: setup demo test test-fast test-cpp test-arm test-python cuda-check bench clean arm

setup: $(STAMPS)/apt $(STAMPS)/python $(STAMPS)/ext $(STAMPS)/cmake $(STAMPS)/arm

$(STAMPS)/apt:
	@mkdir -p $(STAMPS)
	@if dpkg -s $(APT_PKGS) >/dev/null 2>&1; then echo "setup: Debian packages present"; \
	else $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $(APT_PKGS); fi
	@touch $@

# Keep a torch (>= 2.11) that is already there with its torchvision, or without one on a machine that
# brought its own torch (a GPU machine: torchvision tests then skip). Otherwise (no torch, or the 2.13.0 CPU
# file, beside which PyPI's torchvision cannot import) take the pinned pair: pip finds both, and their CUDA
# libraries, on this project's machines' local index. A bare `torch` requirement would pull another release.
TORCH_VERSION = $(PYTHON) -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null
$(STAMPS)/python: $(STAMPS)/apt
	@$(PIP) install -q packaging
	@have=$$($(TORCH_VERSION)); \
	if [ -n "$$have" ] && $(PYTHON) -c "import packaging.version as v; assert v.parse('$$have') >= v.parse('2.11')" \
	   && { $(PYTHON) -c "import torchvision" 2>/dev/null || [ "$$have" != 2.13.0 ]; }; then \
	  echo "setup: keeping torch $$have"; \
	else $(PIP) install -q $(TORCH_PINS); fi
	@$(PIP) install -q $(PY_DEPS)
	@touch $@

$(STAMPS)/ext: $(STAMPS)/python $(EXT_SOURCES)
	$(PIP) install -q --no-build-isolation -e .
	@touch $@

$(STAMPS)/cmake: $(STAMPS)/apt $(CORE_SOURCES)
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build $(BUILD) -j $(JOBS)
	@touch $@

# The arm64 zlib that the cross-built engine links (Debian's multiarch: the arm64 architecture added once).
$(STAMPS)/apt-arm64: $(STAMPS)/apt
	@if dpkg -s zlib1g-dev:arm64 >/dev/null 2>&1; then echo "setup: arm64 zlib present"; \
	else $(SUDO) dpkg --add-architecture arm64 && $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq zlib1g-dev:arm64; fi
	@touch $@

# The engine, qcnn-infer and the Catch2 tests cross-built for aarch64 Linux (static executables, run under
# qemu-aarch64 by test-arm).
arm: $(STAMPS)/arm
$(STAMPS)/arm: $(STAMPS)/apt-arm64 $(CORE_SOURCES) $(ARM_TOOLCHAIN)
	cmake -S . -B $(ARM_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_TOOLCHAIN_FILE=$(ARM_TOOLCHAIN) >/dev/null
	cmake --build $(ARM_BUILD) -j $(JOBS)
	@touch $@

test: setup test-cpp test-arm cuda-check test-python

test-cpp: $(STAMPS)/cmake
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The aarch64 Catch2 tests under each of qemu's CPU models; the aarch64 qcnn-infer against the x86 one runs in
# test-python (tests/python/test_arm.py, which QCNN_REQUIRE_ARM turns from skipped into failed without the build).
test-arm: $(STAMPS)/arm
	@for cpu in $(ARM_CPUS); do echo "test-arm: Catch2 tests on qemu-aarch64 -cpu $$cpu"; \
	  QEMU_CPU=$$cpu qemu-aarch64 $(ARM_BUILD)/qcnn_core_tests || exit 1; done

test-python: $(STAMPS)/ext
	QCNN_REQUIRE_ARM=$$([ -f $(STAMPS)/arm ] && echo 1) $(PYTHON) -m pytest -q tests/python

# The quick tier while working: the C++ tests and every Python test not marked slow (the programs' runs, the
# benchmarks' quick runs, DDP, torch.compile, the tutorial, the aarch64 emulation). make test runs everything.
test-fast: setup test-cpp
	$(PYTHON) -m pytest -q -m "not slow" tests/python

# No GPU on CI. With a CUDA build of torch (the pinned 2.14.1 is one) the whole extension is built a second
# time with its CUDA kernels (QCNN_FORCE_CUDA, into build/cuda-ext) and loaded, without qcnn, by a check that
# every CUDA kernel is linked and registered. With a CPU build of torch, which lacks one generated CUDA config
# header (the shim defines what the CUDA build's defines), every .cu file is compiled only.
TORCH_DIR = $(shell $(PYTHON) -c "import torch, os; print(os.path.dirname(torch.__file__))")
PY_INC = $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_paths()['include'])")
NVCC ?= $(shell command -v nvcc 2>/dev/null)
CU_SOURCES := $(wildcard csrc/ops/cuda/*.cu)
CUDA_DIR = $(shell [ -d /usr/local/cuda ] && echo /usr/local/cuda || dirname $$(dirname $$(readlink -f $(NVCC))) 2>/dev/null)
TORCH_HAS_CUDA = $(PYTHON) -c "import sys, torch; sys.exit(torch.version.cuda is None)"
cuda-check: $(STAMPS)/python
	@if [ -z "$(NVCC)" ]; then echo "cuda-check: nvcc not found, skipped"; exit 0; fi; \
	if $(TORCH_HAS_CUDA); then \
	  echo "cuda-check: building the extension with its CUDA kernels (build/cuda-ext)"; \
	  QCNN_FORCE_CUDA=1 CUDA_HOME=$${CUDA_HOME:-$(CUDA_DIR)} MAX_JOBS=$(JOBS) \
	    TORCH_CUDA_ARCH_LIST=$${TORCH_CUDA_ARCH_LIST:-9.0} \
	    $(PYTHON) setup.py -q build_ext --build-lib build/cuda-ext --build-temp build/cuda-ext/tmp >/dev/null || exit 1; \
	  $(PYTHON) tests/cuda/check_link.py build/cuda-ext/qcnn/_C.abi3.so || exit 1; exit 0; fi; \
	mkdir -p build/cuda-check/shim/c10/cuda/impl; \
	if [ ! -f $(TORCH_DIR)/include/c10/cuda/impl/cuda_cmake_macros.h ]; then \
	  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > build/cuda-check/shim/c10/cuda/impl/cuda_cmake_macros.h; fi; \
	for f in $(CU_SOURCES); do echo "nvcc -c $$f"; \
	  $(NVCC) -c $$f -o build/cuda-check/$$(basename $$f).o -std=c++20 -O3 --expt-relaxed-constexpr \
	    -gencode arch=compute_90,code=sm_90 -Xcompiler -fPIC -D_GLIBCXX_USE_CXX11_ABI=1 \
	    -Icsrc -Ibuild/cuda-check/shim -I$(TORCH_DIR)/include -I$(TORCH_DIR)/include/torch/csrc/api/include -I$(PY_INC) || exit 1; \
	done; echo "cuda-check: $(words $(CU_SOURCES)) CUDA files compiled"

demo: setup
	$(PYTHON) training/demo.py

bench: setup
	$(PIP) install -q -r benchmarks/requirements.txt
	@mkdir -p runs/bench
	for b in benchmarks/bench_*.py; do $(PYTHON) $$b --json runs/bench/$$(basename $$b .py).json || exit 1; done

clean:
	rm -rf $(STAMPS) build python/qcnn/_C*.so python/*.egg-info
