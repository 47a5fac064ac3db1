# Cross-compiling the engine (qcnn_core, qcnn_runtime, qcnn-infer) and its Catch2 tests for aarch64 Linux with
# Debian's g++-aarch64-linux-gnu; the binaries run here under qemu-aarch64 (qemu-user), which CMake uses to list the
# Catch2 tests. The arm64 zlib comes from zlib1g-dev:arm64 (dpkg --add-architecture arm64). `make arm` builds with it.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# Libraries from the cross sysroot and Debian's multiarch arm64 folder; headers and CMake package files (Catch2 and
# nlohmann_json are header-only) from the host as well.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu /)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE BOTH)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE BOTH)
# Static executables: one file that runs on any aarch64 Linux, and the only kind whose threads start under Debian
# 12's qemu-aarch64 (a dynamically linked program hangs in its first pthread_create there).
set(CMAKE_EXE_LINKER_FLAGS_INIT -static)
# ... linked with the static archives of OpenMP's runtime and of zlib (find_library would take the .so files).
file(GLOB QCNN_CROSS_LIBGOMP /usr/lib/gcc-cross/aarch64-linux-gnu/*/libgomp.a)
list(GET QCNN_CROSS_LIBGOMP -1 OpenMP_gomp_LIBRARY)
set(ZLIB_LIBRARY /usr/lib/aarch64-linux-gnu/libz.a)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64)
