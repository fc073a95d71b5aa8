"""The prepare job: raw interactions in, the prepared dataset (contract version 1) out.

Every input row ends up either in a split or counted under one drop reason in the manifest
(rows that cannot be read are also copied to ``rejected/``); the counts must add up to the
input or the job fails. Output is assembled in a hidden sibling folder and renamed into
place when complete, so a killed job never leaves a half-written dataset under the name.
"""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pyspark
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from pipeline import transform
from pipeline.output import check_output, staged
from pipeline.manifest import SCHEMA_VERSION, fingerprint, part_files, write_manifest
from pipeline.config import PrepareConfig
from pipeline.sources import InputError, Layout, read_interactions, resolve_layout

log = logging.getLogger("recoder.prepare")
KIND = "prepared-dataset"  # what the output marker says this job wrote (pipeline.output)
ROW_GROUP_BYTES = 1 << 30  # one row group per written file; files are sized by row count


def prepare(spark: SparkSession, input_path: str, output: str, fmt: str,
            config: PrepareConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the whole job and return the manifest it wrote."""
    started = time.perf_counter()
    out = Path(output).resolve()
    check_output(out, KIND, overwrite, inputs=[input_path])
    layout = resolve_layout(input_path, fmt, config)
    log.info("reading %d %s file(s) from %s (columns user=%s item=%s value=%s timestamp=%s)",
             len(layout.paths), layout.fmt, input_path, layout.user_col, layout.item_col,
             layout.value_col, layout.timestamp_col)
    with staged(out, KIND, overwrite, inputs=[input_path, *layout.paths]) as tmp:
        manifest = _build(spark, layout, tmp, config)
        manifest["source"].update(path=str(Path(input_path).resolve()), format=layout.source_format,
                                  fingerprint=fingerprint(layout.paths))
        manifest["files"] = part_files(tmp)
        manifest["seconds"] = round(time.perf_counter() - started, 2)
        write_manifest(tmp, manifest)
    log.info("wrote %s in %.1f s", out, manifest["seconds"])
    return manifest


def _build(spark: SparkSession, layout: Layout, tmp: Path, config: PrepareConfig) -> dict[str, Any]:
    """The job's stages in order, into the staging folder ``tmp``; the manifest (without the
    source's path, fingerprint and file list, which :func:`prepare` adds). ``dropped`` gathers,
    stage by stage, every input row that is not kept, by reason."""
    threshold = config.rating_threshold if config.rating_threshold is not None else 0.0
    parsed = read_interactions(spark, layout)
    merged = _merge(parsed, config)
    counts = _count(merged, threshold)
    dropped = _reject(parsed, counts, layout, tmp)
    filtered = _threshold_and_filter(merged, threshold, config)
    dropped.update(_filter_drops(counts, filtered))
    users = _split_users(filtered, threshold, config)
    items, indexed = _index(spark, filtered, users)
    kept, users, heldout_drops = _keep_usable_heldout(spark, indexed, users)
    dropped.update(heldout_drops)
    log.info("indexed %d items and %d users", len(items), len(users))
    _write(spark, kept, items, users, tmp, config)
    nnz = _account(tmp, counts.rows_in, dropped)
    return _manifest(layout, config, items, users, nnz, counts.rows_in, dropped, filtered.rounds, tmp)


def _valid() -> Column:
    """A parsed row that can be read (``pipeline.sources.read_interactions`` gives no reason)."""
    return F.col("reject_reason").isNull()


@dataclass(frozen=True)
class _Counts:
    """Input rows per reject reason (None: valid), and the valid rows' (user, item) pairs and
    those above the rating threshold."""

    by_reason: dict[Optional[str], int]
    pairs: int
    above: int

    @property
    def rows_in(self) -> int:
        return sum(self.by_reason.values())

    @property
    def valid(self) -> int:
        return self.by_reason.get(None, 0)


def _merge(parsed: DataFrame, config: PrepareConfig) -> DataFrame:
    """One pass over the input: valid rows merged per (user, item) by ``config.duplicates``,
    rejected rows grouped per reason (their ids blanked, so that each reason is a single group).
    Materialised: the counts, the rejects and the kept pairs all read it."""
    keyed = parsed.select(F.when(_valid(), F.col("user_id")).alias("user_id"),
                          F.when(_valid(), F.col("item_id")).alias("item_id"), "value", "timestamp", "reject_reason")
    return transform.merge_duplicates(keyed, config.duplicates,
                                      keys=("reject_reason", "user_id", "item_id")).localCheckpoint()


def _count(merged: DataFrame, threshold: float) -> _Counts:
    """The reject counts and the valid pairs' counts, in one job."""
    summary = merged.groupBy("reject_reason").agg(
        F.sum("rows").alias("rows"), F.count(F.lit(1)).alias("pairs"),
        F.sum((F.col("value") > threshold).cast("long")).alias("above")).collect()
    valid = [r for r in summary if r["reject_reason"] is None]
    return _Counts({r["reject_reason"]: r["rows"] for r in summary},
                   valid[0]["pairs"] if valid else 0, valid[0]["above"] if valid else 0)


def _reject(parsed: DataFrame, counts: _Counts, layout: Layout, tmp: Path) -> dict[str, int]:
    """The rejected rows copied to ``rejected/`` and counted per reason; InputError when the
    input holds no row, or no valid one."""
    if counts.rows_in == 0:
        raise InputError(f"{layout.paths[0]}: the input holds no interactions")
    dropped = {reason: n for reason, n in counts.by_reason.items() if reason is not None}
    if dropped:
        log.warning("rejected %d of %d rows (%s); they are in rejected/", sum(dropped.values()), counts.rows_in,
                    ", ".join(f"{k}={v}" for k, v in sorted(dropped.items())))
        parsed.where(~_valid()).write.parquet(_uri(tmp / "rejected"))
    log.info("parsed %d rows, %d valid", counts.rows_in, counts.valid)
    if counts.valid == 0:
        raise InputError(f"{layout.paths[0]}: none of the {counts.rows_in} rows is valid ({dropped})")
    return dropped


def _threshold_and_filter(merged: DataFrame, threshold: float, config: PrepareConfig) -> transform.FilterResult:
    """The valid pairs above the rating threshold (binarized if asked), then filtered to the
    minimum user and item counts."""
    pairs = merged.where(_valid()).select("user_id", "item_id", "value")
    return transform.filter_min_counts(transform.apply_threshold(pairs, threshold, config.binarize),
                                       config.min_user_interactions, config.min_item_interactions,
                                       config.max_filter_rounds)


def _filter_drops(counts: _Counts, filtered: transform.FilterResult) -> dict[str, int]:
    """Rows dropped from the valid ones by merging, the threshold and the minimum counts."""
    log.info("%d rows -> %d (user, item) pairs -> %d above threshold -> %d after %d filter round(s)",
             counts.rows_in, counts.pairs, counts.above, counts.above - filtered.dropped_by_user_count
             - filtered.dropped_by_item_count, filtered.rounds)
    return {"duplicate_merged": counts.valid - counts.pairs, "at_or_below_threshold": counts.pairs - counts.above,
            "user_below_min_count": filtered.dropped_by_user_count,
            "item_below_min_count": filtered.dropped_by_item_count}


def _split_users(filtered: transform.FilterResult, threshold: float, config: PrepareConfig) -> pd.DataFrame:
    """The remaining users indexed and dealt into train / validation / test (seeded)."""
    user_ids = filtered.pairs.select("user_id").distinct().toPandas()["user_id"]
    if user_ids.empty:
        raise InputError(f"no users are left after the rating threshold ({threshold}) and minimum counts "
                         f"(users >= {config.min_user_interactions}, items >= {config.min_item_interactions})")
    return transform.split_users(user_ids, config.validation_users, config.test_users, config.seed)


def _index(spark: SparkSession, filtered: transform.FilterResult, users: pd.DataFrame) -> tuple[pd.DataFrame, DataFrame]:
    """Items indexed from train users' pairs; every pair as ``user_idx, item_idx, value, split,
    unseen`` (``unseen``: a held-out user's item no train user has). Materialised."""
    joined = filtered.pairs.join(transform.to_spark(spark, users), "user_id")
    items = transform.index_items(joined.where(F.col("split") == "train"))
    indexed = (joined.join(transform.to_spark(spark, items[["item_id", "item_idx"]]), "item_id", "left")
               .select("user_idx", "item_idx", "value", "split", F.col("item_idx").isNull().alias("unseen"))
               .localCheckpoint())
    return items, indexed


def _keep_usable_heldout(spark: SparkSession, indexed: DataFrame,
                         users: pd.DataFrame) -> tuple[DataFrame, pd.DataFrame, dict[str, int]]:
    """Unseen items dropped; held-out users left with fewer than 2 items moved to split
    ``dropped``. Returns the kept pairs (with their user's ``final`` split), the users with their
    final split, and the rows dropped per reason."""
    heldout_counts = (indexed.where((F.col("split") != "train") & ~F.col("unseen"))
                      .groupBy("user_idx").count().toPandas())
    too_few = set(heldout_counts.loc[heldout_counts["count"] < 2, "user_idx"])
    too_few |= set(users.loc[users["split"] != "train", "user_idx"]) - set(heldout_counts["user_idx"])
    users = users.copy()
    users.loc[users["user_idx"].isin(too_few), "split"] = "dropped"
    dropped = {"unseen_item_in_heldout_user": indexed.where(F.col("unseen")).count()}
    kept = indexed.where(~F.col("unseen")).join(
        F.broadcast(spark.createDataFrame(users[["user_idx", "split"]].rename(columns={"split": "final"}))),
        "user_idx")
    dropped["heldout_user_under_2_items"] = int(heldout_counts.loc[heldout_counts["user_idx"].isin(too_few),
                                                                   "count"].sum())
    return kept, users, dropped


def _write(spark: SparkSession, kept: DataFrame, items: pd.DataFrame, users: pd.DataFrame, tmp: Path,
           config: PrepareConfig) -> None:
    """The id tables and the three splits (train as user rows, held-out splits with fold-in and
    held-out items) into ``tmp``."""
    _write_table(items.astype({"item_id": str}), tmp / "items")
    _write_table(users.astype({"user_id": str}), tmp / "users")
    num_users = users["split"].value_counts().to_dict()
    for split in transform.SPLITS:
        rows = kept.where(F.col("final") == split)
        frame = (transform.user_rows(rows) if split == "train"
                 else transform.fold_in_rows(rows, config.heldout_fraction, config.seed))
        _write_split(frame, tmp / split, num_users.get(split, 0), config)
        log.info("wrote %s (%d users)", split, num_users.get(split, 0))


def _account(tmp: Path, rows_in: int, dropped: dict[str, int]) -> dict[str, dict[str, int]]:
    """The interactions written per split, read back; RuntimeError unless kept + dropped rows
    add up to the input."""
    nnz = {split: _nnz(tmp / split) for split in transform.SPLITS}
    kept_total = sum(sum(v.values()) for v in nnz.values())
    if kept_total + sum(dropped.values()) != rows_in:
        raise RuntimeError(f"row accounting failed: {kept_total} kept + {sum(dropped.values())} dropped "
                           f"!= {rows_in} input rows ({dropped}); the output was not written")
    return nnz


def _manifest(layout: Layout, config: PrepareConfig, items: pd.DataFrame, users: pd.DataFrame,
              nnz: dict[str, dict[str, int]], rows_in: int, dropped: dict[str, int], filter_rounds: int,
              tmp: Path) -> dict[str, Any]:
    """What was written, from what, and where every row went (``pipeline.manifest``)."""
    num_users = users["split"].value_counts().to_dict()
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": {"files": len(layout.paths), "columns": {"user": layout.user_col, "item": layout.item_col,
                                                          "value": layout.value_col, "timestamp": layout.timestamp_col}},
        "num_items": int(len(items)),
        "num_users": {s: int(num_users.get(s, 0)) for s in (*transform.SPLITS, "dropped")},
        "nnz": nnz,
        "row_groups": {s: _row_groups(tmp / s) for s in transform.SPLITS},
        "interactions": {"input": int(rows_in), "kept": int(sum(sum(v.values()) for v in nnz.values())),
                         "dropped": {k: int(v) for k, v in sorted(dropped.items())}},
        "filter_rounds": filter_rounds,
        "config": asdict(config),
        "versions": {"schema": SCHEMA_VERSION, "spark": pyspark.__version__, "pyarrow": pa.__version__,
                     "python": platform.python_version()},
    }


