#!/usr/bin/env bash
# The main job, end to end: set up, then data -> spark-submit prepare -> horovodrun train
# (MLflow run, registered model, alias policy) -> spark-submit recommend -> summary.
#
#   scripts/run_pipeline.sh                 # embedded default: synthetic data, 2 Horovod ranks
#   scripts/run_pipeline.sh ml-100k         # real MovieLens 100K (fetched once into ~/.cache)
#   scripts/run_pipeline.sh ml-1m           # real MovieLens 1M (likewise)
#   NP=4 scripts/run_pipeline.sh default train.epochs=30   # more ranks; extra key=value go to training
# Environment: WORK (where data/, runs/, mlflow.db, mlruns/ go; default: the repository),
# SYNTHETIC_ARGS (overrides for jobs/generate.py, e.g. "synthetic.num_users=500").
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:-default}
shift || true
NP=${NP:-2}
WORK=$(mkdir -p "${WORK:-.}" && cd "${WORK:-.}" && pwd)
RUNS=$WORK/runs
TRACKING_URI=${MLFLOW_TRACKING_URI:-sqlite:///$WORK/mlflow.db}

bash scripts/setup.sh
source .venv/bin/activate
export SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$PWD/.venv/bin/python" PYSPARK_DRIVER_PYTHON="$PWD/.venv/bin/python"
export OMP_NUM_THREADS=$(( $(nproc) / NP > 0 ? $(nproc) / NP : 1 ))
stage() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

case "$DATASET" in
  default)
    CONFIG=conf/default.yaml
    RAW=$WORK/data/raw/default.csv
    stage "1/4 generate the synthetic default dataset"
    # shellcheck disable=SC2086
    python jobs/generate.py --output "$RAW" ${SYNTHETIC_ARGS:-}
    ;;
  ml-100k)
    CONFIG=conf/ml-100k.yaml
    stage "1/4 fetch MovieLens 100K"
    RAW=$(python -c "from pipeline.datasets import movielens_100k; print(movielens_100k())")
    echo "MovieLens 100K at $RAW"
    ;;
  ml-1m)
    CONFIG=conf/ml-1m.yaml
    stage "1/4 fetch MovieLens 1M"
    RAW=$(python -c "from pipeline.datasets import movielens_1m; print(movielens_1m())")
    echo "MovieLens 1M at $RAW"
    ;;
  *) echo "usage: $0 [default|ml-100k|ml-1m] [section.key=value ...]" >&2; exit 2 ;;
esac
DATA=$WORK/data/$DATASET
CHECKPOINTS=$RUNS/$DATASET/checkpoints
RECS=$RUNS/$DATASET/recommendations
mkdir -p "$RUNS/$DATASET"

stage "2/4 spark-submit jobs/prepare.py"
spark-submit --properties-file conf/spark-defaults.conf jobs/prepare.py \
  --input "$RAW" --output "$DATA" --config "$CONFIG" --overwrite

stage "3/4 horovodrun -np $NP python -m recoder_dist.train"
horovodrun -np "$NP" python -m recoder_dist.train --data "$DATA" --config "$CONFIG" \
  train.checkpoint_dir="$CHECKPOINTS" mlflow.tracking_uri="$TRACKING_URI" \
  mlflow.artifact_location="$WORK/mlruns" "$@" | tee "$RUNS/$DATASET.train.log" | grep -v '^\[[0-9]*\]<stdout>:Cache cleanup'
RESULT=$(grep -o '{"test".*' "$RUNS/$DATASET.train.log" | tail -n1)

stage "4/4 spark-submit jobs/recommend.py (models:/recoder@champion)"
MODEL_NAME=$(python -c "from recoder_dist.config import load_config; print(load_config('$CONFIG').mlflow.registered_model)")
spark-submit --properties-file conf/spark-defaults.conf jobs/recommend.py \
  --model "models:/$MODEL_NAME@champion" --data "$DATA" --split test --k 100 --output "$RECS" \
  --config "$CONFIG" --tracking-uri "$TRACKING_URI" --overwrite

stage "done"
python - "$RESULT" "$DATA" "$RECS" "$CONFIG" "$TRACKING_URI" <<'PY'
import json, sys
from recoder_dist.config import load_config
result, data, recs, config, tracking_uri = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], load_config(sys.argv[4]), sys.argv[5]
reg = result["registered"]
print(f"prepared data    {data}  (manifest: {data}/manifest.json)")
print(f"MLflow run       {result['mlflow_run_id']}  in {tracking_uri}, experiment '{config.mlflow.experiment}'")
print(f"registered model models:/{reg['name']}/{reg['version']}  alias candidate: {reg['decision']}")
print(f"recommendations  {recs}/recommendations  (top-100 for every test user)")
print("test metrics     " + "  ".join(f"{k} {v:.4f}" for k, v in result["test"].items()))
print(f"MLflow UI        .venv/bin/mlflow ui --backend-store-uri {tracking_uri}  (then open http://127.0.0.1:5000)")
PY
