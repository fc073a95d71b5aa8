"""Batch scoring on Spark: top-k per user from a registered MLflow model, in original ids.

The model is downloaded once on the driver and loaded once per partition in the executors
(``mapInPandas``), like Spark ALS's ``recommendForAllUsers`` but for any user histories.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.manifest import read_manifest, verify_files
from pipeline.output import check_output, staged
from pipeline.sources import Layout, read_interactions
from pipeline.transform import SPLITS

log = logging.getLogger("recoder.recommend")
OUTPUT_SCHEMA = "user_id string, recommended array<string>, scores array<double>, unknown_items long"
SUMMARY = "summary.json"
KIND = "recommendations"  # what the output marker says this job wrote (pipeline.output)


def split_histories(spark: SparkSession, data_dir: str, split: str) -> DataFrame:
    """``user_id, items`` (original ids) of a prepared split; held-out splits give their fold-in items."""
    verify_files(data_dir, read_manifest(data_dir))
    root = Path(data_dir).resolve()
    if split not in SPLITS or not (root / split).is_dir():
        raise ValueError(f"{data_dir} has no split {split!r}; choose train, validation or test")
    rows = spark.read.parquet(f"file://{root / split}").select("user_idx", F.posexplode("items").alias("pos", "item_idx"))
    users = spark.read.parquet(f"file://{root / 'users'}").select("user_idx", "user_id")
    items = F.broadcast(spark.read.parquet(f"file://{root / 'items'}").select("item_idx", "item_id"))
    named = rows.join(items, "item_idx").join(users, "user_idx")
    grouped = named.groupBy("user_id").agg(F.array_sort(F.collect_list(F.struct("pos", "item_id"))).alias("h"))
    return grouped.select("user_id", F.col("h.item_id").alias("items"))


def raw_histories(spark: SparkSession, layout: Layout) -> tuple[DataFrame, dict[str, int]]:
    """``user_id, items`` from a CSV/Parquet of (user, item) rows, and the counts of rejected rows.

    Only the user and item columns are read: histories are scored as sets of items, so an
    input needs no value or timestamp column (and bad ones reject no rows)."""
    rows = read_interactions(spark, dataclasses.replace(layout, value_col=None, timestamp_col=None)).cache()
    rejected = {r["reject_reason"]: r["count"] for r in
                rows.where(F.col("reject_reason").isNotNull()).groupBy("reject_reason").count().collect()}
    histories = (rows.where(F.col("reject_reason").isNull()).groupBy("user_id")
                 .agg(F.array_sort(F.collect_set("item_id")).alias("items")))
    return histories, rejected


def recommend(spark: SparkSession, model_path: str, histories: DataFrame, k: int, output: str,
              overwrite: bool = False, extra: dict | None = None, inputs: Sequence[str] = ()) -> dict:
    """Score every user of ``histories`` with the pyfunc model at ``model_path`` (a local copy);
    write ``user_id, recommended, scores, unknown_items`` as Parquet, atomically. ``inputs``
    (the data read) may not lie inside the output."""
    out = Path(output).resolve()
    check_output(out, KIND, overwrite, inputs)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import mlflow.pyfunc
        model = mlflow.pyfunc.load_model(model_path)
        for batch in batches:
            result = model.predict(batch[["items"]], params={"k": k})
            yield pd.concat([batch[["user_id"]].reset_index(drop=True), result.reset_index(drop=True)], axis=1)

    with staged(out, KIND, overwrite, inputs) as tmp:
        scored = histories.mapInPandas(score, OUTPUT_SCHEMA)
        scored.write.parquet(f"file://{tmp}/recommendations")
        written = spark.read.parquet(f"file://{tmp}/recommendations")
        stats = written.agg(F.count("*").alias("users"), F.sum("unknown_items").alias("unknown")).first()
        summary = {"users": int(stats["users"]), "k": k, "unknown_item_ids_ignored": int(stats["unknown"] or 0),
                   **(extra or {})}
        (tmp / SUMMARY).write_text(json.dumps(summary, indent=2))
    log.info("wrote top-%d for %d users to %s", k, summary["users"], out)
    return summary
