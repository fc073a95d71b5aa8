"""The MLflow pyfunc model: histories of original item ids in, top-k item ids and scores out.

Logged with ``loader_module`` (this module) and ``data_path`` (the saved model, a
``recoder_dist.trained`` folder: weights, ``model.json``, ``items.parquet``): loading imports this
module from the installed ``recoder_dist`` package and calls :func:`_load_pyfunc`, so nothing is
unpickled but plain tensors (``weights_only=True``) — no code comes from the artifact store. (Not
shipped with ``code_paths`` either: two models shipping the same module would clash in one Spark worker.)
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional

import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from recoder_dist.recommender import Recommender
from recoder_dist.trained import TrainedModel

TASKS = ("recommend", "similar")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(DataType.string), "items"),
                   ColSpec(Array(DataType.double), "values", required=False)]),
    outputs=Schema([ColSpec(Array(DataType.string), "recommended"), ColSpec(Array(DataType.double), "scores"),
                    ColSpec(DataType.long, "unknown_items")]),
    params=ParamSchema([ParamSpec("k", DataType.long, 10), ParamSpec("task", DataType.string, "recommend")]),
)


class BadRequest(MlflowException, ValueError):
    """An input the model cannot answer; the scoring server answers it with HTTP 400 and this
    message (a plain exception would become its generic "unexpected error")."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


class RecoderModel:
    """``predict`` a DataFrame with an ``items`` column (lists of original item ids, optional
    ``values``); params ``k`` (>= 1) and ``task`` (``recommend``: unseen items for the history,
    ``similar``: items similar to the listed ones)."""

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender

    def predict(self, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        try:
            return self._predict(model_input, params or {})
        except BadRequest:
            raise
        except ValueError as error:  # the recommender's own checks (values, lengths)
            raise BadRequest(str(error)) from None

    def _predict(self, model_input: pd.DataFrame, params: dict) -> pd.DataFrame:
        if "items" not in model_input.columns:
            raise BadRequest(f"input needs an 'items' column of item id lists; got columns {list(model_input.columns)}")
        task = params.get("task", "recommend")
        if task not in TASKS:
            raise BadRequest(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        k = params.get("k", 10)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k != int(k) or k < 1:
            raise BadRequest(f"param k must be an integer >= 1 (recommendations per row), got {k!r}")
        histories = [[] if h is None else list(h) for h in model_input["items"]]
        if task == "similar":
            return self.recommender.similar(histories, int(k)).to_frame()
        values = None
        if "values" in model_input.columns:
            values = [None if v is None else list(v) for v in model_input["values"]]
        return self.recommender.recommend(histories, int(k), values).to_frame()


def _load_pyfunc(data_path: str) -> RecoderModel:
    """MLflow's entry point for ``loader_module``: the model from its data folder (no unpickled code)."""
    return RecoderModel(Recommender(TrainedModel.load(Path(data_path))))


def log_model(model: TrainedModel) -> "mlflow.models.model.ModelInfo":
    """Log ``model`` as the active run's ``model`` (pip requirements given: inferring them takes 15-30 s)."""
    import numpy
    import pyarrow
    import torch
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                    f"pandas=={pd.__version__}", f"numpy=={numpy.__version__}", f"pyarrow=={pyarrow.__version__}",
                    "recoder-dist"]
    with tempfile.TemporaryDirectory() as tmp:
        data = model.save(Path(tmp) / "recommender")
        example = pd.DataFrame({"items": [model.items.ids[:3].astype(str).tolist()]})
        return mlflow.pyfunc.log_model(name="model", loader_module=__name__, data_path=str(data), signature=SIGNATURE,
                                       input_example=example, pip_requirements=requirements)


def relog_pickled(tracking_uri: str, name: str, version: str) -> dict:
    """Register a version logged by an older recoder-dist (a pickled ``python_model``) again as a
    loader-module model: only its ``MLmodel`` (YAML) and its data folder (weights, item table)
    are downloaded, nothing is unpickled; the new version keeps the run, score tag and aliases.
    Points this process's MLflow at ``tracking_uri`` and the old run's experiment."""
    import yaml
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    old = client.get_model_version(name, version)
    mlflow.set_experiment(experiment_id=client.get_run(old.run_id).info.experiment_id)
    base = f"models:/{name}/{old.version}"
    with tempfile.TemporaryDirectory() as tmp:
        spec = yaml.safe_load(Path(mlflow.artifacts.download_artifacts(f"{base}/MLmodel", dst_path=tmp)).read_text())
        flavor = spec.get("flavors", {}).get("python_function", {})
        if flavor.get("loader_module") == __name__:
            raise ValueError(f"{base} already loads without pickled code; nothing to do")
        path = flavor.get("artifacts", {}).get("recommender", {}).get("path")
        if not path:
            raise ValueError(f"{base} is not a recoder-dist model (its MLmodel names no 'recommender' artifact)")
        data = Path(mlflow.artifacts.download_artifacts(f"{base}/{path}", dst_path=tmp))
        info = log_model(TrainedModel.load(data))  # weights_only: refuses anything but plain tensors
    new = client.create_model_version(name, info.model_uri, run_id=old.run_id,
                                      tags={**old.tags, "relogged_from_version": str(old.version)})
    moved = sorted(alias for alias, v in client.get_registered_model(name).aliases.items() if str(v) == str(old.version))
    for alias in moved:
        client.set_registered_model_alias(name, alias, new.version)
    return {"name": name, "version": int(new.version), "relogged_from": int(old.version), "aliases": moved}
