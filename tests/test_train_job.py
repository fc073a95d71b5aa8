"""``spark-submit jobs/train.py --num-processes 2``: training on Spark through TorchDistributor
(local mode: torchrun on the driver), logged and registered in a temporary sqlite store, and
its refusals; plus how the distributor's mode follows the Spark configuration."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from _data import GLOBAL_BATCH, MLFLOW_TRAIN, MODEL_NAME, ROOT, environment, mlflow_store, prepared_dataset, run_folder
from pipeline.manifest import read_manifest
from recoder_dist import checkpoint
from recoder_dist.distributor import distributor_settings

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"


def submit(*args, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**environment(2), "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    command = [SPARK_SUBMIT, "--properties-file", "conf/spark-defaults.conf", "--conf", "spark.ui.enabled=false",
               "--conf", "spark.ui.showConsoleProgress=false", "jobs/train.py", *args]
    return subprocess.run([str(a) for a in command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def job(data, tmp_path_factory):
    """One run of the job on 2 processes (per-rank batch: half the global batch)."""
    folder = tmp_path_factory.mktemp("train-job")
    uri, store = mlflow_store(folder)
    done = submit("--data", data, "--num-processes", "2", *MLFLOW_TRAIN, f"train.batch_size={GLOBAL_BATCH // 2}",
                  *store)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return uri, folder, json.loads(done.stdout.strip().splitlines()[-1]), done


def test_job_trains_on_two_torchrun_ranks(job, data):
    _, _, summary, done = job
    assert "Started local training with 2 processes" in done.stdout + done.stderr  # TorchDistributor, local mode
    n_train = read_manifest(data)["num_users"]["train"]
    assert summary["steps_per_epoch"] == math.ceil(n_train / GLOBAL_BATCH)
    assert all(0 < summary["test"][m] <= 1 for m in ("recall_at_20", "recall_at_50", "ndcg_at_100"))


def test_job_logs_one_finished_run_and_registers_a_version(job):
    uri, folder, summary, _ = job
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["ranks"] == "2" and run.data.params["train.batch_size"] == str(GLOBAL_BATCH // 2)
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2]
    assert summary["registered"]["name"] == MODEL_NAME and summary["registered"]["version"] == 1
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.run_id == run.info.run_id
    run_dir = run_folder(folder / "checkpoints")
    assert (run_dir / checkpoint.BEST).is_file() and checkpoint.is_finished(run_dir)


def test_job_refuses_a_missing_dataset_before_training(tmp_path):
    done = submit("--data", tmp_path / "nowhere", "--num-processes", "2", "mlflow.enabled=false", timeout=120)
    assert done.returncode == 2
    assert "train: error" in done.stdout + done.stderr and str(tmp_path / "nowhere") in done.stdout + done.stderr


def test_distributor_runs_on_the_driver_only_under_a_local_master():
    assert distributor_settings({"spark.master": "local[*]"}) == (True, False)
    assert distributor_settings({"spark.master": "local"}) == (True, False)
    assert distributor_settings({"spark.master": "spark://127.0.0.1:7077"}) == (False, False)
    assert distributor_settings({"spark.master": "local-cluster[2,1,1024]"}) == (False, False)
    # GPUs only where Spark was given them: the driver's in local mode, the tasks' on a cluster
    assert distributor_settings({"spark.master": "local[2]", "spark.driver.resource.gpu.amount": "2"}) == (True, True)
    assert distributor_settings({"spark.master": "local[2]", "spark.task.resource.gpu.amount": "1"}) == (True, False)
    assert distributor_settings({"spark.master": "yarn", "spark.task.resource.gpu.amount": "1"}) == (False, True)
    with pytest.raises(ValueError, match="spark.task.resource.gpu.amount"):
        distributor_settings({"spark.master": "yarn", "spark.task.resource.gpu.amount": "one"})
