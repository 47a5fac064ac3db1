"""Builds qcnn._C: the C++ (and, when CUDA is usable, CUDA) ops of qcnn, and the integer inference
engine (csrc/runtime, also built by CMake into qcnn-infer) that qcnn.load runs through torch.classes.qcnn.Engine.

Environment:
  QCNN_FORCE_CUDA=1  build the CUDA kernels even when no GPU is visible (needs CUDA_HOME)
  QCNN_USE_CUDA=0    never build the CUDA kernels
  QCNN_DEBUG=1       -O0 -g, no -DNDEBUG
"""
import os
import platform
import sys
from pathlib import Path

from setuptools import find_packages, setup

import torch
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def _flag(name: str) -> bool:
    return os.environ.get(name, "0") == "1"


def _want_cuda() -> bool:
    if os.environ.get("QCNN_USE_CUDA") == "0":
        return False
    if _flag("QCNN_FORCE_CUDA"):
        if CUDA_HOME is None:
            sys.exit("setup.py: QCNN_FORCE_CUDA=1 but CUDA_HOME is not set and nvcc was not found")
        return True
    return torch.cuda.is_available() and CUDA_HOME is not None


def _sources(*patterns: str, exclude: tuple[str, ...] = ()) -> list[str]:
    out: list[str] = []
    for pattern in patterns:
        out += sorted(str(p.relative_to(ROOT)) for p in CSRC.glob(pattern) if p.name not in exclude)
    return out


def extension():
    use_cuda = _want_cuda()
    debug = _flag("QCNN_DEBUG")
    # The engine's sources (nlohmann_json, zlib), without the qcnn-infer program.
    sources = _sources("core/*.cpp", "runtime/*.cpp", "ops/*.cpp", "ops/cpu/*.cpp", exclude=("qcnn_infer_main.cpp",))
    cxx = ["-std=c++20", "-fopenmp", "-O0" if debug else "-O3", "-fvisibility=hidden"]
    nvcc = ["-std=c++20", "-O3", "--expt-relaxed-constexpr", "-lineinfo"]
    if platform.machine() in ("x86_64", "AMD64"):
        # at::vec::Vectorized compiles to AVX2 only when told so (torch itself dispatches at run
        # time; an extension picks one level at build time). Every x86-64 CPU since 2015 has it.
        cxx += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    if debug:
        cxx.append("-g")
    macros = []
    if not debug:
        macros.append(("NDEBUG", None))
    kwargs = dict(
        name="qcnn._C",
        sources=sources,
        include_dirs=[str(CSRC)],
        define_macros=macros,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        libraries=["z"],  # the engine reads gzip-compressed IDX files
        py_limited_api=True,
    )
    if use_cuda:
        kwargs["sources"] = sources + _sources("ops/cuda/*.cu")
        kwargs["extra_compile_args"]["nvcc"] = nvcc
        ext = CUDAExtension(**kwargs)
    else:
        ext = CppExtension(**kwargs)
    print(
        f"qcnn build: torch {torch.__version__}, cuda={'on' if use_cuda else 'off'} "
        f"(CUDA_HOME={CUDA_HOME}), debug={debug}, {len(kwargs['sources'])} sources",
        flush=True,
    )
    return ext


setup(
    name="qcnn",
    version="0.1.0",
    description="Quantize, retrain and deploy CNNs with codebook and fixed-point weights",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp311"}},
    python_requires=">=3.10",
    install_requires=["numpy", "pyyaml", "tqdm", "matplotlib", "packaging"],
)
