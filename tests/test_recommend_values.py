"""The recommend job's histories carry their values to the model, as evaluation's fold-in does.

A prepared split gives its stored values (here a dataset prepared without binarizing, so they
are ratings, not ones); raw histories with a value column give them merged and valued as the
prepare job values training pairs; without one, histories stay sets of items. Scored with the
session's registered model through ``pipeline.recommend.recommend`` on the test session's Spark.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import write_lines

from _data import PREPARE, prepared_dataset, registered_model, tracking_uri


@pytest.fixture(scope="module")
def model(spark, tmp_path_factory):
    return registered_model(spark, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def model_dir(model, tmp_path_factory) -> str:
    """The champion downloaded as the job downloads it (a folder on the driver)."""
    import mlflow

    with tracking_uri(model.tracking_uri):
        return mlflow.artifacts.download_artifacts(f"models:/{model.name}@champion",
                                                   dst_path=str(tmp_path_factory.mktemp("champion")))


@pytest.fixture(scope="module")
def graded(spark, model, tmp_path_factory) -> Path:
    """The session's interactions prepared again, keeping ratings (no binarizing) as values."""
    from pipeline.prepare import prepare
    from recoder_dist.config import PrepareConfig

    source = prepared_dataset(spark, tmp_path_factory.getbasetemp()).parent / "interactions.csv"
    out = tmp_path_factory.mktemp("graded") / "prepared"
    prepare(spark, str(source), str(out), "auto", PrepareConfig(**{**PREPARE, "binarize": False}))
    return out


def stored_histories(data_dir: Path, split: str) -> dict[str, tuple[list[str], list[float]]]:
    """``{user_id: (fold-in item ids, their values)}`` of a prepared split, read with pyarrow."""
    users = pq.read_table(data_dir / "users").to_pandas().set_index("user_idx")["user_id"]
    items = pq.read_table(data_dir / "items").to_pandas().set_index("item_idx")["item_id"]
    rows = pq.read_table(data_dir / split, columns=["user_idx", "items", "values"]).to_pydict()
    return {users[u]: (items[list(i)].tolist(), [float(x) for x in v])
            for u, i, v in zip(rows["user_idx"], rows["items"], rows["values"])}


def test_a_split_gives_its_stored_values_in_item_order(spark, graded):
    from pipeline.recommend import split_histories

    stored = stored_histories(graded, "test")
    got = split_histories(spark, str(graded), "test").toPandas().set_index("user_id")
    assert list(got.columns) == ["items", "values"] and sorted(got.index) == sorted(stored)
    for user, (items, values) in stored.items():
        assert list(got.at[user, "items"]) == items, user
        assert list(got.at[user, "values"]) == pytest.approx(values), user
    assert len({v for _, values in stored.values() for v in values}) > 1, "the ratings should not all be equal"


def test_recommend_scores_with_the_values(spark, model, graded, model_dir, tmp_path):
    from pipeline.recommend import recommend, split_histories

    stored = stored_histories(graded, "validation")
    users = sorted(stored)
    out = tmp_path / "recs"
    printed = recommend(spark, model_dir, split_histories(spark, str(graded), "validation"), 10, str(out))
    written = pd.read_parquet(out / "recommendations").set_index("user_id").sort_index()
    assert printed["users"] == len(users) and list(written.index) == users

    pyfunc = model.load_pyfunc()
    histories = pd.DataFrame({"items": [stored[u][0] for u in users], "values": [stored[u][1] for u in users]})
    with_values = pyfunc.predict(histories, params={"k": 10}).assign(user_id=users).set_index("user_id")
    items_only = pyfunc.predict(histories[["items"]], params={"k": 10}).assign(user_id=users).set_index("user_id")
    for user in users:
        assert list(written.at[user, "recommended"]) == list(with_values.at[user, "recommended"]), user
        assert list(written.at[user, "scores"]) == pytest.approx(list(with_values.at[user, "scores"]),
                                                                 rel=1e-5, abs=1e-6), user
    differs = [u for u in users if not np.allclose(written.at[u, "scores"], items_only.at[u, "scores"])]
    assert differs, "scores with the ratings should differ from scores of the bare item sets"


def layout_of(path: Path, **config):
    from pipeline.sources import resolve_layout
    from recoder_dist.config import PrepareConfig

    prepare = dataclasses.replace(PrepareConfig(), **config)
    return resolve_layout(str(path), "auto", prepare), prepare


def test_raw_histories_with_values_are_merged_and_valued_as_prepare_values_training(spark, tmp_path):
    from pipeline.recommend import raw_histories

    csv = write_lines(tmp_path / "rated.csv", [
        "user_id,item_id,rating", "u1,a,5", "u1,b,2", "u1,a,3", "u2,c,4", "u2,d,3.5", "u3,e,not-a-number", "u3,f,1"])
    cases = {
        # duplicates merged by max; above 3.5 -> 1, at or below -> 0 (seen, no signal)
        (True, "max"): {"u1": (["a", "b"], [1.0, 0.0]), "u2": (["c", "d"], [1.0, 0.0]), "u3": (["f"], [0.0])},
        # ratings kept above the threshold; sum merges duplicates first (a: 5 + 3)
        (False, "sum"): {"u1": (["a", "b"], [8.0, 0.0]), "u2": (["c", "d"], [4.0, 0.0]), "u3": (["f"], [0.0])},
    }
    for (binarize, duplicates), expected in cases.items():
        layout, config = layout_of(csv, value_col="rating", timestamp_col=None, rating_threshold=3.5,
                                   binarize=binarize, duplicates=duplicates)
        histories, rejected = raw_histories(spark, layout, config)
        got = {r["user_id"]: (list(r["items"]), list(r["values"])) for r in histories.collect()}
        assert got == expected, (binarize, duplicates)
        assert rejected == {"value_not_numeric": 1}


def test_raw_histories_without_a_value_column_are_item_sets(spark, tmp_path):
    from pipeline.recommend import raw_histories

    csv = write_lines(tmp_path / "pairs.csv", ["user_id,item_id", "u1,b", "u1,a", "u1,b"])
    layout, config = layout_of(csv, value_col="rating", timestamp_col="timestamp")
    histories, rejected = raw_histories(spark, layout, config)
    assert histories.columns == ["user_id", "items"]
    assert [(r["user_id"], list(r["items"])) for r in histories.collect()] == [("u1", ["a", "b"])]
    assert rejected == {}
