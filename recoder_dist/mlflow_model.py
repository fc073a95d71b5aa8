"""The MLflow pyfunc model: histories of original item ids in, top-k item ids and scores out.

The class is imported from the installed ``recoder_dist`` package (not shipped with
``code_paths``: two models shipping the same module would clash in one Spark worker).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, ParamSchema, ParamSpec, Schema
from mlflow.types.schema import Array

from recoder_dist.recommender import Recommender

ARTIFACT = "recommender"
TASKS = ("recommend", "similar")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec(Array(DataType.string), "items"),
                   ColSpec(Array(DataType.double), "values", required=False)]),
    outputs=Schema([ColSpec(Array(DataType.string), "recommended"), ColSpec(Array(DataType.double), "scores"),
                    ColSpec(DataType.long, "unknown_items")]),
    params=ParamSchema([ParamSpec("k", DataType.long, 10), ParamSpec("task", DataType.string, "recommend")]),
)


class RecoderPyfunc(mlflow.pyfunc.PythonModel):
    """``predict`` a DataFrame with an ``items`` column (lists of original item ids, optional
    ``values``); params ``k`` and ``task`` (``recommend``: unseen items for the history,
    ``similar``: items similar to the listed ones)."""

    def load_context(self, context: Any) -> None:
        self.recommender = Recommender.load(Path(context.artifacts[ARTIFACT]))

    def predict(self, context: Any, model_input: pd.DataFrame, params: Optional[dict] = None) -> pd.DataFrame:
        params = params or {}
        if "items" not in model_input.columns:
            raise ValueError(f"input needs an 'items' column of item id lists; got columns {list(model_input.columns)}")
        task = params.get("task", "recommend")
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
        k = int(params.get("k", 10))
        histories = [[] if h is None else list(h) for h in model_input["items"]]
        if task == "similar":
            return self.recommender.similar(histories, k).to_frame()
        values = None
        if "values" in model_input.columns:
            values = [None if v is None else list(v) for v in model_input["values"]]
        return self.recommender.recommend(histories, k, values).to_frame()


def log_model(recommender_dir: Path, input_items: list[str]) -> "mlflow.models.model.ModelInfo":
    """Log the saved recommender as this run's ``model`` (pip requirements given: inferring them takes 15-30 s)."""
    import numpy
    import pyarrow
    import torch
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                    f"pandas=={pd.__version__}", f"numpy=={numpy.__version__}", f"pyarrow=={pyarrow.__version__}",
                    "recoder-dist"]
    return mlflow.pyfunc.log_model(name="model", python_model=RecoderPyfunc(),
                                   artifacts={ARTIFACT: str(recommender_dir)}, signature=SIGNATURE,
                                   input_example=pd.DataFrame({"items": [input_items]}),
                                   pip_requirements=requirements)
