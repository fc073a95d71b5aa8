"""MLflow tracking of ``horovodrun -np 2 python -m recoder_dist.train``: one run per training,
its params, per-epoch metrics, artifacts, registered model; KILLED when stopped; ``--resume``
continues the same run, never a finished one. Every store is a temporary sqlite file (never the
repository's)."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from _data import (MLFLOW_TRAIN, MODEL_NAME, environment, mlflow_store, original_histories, registered_model,
                   run_folder, stop_process_group, train_command, train_result)
from _faults import remove
from pipeline.manifest import dataset_id, read_manifest
from recoder_dist.config import load_config
from recoder_dist.recommender import Recommender
from recoder_dist.trained import ItemMap, TrainedModel
from recoder_dist.trainer import build_model

EPOCH_METRICS = ["train_loss", "val_recall_at_20", "val_recall_at_50", "val_ndcg_at_100", "users_per_s", "epoch_s"]
TEST_METRICS = ["test_recall_at_20", "test_recall_at_50", "test_ndcg_at_100"]


@pytest.fixture(scope="module")
def model(spark, tmp_path_factory):
    return registered_model(spark, tmp_path_factory.getbasetemp())


def all_runs(client: MlflowClient) -> list:
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def steps(client: MlflowClient, run_id: str, metric: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, metric))


def test_training_creates_one_finished_run_with_params(model):
    client = MlflowClient(model.tracking_uri)
    runs = all_runs(client)
    assert [r.info.run_id for r in runs] == [model.run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "recoder"

    params = run.data.params
    config = load_config(None, [*MLFLOW_TRAIN, "train.batch_size=50", *mlflow_store(model.folder)[1]])
    for key, value in config.flat().items():  # the full resolved config but the generator's settings
        if key.startswith("synthetic."):
            assert key not in params
        else:
            assert params[key] == (json.dumps(value) if isinstance(value, list) else str(value)), key
    assert not [key for key in params if key.startswith("synthetic.")]
    assert params["model.hidden_sizes"] == "[64]" and params["train.epochs"] == "2"
    manifest = read_manifest(model.data_dir)
    assert params["data.path"] == str(Path(model.data_dir).resolve())
    assert params["data.fingerprint"] == manifest["source"]["fingerprint"]
    assert params["data.num_items"] == str(manifest["num_items"])
    assert params["data.nnz_train"] == str(manifest["nnz"]["train"]["items"])
    for split, count in manifest["num_users"].items():
        assert params[f"data.num_users.{split}"] == str(count)
    assert run.data.tags["ranks"] == "2" and run.data.tags["registered_version"] == "1"


def test_run_has_per_epoch_metrics_test_metrics_and_artifacts(model, tmp_path):
    client = MlflowClient(model.tracking_uri)
    run = client.get_run(model.run_id)
    for metric in EPOCH_METRICS:
        assert steps(client, model.run_id, metric) == [1, 2], metric
    for metric in TEST_METRICS:
        assert run.data.metrics[metric] == pytest.approx(model.result["test"][metric.removeprefix("test_")])
    assert 0 < run.data.metrics["test_ndcg_at_100"] <= 1

    names = {a.path for a in client.list_artifacts(model.run_id)}
    assert {"training_curves.png", "config.yaml", "manifest.json", "test_metrics.json"} <= names
    png = Path(client.download_artifacts(model.run_id, "training_curves.png", str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_model_is_registered_with_candidate_and_champion(model):
    client = MlflowClient(model.tracking_uri)
    registered = client.get_registered_model(model.name)
    assert {alias: int(v) for alias, v in registered.aliases.items()} == {"candidate": 1, "champion": 1}
    version = client.get_model_version(model.name, "1")
    assert version.run_id == model.run_id
    assert float(version.tags["val_ndcg_at_100"]) == pytest.approx(model.result["best_validation"]["ndcg_at_100"],
                                                                  abs=1e-6)
    dataset = dataset_id(read_manifest(model.data_dir))
    assert version.tags["dataset"] == dataset
    assert model.result["registered"] == {"name": model.name, "version": 1, "promoted": True, "dataset": dataset,
                                          "val_ndcg_at_100": model.result["best_validation"]["ndcg_at_100"],
                                          "previous_champion": None, "previous_champion_val_ndcg_at_100": None,
                                          "previous_champion_dataset": None,
                                          "decision": f"{model.name} version 1 is the first champion"}


def test_pyfunc_champion_recommends_as_the_in_process_recommender(model):
    """``models:/NAME@champion`` gives what the Recommender built from the best checkpoint gives."""
    loaded = model.load_pyfunc("champion")
    config = load_config(None, MLFLOW_TRAIN)
    items = pq.read_table(Path(model.data_dir) / "items").to_pandas().sort_values("item_idx")
    network = build_model(len(items), config)
    network.load_state_dict(torch.load(model.checkpoint_dir / "best.pt", weights_only=True)["model"])
    reference = Recommender(TrainedModel(network, config.model, ItemMap(items["item_id"].tolist(),
                                                                     items["count"].to_numpy())))

    histories = list(original_histories(model.data_dir, "test").values())[:40]
    histories += [[], ["no-such-item", histories[0][0]], ["no-such-item"]]
    for params, expected in [({"k": 10}, reference.recommend(histories, 10)),
                             ({"k": 7, "task": "similar"}, reference.similar(histories, 7))]:
        got = loaded.predict(pd.DataFrame({"items": histories}), params=params)
        assert [list(r) for r in got["recommended"]] == expected.items, params
        for row, scores in zip(got["scores"], expected.scores):
            assert list(row) == pytest.approx(scores, rel=1e-5, abs=1e-6)
        assert got["unknown_items"].tolist() == expected.unknown
    assert got["unknown_items"].tolist()[-3:] == [0, 1, 1]
    assert len(got) == len(histories)


def test_stopped_run_is_killed_and_resume_continues_the_same_run(model, tmp_path):
    folder = tmp_path / "killed"
    uri, _ = mlflow_store(folder)
    log = folder / "train.log"
    folder.mkdir()
    with open(log, "w") as output:
        process = subprocess.Popen(train_command(2, model.data_dir, folder, ["train.epochs=50"]), cwd=folder,
                                   env=environment(2), stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while not list(folder.glob("checkpoints/*/last.pt")) and process.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.2)
            assert list(folder.glob("checkpoints/*/last.pt")), \
                f"no checkpoint after {time.monotonic() - deadline + 180:.0f} s:\n{log.read_text()[-3000:]}"
        finally:
            stop_process_group(process)  # SIGTERM right after the first checkpoint: mid-training
    assert process.returncode != 0
    last = run_folder(folder / "checkpoints") / "last.pt"
    client = MlflowClient(uri)
    runs = all_runs(client)
    assert len(runs) == 1 and runs[0].info.status == "KILLED", log.read_text()[-3000:]
    killed_id = runs[0].info.run_id
    with pytest.raises(MlflowException):
        client.get_registered_model(MODEL_NAME)  # a failed run registers nothing

    done_epochs = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= done_epochs < 50
    epochs = done_epochs + 1
    resumed = subprocess.run(train_command(2, model.data_dir, folder, [f"train.epochs={epochs}"], resume=True),
                             cwd=folder, env=environment(2), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert train_result(resumed.stdout)["mlflow_run_id"] == killed_id
    runs = all_runs(client)
    assert [r.info.run_id for r in runs] == [killed_id] and runs[0].info.status == "FINISHED"
    for metric in EPOCH_METRICS:  # epochs before the kill too, even one killed before it was logged
        assert steps(client, killed_id, metric) == list(range(1, epochs + 1)), metric
    assert set(TEST_METRICS) <= set(runs[0].data.metrics)
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").run_id == killed_id

    assert runs[0].data.tags["checkpoint_dir"] == str(last.parent)

    # A finished run is never resumed (it would be registered twice): refused by its checkpoint
    # folder, and, should the folder's mark be lost, by its MLflow status; nothing changes.
    refused = subprocess.run(train_command(1, model.data_dir, folder, [f"train.epochs={epochs + 1}"], resume=True),
                             cwd=folder, env=environment(1), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"no unfinished run to continue in {last.parent.parent}: 1 finished ({last.parent.name})" in refused.stderr
    assert "--resume continues only unfinished runs; to train more, start a new run" in refused.stderr
    remove(last.parent / "finished.json")
    refused = subprocess.run(train_command(1, model.data_dir, folder, [f"train.epochs={epochs + 1}"], resume=True),
                             cwd=folder, env=environment(1), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"--resume: MLflow run {killed_id} is FINISHED" in refused.stderr
    runs = all_runs(client)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(killed_id, "FINISHED")]
    assert steps(client, killed_id, "train_loss") == list(range(1, epochs + 1))
    assert [int(v.version) for v in client.search_model_versions(f"name='{MODEL_NAME}'")] == [1]