def _uri(path: Path) -> str:
    return "file://" + str(path)


def _write_table(frame: pd.DataFrame, directory: Path) -> None:
    directory.mkdir()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), directory / "part-00000.parquet")


def _write_split(frame: DataFrame, directory: Path, num_rows: int, config: PrepareConfig) -> None:
    """One file, and so one row group, per range of users.

    Train is read by Petastorm, which shards by row group: it gets enough groups for
    ``max_ranks`` ranks. Held-out splits are read whole by pyarrow and sharded by row.
    """
    ranks, per_rank = ((config.max_ranks, config.row_groups_per_rank) if directory.name == "train" else (1, 1))
    groups = transform.num_row_groups(num_rows, ranks, per_rank, config.min_rows_per_group, config.max_rows_per_group)
    # Materialised first: range partitioning samples its input in a job of its own, which would
    # otherwise compute the per-user lists twice.
    (frame.localCheckpoint().repartitionByRange(groups, "user_idx").sortWithinPartitions("user_idx")
     .write.option("parquet.block.size", ROW_GROUP_BYTES).parquet(_uri(directory)))


def _nnz(directory: Path) -> dict[str, int]:
    """Interactions written to a split, read back from its files (fold-in and held-out apart)."""
    names = pq.read_schema(next(directory.glob("*.parquet"))).names
    table = pq.read_table(directory, columns=[c for c in ("items", "heldout_items") if c in names])
    return {name: int(pc.sum(pc.list_value_length(table[name])).as_py() or 0) for name in table.column_names}


def _row_groups(directory: Path) -> int:
    return sum(pq.ParquetFile(f).num_row_groups for f in directory.glob("*.parquet"))
