#!/usr/bin/env bash
# Builds flowspect with the `cuda` feature, also on a machine without a GPU or a CUDA toolkit.
#
#   scripts/build-cuda.sh [compute capability, default 90]
#
# With `nvcc` on the PATH this is plain `cargo build --release --features cuda`. Without it, the
# CUDA 13.0 compiler, headers and libraries are fetched from PyPI (NVIDIA's nvidia-* wheels, about
# 900 MB, kept in target/cuda-toolkit) and the binary is linked against them; the driver library
# libcuda.so.1 is replaced at link time by a stub holding the names of the driver functions that
# cudarc calls (the real one comes with the NVIDIA driver on the machine that runs the binary).
# The result is target/cuda/release/flowspect. To run it on a GPU machine put the CUDA 13 runtime
# libraries (libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudart.so.13) on
# LD_LIBRARY_PATH, for example /usr/local/cuda-13.0/targets/x86_64-linux/lib.
#
# Built this way on 2026-11-23 and run on an H100 (driver 580, CUDA 13.0): see README "CUDA".
set -euo pipefail
cd "$(dirname "$0")/.."
cap="${1:-90}"
export CARGO_TARGET_DIR="$PWD/target/cuda" CUDA_COMPUTE_CAP="$cap"

if command -v nvcc >/dev/null; then
    exec cargo build --release --features cuda --bin flowspect
fi

tk="$PWD/target/cuda-toolkit"
cu="$tk/nvidia/cu13"
if [ ! -x "$cu/bin/nvcc" ] || [ ! -e "$cu/lib/libcuda.so" ]; then
    mkdir -p "$tk/wheels"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$tk/wheels" \
        --python-version 3.12 --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        "nvidia-cuda-nvcc==13.0.88" "nvidia-nvvm==13.0.88" "nvidia-cuda-crt==13.0.88" \
        "nvidia-cuda-cccl==13.0.85" "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-nvrtc==13.0.88" \
        "nvidia-cublas==13.0.2.14" "nvidia-curand==10.4.0.35"
    for w in "$tk"/wheels/*.whl; do
        python3 -m zipfile -e "$w" "$tk"
    done
    chmod +x "$cu"/bin/* "$cu"/nvvm/bin/*
    # Unversioned names for the linker.
    (cd "$cu/lib" && for l in cublas cublasLt cudart nvrtc; do ln -sf "lib$l.so.13" "lib$l.so"; done \
        && ln -sf libcurand.so.10 libcurand.so)
    # A link-time stand-in for the driver library: every driver function cudarc declares.
    sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' | sort | tail -1)
    [ -n "$sys" ] || cargo fetch
    sys=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -path '*cudarc-*/src/driver/sys/mod.rs' | sort | tail -1)
    grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$sys" | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
        | awk '{print "void " $1 "(void){}"}' > "$tk/cuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cu/lib/libcuda.so" "$tk/cuda_stub.c"
fi

export CUDA_HOME="$cu" CUDA_PATH="$cu" CUDA_ROOT="$cu" CUDARC_CUDA_VERSION=13000
export PATH="$cu/bin:$PATH" LIBRARY_PATH="$cu/lib"
export NVCC_APPEND_FLAGS="-I$cu/include/cccl"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$cu/lib"
cargo build --release --features cuda --bin flowspect
echo "built $CARGO_TARGET_DIR/release/flowspect (CUDA 13.0, sm_$cap)"
