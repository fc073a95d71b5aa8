"""The jobs on a real Spark standalone cluster, and the whole loop through a team MLflow server.

A Master and one Worker run on 127.0.0.1 (``tests/_cluster.py``); the Worker has a private
``/tmp``, as another host would, so it reads only what Spark ships to it and the shared data
folder (outside ``/tmp``). ``mlflow server`` keeps runs in sqlite and artifacts behind its proxy
(``mlflow-artifacts:``). The commands are the bare ones a user types after activating the
environment: ``SPARK_CONF_DIR`` is ``conf/`` (as ``.venv/bin/activate`` exports it), no
``SPARK_LOCAL_IP``, no ``--properties-file``; only ``--master`` names the cluster.

The loop: prepare (an application of the cluster) -> train in one process against the server,
which registers the champion -> recommend (an application of the cluster) with the model from
the server -> ``mlflow models serve`` of that champion answers a request.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, assert_prepared

from _cluster import (post_json, private_tmp_unavailable, serve_model, sees, shared_folder, start_cluster,
                      start_tracking_server)
from _data import (MODEL_NAME, PREPARE, SYNTHETIC, environment, original_histories, tracking_uri, train_command,
                   train_result)

SPARK_SUBMIT = Path(sys.executable).with_name("spark-submit")


def job_environment() -> dict[str, str]:
    """What activating the environment gives a job: the project's Spark conf, this Python; no
    SPARK_LOCAL_IP, and temporary files in /tmp (which the worker cannot see)."""
    env = {**os.environ, "SPARK_CONF_DIR": str(ROOT / "conf"), "PYSPARK_PYTHON": sys.executable,
           "PYSPARK_DRIVER_PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    for name in ("SPARK_LOCAL_IP", "TMPDIR", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    return env


def submit(cluster, job: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [SPARK_SUBMIT, "--master", cluster.url, "--conf", "spark.ui.enabled=false",
               "--conf", "spark.ui.showConsoleProgress=false", f"jobs/{job}.py", *args]
    return subprocess.run([str(a) for a in command], cwd=ROOT, env=job_environment(), capture_output=True,
                          text=True, timeout=timeout)


def summary(result: subprocess.CompletedProcess, cluster) -> dict:
    """The job's JSON summary (its last line); fails with the driver's and executors' logs."""
    assert result.returncode == 0, (f"job failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-3000:]}\n{cluster.executor_logs()[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def application(cluster, name: str) -> dict:
    """The master's record of the finished application ``name``."""
    apps = [app for app in cluster.status()["completedapps"] if app["name"] == name]
    assert apps, f"the cluster ran no application {name!r}; it ran {cluster.completed_apps()}"
    return apps[-1]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    reason = private_tmp_unavailable()
    if reason:
        pytest.skip(f"cannot give the Spark worker a private /tmp (another host's view): {reason}")
    with shared_folder(tmp_path_factory.getbasetemp()) as folder:
        yield folder


@pytest.fixture(scope="module")
def cluster(shared):
    cluster = start_cluster(shared / "cluster", cores=2, memory="2g")
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def server(shared):
    server = start_tracking_server(shared / "mlflow-server")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def prepared(cluster, shared):
    from pipeline.synthetic import generate, write
    from recoder_dist.config import SyntheticConfig

    source = write(generate(SyntheticConfig(**SYNTHETIC)), shared / "interactions.csv")
    out = shared / "prepared"
    overrides = [f"prepare.{key}={value}" for key, value in PREPARE.items()]
    printed = summary(submit(cluster, "prepare", "--input", source, "--output", out, *overrides), cluster)
    return out, printed


@pytest.fixture(scope="module")
def trained(server, prepared, shared):
    """One process, 2 epochs, against the server (the config's local artifact folder is ignored there)."""
    data_dir, _ = prepared
    folder = shared / "training"
    folder.mkdir()
    command = train_command(1, data_dir, folder, extra=[f"mlflow.tracking_uri={server.url}"])
    done = subprocess.run(command, cwd=folder, env=environment(1), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"training failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return folder, train_result(done.stdout)


@pytest.fixture(scope="module")
def champion(server, trained, tmp_path_factory):
    """The champion loaded in this process from the server: what the job and the model server must answer."""
    import mlflow

    with tracking_uri(server.url):
        return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion",
                                        dst_path=str(tmp_path_factory.mktemp("champion")))


def test_the_worker_cannot_see_the_drivers_tmp(cluster, tmp_path):
    marker = Path("/tmp") / f"driver-only-{os.getpid()}"
    marker.write_text("driver")
    try:
        assert sees(cluster.worker, cluster.folder / "worker.log")  # shared folders: visible
        assert not sees(cluster.worker, marker)                     # the driver's /tmp: not
    finally:
        marker.unlink()


def test_prepare_runs_as_an_application_of_the_cluster(cluster, prepared):
    out, printed = prepared
    tables = assert_prepared(out)
    assert printed["num_users"] == tables["manifest"]["num_users"] and printed["output"] == str(out)
    app = application(cluster, "recoder-prepare")
    assert app["state"] == "FINISHED" and app["cores"] == 2


def test_training_against_the_server_keeps_artifacts_behind_its_proxy(server, trained, shared):
    from mlflow.tracking import MlflowClient

    folder, result = trained
    client = MlflowClient(tracking_uri=server.url)
    run = client.get_run(result["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.run_id == run.info.run_id
    stored = shared / "mlflow-server" / "artifacts"
    assert any(p.name == "MLmodel" for p in stored.rglob("MLmodel")), "the server stored no model"
    assert not (folder / "mlruns").exists(), "artifacts were written on the training host"


def test_recommend_runs_on_the_cluster_with_the_servers_champion(cluster, server, prepared, trained, champion,
                                                                 shared):
    data_dir, _ = prepared
    out = shared / "recommendations"
    printed = summary(submit(cluster, "recommend", "--tracking-uri", server.url, "--model",
                             f"models:/{MODEL_NAME}@champion", "--data", data_dir, "--split", "test", "--k", "10",
                             "--output", out), cluster)
    app = application(cluster, "recoder-recommend")
    assert app["state"] == "FINISHED" and app["cores"] == 2

    histories = original_histories(data_dir, "test")
    written = pd.read_parquet(out / "recommendations").set_index("user_id").sort_index()
    assert written.index.is_unique and sorted(written.index) == sorted(histories) and printed["users"] == len(histories)
    users = sorted(histories)
    reference = champion.predict(pd.DataFrame({"items": [histories[u] for u in users]}), params={"k": 10})
    for user, (_, want) in zip(users, reference.iterrows()):
        assert list(written.at[user, "recommended"]) == list(want["recommended"]), user
        assert list(written.at[user, "scores"]) == pytest.approx(list(want["scores"]), rel=1e-5, abs=1e-6), user


def test_the_servers_champion_is_served(server, trained, prepared, champion, shared):
    data_dir, _ = prepared
    history = next(iter(original_histories(data_dir, "test").values()))
    service = serve_model(f"models:/{MODEL_NAME}@champion", server.url, shared / "serve")
    try:
        status, body = post_json(f"{service.url}/invocations", {"dataframe_records": [{"items": history}],
                                                                "params": {"k": 5}})
    finally:
        service.stop()
    assert status == 200, body
    want = champion.predict(pd.DataFrame({"items": [history]}), params={"k": 5}).iloc[0]
    (got,) = body["predictions"]
    assert got["recommended"] == list(want["recommended"]) and len(got["recommended"]) == 5
    assert got["scores"] == pytest.approx(list(want["scores"]), rel=1e-5, abs=1e-6)
