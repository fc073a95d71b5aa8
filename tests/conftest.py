"""Shared fixtures: one local SparkSession for the whole test session, small input writers.

Spark costs seconds to start, so every Spark test shares ``spark`` (master ``local[2]``, four
shuffle partitions, no UI). The environment is set here, before any JVM starts: Spark binds
to the loopback address and its Python workers use this interpreter (the venv's).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def spark():
    """The test session's local SparkSession (stopped at the end)."""
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2]").appName("recoder-tests")
               .config("spark.sql.shuffle.partitions", "4")
               .config("spark.default.parallelism", "2")
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.driver.bindAddress", "127.0.0.1")
               .config("spark.sql.session.timeZone", "UTC")
               .config("spark.sql.adaptive.enabled", "true")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def write_lines(path: Path, lines: list[str]) -> Path:
    """A text input file from lines (a trailing newline added)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


# --- the prepared dataset contract (DESIGN.md, version 1) -----------------------------------

def _contract():
    import pyarrow as pa

    rows = {"user_idx": pa.int64(), "items": pa.list_(pa.int32()), "values": pa.list_(pa.float32())}
    heldout = {**rows, "heldout_items": pa.list_(pa.int32()), "heldout_values": pa.list_(pa.float32())}
    return {"items": {"item_idx": pa.int32(), "item_id": pa.string(), "count": pa.int64()},
            "users": {"user_idx": pa.int64(), "user_id": pa.string(), "split": pa.string()},
            "train": rows, "validation": heldout, "test": heldout}


def arrow_schema(directory: Path) -> dict:
    """Column name -> Arrow type of a Parquet folder, list field names normalised away."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(f) for f in sorted(Path(directory).glob("*.parquet"))]
    assert schemas, f"{directory} holds no Parquet files"
    schema = schemas[0]
    assert all(s.equals(schema) for s in schemas), f"{directory}: files differ in schema"
    return {f.name: pa.list_(f.type.value_type) if pa.types.is_list(f.type) else f.type for f in schema}


def assert_prepared(out: Path) -> dict:
    """Check everything the contract promises about a prepared dataset; return its tables.

    Schema of every table, dense item ids over train, disjoint users per split, sorted and
    aligned lists, the fold-in/held-out split of each held-out user, item counts, row groups,
    and the manifest's accounting (input = kept + dropped, kept = the lists' lengths).
    """
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.manifest import read_manifest, verify_files
    from pipeline.transform import num_row_groups

    out = Path(out)
    manifest = read_manifest(out)
    verify_files(out, manifest)
    assert {Path(f["path"]).parent.name for f in manifest["files"]} == {"items", "users", "train", "validation", "test"}
    contract = _contract()
    tables = {}
    for name, columns in contract.items():
        assert arrow_schema(out / name) == columns, name
        tables[name] = pq.read_table(out / name).to_pandas()
    items, users = tables["items"], tables["users"]
    num_items = manifest["num_items"]

    assert items["item_idx"].tolist() == list(range(num_items))
    assert items["item_id"].is_unique and len(items) == num_items
    assert users["user_idx"].is_unique and users["user_id"].is_unique
    assert sorted(users["user_idx"]) == list(range(len(users)))
    assert set(users["split"]) <= {"train", "validation", "test", "dropped"}
    assert users["split"].value_counts().reindex(["train", "validation", "test", "dropped"], fill_value=0).to_dict() \
        == manifest["num_users"]

    nnz_total = 0
    for split in ("train", "validation", "test"):
        frame = tables[split]
        assert sorted(frame["user_idx"]) == sorted(users.loc[users["split"] == split, "user_idx"]), split
        assert manifest["num_users"][split] == len(frame)
        lists = ["items", "heldout_items"] if split != "train" else ["items"]
        for column in lists:
            values = column.replace("items", "values")
            for row_items, row_values in zip(frame[column], frame[values]):
                assert len(row_items) == len(row_values) >= 1, (split, column)
                assert np.all(np.diff(row_items) > 0), (split, column, "sorted, no repeats")
                assert row_items.min() >= 0 and row_items.max() < num_items
        nnz = {c: int(sum(len(x) for x in frame[c])) for c in lists}
        assert manifest["nnz"][split] == nnz, split
        nnz_total += sum(nnz.values())
        if split != "train":
            fraction = manifest["config"]["heldout_fraction"]
            for fold, held in zip(frame["items"], frame["heldout_items"]):
                n = len(fold) + len(held)
                assert not set(fold) & set(held)
                assert len(held) == min(n - 1, max(1, round(fraction * n)))
    train_counts = np.bincount(np.concatenate(list(tables["train"]["items"])), minlength=num_items) \
        if len(tables["train"]) else np.zeros(num_items, int)
    assert items["count"].tolist() == train_counts.tolist()  # popularity in train
    assert items["count"].is_monotonic_decreasing

    counts = manifest["interactions"]
    assert counts["kept"] == nnz_total
    assert counts["input"] == counts["kept"] + sum(counts["dropped"].values())

    config = manifest["config"]
    row_groups = {s: sum(pq.ParquetFile(f).num_row_groups for f in (out / s).glob("*.parquet"))
                  for s in ("train", "validation", "test")}
    assert manifest["row_groups"] == row_groups
    assert row_groups["train"] == num_row_groups(manifest["num_users"]["train"], config["max_ranks"],
                                                 config["row_groups_per_rank"], config["min_rows_per_group"],
                                                 config["max_rows_per_group"])
    return {"manifest": manifest, **tables}
