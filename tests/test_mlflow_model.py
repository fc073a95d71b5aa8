"""The registered pyfunc model loads no pickled code, and answers bad input with its own message.

A tiny recommender is logged with the product's ``mlflow_model.log_model`` and registered in a
private sqlite store (no training, no Spark); payloads are then planted in the artifact store.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recoder_dist import mlflow_model, registry
from recoder_dist.config import ModelConfig
from recoder_dist.models import RecoderAutoencoder
from recoder_dist.recommender import Recommender
from recoder_dist.trained import WEIGHTS, ItemMap, TrainedModel

ITEMS = [f"i{n}" for n in range(12)]
NAME = "pickle-free"


class Payload:
    """Unpickling this runs ``os.mkdir(path)``: what a tampered artifact could do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """``(tracking uri, artifact folder of the model, reference recommender)`` of a registered version."""
    folder = tmp_path_factory.mktemp("pyfunc")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    torch.manual_seed(0)
    config = ModelConfig(hidden_sizes=[4], input_dropout=0.0)
    network = RecoderAutoencoder(len(ITEMS), hidden_sizes=config.hidden_sizes, input_dropout=0.0)
    reference = Recommender(TrainedModel(network, config, ItemMap(ITEMS, np.arange(len(ITEMS), 0, -1))))
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        experiment = mlflow.create_experiment("pyfunc", artifact_location=(folder / "mlruns").as_uri())
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow_model.log_model(reference.model)
        registry.register(MlflowClient(uri), NAME, info.model_uri, run.info.run_id, 0.5, "tiny")
        location = mlflow.get_logged_model(info.model_id).artifact_location
    finally:
        mlflow.set_tracking_uri(previous)
    return uri, Path(location.removeprefix("file://")), reference


def load(uri: str):
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    finally:
        mlflow.set_tracking_uri(previous)


def test_the_model_is_logged_as_a_loader_module_with_data_only(logged):
    _, artifacts, _ = logged
    flavor = yaml.safe_load((artifacts / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["loader_module"] == "recoder_dist.mlflow_model" and "python_model" not in flavor
    files = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob("*") if p.is_file())
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))], files
    data = artifacts / flavor["data"]
    assert sorted(p.name for p in data.iterdir()) == ["items.parquet", "model.json", WEIGHTS]


def test_loading_never_runs_a_planted_pickle(logged, tmp_path):
    uri, artifacts, reference = logged
    ran = tmp_path / "payload-ran"
    flavor = yaml.safe_load((artifacts / "MLmodel").read_text())["flavors"]["python_function"]
    planted = [artifacts / "python_model.pkl", artifacts / "artifacts" / "python_model.pkl",
               artifacts / flavor.get("data", "data") / "python_model.pkl"]
    for path in planted:  # where a pickled pyfunc keeps its object, and beside the data
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(Payload(ran)))
    histories = [["i1", "i2"], [], ["nope"]]
    try:
        got = load(uri).predict(pd.DataFrame({"items": histories}), params={"k": 4})
    except Exception as error:  # a payload that ran leaves no usable model behind
        got = error
    finally:
        for path in planted:
            path.unlink()
    assert not ran.exists(), "loading the registered model unpickled a planted file"
    assert isinstance(got, pd.DataFrame), got
    expected = reference.recommend(histories, 4)
    assert [list(r) for r in got["recommended"]] == expected.items
    assert got["unknown_items"].tolist() == [0, 0, 1]


def test_a_planted_payload_in_the_weights_is_refused_not_run(logged, tmp_path):
    uri, artifacts, _ = logged
    data = artifacts / yaml.safe_load((artifacts / "MLmodel").read_text())["flavors"]["python_function"]["data"]
    weights = data / WEIGHTS
    original = weights.read_bytes()
    ran = tmp_path / "payload-ran"
    torch.save({"extra": Payload(ran)}, weights)
    try:
        with pytest.raises(pickle.UnpicklingError):
            load(uri)
    finally:
        weights.write_bytes(original)
    assert not ran.exists()


@pytest.mark.parametrize("frame, params, message", [
    ({"items": [["i1"]]}, {"k": 0}, "param k must be an integer >= 1"),
    ({"items": [["i1"]]}, {"k": 5, "task": "nonsense"}, "unknown task 'nonsense'"),
    ({"items": [["i1", "i2"]], "values": [[1.0, float("nan")]]}, {"k": 3}, "row 0: values must be finite numbers"),
    ({"items": [["i1", "i2"]], "values": [[1.0, float("inf")]]}, {"k": 3}, "row 0: values must be finite numbers"),
    ({"items": [["i1", "i2"]], "values": [[1.0]]}, {"k": 3}, "row 0: 2 items but 1 values"),
])
def test_bad_input_is_a_400_with_the_models_message(logged, frame, params, message):
    model = load(logged[0])
    with pytest.raises(MlflowException, match=message) as raised:
        model.predict(pd.DataFrame(frame), params=params)
    assert raised.value.get_http_status_code() == 400
    assert isinstance(raised.value, ValueError)  # in-process callers (the recommend job) catch ValueError


class OldPyfunc(mlflow.pyfunc.PythonModel):
    """How older recoder-dist versions logged the model: a pickled object with the recommender as artifact."""

    def predict(self, context, model_input, params=None):
        raise AssertionError("an old pickled model must never be loaded")


def test_relog_registers_an_old_pickled_version_again_without_unpickling(logged, tmp_path):
    import contextlib
    import io

    uri, _, reference = logged
    name = "was-pickled"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("pyfunc").experiment_id
        with mlflow.start_run(experiment_id=experiment) as run:
            saved = reference.model.save(tmp_path / "recommender")
            info = mlflow.pyfunc.log_model(name="model", python_model=OldPyfunc(), artifacts={"recommender": str(saved)},
                                           pip_requirements=["mlflow"])
        registry.register(client, name, info.model_uri, run.info.run_id, 0.4, "tiny")
        pickled = Path(mlflow.get_logged_model(info.model_id).artifact_location.removeprefix("file://")) / "python_model.pkl"
        ran = tmp_path / "payload-ran"
        pickled.write_bytes(pickle.dumps(Payload(ran)))  # would run if anything unpickled the old model

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert registry.main(["--tracking-uri", uri, "--name", name, "relog", "1"]) == 0
        assert json.loads(out.getvalue()) == {"name": name, "version": 2, "relogged_from": 1,
                                              "aliases": ["candidate", "champion"]}
        assert not ran.exists()
        new = client.get_model_version(name, "2")
        assert new.run_id == run.info.run_id and new.tags["val_ndcg_at_100"] == "0.400000"
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    finally:
        mlflow.set_tracking_uri(previous)
    assert not ran.exists()
    histories = [["i1", "i2"], ["i5"]]
    got = model.predict(pd.DataFrame({"items": histories}), params={"k": 3})
    assert [list(r) for r in got["recommended"]] == reference.recommend(histories, 3).items
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert registry.main(["--tracking-uri", uri, "--name", name, "relog", "2"]) == 2
    assert "already loads without pickled code" in err.getvalue()
