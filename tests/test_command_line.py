"""Every entry point takes ``--config`` and ``section.key=value`` overrides in any order among its
other options (``recoder_dist.config.parse_command_line``); overrides apply over the file
wherever they stand. Real command lines: no Spark session, no training."""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT

from recoder_dist.config import CONF_DIR, load_config


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "layer.yaml"
    path.write_text(f"base: {CONF_DIR / 'default.yaml'}\nsynthetic:\n  num_users: 40\n  num_items: 500\n"
                    "train:\n  epochs: 7\n  lr: 0.25\n")
    return path


def _run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_generate_with_overrides_before_and_after_config(tmp_path, config_file):
    out = tmp_path / "interactions.csv"
    result = _run("jobs/generate.py", "synthetic.num_items=25", "--output", out, "--config", config_file,
                  "synthetic.seed=3")
    assert result.returncode == 0, result.stderr
    frame = pd.read_csv(out)
    assert frame.user_id.nunique() == 40  # the file's num_users (the default says 3000); every user gets >= 2 items
    assert frame.item_id.max() <= 25 < 500  # the override before --config beats the file
    same = _run("jobs/generate.py", "--config", config_file, "--output", tmp_path / "again.csv",
                "synthetic.num_items=25", "synthetic.seed=3")
    assert same.returncode == 0, same.stderr
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again.csv"), frame)  # the order made no difference


def _job(name: str):
    spec = importlib.util.spec_from_file_location(f"_job_{name}", ROOT / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("entry, before, after", [
    ("recoder_dist.train", ["--data", "D"], ["--resume"]),
    ("train", ["--data", "D"], ["--num-processes", "2"]),
    ("prepare", ["--input", "raw.csv"], ["--output", "out", "--overwrite"]),
    ("recommend", ["--model", "models:/recoder@champion", "--data", "D"], ["--output", "out", "--k", "5"]),
])
def test_every_entry_point_takes_overrides_around_config(entry, before, after, config_file):
    parse_args = (importlib.import_module(entry) if "." in entry else _job(entry)).parse_args
    args = parse_args([*before, "train.epochs=3", "--config", str(config_file), "model.tied=true", *after,
                       "train.batch_size=50"])
    assert args.config == str(config_file)
    assert args.overrides == ["train.epochs=3", "model.tied=true", "train.batch_size=50"]
    config = load_config(args.config, args.overrides)
    assert (config.train.epochs, config.train.lr, config.model.tied, config.train.batch_size) == (3, 0.25, True, 50)


def test_train_command_reads_an_override_after_config(tmp_path, config_file):
    missing = tmp_path / "no-data"
    good = _run("-m", "recoder_dist.train", "--data", missing, "train.epochs=3", "--config", config_file,
                "train.batch_size=50", "mlflow.enabled=false")
    assert good.returncode == 2 and "no-data does not exist" in good.stderr, good.stderr  # the config was fine
    bad = _run("-m", "recoder_dist.train", "--data", missing, "train.epochs=3", "--config", config_file,
               "train.nosuch=1")
    assert bad.returncode == 2 and "unknown key train.nosuch" in bad.stderr, bad.stderr
    assert "unrecognized arguments" not in good.stderr + bad.stderr
