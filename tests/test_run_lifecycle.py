"""Training runs side by side and across their lifecycle, with the product entry point
(``python -m recoder_dist.train``) and private sqlite MLflow stores: two concurrent runs sharing
one ``train.checkpoint_dir`` each register their own weights; Ctrl-C marks a run KILLED and
``--resume`` continues it, but not against another store; ``--init-from`` trains a finished run
on as a new run."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from mlflow.tracking import MlflowClient

from _data import (MLFLOW_TRAIN, MODEL_NAME, environment, mlflow_store, original_histories, prepared_dataset,
                   run_folder, train_command, train_result)
from recoder_dist import checkpoint
from recoder_dist.config import load_config
from recoder_dist.recommender import Recommender
from recoder_dist.trained import ItemMap, TrainedModel
from recoder_dist.trainer import build_model


@pytest.fixture(scope="module")
def data(spark, tmp_path_factory):
    return prepared_dataset(spark, tmp_path_factory.getbasetemp())


def recommender(data_dir: Path, best: Path) -> Recommender:
    """The in-process recommender of a ``best.pt``."""
    items = pq.read_table(Path(data_dir) / "items").to_pandas().sort_values("item_idx")
    config = load_config(None, MLFLOW_TRAIN)
    network = build_model(len(items), config)
    network.load_state_dict(checkpoint.load(best)["model"])
    return Recommender(TrainedModel(network, config.model, ItemMap(items["item_id"].tolist(), items["count"].to_numpy())))


def champion_scores(uri: str, histories: list[list[str]]) -> list[list[float]]:
    import mlflow

    mlflow.set_tracking_uri(uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    return [list(row) for row in loaded.predict(pd.DataFrame({"items": histories}), params={"k": 10})["scores"]]


def test_concurrent_runs_sharing_a_checkpoint_dir_register_their_own_weights(data, tmp_path):
    shared = tmp_path / "shared-checkpoints"
    runs = {"a": ["train.seed=1", "train.epochs=2"], "b": ["train.seed=2", "train.lr=0.01", "train.epochs=4"]}
    jobs = {}
    for name, extra in runs.items():
        folder = tmp_path / name
        folder.mkdir()
        jobs[name] = subprocess.Popen(train_command(1, data, folder, [*extra, f"train.checkpoint_dir={shared}"]),
                                      cwd=folder, env=environment(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
    outputs = {name: job.communicate(timeout=400) for name, job in jobs.items()}
    for name, job in jobs.items():
        assert job.returncode == 0, outputs[name][0][-3000:] + outputs[name][1][-3000:]

    histories = list(original_histories(data, "test").values())[:30]
    folders = {}
    for name in runs:
        uri, _ = mlflow_store(tmp_path / name)
        run = MlflowClient(uri).get_run(train_result(outputs[name][0])["mlflow_run_id"])
        folders[name] = Path(run.data.tags["checkpoint_dir"])
        assert folders[name].parent == shared and checkpoint.is_finished(folders[name])
        assert checkpoint.load(folders[name] / checkpoint.BEST)["epoch"] == run.data.metrics["best_epoch"]
    assert folders["a"] != folders["b"] and sorted(p.name for p in shared.iterdir()) == sorted(
        f.name for f in folders.values())

    own = {name: recommender(data, folders[name] / checkpoint.BEST).recommend(histories, 10).scores for name in runs}
    for name, other in [("a", "b"), ("b", "a")]:
        registered = champion_scores(mlflow_store(tmp_path / name)[0], histories)
        for got, expected in zip(registered, own[name]):
            assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert not all(got == pytest.approx(theirs, rel=1e-3) for got, theirs in zip(registered, own[other]))


def test_ctrl_c_marks_the_run_killed_and_resume_continues_it_in_its_own_store_only(data, tmp_path):
    folder, elsewhere = tmp_path / "store", tmp_path / "another-store"
    folder.mkdir()
    elsewhere.mkdir()
    uri, _ = mlflow_store(folder)
    log = folder / "train.log"
    with open(log, "w") as output:
        process = subprocess.Popen(train_command(1, data, folder, ["train.epochs=50"]), cwd=folder,
                                   env=environment(1), stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while not list(folder.glob("checkpoints/*/last.pt")):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 128 + signal.SIGINT, log.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "Traceback" not in log.read_text()
    client = MlflowClient(uri)
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "KILLED"
    run_dir = run_folder(folder / "checkpoints")
    epochs = checkpoint.load(run_dir / checkpoint.LAST)["epoch"] + 1

    # --resume against a store that does not hold the run: a message, and neither store changes
    wrong = subprocess.run(train_command(1, data, elsewhere, [f"train.epochs={epochs}",
                                                               f"train.checkpoint_dir={folder / 'checkpoints'}"],
                                         resume=True),
                           cwd=elsewhere, env=environment(1), capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 2, wrong.stderr[-3000:]
    assert (f"train: error (rank 0): --resume: the checkpoint continues MLflow run {run.info.run_id}, which the "
            f"configured tracking store (mlflow.tracking_uri or $MLFLOW_TRACKING_URI: {mlflow_store(elsewhere)[0]}) "
            f"does not hold") in wrong.stderr
    assert "Traceback" not in wrong.stderr
    other = MlflowClient(mlflow_store(elsewhere)[0])
    assert other.search_runs([e.experiment_id for e in other.search_experiments()]) == []
    assert client.get_run(run.info.run_id).info.status == "KILLED"

    resumed = subprocess.run(train_command(1, data, folder, [f"train.epochs={epochs}"], resume=True), cwd=folder,
                             env=environment(1), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert train_result(resumed.stdout)["mlflow_run_id"] == run.info.run_id
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    assert checkpoint.is_finished(run_dir) and run_folder(folder / "checkpoints") == run_dir

    # the finished run trains on as a new run, from its final weights (not for another model)
    other_model = subprocess.run(train_command(1, data, folder, ["train.epochs=1", "model.hidden_sizes=[32]"],
                                               options=["--init-from", str(run_dir)]),
                                 cwd=folder, env=environment(1), capture_output=True, text=True, timeout=300)
    assert other_model.returncode == 2, other_model.stderr[-3000:]
    assert (f"--init-from {run_dir / checkpoint.LAST}: its weights are for other data or another model "
            f"(model.hidden_sizes: [64] in the checkpoint, [32] now)") in other_model.stderr
    longer = subprocess.run(train_command(1, data, folder, ["train.epochs=1"], options=["--init-from", str(run_dir)]),
                            cwd=folder, env=environment(1), capture_output=True, text=True, timeout=300)
    assert longer.returncode == 0, longer.stderr[-3000:]
    new_run = client.get_run(train_result(longer.stdout)["mlflow_run_id"])
    assert new_run.info.run_id != run.info.run_id and new_run.info.status == "FINISHED"
    assert new_run.data.tags["init_from"] == str(run_dir)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"
    new_dir = Path(new_run.data.tags["checkpoint_dir"])
    assert new_dir != run_dir and new_dir.parent == run_dir.parent
    first_epoch = [checkpoint.load(d / checkpoint.LAST)["history"][0]["train_loss"] for d in (new_dir, run_dir)]
    assert first_epoch[0] < first_epoch[1]  # it started trained
