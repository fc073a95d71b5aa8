"""The prepared dataset's manifest: what was written, from what, and where every row went.

Spark-free: the trainer and the recommend job read it too.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class DatasetError(ValueError):
    """A path is not a complete prepared dataset of a schema this code reads."""


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
    directory = Path(str(directory).removeprefix("file://"))
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
