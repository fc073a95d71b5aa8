"""Dataset integrity: the manifest lists every part file (rows, bytes); training and recommend
check them before reading and name what is missing, truncated or extra."""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from _data import ROOT, environment, prepared_dataset
from _faults import remove, truncate
from pipeline.manifest import DatasetError, read_manifest, verify_files


@pytest.fixture
def dataset(spark, tmp_path_factory, tmp_path) -> Path:
    """A private copy of the session's prepared dataset (these tests damage it)."""
    copy = tmp_path / "data"
    shutil.copytree(prepared_dataset(spark, tmp_path_factory.getbasetemp()), copy)
    return copy


def train_part(data: Path) -> Path:
    return sorted((data / "train").glob("*.parquet"))[3]


def test_the_manifest_lists_every_part_file_with_rows_and_bytes(dataset):
    manifest = read_manifest(dataset)
    files = {f["path"]: f for f in manifest["files"]}
    on_disk = {str(p.relative_to(dataset)) for t in ("items", "users", "train", "validation", "test")
               for p in (dataset / t).glob("*.parquet")}
    assert set(files) == on_disk
    for split in ("train", "validation", "test"):
        assert sum(f["rows"] for p, f in files.items() if p.startswith(f"{split}/")) == manifest["num_users"][split]
    assert all(f["bytes"] == (dataset / p).stat().st_size for p, f in files.items())
    verify_files(dataset, manifest)


@pytest.mark.parametrize("damage, message", [
    (lambda d: remove(train_part(d)), "{part} is missing"),
    (lambda d: truncate(train_part(d), 0.5), "{part} has {size} bytes, the manifest says {bytes} (truncated or changed)"),
    (lambda d: shutil.copy(train_part(d), d / "train" / "part-99999-extra.parquet"),
     "train/part-99999-extra.parquet is not in the manifest"),
])
def test_a_damaged_dataset_is_refused_naming_the_file(dataset, damage, message):
    manifest = read_manifest(dataset)
    part = str(train_part(dataset).relative_to(dataset))
    recorded = next(f for f in manifest["files"] if f["path"] == part)
    damage(dataset)
    size = (dataset / part).stat().st_size if (dataset / part).exists() else 0
    expected = message.format(part=part, size=size, bytes=recorded["bytes"])
    with pytest.raises(DatasetError, match="does not match its manifest: .*" + expected.replace("(", r"\(").replace(")", r"\)")):
        verify_files(dataset, manifest)


def test_a_manifest_without_the_file_list_is_warned_about(dataset, caplog):
    manifest = read_manifest(dataset)
    del manifest["files"]
    remove(train_part(dataset))
    with caplog.at_level(logging.WARNING, logger="recoder.manifest"):
        verify_files(dataset, manifest)
    assert "the manifest lists no part files (prepared by an older version)" in caplog.text


def test_training_refuses_a_missing_part_file_before_the_first_step(dataset, tmp_path):
    part = train_part(dataset)
    remove(part)
    checkpoints = tmp_path / "checkpoints"
    done = subprocess.run([sys.executable, "-m", "recoder_dist.train", "--data", str(dataset), "mlflow.enabled=false",
                           "train.epochs=1", f"train.checkpoint_dir={checkpoints}", "model.hidden_sizes=[8]"],
                          cwd=ROOT, env=environment(1), capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{part.relative_to(dataset)} is missing" in done.stderr and "Traceback" not in done.stderr
    assert not checkpoints.exists()  # refused before any epoch


def test_recommend_refuses_a_truncated_part_file(spark, dataset):
    from pipeline.recommend import split_histories

    part = sorted((dataset / "test").glob("*.parquet"))[0]
    truncate(part, 0.9)
    with pytest.raises(DatasetError, match=f"{part.relative_to(dataset)} has .* bytes, the manifest says"):
        split_histories(spark, str(dataset), "test")

