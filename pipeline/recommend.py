"""Batch scoring on Spark: top-k per user from a registered MLflow model, in original ids.

The model is downloaded once on the driver, shipped to the executors through Spark (no path of
the driver's is read there) and loaded once per partition (``mapInPandas``), like Spark ALS's
``recommendForAllUsers`` but for any user histories.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.manifest import read_manifest, verify_files
from pipeline.output import check_output, staged
from pipeline.sources import Layout, input_columns, read_interactions
from pipeline.transform import SPLITS, history_values, merge_duplicates
from pipeline.config import PrepareConfig

log = logging.getLogger("recoder.recommend")
OUTPUT_SCHEMA = "user_id string, recommended array<string>, scores array<double>, unknown_items long"
SUMMARY = "summary.json"
KIND = "recommendations"  # what the output marker says this job wrote (pipeline.output)


def split_histories(spark: SparkSession, data_dir: str, split: str) -> DataFrame:
    """``user_id, items, values`` (original ids, the stored values) of a prepared split; held-out
    splits give their fold-in items, as evaluation scores them."""
    verify_files(data_dir, read_manifest(data_dir))
    root = Path(data_dir).resolve()
    if split not in SPLITS or not (root / split).is_dir():
        raise ValueError(f"{data_dir} has no split {split!r}; choose train, validation or test")
    rows = (spark.read.parquet(f"file://{root / split}")
            .select("user_idx", F.posexplode(F.arrays_zip("items", "values")).alias("pos", "pair"))
            .select("user_idx", "pos", F.col("pair.items").alias("item_idx"), F.col("pair.values").alias("value")))
    users = spark.read.parquet(f"file://{root / 'users'}").select("user_idx", "user_id")
    items = F.broadcast(spark.read.parquet(f"file://{root / 'items'}").select("item_idx", "item_id"))
    named = rows.join(items, "item_idx").join(users, "user_idx")
    return _grouped(named, F.struct("pos", "item_id", F.col("value").cast("double").alias("value")))


def raw_histories(spark: SparkSession, layout: Layout, config: PrepareConfig) -> tuple[DataFrame, dict[str, int]]:
    """``user_id, items[, values]`` from a CSV/Parquet of (user, item[, value]) rows, and the counts
    of rejected rows.

    Without a value column (``config.value_col`` null or absent from the input) histories are
    sets of items. With one, pairs are merged by ``config.duplicates`` and valued as the prepare
    job values training data (:func:`pipeline.transform.history_values`)."""
    columns = input_columns(spark, layout)
    value_col = layout.value_col if layout.value_col in columns else None
    timestamp_col = layout.timestamp_col if value_col and config.duplicates == "last" \
        and layout.timestamp_col in columns else None
    rows = read_interactions(spark, dataclasses.replace(layout, value_col=value_col,
                                                        timestamp_col=timestamp_col)).cache()
    rejected = {r["reject_reason"]: r["count"] for r in
                rows.where(F.col("reject_reason").isNotNull()).groupBy("reject_reason").count().collect()}
    valid = rows.where(F.col("reject_reason").isNull())
    if value_col is None:
        return valid.groupBy("user_id").agg(F.array_sort(F.collect_set("item_id")).alias("items")), rejected
    pairs = history_values(merge_duplicates(valid, config.duplicates), config.rating_threshold, config.binarize)
    return _grouped(pairs, F.struct("item_id", "value")), rejected


def _grouped(rows: DataFrame, entry) -> DataFrame:
    """One row per user: the ``entry`` structs (ordered by their first field) as ``items`` and ``values``."""
    histories = rows.groupBy("user_id").agg(F.array_sort(F.collect_list(entry)).alias("h"))
    return histories.select("user_id", F.col("h.item_id").alias("items"), F.col("h.value").alias("values"))


def recommend(spark: SparkSession, model_path: str, histories: DataFrame, k: int, output: str,
              overwrite: bool = False, extra: dict | None = None, inputs: Sequence[str] = ()) -> dict:
    """Score every user of ``histories`` (``user_id, items[, values]``) with the pyfunc model at
    ``model_path`` (a folder on the driver, shipped to the executors); write ``user_id,
    recommended, scores, unknown_items`` as Parquet, atomically. ``inputs`` (the data read) may
    not lie inside the output."""
    out = Path(output).resolve()
    check_output(out, KIND, overwrite, inputs)
    columns = [c for c in ("items", "values") if c in histories.columns]

    with tempfile.TemporaryDirectory(prefix="recoder-model-") as packed, staged(out, KIND, overwrite, inputs) as tmp:
        shipped = ship_model(spark, Path(model_path), Path(packed))

        def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            import mlflow.pyfunc
            from pyspark import SparkFiles
            model = mlflow.pyfunc.load_model(SparkFiles.get(shipped))
            for batch in batches:
                result = model.predict(batch[columns], params={"k": k})
                yield pd.concat([batch[["user_id"]].reset_index(drop=True), result.reset_index(drop=True)], axis=1)

        scored = histories.mapInPandas(score, OUTPUT_SCHEMA)
        scored.write.parquet(f"file://{tmp}/recommendations")
        written = spark.read.parquet(f"file://{tmp}/recommendations")
        stats = written.agg(F.count("*").alias("users"), F.sum("unknown_items").alias("unknown")).first()
        summary = {"users": int(stats["users"]), "k": k, "unknown_item_ids_ignored": int(stats["unknown"] or 0),
                   **(extra or {})}
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2))
    log.info("wrote top-%d for %d users to %s", k, summary["users"], out)
    return summary


def ship_model(spark: SparkSession, folder: Path, scratch: Path) -> str:
    """Send the MLflow model ``folder`` on the driver to every executor; the name under which
    ``SparkFiles.get`` finds its copy there.

    Spark refuses ``addFile`` of a local folder off local mode, so the model travels as a zip
    archive (``addArchive``) that each executor fetches from the driver and unpacks once. The
    name is unique, as an application cannot register one name twice. ``scratch`` holds the
    archive until the tasks have run.
    """
    if not (folder / "MLmodel").is_file():
        raise ValueError(f"{folder} is not an MLflow model folder (no MLmodel file)")
    name = f"model-{uuid.uuid4().hex}"
    archive = shutil.make_archive(str(scratch / name), "zip", root_dir=folder)
    spark.sparkContext.addArchive(archive)
    return Path(archive).name
