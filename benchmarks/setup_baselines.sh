#!/usr/bin/env bash
# Create the two baseline venvs the benchmarks compare against (never the project's .venv):
#   benchmarks/.venv-recoder    the original Recoder (recsys-recoder==0.4.0) for benchmarks/_recoder.py
#   benchmarks/.venv-baselines  implicit's ALS for benchmarks/_als.py (implicit wants numpy 2)
# Idempotent: a venv that already imports its package is left alone.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3.11}
pip_quiet() { "$1/bin/python" -m pip --disable-pip-version-check -q "${@:2}" 2> >(grep -v 'is ignored: it is neither' >&2); }

if ! .venv-recoder/bin/python -c "import recoder" 2>/dev/null; then
  echo "[baselines] creating .venv-recoder (original Recoder 0.4.0)"
  "$PY" -m venv .venv-recoder
  pip_quiet .venv-recoder install torch==2.13.0            # alone, never resolved with the others
  pip_quiet .venv-recoder install numpy==1.26.4 scipy annoy glog tqdm
  pip_quiet .venv-recoder install --no-deps recsys-recoder==0.4.0
fi
if ! .venv-baselines/bin/python -c "import implicit" 2>/dev/null; then
  echo "[baselines] creating .venv-baselines (implicit ALS)"
  "$PY" -m venv .venv-baselines
  pip_quiet .venv-baselines install implicit scipy numpy
fi
.venv-recoder/bin/python -c "import recoder, torch; print('[baselines] recoder', torch.__version__)"
.venv-baselines/bin/python -c "import implicit; print('[baselines] implicit', implicit.__version__)"
