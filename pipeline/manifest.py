"""The prepared dataset's manifest: what was written, from what, and where every row went.

Spark-free: the trainer and the recommend job read it too.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Iterable

import pyarrow.parquet as pq

log = logging.getLogger("recoder.manifest")
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
TABLES = ("items", "users", "train", "validation", "test")  # the folders the manifest's ``files`` lists


class DatasetError(ValueError):
    """A path is not a complete prepared dataset of a schema this code reads."""


def local_path(directory: str | Path) -> Path:
    """A dataset folder given as a local path or a ``file://`` URL, as a path (the readers of a
    prepared dataset, Spark's aside, read local or mounted folders only)."""
    return Path(str(directory).removeprefix("file://"))


def fingerprint(paths: Iterable[str]) -> str:
    """SHA-256 over the names, sizes and bytes of the input files (order-independent)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        p = Path(path)
        digest.update(f"{p.name}:{p.stat().st_size}:".encode())
        with open(p, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: Path, manifest: dict[str, Any]) -> Path:
    """Write ``manifest.json`` (last file of a dataset: its presence marks completeness)."""
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a prepared dataset, checked for completeness and schema version."""
    directory = local_path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise DatasetError(f"{directory} does not exist or is not a directory; run jobs/prepare.py first")
    if not path.is_file():
        raise DatasetError(f"{directory} has no {MANIFEST}: it is not a prepared dataset, or a prepare "
                           f"job was killed while writing it; rerun jobs/prepare.py with --overwrite")
    manifest = json.loads(path.read_text())
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DatasetError(f"{path}: schema_version {version} but this code reads version {SCHEMA_VERSION}; "
                           f"prepare the data again with this version")
    return manifest


# Prepare settings that only lay the splits out in files: they change no split's users or items.
LAYOUT_SETTINGS = frozenset({"max_ranks", "row_groups_per_rank", "min_rows_per_group", "max_rows_per_group"})


def dataset_id(manifest: dict[str, Any]) -> str:
    """Which dataset a prepared folder holds: the input's fingerprint and the prepare settings that
    decide the splits' contents (not their file layout). Validation scores compare only within one id."""
    settings = {k: v for k, v in manifest["config"].items() if k not in LAYOUT_SETTINGS}
    payload = json.dumps({"input": manifest["source"].get("fingerprint", ""), "prepare": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def part_files(directory: Path) -> list[dict[str, Any]]:
    """Every Parquet part file of the dataset's tables: path (relative), rows and bytes, for the manifest."""
    directory = Path(directory)
    return [{"path": str(f.relative_to(directory)), "rows": pq.ParquetFile(f).metadata.num_rows,
             "bytes": f.stat().st_size}
            for table in TABLES for f in sorted((directory / table).glob("*.parquet"))]


def verify_files(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Check the part files against the manifest (present, same size, same rows, none extra);
    raises :class:`DatasetError` naming every file that is wrong. A manifest of an older
    prepare job lists no files: that is warned about, not refused (its data may be fine)."""
    directory = local_path(directory)
    listed = manifest.get("files")
    if listed is None:
        log.warning("%s: the manifest lists no part files (prepared by an older version), so missing or "
                    "truncated files cannot be detected; prepare the data again to get this check", directory)
        return
    problems = []
    for entry in listed:
        path = directory / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']} is missing")
            continue
        size = path.stat().st_size
        if size != entry["bytes"]:
            problems.append(f"{entry['path']} has {size} bytes, the manifest says {entry['bytes']} (truncated or changed)")
            continue
        try:
            rows = pq.ParquetFile(path).metadata.num_rows
        except Exception as error:  # pyarrow raises several types for a damaged footer
            problems.append(f"{entry['path']} is not readable Parquet ({error})")
            continue
        if rows != entry["rows"]:
            problems.append(f"{entry['path']} has {rows} rows, the manifest says {entry['rows']}")
    known = {entry["path"] for entry in listed}
    problems += [f"{extra} is not in the manifest" for extra in
                 (str(f.relative_to(directory)) for t in TABLES for f in sorted((directory / t).glob("*.parquet")))
                 if extra not in known]
    if problems:
        raise DatasetError(f"{directory} does not match its manifest: {'; '.join(problems)}. Restore the files "
                           f"or prepare the data again with --overwrite")
