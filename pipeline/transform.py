"""Pure DataFrame transforms of the prepare job: merge, threshold, filter, index, split, group.

Each function takes DataFrames and plain values and returns DataFrames (plus counts where rows
leave), so that every step is testable on small hand-made frames with a local SparkSession.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline.config import DUPLICATES

SPLITS = ("train", "validation", "test")


def merge_duplicates(rows: DataFrame, how: str, keys: Sequence[str] = ("user_id", "item_id")) -> DataFrame:
    """One row per (user, item): values summed, the maximum kept, or the latest (by timestamp) kept.

    ``rows`` (the output column) counts the input rows merged into each pair. ``keys`` may add
    grouping columns (the prepare job groups by reject reason too, to count rejects in the same pass).
    """
    if how == "sum":
        value = F.sum("value")
    elif how == "max":
        value = F.max("value")
    elif how == "last":
        value = F.max_by("value", F.coalesce(F.col("timestamp"), F.lit(float("-inf"))))
    else:
        raise ValueError(f"unknown duplicates policy {how!r} ({', '.join(DUPLICATES)})")
    return rows.groupBy(*keys).agg(value.alias("value"), F.count(F.lit(1)).alias("rows"))


def apply_threshold(pairs: DataFrame, threshold: float, binarize: bool) -> DataFrame:
    """Keep pairs whose value exceeds ``threshold`` (0 keeps every positive value); optionally set values to 1."""
    kept = pairs.where(F.col("value") > threshold)
    return kept.withColumn("value", F.lit(1.0)) if binarize else kept


def history_values(pairs: DataFrame, threshold: Optional[float], binarize: bool) -> DataFrame:
    """A history's values as the prepare job values training pairs, for scoring.

    Above ``threshold`` (null: 0) a pair keeps its value, or 1 when ``binarize``; at or below it
    the value is 0: the item still counts as seen (it is not recommended back) but adds no
    signal, as in training, where such pairs are absent.
    """
    cut = 0.0 if threshold is None else threshold
    kept = F.lit(1.0) if binarize else F.col("value")
    return pairs.withColumn("value", F.when(F.col("value") > cut, kept).otherwise(F.lit(0.0)))


@dataclass(frozen=True)
class FilterResult:
    """Pairs left by iterative filtering and how many interactions each rule removed."""

    pairs: DataFrame
    dropped_by_user_count: int
    dropped_by_item_count: int
    rounds: int


def filter_min_counts(pairs: DataFrame, min_user: int, min_item: int, max_rounds: int) -> FilterResult:
    """Repeatedly drop users with < ``min_user`` and items with < ``min_item`` interactions.

    Dropping users can push items under their limit and vice versa, so the rules are applied in
    turn until each has passed once without removing anything since the other last did. Only a
    rule that removes something materialises a new frame (``localCheckpoint``).
    """
    current = pairs
    rules = [(column, minimum) for column, minimum in (("user_id", min_user), ("item_id", min_item))
             if minimum > 1]
    dropped = {"user_id": 0, "item_id": 0}
    satisfied: set = set()
    rounds = 0
    while len(satisfied) < len(rules):
        rounds += 1
        if rounds > max_rounds:
            raise ValueError(f"filtering did not converge in {max_rounds} rounds; raise prepare.max_filter_rounds")
        for column, minimum in rules:
            counts = current.groupBy(column).agg(F.count(F.lit(1)).alias("n")).localCheckpoint()
            removed = counts.where(F.col("n") < minimum).agg(F.sum("n")).first()[0] or 0
            if removed:
                keep = counts.where(F.col("n") >= minimum).select(column)
                current = current.join(keep, column, "left_semi").localCheckpoint()
                dropped[column] += removed
                satisfied = {column}
            else:
                satisfied.add(column)
            if len(satisfied) == len(rules):
                break
    return FilterResult(current, dropped["user_id"], dropped["item_id"], rounds)


def split_users(user_ids: pd.Series, validation: float, test: float, seed: int) -> pd.DataFrame:
    """Assign dense ``user_idx`` in a seeded random order and a split to every user.

    ``validation``/``test`` below 1 are fractions of the users, from 1 up whole counts; either
    must give at least one user. The first
    users of the permutation are validation, then test, the rest train (disjoint by design).
    """
    n = len(user_ids)
    n_val, n_test = _how_many("validation_users", validation, n), _how_many("test_users", test, n)
    if n_val + n_test >= n:
        raise ValueError(f"{n_val} validation + {n_test} test users leave no train users out of {n}; "
                         f"lower prepare.validation_users/test_users")
    order = np.random.default_rng(seed).permutation(n)
    ordered = user_ids.sort_values(kind="stable").to_numpy()[order]
    split = np.full(n, "train", dtype=object)
    split[:n_val] = "validation"
    split[n_val:n_val + n_test] = "test"
    return pd.DataFrame({"user_idx": np.arange(n, dtype=np.int64), "user_id": ordered, "split": split})


def _how_many(name: str, amount: float, n: int) -> int:
    """Users for a held-out split: a fraction (rounded) or a whole count; never zero, never truncated."""
    if amount >= 1 and amount != int(amount):
        raise ValueError(f"prepare.{name}={amount:g} is neither a fraction in (0, 1) nor a whole count")
    count = int(round(amount * n)) if amount < 1 else int(amount)
    if count < 1:
        raise ValueError(f"prepare.{name}={amount:g} gives {count} of the {n} users: a held-out split needs at "
                         f"least one user (validation picks the model that is shipped); raise it")
    return count


def index_items(train_pairs: DataFrame) -> DataFrame:
    """Dense ``item_idx`` 0..n-1 over items of train users, most popular first (ties by id)."""
    counts = train_pairs.groupBy("item_id").count().toPandas()
    counts = counts.sort_values(["count", "item_id"], ascending=[False, True], kind="stable")
    counts.insert(0, "item_idx", np.arange(len(counts), dtype=np.int32))
    return counts.astype({"count": np.int64})


def user_rows(indexed: DataFrame) -> DataFrame:
    """One row per user: ``user_idx, items (sorted int32), values (float32, aligned)``."""
    grouped = indexed.groupBy("user_idx").agg(
        F.array_sort(F.collect_list(F.struct("item_idx", "value"))).alias("pairs"))
    return grouped.select(
        "user_idx",
        F.col("pairs.item_idx").cast("array<int>").alias("items"),
        F.col("pairs.value").cast("array<float>").alias("values"))


def fold_in_rows(indexed: DataFrame, heldout_fraction: float, seed: int) -> DataFrame:
    """Held-out users' rows split into fold-in (~80%) and held-out (~20%) items.

    The held-out items of a user are a seeded random choice (hash of seed, user and item), of
    size ``max(1, round(fraction * n))`` capped at ``n - 1``, so that every user keeps at least
    one fold-in item. Users with fewer than two items cannot be split and must be removed
    before this call.
    """
    keyed = indexed.withColumn("key", F.xxhash64(F.lit(seed), "user_idx", "item_idx"))
    grouped = keyed.groupBy("user_idx").agg(
        F.array_sort(F.collect_list(F.struct("key", "item_idx", "value"))).alias("shuffled"))
    n = F.size("shuffled")
    n_heldout = F.least(n - 1, F.greatest(F.lit(1), F.round(n * heldout_fraction).cast("int")))
    heldout = F.array_sort(F.transform(F.slice("shuffled", 1, n_heldout),
                                       lambda s: F.struct(s["item_idx"].alias("i"), s["value"].alias("v"))))
    foldin = F.array_sort(F.transform(F.slice("shuffled", n_heldout + 1, n),
                                      lambda s: F.struct(s["item_idx"].alias("i"), s["value"].alias("v"))))
    return grouped.select(
        "user_idx",
        foldin.getField("i").cast("array<int>").alias("items"),
        foldin.getField("v").cast("array<float>").alias("values"),
        heldout.getField("i").cast("array<int>").alias("heldout_items"),
        heldout.getField("v").cast("array<float>").alias("heldout_values"))


def num_row_groups(num_rows: int, max_ranks: int, groups_per_rank: int, min_rows_per_group: int,
                   max_rows_per_group: int) -> int:
    """Row groups for a split: ``max_ranks`` × k (Petastorm shards by row group; equal shares keep
    the ranks balanced), with k up to ``groups_per_rank`` while groups keep at least
    ``min_rows_per_group`` rows (Petastorm pays per group, so tiny groups slow the feed) and at
    least 1; more if groups would exceed ``max_rows_per_group``; never more than there are rows."""
    per_rank = max(1, min(groups_per_rank, num_rows // (max_ranks * min_rows_per_group)))
    wanted = max(max_ranks * per_rank, math.ceil(num_rows / max_rows_per_group))
    return max(1, min(num_rows, wanted))


def to_spark(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    """A small driver-side table (id maps) as a DataFrame, ready for broadcast joins."""
    return F.broadcast(spark.createDataFrame(frame))
