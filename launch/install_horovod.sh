#!/usr/bin/env bash
# Build Horovod 0.28.1 (its last release, source only) against the TensorFlow
# installed in the chosen Python, with the controllers this machine supports:
#   gloo  always;
#   MPI   when an MPI installation (mpicxx/mpicc) is found;
#   NCCL  when CUDA (nvcc), NCCL (nccl.h) and a CUDA build of TensorFlow are all present.
# Horovod 0.28.1 does not compile against TF >= 2.18 as released: its XLA op
# file includes XLA headers that moved. XLA ops are off by default, so that one
# file is dropped from the TensorFlow target before building.
#
# Usage: launch/install_horovod.sh [PYTHON] [--wheel DIR]   (default: python3 on PATH)
#   --wheel DIR  two steps, for an install that goes on meanwhile (make install): the first call
#                only builds Horovod's wheel into DIR, writing nothing into PYTHON's environment;
#                the next call finds it there and installs it, with its dependencies.
# Env:   HOROVOD_VERSION (default 0.28.1), FORCE=1 to rebuild when already importable.
set -euo pipefail

PY="${1:-${PYTHON:-python3}}"
VERSION="${HOROVOD_VERSION:-0.28.1}"
WHEELS=""
if [ "${2:-}" = --wheel ]; then
  WHEELS="${3:?--wheel needs a folder}"
fi

installed() {
  "$PY" -c "import horovod.tensorflow as h; h.init(); print('horovod: installed', __import__('horovod').__version__, 'gloo', h.gloo_built(), 'mpi', h.mpi_built(), 'nccl', h.nccl_built())" 2>/dev/null \
    || { echo "horovod: built, but 'import horovod.tensorflow' fails; run it by hand to see why" >&2; exit 1; }
}
built=""
[ -n "$WHEELS" ] && built="$(ls "$WHEELS"/horovod-"${VERSION}"-*.whl 2>/dev/null | head -n 1 || true)"
if [ -n "$built" ]; then
  "$PY" -m pip install --quiet "$built"
  installed
  exit 0
fi

# (Each of these imports TensorFlow, for seconds: as few as can tell.)
if [ "${FORCE:-0}" != 1 ] && "$PY" -c "import horovod.tensorflow as h; h.init(); assert h.gloo_built()" >/dev/null 2>&1; then
  echo "horovod: already installed in $("$PY" -c 'import sys; print(sys.prefix)') ($("$PY" -c 'import horovod; print(horovod.__version__)'))"
  exit 0
fi
read -r tf_version tf_cuda < <("$PY" -c 'import tensorflow as tf; print(tf.__version__, int(tf.test.is_built_with_cuda()))' 2>/dev/null) || true
[ -n "${tf_version:-}" ] || { echo "horovod: TensorFlow must be installed in $PY first" >&2; exit 1; }

command -v g++ >/dev/null || { echo "horovod: needs a C++ compiler (apt-get install g++)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if ! command -v cmake >/dev/null; then
  # a registry package that ships the binary, kept out of PYTHON's environment
  "$PY" -m pip install --quiet --target "$work/cmake" "cmake<4"
  export PATH="$work/cmake/bin:$PATH" PYTHONPATH="$work/cmake${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -m pip download --quiet --no-deps --no-binary :all: "horovod==${VERSION}" -d "$work"
tar -xzf "$work/horovod-${VERSION}.tar.gz" -C "$work"
src="$work/horovod-${VERSION}"
sed -i '/xla_mpi_ops\.cc/d' "$src/horovod/tensorflow/CMakeLists.txt"
# Release (-O3) instead of its default RelWithDebInfo (-O2 -g): no debug info, which nobody here reads, and
# the build takes 193 s instead of 241 on 2 cores (setup.py build_ext, measured side by side).
sed -i "s/else 'RelWithDebInfo'/else 'Release'/" "$src/setup.py"

export HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
if command -v mpicxx >/dev/null || command -v mpicc >/dev/null; then
  export HOROVOD_WITH_MPI=1; mpi=yes
else
  export HOROVOD_WITHOUT_MPI=1; mpi=no
fi
nccl=no
cuda_home="${CUDA_HOME:-/usr/local/cuda}"
nccl_h=""
for d in "${NCCL_HOME:-}/include" /usr/include "$cuda_home/include"; do
  [ -f "$d/nccl.h" ] && nccl_h="$d" && break
done
if command -v nvcc >/dev/null && [ "$tf_cuda" = 1 ] && [ -n "$nccl_h" ]; then
  export HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME="$cuda_home"
  [ -n "${NCCL_HOME:-}" ] && export HOROVOD_NCCL_HOME="$NCCL_HOME"
  nccl=yes
fi
echo "horovod: building ${VERSION} (gloo=yes mpi=${mpi} nccl=${nccl}) with TensorFlow ${tf_version}"
if [ -n "$WHEELS" ]; then
  mkdir -p "$WHEELS"
  MAKEFLAGS="-j$(nproc)" "$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$WHEELS" "$src"
  echo "horovod: wheel built in $WHEELS"
  exit 0
fi
MAKEFLAGS="-j$(nproc)" "$PY" -m pip install --quiet --no-build-isolation "$src"
installed
