#!/usr/bin/env bash
# Create .venv and install the whole stack (see shared DESIGN.md, "This stack on this machine").
# Idempotent: a second run only checks. The horovod wheel is built once and cached in
# ${RECODER_WHEEL_CACHE:-~/.cache/recoder-dist/wheels}.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
WHEELS=${RECODER_WHEEL_CACHE:-$HOME/.cache/recoder-dist/wheels}
HOROVOD_VERSION=0.28.1
TORCH_VERSION=2.13.0
EXTRAS=${RECODER_EXTRAS:-dev}

log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
# this machine's pip config names local indexes that may not exist: hide only that warning
pip_quiet() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@" 2> >(grep -v 'is ignored: it is neither' >&2); }
PIP=(pip_quiet)
"${PIP[@]}" install --upgrade 'pip>=23.2' wheel

# torch first and on its own: it must never enter a resolution with petastorm (setuptools pins).
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$TORCH_VERSION')" 2>/dev/null; then
  log "installing torch==$TORCH_VERSION (CPU)"
  "${PIP[@]}" install "torch==$TORCH_VERSION"
fi

log "installing the project and its pinned dependencies"
"${PIP[@]}" install -r requirements.txt
"${PIP[@]}" install --no-deps -e ".[$EXTRAS]"

if ! "$VENV/bin/python" -c "import horovod.torch" 2>/dev/null; then
  mkdir -p "$WHEELS"
  wheel=$(ls "$WHEELS"/horovod-$HOROVOD_VERSION-*.whl 2>/dev/null | head -n1 || true)
  if [ -z "$wheel" ]; then
    log "building horovod $HOROVOD_VERSION with PyTorch + gloo (about 3-5 minutes, once)"
    build=$(mktemp -d)
    "${PIP[@]}" download --no-deps --no-binary :all: "horovod==$HOROVOD_VERSION" -d "$build"
    tar -xzf "$build"/horovod-$HOROVOD_VERSION.tar.gz -C "$build"
    src="$build/horovod-$HOROVOD_VERSION"
    # torch >= 2.1 headers need C++17; horovod forces C++14 in two places (gloo inherits the first).
    sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/' "$src/CMakeLists.txt"
    sed -i 's/CMAKE_CXX_STANDARD 14/CMAKE_CXX_STANDARD 17/; s/-std=c++14/-std=c++17/g' "$src/horovod/torch/CMakeLists.txt"
    "${PIP[@]}" install 'cmake<4' 'setuptools<70'
    export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
      HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=gloo
    if command -v nvcc >/dev/null && command -v nvidia-smi >/dev/null && nvidia-smi >/dev/null 2>&1; then
      export HOROVOD_GPU_OPERATIONS=NCCL
    fi
    PATH="$PWD/$VENV/bin:$PATH" MAKEFLAGS="-j$(nproc)" \
      "$VENV/bin/python" -m pip wheel --no-deps --no-build-isolation -w "$build/dist" "$src" >"$build/build.log" 2>&1 \
      || { tail -n 40 "$build/build.log"; log "horovod build failed; full log: $build/build.log"; exit 1; }
    cp "$build"/dist/horovod-*.whl "$WHEELS"/
    wheel=$(ls "$WHEELS"/horovod-$HOROVOD_VERSION-*.whl | head -n1)
    rm -rf "$build"
  else
    log "using cached horovod wheel $wheel"
  fi
  "${PIP[@]}" install --no-deps "$wheel"
  # horovod's own light runtime deps (its [pytorch] extra would drag torch into the resolution)
  "${PIP[@]}" install 'cloudpickle' 'psutil' 'pyyaml' 'packaging' 'cffi>=1.4.0'
fi

# bare `spark-submit jobs/...` reads conf/spark-defaults.conf: activate exports SPARK_CONF_DIR
# (unless one is set already, e.g. a cluster's own)
bash scripts/activate_spark_conf.sh "$VENV/bin/activate" conf

log "checking horovod: allreduce across 2 ranks"
"$VENV/bin/python" -c "import horovod.torch as hvd; print('horovod', hvd.__version__ if hasattr(hvd,'__version__') else '', 'gloo built:', hvd.gloo_built())"
PATH="$PWD/$VENV/bin:$PATH" OMP_NUM_THREADS=1 "$VENV/bin/horovodrun" -np 2 --gloo \
  "$VENV/bin/python" scripts/check_horovod.py
log "ready: $VENV"
